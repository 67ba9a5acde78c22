"""Model-merging experiments on the embedded model (SmolLM2-135M-Instruct), CPU-sized.

(a) Specialists and their merges. SFT an arithmetic specialist (``builtin:arithmetic_sft``) and an
    instruction-following specialist (``builtin:ifeval_sft``), each from the base model with the
    same budget; merge them (linear 0.5/0.5, i.e. a two-model soup, and task arithmetic
    base + λ(τ_arith + τ_ifeval) with λ = ``--ta-scale``); evaluate base, specialists and merges on
    ``arith_easy_builtin`` (accuracy) and ``ifeval_builtin`` (prompt-level strict). Prints the table
    and, for each merge, whether its weaker skill (the lower of its two scores, raw values) beats
    the weaker skill of each specialist — the point of merging: one model without a weak side.

(b) Data-mixture simulation (Na et al. 2024). Three partitions (easy arithmetic, harder arithmetic,
    IFEval-style), one SFT model each from the base; three candidate mixtures of two partitions
    each, scored by the held-out perplexity of the uniform average of their partitions' models,
    and by the perplexity of a model trained on the mixture directly (the union of the partitions'
    data, for ``--steps`` × 2 steps, so each partition gets the budget of its partition model, as
    in the paper). Prints both rankings and Spearman's ρ between them (3 candidates: ρ ∈ {±1, ±0.5}).

    python bench/merge_experiments.py --out runs/merge-exp                    # embedded model
    python bench/merge_experiments.py --out runs/merge-exp-tiny --tiny        # smoke run, tiny random model

Cost with the defaults: 240 SFT steps of batch 4 × 256 tokens (2 specialists and 2 more partition
models at --steps, 3 mixture models at 2 × --steps; the IFEval partition is the IFEval specialist),
5 models evaluated on 96 + 96 prompts, 6 perplexity passes over 96 conversations. Measured on a
quiet 2-core CPU: (a) alone (``--skip b``) 25 min; (b) at ``--steps 8`` took 40 min on shared
cores, so budget about an hour for (b) at the defaults. The smoke run takes about a minute.

Everything lands in ``--out`` (SFT runs, merged models, evaluations, ``summary.json``); re-running
reuses finished SFT runs and evaluated samples (delete ``--out`` to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARITH, IFEVAL = "arith_easy_builtin", "ifeval_builtin"


def tiny_model(out: Path) -> str:
    """A tiny random-init Llama (hidden 64, 2 layers) with the SmolLM2 tokenizer, as the tests use."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.models import load_tokenizer

    folder = out / "tiny-model"
    if not (folder / "config.json").exists():
        tokenizer = load_tokenizer("smollm2-135m-instruct")
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def headline(result: dict, task: str) -> float:
    return result["tasks"][task]["metrics"][0]["value"]


