"""posttrain GRPO vs TRL GRPOTrainer on the embedded model, CPU (a benchmark, not a test).

Same model (SmolLM2-135M-Instruct, fp32), same prompts (built-in single-digit arithmetic, the
tokenizer's chat template), same reward (the ``gsm8k`` verifier), 4 prompts × group size 4 per
step, 24 completion tokens, temperature 1, β = 0, one optimizer update per step, full finetune.
Prints the steady-state steps/s of each (the first step, with its warm-up, is excluded) and the
ratio, in one run, and ours with ``share_prompts=false`` (every row runs its prompt, as TRL's
do) and with ``chunked_loss=false`` (full-vocabulary logits of the completions) to show what each
contributes. Both sides use the same torch thread count.

    PYTHONPATH=src .venv/bin/python bench/grpo_cpu.py                 # needs `pip install trl`
    PYTHONPATH=src .venv/bin/python bench/grpo_cpu.py --steps 6 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

# --- arguments
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=4, help="measured steps per side (+1 warm-up step)")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()
torch.set_num_threads(args.threads)

PROMPTS, GROUP, LENGTH, LR = 4, 4, 24, 1e-6
from posttrain.data.builtin import arithmetic_rlvr  # noqa: E402
from posttrain.models import resolve_model_path  # noqa: E402

model_path = resolve_model_path(args.model)
rows = arithmetic_rlvr("train", n=64, seed=0)
work = Path(tempfile.mkdtemp(prefix="grpo-bench-"))


# --- posttrain
def run_posttrain(**extra) -> float:
    from posttrain.config import load_config
    from posttrain.train.rl.config import GRPOConfig
    from posttrain.train.rl.trainer import run_rl

    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = work / ("ours" + "".join(f"-{k}-{v}" for k, v in extra.items()))
    overrides = {"model": model_path, "out": str(out), "max_steps": args.steps + 1, "data": f"[{data}]",
                 "eval_data": "[]", "prompts_per_step": PROMPTS, "group_size": GROUP, "max_new_tokens": LENGTH,
                 "temperature": 1.0, "beta": 0.0, "learning_rate": LR, "batch_size": PROMPTS * GROUP,
                 "filter_zero_variance_groups": False, "mixed_precision": "no", "progress": False,
                 "save_samples": 0, **extra}
    run_rl(load_config(GRPOConfig, overrides=[f"{k}={v}" for k, v in overrides.items()]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["step_seconds"] for r in records if "step_seconds" in r][1:]
    return len(seconds) / sum(seconds)


# --- TRL
def run_trl() -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.rewards.compose import VerifierReward

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter())

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": r["messages"], "ground_truth": r["ground_truth"]} for r in rows])
    config = GRPOConfig(output_dir=str(work / "trl"), use_cpu=True, report_to="none", max_steps=args.steps + 1,
                        per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                        max_completion_length=LENGTH, temperature=1.0, beta=0.0, learning_rate=LR,
                        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", bf16=False,
                        seed=0, disable_tqdm=True)
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=VerifierReward("gsm8k"), args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return len(gaps) / sum(gaps)


# --- both, one process
ours = run_posttrain()
plain = run_posttrain(share_prompts="false")
full_logits = run_posttrain(chunked_loss="false")
theirs = run_trl()
print(f"posttrain GRPO: {ours:.4f} steps/s ({1 / ours:.1f} s/step)")
print(f"posttrain GRPO share_prompts=false: {plain:.4f} steps/s ({1 / plain:.1f} s/step)")
print(f"posttrain GRPO chunked_loss=false: {full_logits:.4f} steps/s ({1 / full_logits:.1f} s/step)")
print(f"TRL GRPOTrainer: {theirs:.4f} steps/s ({1 / theirs:.1f} s/step)")
print(f"ratio posttrain / TRL: {ours / theirs:.2f}x  ({PROMPTS} prompts × {GROUP} completions × {LENGTH} tokens, "
      f"{args.threads} threads, {args.steps} measured steps each); without prompt sharing {plain / theirs:.2f}x")
