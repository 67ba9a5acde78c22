"""The extra cost per optimizer step of optimizer=sam and optimizer=tram against AdamW, in one process.

The same ``posttrain sft`` run (model, conversations, batch, length, seed) three times, once per
optimizer; seconds per step from ``metrics.jsonl``'s ``elapsed_s`` after ``--warmup`` steps. SAM
adds a second forward–backward; TRAM adds SAM's pass and two no-grad forwards (current and target
model) for its trust-region KL (``train/sam.py``). Prints each optimizer's s/step and its ratio to
AdamW's. A benchmark, not a test: the ratios move with the machine's load.

    python bench/sam_cost.py                          # the embedded model, 6 steps (2 warm-up)
    python bench/sam_cost.py --model PATH --steps 8 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OPTIMIZERS = {"adamw": [], "sam": ["optimizer=sam"], "tram": ["optimizer=tram", "tram_target=previous"]}


def seconds_per_step(run_dir: Path, warmup: int) -> float:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["elapsed_s"] for r in records if "loss" in r]
    return (times[-1] - times[warmup - 1]) / (len(times) - warmup)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("need 1 <= --warmup < --steps")

    from posttrain.cli import main as posttrain

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in OPTIMIZERS.items():
            out = Path(tmp) / name
            code = posttrain(["sft", f"model={args.model}", f"out={out}", f"max_steps={args.steps}",
                              f"batch_size={args.batch_size}", f"max_length={args.max_length}", "progress=false",
                              "data=[{source: 'builtin:arithmetic_sft', count: 200}]", "warmup_ratio=0", *options])
            if code != 0:
                raise SystemExit(f"{name}: posttrain sft exited with {code}")
            results[name] = seconds_per_step(out, args.warmup)
    base = results["adamw"]
    print(f"\nmodel {args.model}, batch {args.batch_size} x {args.max_length} tokens (packed), "
          f"{args.steps - args.warmup} timed steps, 1 process, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    for name, seconds in results.items():
        print(f"  {name:6s} {seconds:7.2f} s/step   x{seconds / base:.2f} of AdamW")


if __name__ == "__main__":
    main()
