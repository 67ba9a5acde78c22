"""``posttrain merge``: merge models in weight space, and the experiments built on merging.

    posttrain merge linear --models A B C [--weights 2 1 1] --out merged
    posttrain merge task-arithmetic --base B --models A C [--weights 1 0.5] --scale 0.5 --out merged
    posttrain merge interpolate --pre P --post Q --alpha 0.5 --out merged
    posttrain merge interpolate --pre P --post Q --alphas 0,0.25,0.5,0.75,1 \\
        --eval-tasks arith_easy_builtin,ifeval_builtin --limit 32 --out runs/sweep
    posttrain merge add-skill --general G --skill-data builtin:ifeval_sft --weight 0.5 --steps 50 --out runs/skill
    posttrain merge mixtures --base M --partition arith=builtin:arithmetic_sft --partition ifeval=builtin:ifeval_sft \\
        --mixture a=arith --mixture b=arith:0.5,ifeval:0.5 --steps 30 --out runs/mix \\
        --eval-data '{source: builtin:arithmetic_sft:test, count: 100}'

Models are folders with safetensors weights (single file or sharded), any model spec
(``smollm2-135m-instruct``, hub ids), or peft LoRA adapter folders, which are merged into their base
first (W + (α/r)·B·A) so every method sees full models; the output is always a full model folder
(config, tokenizer and chat template from the first model, the base for task arithmetic) with a
``merge.json``. Tensors are streamed one at a time; see :mod:`posttrain.merging.methods` for the formulas.
Data sources (``--skill-data``, ``--partition``, ``--eval-data``) are source specs
(``builtin:name[:split]``, .jsonl/.json/.parquet, hub names) or YAML entries such as
``'{source: builtin:arithmetic_sft, count: 500}'``.
"""

from __future__ import annotations

import argparse

from posttrain.merging import experiments as merging_experiments
from posttrain.merging import methods as merging
from posttrain.config import ConfigError

__all__ = ["main", "build_parser"]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _source(text: str):
    """A data source: a spec string, or a YAML mapping/list (``{source: ..., count: 500}``)."""
    if text.lstrip().startswith(("{", "[")):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"data source {text!r} is not valid YAML ({e})") from None
    return text


