"""Peak memory and time of one training forward + backward with the LM head chunked or plain
(``chunked_loss``), for SFT, DPO and GRPO, on the embedded model (CPU; a benchmark, not a test).

Each (trainer, head) pair runs in a fresh process: it loads SmolLM2-135M-Instruct (fp32), builds
a batch of random tokens, runs two forward + backward passes of that trainer's step and prints
the second one's time and the process's peak resident memory above what it held just before the
first. The plain head's ``(rows, tokens, 49 152)`` fp32 logits (and their softmax for backward)
are what ``chunked_loss`` removes, so the gap grows with rows × tokens.

    PYTHONPATH=src .venv/bin/python bench/head_memory.py [--rows 8] [--tokens 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TRAINERS = ("sft", "dpo", "grpo")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _step(trainer: str, model, rows: int, tokens: int, chunked: bool, vocab: int):
    """A closure running one forward + backward of ``trainer``'s step on a fixed random batch."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = lambda *shape: torch.randint(100, vocab, shape, generator=g)  # noqa: E731
    if trainer == "sft":   # every token trained (a packed row of assistant text)
        from posttrain.train.sft import sft_step

        batch = {"input_ids": ids(rows, tokens), "attention_mask": torch.ones(rows, tokens, dtype=torch.long)}
        batch["labels"] = batch["input_ids"].clone()
        step = sft_step("sum", chunked_loss=chunked)
        return lambda: step(model, batch)[0].backward()
    if trainer == "dpo":   # rows pairs: a prompt of tokens/2, chosen and rejected of tokens/2 each
        from posttrain.train.preference import completion_logps
        from posttrain.data.preference import PairBatches

        half = tokens // 2
        pairs = [{"prompt_ids": ids(half).tolist(), "chosen_ids": ids(half).tolist(),
                  "rejected_ids": ids(half).tolist(), "margin": 0.0} for _ in range(rows)]
        batch = PairBatches(pairs, 2, share_prompts=True)(list(range(rows)))
        return lambda: completion_logps(model, batch, chunked)[0].sum().backward()
    # grpo: rows / 4 prompts of tokens/2, 4 completions each of tokens/2, weighted by advantages
    from posttrain.models.layout import completion_token_logps

    half = tokens // 2
    prompts = [p for p in (ids(half).tolist() for _ in range(max(rows // 4, 1))) for _ in range(4)]
    completion = ids(len(prompts), half)
    mask = torch.ones(completion.shape)
    advantages = torch.randn(len(prompts), 1, generator=g)

    def run():
        logps, _ = completion_token_logps(model, prompts, completion, 2, mask, share_prompts=True, chunked=chunked)
        (logps * advantages).sum().backward()

    return run


def child(trainer: str, chunked: bool, rows: int, tokens: int, threads: int) -> dict:
    import torch

    from posttrain.models import load_model

    torch.set_num_threads(threads)
    model = load_model("smollm2-135m-instruct").train()
    run = _step(trainer, model, rows, tokens, chunked, model.config.vocab_size)
    before = _rss_mb()
    run()
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"trainer": trainer, "chunked": chunked, "seconds": seconds, "peak_mb": peak - before}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8, help="SFT rows, DPO pairs, GRPO completions")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per row (prompt + response for DPO/GRPO)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("TRAINER", "CHUNKED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child[0], args.child[1] == "1", args.rows, args.tokens, args.threads)
        print(json.dumps(result))
        return
    print(f"one forward + backward, SmolLM2-135M fp32 on CPU ({args.threads} threads), {args.rows} rows x "
          f"{args.tokens} tokens; peak = resident memory above the loaded model")
    print(f"{'trainer':8} {'plain MB':>9} {'chunked MB':>11} {'saved':>7} {'plain s':>8} {'chunked s':>10}")
    for trainer in TRAINERS:
        results = {}
        for chunked in (False, True):
            cmd = [sys.executable, __file__, "--rows", str(args.rows), "--tokens", str(args.tokens),
                   "--threads", str(args.threads), "--child", trainer, "1" if chunked else "0"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[chunked] = json.loads(out.strip().splitlines()[-1])
        plain, chunked = results[False], results[True]
        print(f"{trainer:8} {plain['peak_mb']:9.0f} {chunked['peak_mb']:11.0f} "
              f"{1 - chunked['peak_mb'] / plain['peak_mb']:7.0%} {plain['seconds']:8.2f} {chunked['seconds']:10.2f}",
              flush=True)


if __name__ == "__main__":
    main()
