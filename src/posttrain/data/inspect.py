"""``posttrain data inspect SRC``: what a dataset holds before you train on it.

    posttrain data inspect builtin:arithmetic_sft --out runs/inspect-arith

Reports, for one source (``builtin:…``, a local .jsonl/.json/.parquet, or a hub name):

- rows, columns and the row kind (sft ``messages``, preference ``prompt``/``chosen``/``rejected``,
  rlvr ``ground_truth``, plain ``text``);
- token lengths of each row's full text (min, mean, p50, p90, p99, max) with the tokenizer of
  ``--tokenizer`` (default: the embedded SmolLM2 tokenizer; whitespace words when none loads);
- turns per conversation (messages, or prompt + chosen turns);
- exact duplicates (equal normalised text) and near duplicates (MinHash LSH on 5-word shingles,
  candidates at LSH threshold 0.5, kept when their exact Jaccard >= 0.8; the index of
  ``posttrain decontaminate --mode minhash``);
- languages (langdetect, ``DetectorFactory.seed = 0``, on a seeded sample of rows);
- contamination against the evaluation tasks that load here (TÜLU 3's 8-gram rule).

With ``--out DIR`` it writes ``DIR/report.md``, ``DIR/report.json`` and ``DIR/lengths.png``.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from posttrain.decontamination.overlap import MinHashIndex, decontaminate, normalize_tokens, row_text

__all__ = ["inspect_rows", "format_markdown", "plot_lengths"]

NEAR_DUP_THRESHOLD = 0.8


def _kind(row: dict) -> str:
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "ground_truth" in row:
        return "rlvr"
    if "messages" in row:
        return "sft"
    return "text" if "text" in row else "other"


def _turns(row: dict) -> int:
    n = 0
    for key in ("messages", "prompt", "chosen"):
        value = row.get(key)
        n += len(value) if isinstance(value, list) else (1 if isinstance(value, str) and value else 0)
    return n


def _quantiles(values: list[int]) -> dict:
    if not values:
        return {}
    xs = sorted(values)

    def q(p: float) -> int:
        return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]

    return {"min": xs[0], "mean": round(sum(xs) / len(xs), 1), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
            "max": xs[-1]}


def _lengths(texts: list[str], tokenizer_spec: str | None) -> tuple[list[int], str]:
    if tokenizer_spec != "whitespace":
        try:
            from posttrain.models import load_tokenizer

            spec = tokenizer_spec or "smollm2-135m-instruct"
            tok = load_tokenizer(spec)
            ids = tok(texts, add_special_tokens=False)["input_ids"]
            return [len(x) for x in ids], f"tokens ({spec})"
        except Exception as e:  # no embedded model installed, or an unloadable spec: fall back
            if tokenizer_spec is not None:
                from posttrain.models import ModelError

                raise ModelError(f"cannot load tokenizer {tokenizer_spec!r}: {e}") from None
    return [len(t.split()) for t in texts], "whitespace words"


def _duplicates(texts: list[str]) -> dict:
    norm = [" ".join(normalize_tokens(t)) for t in texts]
    counts = Counter(norm)
    exact = sum(c - 1 for c in counts.values() if c > 1)
    unique = list(dict.fromkeys(n for n in norm if n))
    # LSH at a lower threshold than the cut-off: candidates just above 0.8 are found reliably, and
    # the exact Jaccard of each candidate then decides.
    index = MinHashIndex(unique, threshold=NEAR_DUP_THRESHOLD - 0.3)
    pairs = set()
    for i, text in enumerate(unique):
        for j, score in index.scores(text).items():
            if j != i and score >= NEAR_DUP_THRESHOLD:
                pairs.add((min(i, j), max(i, j)))
    near_rows = len({k for p in pairs for k in p})
    examples = [[unique[i][:120], unique[j][:120]] for i, j in sorted(pairs)[:3]]
    return {"exact_duplicate_rows": exact, "near_duplicate_pairs": len(pairs), "near_duplicate_rows": near_rows,
            "near_threshold": NEAR_DUP_THRESHOLD, "near_examples": examples}


def _languages(texts: list[str], sample: int, seed: int) -> dict:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    rng = random.Random(seed)
    chosen = rng.sample(texts, min(sample, len(texts)))
    langs: Counter = Counter()
    for t in chosen:
        try:
            langs[detect(t[:2000])] += 1
        except LangDetectException:
            langs["unknown"] += 1
    return {"sampled": len(chosen), "counts": dict(langs.most_common())}


def _eval_prompts() -> tuple[dict[str, list[str]], dict[str, str]]:
    """Prompts of every evaluation task that loads here; why the others were skipped."""
    from posttrain.evaluation.tasks import SUITES, task_prompts

    prompts, skipped = {}, {}
    for name in SUITES["dev"] + SUITES["unseen"]:
        if name == "winrate":  # the ifeval_builtin prompts again
            continue
        try:
            prompts[name] = task_prompts(name)
        except Exception as e:  # hub sets offline, a missing optional package
            skipped[name] = f"{type(e).__name__}: {str(e).split('. ')[0]}"
    return prompts, skipped


def inspect_rows(rows: list[dict], tokenizer: str | None = None, language_sample: int = 200, seed: int = 0,
                 contamination: bool = True) -> dict:
    """The report of :func:`main` as a dict."""
    texts = [row_text(r) for r in rows]
    lengths, unit = _lengths(texts, tokenizer)
    columns = Counter(k for r in rows for k in r)
    report = {
        "rows": len(rows),
        "columns": {k: v for k, v in columns.most_common()},
        "kinds": dict(Counter(_kind(r) for r in rows).most_common()),
        "length_unit": unit,
        "lengths": _quantiles(lengths),
        "turns": _quantiles([_turns(r) for r in rows]),
        "duplicates": _duplicates(texts),
        "languages": _languages([t for t in texts if t.strip()], language_sample, seed),
    }
    report["_lengths"] = lengths
    if contamination:
        prompts, skipped = _eval_prompts()
        found = decontaminate({"data": rows}, prompts) if prompts else {"summary": []}
        report["contamination"] = {
            "rule": "8-gram share >= 0.5 (TÜLU 3)",
            "sets": [{k: s[k] for k in ("eval_set", "contaminated_rows", "contaminated_rate", "eval_examples",
                                        "eval_examples_hit")} for s in found["summary"]],
            "skipped": skipped,
        }
    return report


def plot_lengths(lengths: list[int], unit: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#4C72B0")
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel("rows")
    ax.set_title("row length distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_markdown(source: str, report: dict, plot: str | None = None) -> str:
    L = report["lengths"]
    d = report["duplicates"]
    lines = [f"# Data inspection: `{source}`", "",
             f"- rows: {report['rows']}",
             f"- kinds: {', '.join(f'{k} ({v})' for k, v in report['kinds'].items())}",
             f"- columns: {', '.join(f'{k} ({v})' for k, v in report['columns'].items())}",
             "", f"## Lengths ({report['length_unit']})", "",
             "| min | mean | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|",
             f"| {L.get('min')} | {L.get('mean')} | {L.get('p50')} | {L.get('p90')} | {L.get('p99')} | {L.get('max')} |"]
    if plot:
        lines += ["", f"![lengths]({plot})"]
    T = report["turns"]
    lines += ["", "## Turns", "", f"min {T.get('min')}, mean {T.get('mean')}, max {T.get('max')}",
              "", "## Duplicates", "",
              f"- exact duplicate rows (beyond the first copy): {d['exact_duplicate_rows']}",
              f"- near-duplicate pairs (MinHash, Jaccard >= {d['near_threshold']}): {d['near_duplicate_pairs']} "
              f"({d['near_duplicate_rows']} rows)"]
    lines += [f"  - `{a}` ~ `{b}`" for a, b in d["near_examples"]]
    langs = report["languages"]
    lines += ["", f"## Languages (langdetect, {langs['sampled']} sampled rows)", "",
              ", ".join(f"{k}: {v}" for k, v in langs["counts"].items()) or "none"]
    if "contamination" in report:
        c = report["contamination"]
        lines += ["", f"## Contamination against evaluation tasks ({c['rule']})", "",
                  "| eval task | contaminated rows | rate | eval examples hit |", "|---|---|---|---|"]
        lines += [f"| {s['eval_set']} | {s['contaminated_rows']} | {s['contaminated_rate']:.2%} | "
                  f"{s['eval_examples_hit']}/{s['eval_examples']} |" for s in c["sets"]]
        lines += [f"- skipped {k}: {v}" for k, v in c["skipped"].items()]
    return "\n".join(lines) + "\n"
