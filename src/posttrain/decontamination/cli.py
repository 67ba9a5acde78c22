"""``posttrain decontaminate``: flag training rows that overlap evaluation prompts, report, filter.

    posttrain decontaminate --train builtin:arithmetic_sft data/chats.jsonl \\
        --eval arith_builtin ifeval_builtin gsm8k=gsm8k_test.jsonl --report runs/decon/report.json \\
        --write-clean runs/decon/clean

``--train`` takes sources (``builtin:name[:split]``, local .jsonl/.json/.parquet, hub names).
``--eval`` takes evaluation task names (their prompts; ``TASK=FILE`` loads a hub task from a
local file in its schema) or sources (their rows' prompt text). The score and modes are those of
:mod:`posttrain.decontamination.overlap` (TÜLU 3: a row is flagged when it holds >= threshold of an eval
prompt's 8-grams). ``--write-clean DIR`` writes each training source without its flagged rows,
in the input's format (``DIR/<file name>``; built-in and hub sources as ``.jsonl``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from posttrain.decontamination.overlap import MODES, decontaminate, filter_rows, flagged_rows, row_text, write_clean, write_report

__all__ = ["main", "eval_texts", "clean_path"]


def eval_texts(spec: str) -> tuple[str, list[str]]:
    """(name, prompt texts) of an ``--eval`` item: a task name, ``TASK=FILE``, or a source."""
    from posttrain.data.sources import load_source
    from posttrain.evaluation.tasks import TASKS, task_prompts

    from posttrain.config import ConfigError
    from posttrain.evaluation.tasks import close_task_name

    task, sep, path = spec.partition("=")
    if sep and task in TASKS:
        return task, task_prompts(task, {task: path})
    if sep:
        raise ConfigError(f"--eval {spec}: unknown task {task!r}.{close_task_name(task)} TASK=FILE needs a task name "
                          f"({', '.join(TASKS)})")
    if spec in TASKS:
        return spec, task_prompts(spec)
    hint = close_task_name(spec)
    if hint and not Path(spec).expanduser().exists() and not spec.startswith("builtin:") and "/" not in spec:
        # a typo of a task name, not a hub dataset: say so rather than "offline"
        raise ConfigError(f"--eval {spec}: not a task, a local file or a built-in set.{hint}")
    rows = load_source(spec)
    check_text_rows(rows, spec)
    return spec, [row_text(r, "prompt") or row_text(r) for r in rows]


def check_text_rows(rows: list, spec: str) -> None:
    """Every row has a text column, else an error naming the row's file and line."""
    from posttrain.data.formats import DataError, row_location

    for i, row in enumerate(rows):
        try:
            row_text(row)
        except ValueError as e:
            raise DataError(f"{row_location(row, spec, i)}: {e}. Give each row one of these columns") from None


def clean_path(out_dir: Path, spec: str) -> Path:
    """Where the clean copy of a source goes: its own file name (and format) for local files,
    else a name made from the spec, as .jsonl."""
    path = Path(spec)
    if path.suffix in (".jsonl", ".json", ".parquet"):
        return out_dir / path.name
    return out_dir / (re.sub(r"[^\w.-]+", "_", spec).strip("_") + ".jsonl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain decontaminate", description=__doc__.split("\n\n")[0].replace("``", ""),
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]).replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", nargs="+", required=True, metavar="SRC", help="training sources to check")
    p.add_argument("--eval", nargs="+", required=True, metavar="TASK_OR_SRC",
                   help="evaluation task names (or TASK=FILE) or sources whose prompts must not leak")
    p.add_argument("--mode", choices=MODES, default="ngram",
                   help="ngram: share of eval n-grams found (default); exact: normalised equality; minhash: Jaccard")
    p.add_argument("--ngram", type=int, default=None, help="n-gram size (default 8; minhash shingle default 5)")
    p.add_argument("--threshold", type=float, default=0.5, help="flag when score >= threshold (default 0.5)")
    p.add_argument("--fields", choices=("all", "prompt"), default=None,
                   help="text of a training row to compare (default: all for ngram/minhash, prompt for exact)")
    p.add_argument("--split", default=None, help="split for hub training sources (default train)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores above 50k rows)")
    p.add_argument("--report", default="decontamination_report.json", help="JSON report path")
    p.add_argument("--write-clean", metavar="DIR", help="write each training source without its flagged rows")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from posttrain.config import ConfigError
    from posttrain.data.sources import load_source

    if args.threshold <= 0 or args.threshold > 1:
        raise ConfigError(f"--threshold must be in (0, 1]; got {args.threshold}")
    if args.ngram is not None and args.ngram < 1:
        raise ConfigError(f"--ngram must be >= 1; got {args.ngram}")
    from posttrain.train.run_folder import check_out_folder

    check_out_folder(Path(args.report).expanduser().parent, "--report's folder")
    if args.write_clean:
        check_out_folder(args.write_clean, "--write-clean")
    train = {spec: load_source(spec, split=args.split) for spec in args.train}
    for spec, rows in train.items():
        check_text_rows(rows, spec)
    evals = dict(eval_texts(spec) for spec in args.eval)
    report = decontaminate(train, evals, ngram=args.ngram, threshold=args.threshold, mode=args.mode,
                           fields=args.fields, workers=args.workers)
    write_report(report, args.report)

    console = Console()
    params = report["parameters"]
    table = Table(title=f"decontamination ({params['mode']}, n={params['ngram']}, threshold={params['threshold']})")
    for col in ("train source", "eval set", "train rows", "contaminated", "rate", "eval hit", "eval rate"):
        table.add_column(col, justify="left" if "set" in col or "source" in col else "right")
    for s in report["summary"]:
        table.add_row(s["source"], s["eval_set"], str(s["train_rows"]), str(s["contaminated_rows"]),
                      f"{s['contaminated_rate']:.2%}", f"{s['eval_examples_hit']}/{s['eval_examples']}",
                      f"{s['eval_hit_rate']:.2%}")
    console.print(table)
    console.print(f"report: {args.report} ({report['seconds']['total']:.1f} s)")
    if args.write_clean:
        out_dir = Path(args.write_clean)
        used: set[Path] = set()
        for i, (spec, rows) in enumerate(train.items()):
            drop = flagged_rows(report, spec)
            target = clean_path(out_dir, spec)
            if target in used:  # two sources with one file name: number the later ones
                target = target.with_name(f"{i}_{target.name}")
            used.add(target)
            path = write_clean(filter_rows(rows, drop), target)
            console.print(f"clean: {path} ({len(rows) - len(drop)} of {len(rows)} rows kept)")
    return 0
