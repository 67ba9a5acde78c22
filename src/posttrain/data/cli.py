"""``posttrain data``: dataset tools.

- ``inspect``: sizes, lengths, duplicates, language, contamination (:mod:`posttrain.data.inspect`);
- ``ai-feedback``: preference pairs from several models' completions rated by an LM judge
  (:mod:`posttrain.judges.feedback`, docs/judges.md);
- ``select``: the pool rows nearest to a target set, or the best-rated ones
  (:mod:`posttrain.data.select`, docs/data_selection.md)."""

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
    _add_ai_feedback(sub)
    _add_select(sub)
    return p


SELECT_DESCRIPTION = """\
Choose pool rows to train on (docs/data_selection.md). Two modes:

- nearest neighbours (--target FILE --k N; Ivison et al. 2022): embed the prompt of every pool and
  target row (the embedded MiniLM), take each target row's nearest pool rows by cosine similarity,
  merged round by round (every target's 1st neighbour, then every 2nd, ...) until k rows;
- rating (--rate-with SPEC --keep N|FRACTION; QuRating-like): score every row's response with a
  reward model, a verifier or an LM judge and keep the best.
"""

SELECT_EPILOG = """\
Examples:
  posttrain data select --pool pool.jsonl --target target.jsonl --k 1000 --out selected.jsonl
  posttrain data select --pool pool.jsonl --rate-with runs/rm/model --keep 0.25 --out best.jsonl
  posttrain sft data=selected.jsonl out=runs/sft-selected

Rows are written unchanged (a .jsonl pool: its lines byte for byte), in pool order; OUT's sidecar
(selected.selection.jsonl) gives each row's pool line, id column, score, and the target that chose it.
"""