def _named(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{what} {item!r} must look like NAME=VALUE")
        if name.strip() in out:
            raise ConfigError(f"{what} {name.strip()!r} is given twice")
        out[name.strip()] = value.strip()
    return out


def _mixture(text: str) -> dict[str, float]:
    """``arith:0.5,ifeval:0.5`` → weights; a bare partition name weighs 1."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition(":")
        try:
            weights[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise ConfigError(f"mixture {text!r}: {value!r} is not a number (write PARTITION:WEIGHT,...)") from None
    if not weights:
        raise ConfigError(f"mixture {text!r} names no partition")
    return weights


def _sft_overrides(args) -> list[str]:
    return list(args.sft) + ([f"max_steps={args.steps}"] if args.steps else [])


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.replace("``", "").replace(":mod:", "")
    p = argparse.ArgumentParser(prog="posttrain merge", description=doc.split("\n\n")[0],
                                epilog="\n\n".join(doc.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="METHOD")

    # --- shared groups
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    output = argparse.ArgumentParser(add_help=False, parents=[run])
    output.add_argument("--max-shard-size", default="5GB",
                        help="largest weight file written (default 5GB); peak memory is about one shard")
    output.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    output.add_argument("--lora-base", default=None,
                        help="base model of LoRA adapter inputs (default: base_model_name_or_path of each adapter)")
    evaluation = argparse.ArgumentParser(add_help=False)
    evaluation.add_argument("--eval-data", nargs="+", type=_source, default=[], metavar="SRC",
                            help="held-out SFT conversations for perplexity (assistant tokens only)")
    evaluation.add_argument("--max-length", type=int, default=512,
                            help="tokens per evaluated conversation (default 512)")
    evaluation.add_argument("--batch-size", type=int, default=8, help="batch size for evaluation (default 8)")
    evaluation.add_argument("--keep-models", action="store_true", help="keep every merged model (default: delete "
                            "each after it is evaluated)")
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--steps", type=int, default=0, help="SFT optimizer steps per run (sets max_steps)")
    training.add_argument("--sft", action="append", default=[], metavar="KEY=VALUE",
                          help="an SFT option for every training run, as for posttrain sft (repeatable); "
                               "model, out and data are set by this command")
    training.add_argument("--sft-config", action="append", default=[], metavar="FILE",
                          help="YAML file of SFT options (repeatable)")

    # --- methods
    s = sub.add_parser("linear", parents=[output], help="weighted average: θ = Σ w_i θ_i (Wortsman et al. 2022)",
                       description="Weighted average θ = Σ_i w_i θ_i; weights are normalised to sum to 1 "
                                   "(uniform when not given).")
    s.add_argument("--models", nargs="+", required=True, metavar="MODEL")
    s.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight >= 0 per model (normalised)")

    s = sub.add_parser("task-arithmetic", parents=[output],
                       help="θ = θ_base + scale · Σ w_i (θ_i − θ_base) (Ilharco et al. 2023)",
                       description="Task arithmetic: θ = θ_base + Σ_i λ_i (θ_i − θ_base) with λ_i = scale · w_i, "
                                   "not normalised (a negative weight subtracts a task).")
    s.add_argument("--base", required=True, help="the model the task vectors are taken from")
    s.add_argument("--models", nargs="+", required=True, metavar="MODEL", help="fine-tuned models of the base")
    s.add_argument("--weights", nargs="+", type=float, metavar="W", help="per-model weights (default 1 each)")
    s.add_argument("--scale", type=float, default=1.0, help="λ multiplying every task vector (default 1)")

    s = sub.add_parser("interpolate", parents=[output, evaluation],
                       help="θ(α) = (1−α) θ_pre + α θ_post, one α or an evaluated sweep (PAINT, Ilharco et al. 2022)",
                       description="Interpolate pre- and post-finetuning weights, θ(α) = (1 − α) θ_pre + α θ_post. "
                                   "--alpha writes one model to --out; --alphas evaluates each α (tasks and/or "
                                   "perplexity) and writes report.md, sweep.png and sweep.json to --out.")
    s.add_argument("--pre", required=True, help="the model before finetuning (α = 0)")
    s.add_argument("--post", required=True, help="the model after finetuning (α = 1)")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--alpha", type=float, help="one α: write the merged model to --out")
    which.add_argument("--alphas", type=_floats, help="comma-separated α values to sweep, e.g. 0,0.25,0.5,0.75,1")
    s.add_argument("--eval-tasks", type=lambda t: [x for x in t.split(",") if x], default=[],
                   help="comma-separated evaluation tasks (see posttrain eval --help), e.g. arith_easy_builtin")
    s.add_argument("--limit", type=int, default=None, help="samples per task (default: each task's own limit)")
    s.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: each task's own)")

    s = sub.add_parser("add-skill", parents=[run, training],
                       help="parallel train then merge: SFT a skill alone, merge it in (Morrison et al. 2024)",
                       description="Parallel train then merge (Merge to Learn): SFT a skill model on --skill-data "
                                   "starting from --init (default the general model), then merge it into the "
                                   "general model: task arithmetic θ_general + ω (θ_skill − θ_init), or linear "
                                   "(1 − ω) θ_general + ω θ_skill. Writes OUT/skill (the run) and OUT/model.")
    s.add_argument("--general", required=True, help="the general model the skill is added to")
    s.add_argument("--skill-data", nargs="+", required=True, type=_source, metavar="SRC", help="the skill's SFT data")
    s.add_argument("--weight", type=float, default=0.5, help="ω, the skill's merge weight (default 0.5)")
    s.add_argument("--method", choices=("task-arithmetic", "linear"), default="task-arithmetic")
    s.add_argument("--init", default=None, help="where the skill run starts (default: --general; the paper uses "
                   "the pretrained model the general model was tuned from)")

    s = sub.add_parser("mixtures", parents=[run, training, evaluation],
                       help="rank candidate data mixtures by merging per-partition models (Na et al. 2024)",
                       description="Data-mixture simulation: SFT one model per partition from --base (or give "
                                   "trained ones with --partition-model), score every candidate mixture by the "
                                   "perplexity on --eval-data of the weighted average of its partitions' models, "
                                   "and rank them. With --true-score, print Spearman's ρ against true scores "
                                   "(e.g. perplexities of models trained on each mixture; lower = better).")
    s.add_argument("--base", default=None, help="the model every partition run starts from")
    s.add_argument("--partition", action="append", default=[], metavar="NAME=SRC",
                   help="a data partition to train on (repeatable)")
    s.add_argument("--partition-model", action="append", default=[], metavar="NAME=MODEL",
                   help="an already trained partition model (repeatable)")
    s.add_argument("--mixture", action="append", required=True, metavar="NAME=P:W,...",
                   help="a candidate mixture: partition weights, e.g. mix=arith:0.7,ifeval:0.3 (repeatable)")
    s.add_argument("--true-score", action="append", default=[], metavar="NAME=VALUE",
                   help="the true score of a mixture, for Spearman's ρ (repeatable)")
    return p


def _print_rows(title: str, rows: list[dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("mixture", "weights") else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns))
    Console().print(table)


def _write(args) -> dict:
    return {"max_shard_size": args.max_shard_size, "overwrite": args.overwrite, "progress": not args.no_progress,
            "lora_base": args.lora_base}


def run_linear(args) -> None:
    out = merging.merge_linear(args.models, args.out, args.weights, **_write(args))
    print(f"merged {len(args.models)} models (linear) into {out}")


def run_task_arithmetic(args) -> None:
    out = merging.merge_task_arithmetic(args.base, args.models, args.out, args.weights, args.scale, **_write(args))
    print(f"merged {len(args.models)} task vectors into {args.base} (scale {args.scale:g}): {out}")


def run_interpolate(args) -> None:
    if args.alpha is not None:
        if args.eval_tasks or args.eval_data:
            raise ConfigError("evaluation runs on a sweep: use --alphas (one value is fine) with "
                              "--eval-tasks/--eval-data")
        out = merging.merge_interpolate(args.pre, args.post, args.alpha, args.out, **_write(args))
        print(f"θ(α={args.alpha:g}) written to {out}")
        return
    if args.overwrite:
        raise ConfigError("--overwrite does not apply to a sweep: it resumes in --out "
                          "(delete the folder to start over)")
    result = merging_experiments.interpolation_sweep(
        args.pre, args.post, args.alphas, args.out, tasks=args.eval_tasks, eval_data=args.eval_data,
        limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_length=args.max_length,
        keep_models=args.keep_models, lora_base=args.lora_base, progress=not args.no_progress)
    _print_rows("interpolation sweep", result["rows"], ["alpha", *result["columns"]])
    print(f"report: {args.out}/report.md (plot: sweep.png)")


def run_add_skill(args) -> None:
    result = merging_experiments.train_skill_and_merge(
        args.general, args.skill_data, args.out, weight=args.weight, method=args.method.replace("-", "_"),
        init=args.init, sft_overrides=_sft_overrides(args), sft_files=args.sft_config, progress=not args.no_progress)
    print(f"skill model: {result['skill_model']}\nmerged model: {result['model']}")


def run_mixtures(args) -> None:
    trained, partitions = _named(args.partition_model, "--partition-model"), _named(args.partition, "--partition")
    if both := sorted(set(trained) & set(partitions)):
        raise ConfigError(f"partition {both[0]!r} is given both as --partition and --partition-model")
    if partitions and not args.base:
        raise ConfigError("--partition trains from --base: give --base")
    if not trained and not partitions:
        raise ConfigError("give the partitions: --partition NAME=SRC (trained here) or --partition-model NAME=MODEL")
    if not args.eval_data:
        raise ConfigError("give --eval-data: mixtures are ranked by perplexity on it")
    true = {}
    for name, value in _named(args.true_score, "--true-score").items():
        try:
            true[name] = float(value)
        except ValueError:
            raise ConfigError(f"--true-score {name}={value}: not a number") from None
    mixtures = {name: _mixture(value) for name, value in _named(args.mixture, "--mixture").items()}
    models = dict(trained)
    models.update(merging_experiments.train_partition_models(args.base, {k: _source(v) for k, v in partitions.items()}, args.out,
                                                 sft_overrides=_sft_overrides(args), sft_files=args.sft_config))
    ranking = merging_experiments.simulate_mixtures(models, mixtures, args.eval_data, args.out, max_length=args.max_length,
                                        batch_size=args.batch_size, keep_models=args.keep_models,
                                        true_scores=true or None, progress=not args.no_progress)
    rows = [{**r, "weights": ", ".join(f"{p} {w:.2f}" for p, w in r["weights"].items()),
             "true score": true.get(r["mixture"], "")} for r in ranking]
    _print_rows("candidate mixtures, best first", rows,
                ["rank", "mixture", "weights", "perplexity"] + (["true score"] if true else []))
    if true:
        print(f"Spearman's rho against the true scores: {merging_experiments.rank_correlation(ranking, true):.3f}")
    print(f"report: {args.out}/report.md")


COMMANDS = {"linear": run_linear, "task-arithmetic": run_task_arithmetic, "interpolate": run_interpolate,
            "add-skill": run_add_skill, "mixtures": run_mixtures}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    COMMANDS[args.command](args)
    return 0
