"""Does GRPO raise held-out accuracy on the embedded model? (an experiment, not a test)

Runs ``posttrain grpo`` on SmolLM2-135M-Instruct (CPU) with built-in single-digit arithmetic
(``arithmetic_rlvr`` difficulty 1, the built-in "Think step by step, then end with 'The answer
is N.'" prompt), then compares greedy accuracy on the held-out split before (step 0) and after
training: accuracy, n, 95 % Wilson intervals, and the paired flips (items wrong → right and
right → wrong) with an exact two-sided sign test, which is the sharper test on the same items.

    PYTHONPATH=src .venv/bin/python bench/grpo_embedded.py                      # 14 min on 2 cores
    PYTHONPATH=src .venv/bin/python bench/grpo_embedded.py --steps 30 --seed 1 --out runs/grpo-s1

Measured 2026-11-23 with the defaults (15 steps of 4 prompts × 8 completions, lr 1e-5, β = 0, up to
40 new tokens, temperature 0.8), quiet 2-core CPU, 14.0 min for the whole process (11.8 min in
training steps): held-out greedy accuracy 33/100 = 0.330 [0.246, 0.427] → 86/100 = 0.860
[0.779, 0.915]; 54 items wrong → right, 1 right → wrong (sign test p < 1e-14). Mostly the policy
learns to answer within the budget: truncated completions fell from 94% to ~6% of samples
("6 + 9 = 15" instead of a preamble cut off before the answer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from posttrain.config import load_config  # noqa: E402
from posttrain.evaluation.metrics import wilson_interval  # noqa: E402
from posttrain.train.rl.config import GRPOConfig  # noqa: E402
from posttrain.train.rl.trainer import run_rl  # noqa: E402

# --- arguments
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/grpo-embedded")
parser.add_argument("--steps", type=int, default=15)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--lr", type=float, default=1e-5)
parser.add_argument("--prompts", type=int, default=4)
parser.add_argument("--group", type=int, default=8)
parser.add_argument("--max-new-tokens", type=int, default=40)
parser.add_argument("--temperature", type=float, default=0.8)
parser.add_argument("--beta", type=float, default=0.0)
parser.add_argument("--eval-n", type=int, default=100, help="held-out problems scored before and after")
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (a rerun resumes)")
parser.add_argument("--mixed-precision", default="no", help="no = fp32 everywhere (as on CPU)")
args = parser.parse_args()

# --- run
overrides = {
    "out": args.out, "seed": args.seed, "model": args.model, "mixed_precision": args.mixed_precision, "max_steps": args.steps, "learning_rate": args.lr,
    "prompts_per_step": args.prompts, "group_size": args.group, "max_new_tokens": args.max_new_tokens,
    "temperature": args.temperature, "beta": args.beta, "batch_size": 16, "eval_steps": 0, "save_steps": args.save_steps,
    "data": json.dumps([{"source": "builtin:arithmetic_rlvr", "n": 120}]),
    "eval_data": json.dumps([{"source": "builtin:arithmetic_rlvr:test", "n": args.eval_n}]), "eval_size": args.eval_n,
    "progress": False,
}
config = load_config(GRPOConfig, overrides=[f"{k}={v}" for k, v in overrides.items()])
start = time.perf_counter()
run_rl(config, command="bench/grpo_embedded.py")
minutes = (time.perf_counter() - start) / 60

# --- before / after
items = [json.loads(line) for line in (Path(args.out) / "eval_samples.jsonl").read_text().splitlines()]
steps = sorted({it["step"] for it in items})
before = {it["index"]: it["score"] for it in items if it["step"] == steps[0]}
after = {it["index"]: it["score"] for it in items if it["step"] == steps[-1]}
n = len(before)
for name, scores in (("before", before), (f"after {steps[-1]} steps", after)):
    c = int(sum(scores.values()))
    lo, hi = wilson_interval(c, n)
    print(f"{name:>16}: {c}/{n} = {c / n:.3f}  95% Wilson [{lo:.3f}, {hi:.3f}]")
gained = sum(1 for i in before if after[i] > before[i])
lost = sum(1 for i in before if after[i] < before[i])
k, m = min(gained, lost), gained + lost
p = min(1.0, 2 * sum(math.comb(m, j) for j in range(k + 1)) / 2 ** m) if m else 1.0
print(f"paired: {gained} wrong→right, {lost} right→wrong; exact sign test p = {p:.4f}")
records = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
train = [r for r in records if "reward_mean" in r]
third = max(1, len(train) // 3)
print("train reward_mean first third %.3f, last third %.3f; kl last %.4f; %.1f min this process, "
      "%.1f min in training steps" % (
          sum(r["reward_mean"] for r in train[:third]) / third, sum(r["reward_mean"] for r in train[-third:]) / third,
          train[-1].get("kl", float("nan")), minutes, sum(r.get("step_seconds", 0.0) for r in train) / 60))
