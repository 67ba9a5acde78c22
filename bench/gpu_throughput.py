"""posttrain vs TRL on one GPU: SFT tokens/s, DPO pairs/s, GRPO steps/s, MFU and peak memory,
side by side in one process (a benchmark, not a test; issue 9's setup).

Model: random-init Qwen2 with the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 / 2 heads, MLP
4864), fp32 master weights with bf16 autocast on both sides. Its vocabulary is the SmolLM2
tokenizer's 49 152 (so real text tokenises; the issue's reference figures used 32 000, which puts
the model at 386.6 M parameters instead of this one's ~401 M). Data: random-token text, so lengths
are exact:

- SFT: conversations of ~600 tokens packed padding-free into rows of 2048, 8 rows per step
  (TRL: ``packing=True, padding_free=True``, bfd);
- DPO: 8 pairs per step, 256-token prompts, 768-token responses (max length 1024), reference model
  in memory (ours ``reference=copy``, TRL ``ref_model``), loss ``sigmoid``;
- GRPO: 16 prompts × 8 completions per optimizer step, completions of 256 tokens (a random model
  rarely stops early), HF ``generate`` on both sides, micro-batch 16, β = 0, reward = a length
  function (no verifier cost in the figure).

MFU = model FLOP/s / peak (989 TFLOP/s, H100 SXM dense bf16; ``--peak-tflops``), model FLOP/s = 6 ·
parameters · tokens/s for SFT, 8 · parameters · tokens/s for DPO (the reference's forward too); not
given for GRPO (generation's FLOPs are not the bottleneck there).

    python bench/gpu_throughput.py                      # all three, ~15 min on an H100
    python bench/gpu_throughput.py --only sft,dpo
    python bench/gpu_throughput.py --only grpo --sides posttrain --ours rollout_cache=static
    python bench/gpu_throughput.py --tiny               # a 2-layer model on CPU: checks the script runs
    python bench/gpu_throughput.py --only dpo --sides trl --model-dir /tmp/m --json dpo-trl.json

``bench/gpu_suite.py`` runs it one benchmark and one side per process (``--json``, ``--model-dir``
shared between them), so a side that runs past its time budget is cut alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--only", default="sft,dpo,grpo")
parser.add_argument("--sides", default="posttrain,trl")
parser.add_argument("--warmup", type=int, default=2)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--peak-tflops", type=float, default=989.0)
parser.add_argument("--tiny", action="store_true", help="tiny model and lengths, CPU allowed: a smoke run")
parser.add_argument("--ours", default="", help="extra key=value options for posttrain's runs (space separated), "
                    "e.g. 'rollout_cache=static' or 'chunked_loss=false' to time one fast path against its absence")
parser.add_argument("--tokenizer", default=os.environ.get("POSTTRAIN_BENCH_TOKENIZER", "smollm2-135m-instruct"),
                    help="tokenizer spec (a saved tokenizer folder where the embedded model is not installed)")
parser.add_argument("--model-dir", default="", help="reuse the model folder there (built there when absent) "
                    "instead of a temporary one")
parser.add_argument("--json", default="", help="also write the results (and the run's settings) to this file")
args = parser.parse_args()

GPU = torch.cuda.is_available()
if args.tiny:
    SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128)
    SFT_ROW, SFT_BATCH, CONV = 256, 2, 90
    DPO_BATCH, DPO_PROMPT, DPO_RESPONSE = 2, 32, 64
    GRPO_PROMPTS, GRPO_GROUP, GRPO_TOKENS = 2, 2, 16
else:
    SHAPE = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864)
    SFT_ROW, SFT_BATCH, CONV = 2048, 8, 600
    DPO_BATCH, DPO_PROMPT, DPO_RESPONSE = 8, 256, 768
    GRPO_PROMPTS, GRPO_GROUP, GRPO_TOKENS = 16, 8, 256
PRECISION = "bf16" if GPU else "no"
work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
rng = random.Random(0)
PARAMS = 0


def length_reward(prompts, completions, **_):
    """A cheap reward with variance inside each group (GRPO needs some): longer is better."""
    return [len(c) / 1000 for c in completions]


# --- model folder and random-token text
def build_model_dir() -> tuple[str, object, int]:
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from posttrain.models import load_tokenizer

    if args.model_dir and (Path(args.model_dir) / "config.json").exists():
        tokenizer = load_tokenizer(args.model_dir)
        with torch.device("meta"):   # the parameter count without the weights
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(args.model_dir)).parameters())
        return args.model_dir, tokenizer, params
    tokenizer = load_tokenizer(args.tokenizer)
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **SHAPE)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    path = Path(args.model_dir) if args.model_dir else work / "model"
    tmp = path.with_name(path.name + ".tmp")   # renamed into place whole: a cut build leaves no half folder
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    params = sum(p.numel() for p in model.parameters())
    return str(path), tokenizer, params


def text(tokenizer, n_tokens: int) -> str:
    """About n_tokens tokens of random words (ids from the tokenizer's plain-word range)."""
    return tokenizer.decode([rng.randrange(1000, 20000) for _ in range(n_tokens)])


def write_jsonl(name: str, rows: list[dict]) -> str:
    path = work / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- measurement helpers
class Side:
    def __enter__(self):
        gc.collect()
        if GPU:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        self.peak_gb = torch.cuda.max_memory_allocated() / 2**30 if GPU else float("nan")
        gc.collect()


def step_times_from_metrics(out: Path, key: str = "elapsed_s") -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if key == "step_seconds":
        return [r[key] for r in records if key in r]
    stamps = [r[key] for r in records]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def trl_clock():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        stamps: list[float] = []

        def on_step_end(self, *a, **k):
            self.stamps.append(time.perf_counter())

    return Clock()


def run_ours(run, config_class, name: str, model_dir: str, overrides: list[str], key: str = "elapsed_s"):
    """Run one of our trainers on the shared settings; (seconds per timed step, memory side)."""
    from posttrain.config import load_config

    with Side() as side:
        run(load_config(config_class, overrides=[
            f"model={model_dir}", f"out={work / name}", f"max_steps={args.warmup + args.steps}",
            f"mixed_precision={PRECISION}", "progress=false", "resume=false", *overrides, *args.ours.split()]))
    return timed(step_times_from_metrics(work / name, key)), side


def timed(seconds: list[float]) -> float:
    """Mean seconds per step after the warm-up steps."""
    kept = seconds[args.warmup - 1:] if args.warmup > 1 else seconds
    return sum(kept) / len(kept)


# --- SFT
def bench_sft(model_dir, tokenizer) -> dict:
    n_conv = SFT_BATCH * (args.warmup + args.steps + 1) * SFT_ROW // CONV + 8
    rows = [{"messages": [{"role": "user", "content": text(tokenizer, CONV // 6)},
                          {"role": "assistant", "content": text(tokenizer, CONV * 5 // 6)}]} for _ in range(n_conv)]
    data = write_jsonl("sft.jsonl", rows)
    steps = args.warmup + args.steps
    tokens_per_step = SFT_BATCH * SFT_ROW * 0.98   # bfd packing fills rows to ~98 % (both sides pack the same rows)
    results = {}
    if "posttrain" in args.sides:
        from posttrain.train.sft import SFTConfig, run_sft

        results["posttrain"] = run_ours(run_sft, SFTConfig, "sft-ours", model_dir, [
            f"data=[{data}]", f"batch_size={SFT_BATCH}", f"max_length={SFT_ROW}", "loss_reduction=token_mean",
            "warmup_ratio=0"])
    if "trl" in args.sides:
        from datasets import load_dataset
        from transformers import AutoModelForCausalLM
        from trl import SFTConfig as TRLSFTConfig, SFTTrainer

        clock = trl_clock()
        with Side() as side:
            config = TRLSFTConfig(output_dir=str(work / "sft-trl"), per_device_train_batch_size=SFT_BATCH,
                                  max_length=SFT_ROW, packing=True, padding_free=True, max_steps=steps,
                                  learning_rate=1e-5, bf16=GPU, use_cpu=not GPU, report_to="none",
                                  save_strategy="no", logging_steps=1, dataloader_num_workers=0)
            SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=config,
                       train_dataset=load_dataset("json", data_files=data, split="train"),
                       processing_class=tokenizer, callbacks=[clock]).train()
        results["TRL"] = (timed([b - a for a, b in zip(clock.stamps, clock.stamps[1:])]), side)
    return {name: {"tokens/s": tokens_per_step / s, "s/step": s, "model FLOP/s": 6 * PARAMS * tokens_per_step / s,
                   "peak GB": side.peak_gb} for name, (s, side) in results.items()}


# --- DPO
def bench_dpo(model_dir, tokenizer) -> dict:
    n = DPO_BATCH * (args.warmup + args.steps + 2)
    rows = [{"prompt": text(tokenizer, DPO_PROMPT - 20), "chosen": text(tokenizer, DPO_RESPONSE - 10),
             "rejected": text(tokenizer, DPO_RESPONSE - 10)} for _ in range(n)]
    data = write_jsonl("dpo.jsonl", rows)
    steps = args.warmup + args.steps
    length = DPO_PROMPT + DPO_RESPONSE
    results = {}
    if "posttrain" in args.sides:
        from posttrain.train.dpo import DPOConfig, run_dpo

        results["posttrain"] = run_ours(run_dpo, DPOConfig, "dpo-ours", model_dir, [
            f"data=[{data}]", "eval_data=[]", f"batch_size={DPO_BATCH}", f"max_length={length}",
            f"max_prompt_length={DPO_PROMPT}", "reference=copy", "beta=0.1", "learning_rate=5e-7", "warmup_ratio=0"])
    if "trl" in args.sides:
        from datasets import load_dataset
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig as TRLDPOConfig, DPOTrainer

        clock = trl_clock()
        with Side() as side:
            config = TRLDPOConfig(output_dir=str(work / "dpo-trl"), per_device_train_batch_size=DPO_BATCH,
                                  max_length=length, max_steps=steps, learning_rate=5e-7, beta=0.1,
                                  loss_type=["sigmoid"], bf16=GPU, use_cpu=not GPU, report_to="none",
                                  save_strategy="no", logging_steps=1, precompute_ref_log_probs=False,
                                  gradient_checkpointing=False, dataloader_num_workers=0)
            DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir),
                       ref_model=AutoModelForCausalLM.from_pretrained(model_dir), args=config,
                       train_dataset=load_dataset("json", data_files=data, split="train"),
                       processing_class=tokenizer, callbacks=[clock]).train()
        results["TRL"] = (timed([b - a for a, b in zip(clock.stamps, clock.stamps[1:])]), side)
    tokens = DPO_BATCH * 2 * length   # policy forward + backward (6·P per token) and reference forward (2·P)
    return {name: {"pairs/s": DPO_BATCH / s, "tokens/s": tokens / s, "s/step": s,
                   "model FLOP/s": 8 * PARAMS * tokens / s, "peak GB": side.peak_gb} for name, (s, side) in results.items()}


# --- GRPO
def bench_grpo(model_dir, tokenizer) -> dict:
    n = GRPO_PROMPTS * (args.warmup + args.steps + 2)
    rows = [{"messages": [{"role": "user", "content": text(tokenizer, 40)}], "ground_truth": "0", "verifier": "gsm8k"}
            for _ in range(n)]
    data = write_jsonl("grpo.jsonl", rows)
    steps = args.warmup + args.steps
    results = {}
    if "posttrain" in args.sides:
        from posttrain.train.rl.config import GRPOConfig
        from posttrain.train.rl.trainer import run_rl

        results["posttrain"] = run_ours(run_rl, GRPOConfig, "grpo-ours", model_dir, [
            f"data=[{data}]", "eval_data=[]", f"prompts_per_step={GRPO_PROMPTS}", f"group_size={GRPO_GROUP}",
            f"max_new_tokens={GRPO_TOKENS}", f"batch_size={min(16, GRPO_PROMPTS * GRPO_GROUP)}",
            "reward=[{function: '__main__:length_reward'}]", "beta=0", "temperature=1.0",
            "filter_zero_variance_groups=false", "save_samples=0"], key="step_seconds")
    if "trl" in args.sides:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM
        from trl import GRPOConfig as TRLGRPOConfig, GRPOTrainer

        clock = trl_clock()
        tokenizer.padding_side = "left"
        with Side() as side:
            config = TRLGRPOConfig(output_dir=str(work / "grpo-trl"), per_device_train_batch_size=min(16, GRPO_PROMPTS * GRPO_GROUP),
                                   gradient_accumulation_steps=max(1, GRPO_PROMPTS * GRPO_GROUP // 16),
                                   num_generations=GRPO_GROUP, max_completion_length=GRPO_TOKENS, temperature=1.0,
                                   beta=0.0, learning_rate=1e-6, max_steps=steps, bf16=GPU, use_cpu=not GPU,
                                   report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True)
            GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=length_reward,
                        args=config, train_dataset=Dataset.from_list([{"prompt": r["messages"]} for r in rows]),
                        processing_class=tokenizer, callbacks=[clock]).train()
        results["TRL"] = (timed([b - a for a, b in zip(clock.stamps, clock.stamps[1:])]), side)
    completions = GRPO_PROMPTS * GRPO_GROUP
    return {name: {"steps/s": 1 / s, "completions/s": completions / s, "s/step": s, "model FLOP/s": float("nan"),
                   "peak GB": side.peak_gb} for name, (s, side) in results.items()}


def write_json(table: dict, device: str):
    """The results so far, NaN as null (strict JSON)."""
    if not args.json:
        return
    clean = lambda v: None if isinstance(v, float) and v != v else v  # noqa: E731
    blob = {"device": device, "torch": torch.__version__, "shape": SHAPE, "parameters": PARAMS,
            "precision": PRECISION, "warmup": args.warmup, "steps": args.steps, "tiny": args.tiny,
            "ours": args.ours, "results": {b: {side: {k: clean(v) for k, v in row.items()} for side, row in sides.items()}
                                            for b, sides in table.items()}}
    Path(args.json).write_text(json.dumps(blob, indent=1))


def main():
    global PARAMS
    model_dir, tokenizer, params = build_model_dir()
    PARAMS = params
    device = torch.cuda.get_device_name() if GPU else f"CPU, {torch.get_num_threads()} threads"
    print(f"{device}; torch {torch.__version__}; Qwen2 {SHAPE} → {params / 1e6:.1f} M parameters; {PRECISION}")
    benches = {"sft": bench_sft, "dpo": bench_dpo, "grpo": bench_grpo}
    table = {}
    write_json(table, device)
    for name in filter(None, args.only.split(",")):
        table[name] = benches[name](model_dir, tokenizer)
        print(json.dumps({name: table[name]}), flush=True)
        write_json(table, device)
    print(f"\n{'':6s} {'side':10s} {'figure':>22s} {'MFU':>7s} {'peak GB':>8s}")
    for name, sides in table.items():
        for side, row in sides.items():
            figure = next(iter(row))
            mfu = row["model FLOP/s"] / (args.peak_tflops * 1e12)
            print(f"{name:6s} {side:10s} {row[figure]:>12.3f} {figure:>9s} {mfu:7.1%} {row['peak GB']:8.1f}")
        if len(sides) == 2:
            key = next(iter(sides["posttrain"]))
            print(f"{'':6s} ratio posttrain / TRL: {sides['posttrain'][key] / sides['TRL'][key]:.2f}x")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(work, ignore_errors=True)
