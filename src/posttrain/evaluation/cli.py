"""``posttrain eval``: evaluate a model on task suites or named tasks; see ``runner.evaluate``."""

from __future__ import annotations

import argparse

from posttrain.config import ConfigError

EPILOG_HEAD = """\
Examples:
  posttrain eval --model smollm2-135m-instruct --suite dev --out runs/eval-dev
  posttrain eval --model runs/sft/model --tasks gsm8k,ifeval --data-file gsm8k=gsm8k_test.jsonl
  posttrain eval --predictions preds.jsonl --tasks humaneval          # score saved completions
  posttrain eval --model M --tasks winrate --reference-model smollm2-135m-instruct --judge runs/rm/model
  posttrain eval --model M --tasks alpacaeval --judge http://localhost:8000/v1@Qwen/Qwen2.5-7B-Instruct
  posttrain eval --model M --harness lm_eval --tasks arc_easy --limit 100

A re-run into the same --out skips finished samples (OUT/<task>/samples.jsonl).

Tasks:
"""


def _epilog() -> str:
    from posttrain.evaluation.tasks import SUITES, TASKS

    width = max(map(len, TASKS))
    lines = [f"  {n.ljust(width)}  [{t.tag}] {t.description}" for n, t in TASKS.items()]
    suites = "\n".join(f"  {s}: {', '.join(names)}" for s, names in SUITES.items())
    return EPILOG_HEAD + "\n".join(lines) + "\n\nSuites:\n" + suites + "\n"


def _data_files(values: list[str], tasks: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        if "=" in v:
            task, _, path = v.partition("=")
            out[task.strip()] = path.strip()
        elif len(tasks) == 1:
            out[tasks[0]] = v
        else:
            raise ConfigError(f"--data-file {v}: name the task (--data-file TASK=PATH) when several tasks run")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain eval", description="Evaluate a model on task suites (dev, unseen, all) or named tasks; write per-sample outputs and a results table.",
                                epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Model")
    g.add_argument("--model", help="model spec: hub id, local folder, .gguf, or smollm2-135m-instruct")
    g.add_argument("--predictions", help="jsonl of {task, id, completion|completions}: score these instead of generating")
    g = p.add_argument_group("Tasks")
    sel = g.add_mutually_exclusive_group()
    sel.add_argument("--suite", choices=("dev", "unseen", "all"), help="a task suite (default: dev)")
    sel.add_argument("--tasks", help="comma-separated task names (with --harness: the harness's task names)")
    g.add_argument("--limit", type=int, help="samples per task (default: each task's own limit)")
    g.add_argument("--data-file", action="append", default=[], metavar="[TASK=]PATH",
                   help="local file in the task's hub schema (repeatable)")
    g = p.add_argument_group("Generation")
    g.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    g.add_argument("--max-new-tokens", type=int, help="override every task's token budget")
    g.add_argument("--num-samples", type=int, help="completions per prompt (pass@k); > 1 samples at T=0.8")
    g.add_argument("--temperature", type=float, help="override the sampling temperature (0 = greedy)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on a shared or "
                   "busy CPU 1 thread can be many times faster than oversubscribed cores)")
    g = p.add_argument_group("Judges")
    g.add_argument("--judge", help="judge of win rates (winrate, alpacaeval): a reward model, or an LM judge "
                   "local:MODEL / http://HOST:PORT/v1@MODEL (pairwise, both orders; docs/judges.md)")
    g.add_argument("--reference-model", help="model whose completions are the win-rate baseline")
    g.add_argument("--reward-model", help="reward model evaluated by rm_accuracy")
    g = p.add_argument_group("Harness")
    g.add_argument("--harness", choices=("lm_eval",), help="run --tasks through lm-evaluation-harness")
    g = p.add_argument_group("Output")
    g.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    g.add_argument("--overwrite", action="store_true", help="discard earlier samples of the tasks run")
    g.add_argument("--workers", type=int, default=2, help="threads scoring completions (default 2)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from posttrain.evaluation.runner import evaluate, print_results
    from posttrain.evaluation.tasks import resolve_tasks

    if args.model is None and args.predictions is None:
        raise ConfigError("give --model (or --predictions FILE)")
    from posttrain.train.run_folder import check_out_folder

    check_out_folder(args.out, "--out")   # before any model loads
    if args.harness:
        if not args.tasks:
            raise ConfigError("--harness lm_eval needs --tasks (the harness's task names)")
        tasks, harness_tasks = (args.suite or []), [t.strip() for t in args.tasks.split(",") if t.strip()]
    else:
        tasks, harness_tasks = (args.tasks or args.suite or "dev"), None
    named = resolve_tasks(tasks)[0] if tasks else []
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = evaluate(
        args.model, tasks, args.out, args.limit, batch_size=args.batch_size, seed=args.seed,
        max_new_tokens=args.max_new_tokens, num_samples=args.num_samples, temperature=args.temperature,
        data_files=_data_files(args.data_file, named), judge=args.judge, reference_model=args.reference_model,
        reward_model=args.reward_model, predictions=args.predictions, harness=args.harness,
        harness_tasks=harness_tasks, workers=args.workers, overwrite=args.overwrite)
    print_results(result)
    return 0
