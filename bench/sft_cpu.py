"""SFT throughput on CPU: posttrain vs TRL's SFTTrainer, side by side in one process.

Same model (the embedded SmolLM2-135M-Instruct), same conversations (built-in arithmetic), same
batch (4 rows) and row length (packed to --max-length tokens, padding-free in both), fp32, AdamW.
Prints tokens/s (non-pad tokens through forward+backward+step) of each and the ratio; ours also
with ``chunked_loss=false`` (the LM head on every position, full logits). TRL computes the loss on
every token (SmolLM2's template has no generation markers for ``assistant_only_loss``); ours on
assistant tokens only, which is also the only place our chunked head runs.

    python bench/sft_cpu.py --steps 6 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rows(n: int):
    from posttrain.data import load_source

    return [{"messages": r["messages"]} for r in load_source("builtin:arithmetic_sft", n=n, seed=0)]


def tokens_in_rows(tokenizer, data, max_length):
    from posttrain.data import encode_conversation, pack_sequences

    examples = [encode_conversation(tokenizer, r["messages"], max_length=max_length) for r in data]
    return examples, pack_sequences(examples, max_length)


def run_ours(args, workdir: Path, *extra: str) -> float:
    from posttrain.config import load_config
    from posttrain.train.sft import SFTConfig, run_sft

    out = workdir / ("ours" + "".join(f"-{e}" for e in extra))
    data_file = workdir / "data.jsonl"
    config = load_config(SFTConfig, overrides=[
        f"out={out}", f"max_steps={args.warmup + args.steps}", "batch_size=4", f"max_length={args.max_length}",
        "learning_rate=1e-5", "warmup_ratio=0", "progress=false", "resume=false", f"data=[{data_file}]",
        "loss_reduction=token_mean", *extra])
    run_sft(config)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    t0 = records[args.warmup - 1]["elapsed_s"]
    t1 = records[-1]["elapsed_s"]
    return (t1 - t0) / args.steps


def run_trl(args, workdir: Path) -> float:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig as TRLConfig, SFTTrainer

    from posttrain.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct")
    ds = datasets.load_dataset("json", data_files=str(workdir / "data.jsonl"), split="train")
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    config = TRLConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=4, max_length=args.max_length,
                       packing=True, padding_free=True, learning_rate=1e-5, max_steps=args.warmup + args.steps,
                       use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", bf16=False,
                       assistant_only_loss=False, completion_only_loss=None, dataloader_num_workers=0,
                       lr_scheduler_type="constant", warmup_steps=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tokenizer, callbacks=[Stamp()])
    trainer.train()
    return (stamps[-1] - stamps[args.warmup - 1]) / args.steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    import torch

    from posttrain.models import load_tokenizer

    workdir = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    try:
        data = rows(400)
        (workdir / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        tokenizer = load_tokenizer("smollm2-135m-instruct")
        examples, packed = tokens_in_rows(tokenizer, data, args.max_length)
        tokens_per_row = sum(len(e["input_ids"]) for e in examples) / len(packed)
        tokens_per_step = 4 * tokens_per_row
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ~{tokens_per_step:.0f} tokens/step")
        ours = run_ours(args, workdir)
        plain_head = run_ours(args, workdir, "chunked_loss=false")
        theirs = run_trl(args, workdir)
        print(f"\n{'':30s} {'s/step':>8s} {'tokens/s':>9s}")
        for name, seconds in [("posttrain", ours), ("posttrain chunked_loss=false", plain_head), ("TRL", theirs)]:
            print(f"{name:30s} {seconds:8.2f} {tokens_per_step / seconds:9.0f}")
        print(f"ratio posttrain/TRL tokens/s: {theirs / ours:.2f}x "
              f"(with the full-vocabulary head: {theirs / plain_head:.2f}x)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
