"""posttrain DPO vs TRL DPOTrainer on CPU, side by side in one process.

Same model (the embedded SmolLM2-135M-Instruct), same pairs (builtin:arithmetic_preference), same
batch (4 pairs, accumulation 1), same maximum length, same loss (sigmoid, β = 0.1), reference
model in memory for both (posttrain ``reference=copy``; TRL ``ref_model`` + no precompute).
Each side runs ``warmup + timed`` optimizer steps; the timed steps' wall time gives pairs/s.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python bench/dpo_cpu.py [--warmup 3] [--steps 5]

Prints pairs/s of each and the ratio (ours / TRL), and ours with ``share_prompts=false`` (each
pair's prompt run twice, as TRL does) and with ``chunked_loss=false`` (full-vocabulary logits of
the responses) to show what each contributes. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

BATCH, MAX_LENGTH, BETA, LR = 4, 256, 0.1, 5e-6


def rows(n: int) -> list[dict]:
    from posttrain.data.builtin import arithmetic_preference

    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in arithmetic_preference("train", n=n)]


def bench_ours(data: list[dict], steps: int, warmup: int, out: str, *extra: str) -> float:
    """pairs/s of posttrain's DPO over the timed steps (a step's time = between two collate calls)."""
    import json

    from posttrain.config import load_config
    from posttrain.train import dpo

    from posttrain.data import preference as preference_data

    stamps: list[float] = []

    class TimedBatches(preference_data.PairBatches):
        def __call__(self, indices):
            stamps.append(time.perf_counter())
            return super().__call__(indices)

    path = os.path.join(out, "pairs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in data)
    config = load_config(dpo.DPOConfig, overrides=[
        f"out={out}/ours", f"data=[{path}]", "eval_data=[]", f"batch_size={BATCH}", f"max_steps={warmup + steps + 1}",
        f"max_length={MAX_LENGTH}", f"max_prompt_length={MAX_LENGTH // 2}", f"beta={BETA}", f"learning_rate={LR}",
        "reference=copy", "progress=false", "resume=false", "save_steps=0", "warmup_ratio=0", *extra])
    saved = preference_data.PairBatches  # run_dpo imports PairBatches when called: time its collate calls
    preference_data.PairBatches = TimedBatches
    try:
        dpo.run_dpo(config)
    finally:
        preference_data.PairBatches = saved
    timed = stamps[warmup: warmup + steps + 1]  # steps+1 stamps bound `steps` whole steps
    return steps * BATCH / (timed[-1] - timed[0])


def bench_trl(data: list[dict], steps: int, warmup: int, out: str) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from posttrain.models import load_tokenizer, resolve_model_path

    path = resolve_model_path("smollm2-135m-instruct")
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    args = DPOConfig(output_dir=f"{out}/trl", per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                     max_steps=warmup + steps + 1, learning_rate=LR, beta=BETA, loss_type=["sigmoid"],
                     max_length=MAX_LENGTH, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
                     precompute_ref_log_probs=False, dataloader_num_workers=0, warmup_steps=0,
                     gradient_checkpointing=False,  # TRL 1.16 turns it on by default; ours runs without
                     bf16=False)  # TRL defaults to bf16 autocast, which is slow on CPUs without bf16 units; both fp32
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), ref_model=AutoModelForCausalLM.from_pretrained(path),
                         args=args, train_dataset=Dataset.from_list(data), processing_class=load_tokenizer(path),
                         callbacks=[Clock()])
    trainer.train()
    timed = stamps[warmup: warmup + steps + 1]
    return steps * BATCH / (timed[-1] - timed[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    import torch

    data = rows(BATCH * (args.warmup + args.steps + 2))
    with tempfile.TemporaryDirectory() as out:
        ours = bench_ours(data, args.steps, args.warmup, out)
        print(f"posttrain: {ours:.3f} pairs/s", flush=True)
        plain = bench_ours(data, args.steps, args.warmup, out, "share_prompts=false")
        print(f"posttrain share_prompts=false: {plain:.3f} pairs/s", flush=True)
        full_logits = bench_ours(data, args.steps, args.warmup, out, "chunked_loss=false")
        print(f"posttrain chunked_loss=false: {full_logits:.3f} pairs/s", flush=True)
        trl = bench_trl(data, args.steps, args.warmup, out)
    print(f"\nDPO on CPU ({torch.get_num_threads()} threads), SmolLM2-135M, batch {BATCH} pairs, max_length "
          f"{MAX_LENGTH}, reference in memory, {args.warmup} warm-up + {args.steps} timed steps")
    print(f"  posttrain : {ours:6.3f} pairs/s")
    print(f"  posttrain share_prompts=false : {plain:6.3f} pairs/s")
    print(f"  posttrain chunked_loss=false : {full_logits:6.3f} pairs/s")
    print(f"  TRL 1.16  : {trl:6.3f} pairs/s")
    print(f"  ratio     : {ours / trl:6.2f}x (posttrain / TRL); without prompt sharing {plain / trl:.2f}x")


if __name__ == "__main__":
    main()