def evaluate_model(model: str, out: Path, args) -> dict[str, float]:
    """Arithmetic accuracy and IFEval prompt-level strict accuracy, each with its own sample limit."""
    from posttrain.evaluation.runner import evaluate

    scores = {}
    for task, limit, tokens in ((ARITH, args.arith_limit, 40), (IFEVAL, args.ifeval_limit, 96)):
        result = evaluate(model, [task], out, limit=limit, batch_size=16, max_new_tokens=min(tokens, args.max_new_tokens))
        scores[task] = headline(result, task)
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/merge-exp", help="output folder")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model and tiny budgets: a smoke run")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="base model (ignored with --tiny)")
    parser.add_argument("--steps", type=int, default=24, help="SFT steps per specialist / partition model "
                        "(8 are too few for an IFEval specialist: see docs/results/merging-2026-11-23.md)")
    parser.add_argument("--rows", type=int, default=160, help="training conversations per data source")
    parser.add_argument("--lr", type=float, default=5e-5, help="SFT learning rate")
    parser.add_argument("--ta-scale", type=float, default=1.0, help="λ of the task-arithmetic merge")
    parser.add_argument("--arith-limit", type=int, default=96, help=f"{ARITH} samples")
    parser.add_argument("--ifeval-limit", type=int, default=96, help=f"{IFEVAL} samples")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="cap on generated tokens per sample")
    parser.add_argument("--eval-rows", type=int, default=48, help="held-out conversations per source for perplexity")
    parser.add_argument("--skip", choices=("a", "b"), default=None, help="skip one experiment")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.rows, args.lr, args.max_new_tokens = 2, 16, 1e-3, 8
        args.arith_limit, args.ifeval_limit, args.eval_rows = 4, 2, 8

    import torch

    from posttrain.merging import merge_linear, merge_task_arithmetic
    from posttrain.merging.experiments import (perplexity, rank_correlation, simulate_mixtures,
                                               train_partition_models)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = tiny_model(out) if args.tiny else args.model
    sft = [f"max_steps={args.steps}", "batch_size=4", "max_length=256", f"learning_rate={args.lr}",
           "warmup_ratio=0.1", f"progress={not args.tiny}", "seed=0"]
    print(f"base {base}; torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} SFT steps per run")
    summary: dict = {"args": vars(args)}
    t0 = time.perf_counter()

    # --- (a) specialists and their merges
    if args.skip != "a":
        specialists = train_partition_models(base, {
            "arith": {"source": "builtin:arithmetic_sft", "count": args.rows},
            "ifeval": {"source": "builtin:ifeval_sft", "count": args.rows}}, out, sft_overrides=sft)
        arith, ifeval = str(specialists["arith"]), str(specialists["ifeval"])
        merged = {
            "linear 0.5/0.5": merge_linear([arith, ifeval], out / "merged" / "linear", [0.5, 0.5], overwrite=True),
            f"task arithmetic λ={args.ta_scale:g}": merge_task_arithmetic(
                base, [arith, ifeval], out / "merged" / "task-arithmetic", scale=args.ta_scale, overwrite=True)}
        models = {"base": base, "arith specialist": arith, "ifeval specialist": ifeval,
                  **{k: str(v) for k, v in merged.items()}}
        scores = {name: evaluate_model(path, out / "eval" / re.sub(r"[^\w.-]+", "-", name), args)
                  for name, path in models.items()}
        print(f"\n(a) specialists and merges ({time.perf_counter() - t0:.0f}s so far)\n")
        print(f"{'model':28s} {ARITH + ' acc':>24s} {IFEVAL + ' strict':>24s} {'weaker skill':>13s}")
        for name, s in scores.items():
            print(f"{name:28s} {s[ARITH]:24.3f} {s[IFEVAL]:24.3f} {min(s.values()):13.3f}")
        weaker = {name: min(s.values()) for name, s in scores.items()}
        verdicts = {}
        for name in merged:
            for spec in ("arith specialist", "ifeval specialist"):
                beats = weaker[name] > weaker[spec]
                verdicts[f"{name} vs {spec}"] = beats
                print(f"{name}: weaker skill {weaker[name]:.3f} {'beats' if beats else 'does not beat'} "
                      f"the {spec}'s {weaker[spec]:.3f}")
        summary["a"] = {"scores": scores, "weaker_skill": weaker, "merged_beats": verdicts}

    # --- (b) data-mixture simulation vs training on each mixture
    if args.skip != "b":
        partitions = {
            "arith_easy": {"source": "builtin:arithmetic_sft", "count": args.rows, "difficulty": [1]},
            "arith_hard": {"source": "builtin:arithmetic_sft", "count": args.rows, "difficulty": [2, 3]},
            "ifeval": {"source": "builtin:ifeval_sft", "count": args.rows}}  # the (a) ifeval specialist is reused
        candidates = {"easy+hard": ["arith_easy", "arith_hard"], "easy+ifeval": ["arith_easy", "ifeval"],
                      "hard+ifeval": ["arith_hard", "ifeval"]}
        eval_data = [{"source": "builtin:arithmetic_sft:test", "count": args.eval_rows},
                     {"source": "builtin:ifeval_sft:test", "count": args.eval_rows}]
        partition_models = train_partition_models(base, partitions, out, sft_overrides=sft)
        ranking = simulate_mixtures(partition_models, {k: dict.fromkeys(v, 1.0) for k, v in candidates.items()},
                                    eval_data, out / "simulated", max_length=256)
        # the truth: one SFT run on each mixture's union, each partition getting its model's budget
        mixture_sft = [o if not o.startswith("max_steps=") else f"max_steps={2 * args.steps}" for o in sft]
        true_models = train_partition_models(base, {k: [partitions[p] for p in v] for k, v in candidates.items()},
                                             out / "true", sft_overrides=mixture_sft)
        true_ppl = {k: perplexity(m, eval_data, max_length=256)["perplexity"] for k, m in true_models.items()}
        rho = rank_correlation(ranking, true_ppl)
        print(f"\n(b) mixture simulation ({time.perf_counter() - t0:.0f}s so far)\n")
        print(f"{'mixture':14s} {'merged ppl':>11s} {'rank':>5s} {'trained ppl':>12s} {'rank':>5s}")
        true_rank = {k: i for i, k in enumerate(sorted(true_ppl, key=true_ppl.get), 1)}
        for r in ranking:
            print(f"{r['mixture']:14s} {r['perplexity']:11.3f} {r['rank']:5d} {true_ppl[r['mixture']]:12.3f} "
                  f"{true_rank[r['mixture']]:5d}")
        print(f"Spearman's rho (merged-model perplexity vs trained-on-mixture perplexity): {rho:.3f}")
        summary["b"] = {"simulated": ranking, "trained_perplexity": true_ppl, "spearman": rho}

    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\ntotal {summary['seconds']:.0f}s; summary in {out / 'summary.json'}")


if __name__ == "__main__":
    main()