def _add_select(sub) -> None:
    q = sub.add_parser("select", help="pool rows nearest to a target set (cross-task neighbours) or best-rated",
                       description=SELECT_DESCRIPTION, epilog=SELECT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--pool", required=True, help="the rows to choose from (.jsonl/.json/.parquet, builtin:NAME, hub)")
    q.add_argument("--out", required=True, help="output .jsonl of the selected rows (+ a .selection.jsonl sidecar)")
    q.add_argument("--target", default=None, help="nearest-neighbour mode: unlabelled rows of the target task")
    q.add_argument("--k", type=int, default=None, help="nearest-neighbour mode: how many pool rows to select")
    q.add_argument("--search", choices=("exact", "approximate"), default="exact",
                   help="exact (chunked matrix product, default) or approximate (inverted-file index)")
    q.add_argument("--nprobe", type=int, default=8, help="approximate search: lists probed per target row (default 8)")
    q.add_argument("--encoder", default="minilm", help="minilm (default), a local encoder folder, or hash[:DIM]")
    q.add_argument("--field", default=None,
                   help="column holding the text to embed (default: prompt, else the first user turn of messages)")
    q.add_argument("--target-field", default=None, help="the same for the target rows (default: --field's rule)")
    q.add_argument("--rate-with", default=None,
                   help="rating mode: a reward-model folder, verifier[:NAME], or an LM judge (local:MODEL, URL@MODEL)")
    q.add_argument("--keep", default=None, help="rating mode: rows to keep, a count (500) or a fraction (0.25)")
    q.add_argument("--no-cache", action="store_true", help="embed again even when cached embeddings exist")


def _select(args) -> int:
    from posttrain.data.formats import DataError
    from posttrain.data.select import (keep_count, neighbour_selection, rating_scores, rating_selection,
                                       write_selection)
    from posttrain.data.sources import load_source

    if (args.target is None) == (args.rate_with is None):
        raise DataError("give either --target FILE --k N (nearest neighbours) or --rate-with SPEC --keep N (rating)")
    if args.target is not None and (args.k is None or args.keep is not None):
        raise DataError("nearest-neighbour mode takes --k N (not --keep)")
    if args.rate_with is not None and (args.keep is None or args.k is not None):
        raise DataError("rating mode takes --keep N or --keep FRACTION (not --k)")
    pool = load_source(args.pool)
    target = None
    if args.target is not None:
        target = load_source(args.target)
        chosen = neighbour_selection(pool, target, args.k, encoder=args.encoder, search=args.search,
                                     field=args.field, target_field=args.target_field, nprobe=args.nprobe,
                                     cache=not args.no_cache, pool_source=args.pool, target_source=args.target)
    else:
        keep_count(args.keep, len(pool))   # before the judge loads
        chosen = rating_selection(rating_scores(pool, args.rate_with, args.pool), args.keep)
    stats = write_selection(pool, chosen, args.out, pool_path=args.pool, target=target)
    print(f"{stats['rows']} of {len(pool)} pool rows -> {stats['out']} (ids and scores: {stats['sidecar']})")
    return 0


AI_FEEDBACK_EPILOG = """\
Example:
  posttrain data ai-feedback --prompts prompts.jsonl --models runs/sft/model smollm2-135m-instruct \\
      --judge http://localhost:8000/v1@Qwen/Qwen2.5-7B-Instruct --out pairs.jsonl
  posttrain dpo data=pairs.jsonl model=runs/sft/model out=runs/dpo

  posttrain data ai-feedback --prompts builtin:arithmetic_rlvr --models runs/sft/model runs/sft/model \
      --temperatures 0.7 1.0 --judge verifier --out pairs.jsonl

Judges: local:MODEL (a local causal LM) or URL@MODEL (an OpenAI-compatible server such as vllm
serve; key from $OPENAI_API_KEY or --api-key-env; replies cached on disk) rate with a rubric;
verifier / verifier:NAME score against each prompt row's ground_truth (its verifier column names
the verifier); any other spec is a reward model.
"""


def _add_ai_feedback(sub) -> None:
    from posttrain.judges import feedback

    q = sub.add_parser("ai-feedback", help="preference pairs: several models answer, a judge rates (UltraFeedback)",
                       description=feedback.__doc__.replace("``", ""), epilog=AI_FEEDBACK_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--prompts", required=True,
                   help="jsonl/json/parquet (or builtin:NAME) with 'prompt' (string or messages) or 'messages'")
    q.add_argument("--models", nargs="+", required=True,
                   help="model specs that answer (two or more; the same spec twice samples it twice)")
    q.add_argument("--judge", required=True,
                   help="local:MODEL, http://HOST:PORT/v1@MODEL, verifier[:NAME] or a reward-model folder")
    q.add_argument("--out", required=True, help="output .jsonl of preference rows")
    q.add_argument("--temperatures", type=float, nargs="+", default=None,
                   help="sampling temperature, one for all models or one per model (default 0.8; 0 = greedy)")
    q.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    q.add_argument("--max-new-tokens", type=int, default=256, help="completion length budget (default 256)")
    q.add_argument("--seed", type=int, default=0, help="sampling and rejected-pick seed (default 0)")
    q.add_argument("--batch-size", type=int, default=8, help="prompts per generate / judge call (default 8)")
    q.add_argument("--judge-max-new-tokens", type=int, default=128, help="local judge's reply budget (default 128)")
    q.add_argument("--judge-score-mode", choices=("generate", "expected"), default="generate",
                   help="local judge: parse a generated rating (default), or the probability-weighted rating "
                        "(always a score; for small judges)")
    q.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the HTTP judge's API key (default OPENAI_API_KEY)")
    q.add_argument("--timeout", type=float, default=60.0, help="HTTP judge: seconds per request (default 60)")
    q.add_argument("--max-retries", type=int, default=3, help="HTTP judge: retries on timeouts / 5xx (default 3)")
    q.add_argument("--cache-dir", default=None, help="HTTP judge reply cache (default $POSTTRAIN_HOME/judge_cache)")
    q.add_argument("--workers", type=int, default=4, help="HTTP judge: concurrent requests (default 4)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")


def _ai_feedback(args) -> int:
    from rich.console import Console

    from posttrain.judges.feedback import ai_feedback

    judge_options = {"max_new_tokens": args.judge_max_new_tokens, "score_mode": args.judge_score_mode,
                     "api_key_env": args.api_key_env,
                     "timeout": args.timeout, "max_retries": args.max_retries, "cache_dir": args.cache_dir,
                     "workers": args.workers}
    stats = ai_feedback(args.prompts, args.models, args.judge, args.out, temperatures=args.temperatures,
                        seed=args.seed, max_new_tokens=args.max_new_tokens, top_p=args.top_p,
                        batch_size=args.batch_size, judge_options=judge_options, progress=not args.no_progress)
    console = Console()
    console.print(f"{stats['rows']} preference rows from {stats['prompts']} prompts -> {stats['out']} "
                  f"(skipped: {stats['skipped_tie']} ties, {stats['skipped_unrated']} with < 2 ratings, "
                  f"{stats['skipped_identical']} identical; {stats['judge_failures']}/{stats['judged']} judge "
                  f"replies unreadable, {stats['empty_completions']} empty completions)")
    console.print(f"time: sampling {stats['seconds_sampling']:.1f}s, judging {stats['seconds_judging']:.1f}s")
    for raw in stats["failure_examples"]:
        console.print(f"[dim]unreadable judge reply: {raw[:160]!r}[/dim]")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ai-feedback":
        return _ai_feedback(args)
    if args.command == "select":
        return _select(args)
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
