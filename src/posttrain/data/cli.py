"""``posttrain data``: inspect a dataset (sizes, lengths, duplicates, language, contamination).
The measurements are :mod:`posttrain.data.inspect`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from posttrain.data import inspect as inspect_module
from posttrain.data.inspect import format_markdown, inspect_rows, plot_lengths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain data", description="dataset tools",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("inspect", help="sizes, lengths, turns, duplicates, language, contamination",
                       description=inspect_module.__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("source", help="builtin:name[:split], a local .jsonl/.json/.parquet, or a hub dataset")
    q.add_argument("--split", default=None, help="split for hub sources (default train)")
    q.add_argument("--limit", type=int, default=None, help="inspect only the first N rows")
    q.add_argument("--tokenizer", default=None,
                   help="model spec whose tokenizer measures lengths (default: the embedded one; 'whitespace' for words)")
    q.add_argument("--language-sample", type=int, default=200, help="rows sampled for language detection (default 200)")
    q.add_argument("--no-contamination", action="store_true", help="skip the check against evaluation tasks")
    q.add_argument("--out", default=None, help="folder for report.md, report.json and lengths.png")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.markdown import Markdown

    from posttrain.data.sources import load_source

    rows = load_source(args.source, split=args.split, n=args.limit)
    report = inspect_rows(rows, tokenizer=args.tokenizer, language_sample=args.language_sample,
                          contamination=not args.no_contamination)
    lengths = report.pop("_lengths")
    plot = None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot_lengths(lengths, report["length_unit"], out / "lengths.png")
        plot = "lengths.png"
        (out / "report.json").write_text(json.dumps({"source": args.source, **report}, indent=2) + "\n")
    text = format_markdown(args.source, report, plot)
    if args.out:
        (Path(args.out) / "report.md").write_text(text)
    Console().print(Markdown(text))
    if args.out:
        Console().print(f"written: {args.out}/report.md, report.json, lengths.png")
    return 0
