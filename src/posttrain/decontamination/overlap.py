"""Training-set decontamination against evaluation prompts, with evidence.

TÜLU 3 (Lambert et al. 2024, section 2.2, "Prompt decontamination") flags a training example when
it holds more than half of an evaluation example's 8-grams. Here, as there, the score of a
training text t against an evaluation example e is

    score(t, e) = |G(e) ∩ G(t)| / |G(e)|

with G(x) the set of distinct word n-grams of the normalised text x (lowercase, punctuation
removed, whitespace split). An evaluation example shorter than n words counts as one gram: the
whole word sequence, which then has to appear contiguously in t. A row is flagged when
score >= threshold (default 0.5; TÜLU 3 writes "more than 50%", `>=` keeps threshold=1.0 meaning
"contains the whole example").

Where this departs from open-instruct's `decontamination/search.py`
(https://github.com/allenai/open-instruct): no Elasticsearch server, the index is an in-memory
dict from n-gram to the eval example ids that hold it, so the score is a pure function you can
test; words come from a regex split, not a model tokenizer.

Three modes, one function each, all returning evidence (why a row was flagged, not only that):

- `ngram` (`NgramIndex`): the score above; evidence = matched n-grams and the overlapping spans.
- `exact` (`ExactIndex`): normalised-text equality; score is 1.0.
- `minhash` (`MinHashIndex`): near-duplicates by Jaccard similarity of word shingles, candidates
  from datasketch MinHashLSH, then the exact Jaccard of the candidates' shingle sets is the score.
  Jaccard penalises length, so a long training row that merely *contains* an eval prompt is not
  a near-duplicate: use `ngram` for containment.

Run it:

    from posttrain.decontamination import decontaminate, filter_rows, flagged_rows, write_clean
    report = decontaminate({"sft": rows}, {"gsm8k": gsm8k_prompts}, ngram=8, threshold=0.5)
    write_report(report, "runs/decon/report.json")
    write_clean(filter_rows(rows, flagged_rows(report, "sft")), "clean.jsonl")

Scale: the n-gram hot loop is set and dict operations in C (one `zip` builds a row's grams, one
dict-keys intersection finds the hits, a Counter counts them per eval id); only eval ids with a
hit are scored, and evidence is built afterwards for flagged rows alone. With `workers > 1` rows
are split into ranges over a forked process pool (no pickling of rows or index).
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "normalize_tokens",
    "row_text",
    "NgramIndex",
    "ExactIndex",
    "MinHashIndex",
    "Match",
    "decontaminate",
    "flagged_rows",
    "filter_rows",
    "write_report",
    "write_clean",
]

Row = dict | str
MODES = ("ngram", "exact", "minhash")
DEFAULT_MINHASH_SHINGLE = 5
SNIPPET_CHARS = 300

# ---------------------------------------------------------------------------------------------
# Text: normalisation and the text of one dataset row

# Arithmetic operators stay as tokens of their own: without them "7 + 2" and "7 - 2" would be the
# same text, and short math prompts would match each other.
_OPERATORS = "+-*/=<>^%"
_NON_WORD = re.compile(r"[^\w\s+\-*/=<>^%]|_")
_OPERATOR = re.compile(r"([+\-*/=<>^%])")
# The same rule for ASCII text as a translation table: str.translate is ~4x faster than the regex.
_ASCII_NON_WORD = str.maketrans({c: (f" {c} " if c in _OPERATORS else " ") for c in map(chr, range(128))
                                 if not (c.isalnum() or c.isspace())})


def normalize_tokens(text: str) -> list[str]:
    """Lowercase, keep arithmetic operators as tokens, replace other punctuation (anything
    neither a word character nor whitespace, and '_') by spaces, split on whitespace.

    >>> normalize_tokens("What's 2+2? Answer: 4.")
    ['what', 's', '2', '+', '2', 'answer', '4']
    """
    if text.isascii():
        return text.lower().translate(_ASCII_NON_WORD).split()
    return _OPERATOR.sub(r" \1 ", _NON_WORD.sub(" ", text.lower())).split()


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def _turns_text(value: Any, user_only: bool) -> str:
    """A string, or a message list joined (only the user turns when `user_only`)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(
            _content_text(m.get("content"))
            for m in value
            if isinstance(m, dict) and (not user_only or m.get("role") == "user")
        )
    if isinstance(value, dict) and "content" in value:
        return _content_text(value["content"])
    return ""


def _plain_text(value: Any) -> str:
    """Ground truths are strings or lists of strings; structured ones (IFEval specs) are skipped."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return ""


_KNOWN_COLUMNS = ("messages", "prompt", "text", "chosen", "rejected", "completion", "ground_truth")


def row_text(row: Row, fields: str = "all") -> str:
    """The text of one dataset row in any posttrain format.

    fields="all": every text column, in this order: `messages`, `prompt`, `text`, `chosen`,
    `rejected`, `completion`, `ground_truth` (message lists are their contents joined).
    fields="prompt": only what a model is asked: the user turns of `messages` / `prompt` (a
    string prompt whole), and `text` for plain language-modelling rows, which have no prompt.

    A bare string is its own text. A dict with none of those columns is an error.
    """
    if isinstance(row, str):
        return row
    if fields not in ("all", "prompt"):
        raise ValueError(f"fields must be 'all' or 'prompt'; got {fields!r}")
    if not isinstance(row, dict) or not any(k in row for k in _KNOWN_COLUMNS):
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"row has no text column (expected one of {', '.join(_KNOWN_COLUMNS)}); got {keys}")
    prompt_only = fields == "prompt"
    parts = [
        _turns_text(row.get("messages"), user_only=prompt_only),
        _turns_text(row.get("prompt"), user_only=prompt_only),
        _content_text(row.get("text")),
    ]
    if not prompt_only:
        parts += [
            _turns_text(row.get("chosen"), user_only=False),
            _turns_text(row.get("rejected"), user_only=False),
            _turns_text(row.get("completion"), user_only=False),
            _plain_text(row.get("ground_truth")),
        ]
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# N-grams


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """Distinct contiguous n-grams of `tokens` (empty when there are fewer than n tokens)."""
    if len(tokens) < n:
        return set()
    return set(zip(*[tokens[i:] for i in range(n)]))


def eval_grams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """An eval example's grams: its n-grams, or the whole sequence when shorter than n."""
    if not tokens:
        return set()
    if len(tokens) < n:
        return {tuple(tokens)}
    return ngrams(tokens, n)


def _overlap_snippet(tokens: Sequence[str], covered: Sequence[bool], limit: int = SNIPPET_CHARS) -> str:
    """The covered spans of `tokens`, joined by ' … ', cut at `limit` characters."""
    spans, cur = [], []
    for tok, hit in zip(tokens, covered):
        if hit:
            cur.append(tok)
        elif cur:
            spans.append(" ".join(cur))
            cur = []
    if cur:
        spans.append(" ".join(cur))
    text = " … ".join(spans)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Match:
    """Why one training text was matched to one eval example.

    score: the mode's score in [0, 1]; matched / total: grams (n-grams or shingles) of the eval
    example found in the training text, and all of them; ngrams: a few matched grams as text;
    snippet: the overlapping text (the eval example's covered spans).
    """

    eval_id: int
    score: float
    matched: int
    total: int
    ngrams: tuple[str, ...]
    snippet: str


class NgramIndex:
    """Maps every n-gram of the eval examples to the ids of the examples that hold it.

    The dict keys are the word tuples themselves: the dict hashes them, lookups are exact (no
    hash collisions), and the index can cross process boundaries (str hashes are salted per
    process, so raw hash ints would not).
    """

    def __init__(self, eval_texts: Sequence[str], n: int = 8):
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        self.n = n
        self.eval_tokens: list[list[str]] = [normalize_tokens(t) for t in eval_texts]
        self.sizes: list[int] = []  # distinct grams per eval example (the score's denominator)
        postings: dict[tuple[str, ...], list[int]] = {}
        short_lengths: set[int] = set()
        for eid, toks in enumerate(self.eval_tokens):
            grams = eval_grams(toks, n)
            self.sizes.append(len(grams))
            if 0 < len(toks) < n:
                short_lengths.add(len(toks))
            for g in grams:
                postings.setdefault(g, []).append(eid)
        self.postings: dict[tuple[str, ...], tuple[int, ...]] = {g: tuple(ids) for g, ids in postings.items()}
        # Training texts also yield grams of these lengths, so short eval examples can match.
        self.short_lengths: tuple[int, ...] = tuple(sorted(short_lengths))

    def __len__(self) -> int:
        return len(self.eval_tokens)

    def train_grams(self, tokens: Sequence[str]) -> set[tuple[str, ...]]:
        """A training text's grams: its n-grams, plus its L-grams for each short eval length L."""
        grams = ngrams(tokens, self.n)
        for length in self.short_lengths:
            if len(tokens) >= length:
                grams.update(zip(*[tokens[i:] for i in range(length)]))
        return grams

    def scores(self, train_text: str) -> dict[int, float]:
        """score(t, e) for every eval example e sharing at least one gram with t (the hot path)."""
        grams = self.train_grams(normalize_tokens(train_text))
        hits = self.postings.keys() & grams
        if not hits:
            return {}
        counts: Counter[int] = Counter()
        postings = self.postings
        for g in hits:
            counts.update(postings[g])
        sizes = self.sizes
        return {eid: c / sizes[eid] for eid, c in counts.items()}

    def evidence(self, train_text: str, eval_id: int) -> Match:
        """The matched grams of eval example `eval_id` in `train_text`, and the overlapping text."""
        grams = self.train_grams(normalize_tokens(train_text))
        toks = self.eval_tokens[eval_id]
        width = min(self.n, len(toks))
        covered = [False] * len(toks)
        matched: list[tuple[str, ...]] = []
        seen: set[tuple[str, ...]] = set()
        for i in range(len(toks) - width + 1):
            g = tuple(toks[i : i + width])
            if g in grams:
                covered[i : i + width] = [True] * width
                if g not in seen:
                    seen.add(g)
                    matched.append(g)
        total = self.sizes[eval_id]
        score = len(matched) / total if total else 0.0
        return Match(eval_id, score, len(matched), total, tuple(" ".join(g) for g in matched[:5]),
                     _overlap_snippet(toks, covered))

    def score(self, train_text: str) -> Match | None:
        """The best-matching eval example for `train_text` (highest score, then lowest id), with
        evidence; None when no gram is shared."""
        scores = self.scores(train_text)
        if not scores:
            return None
        best = max(scores, key=lambda e: (scores[e], -e))
        return self.evidence(train_text, best)


class ExactIndex:
    """Normalised-text equality: a dict from the normalised eval text to the ids holding it."""

    def __init__(self, eval_texts: Sequence[str]):
        self.keys: list[str] = [" ".join(normalize_tokens(t)) for t in eval_texts]
        table: dict[str, list[int]] = {}
        for eid, key in enumerate(self.keys):
            if key:
                table.setdefault(key, []).append(eid)
        self.table = {k: tuple(v) for k, v in table.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def scores(self, train_text: str) -> dict[int, float]:
        ids = self.table.get(" ".join(normalize_tokens(train_text)), ())
        return dict.fromkeys(ids, 1.0)

    def evidence(self, train_text: str, eval_id: int) -> Match:
        key = self.keys[eval_id]
        hit = key == " ".join(normalize_tokens(train_text))
        snippet = key if len(key) <= SNIPPET_CHARS else key[: SNIPPET_CHARS - 1] + "…"
        return Match(eval_id, float(hit), int(hit), 1, (), snippet if hit else "")


def shingles(tokens: Sequence[str], size: int) -> set[str]:
    """Word shingles of `size` words as strings (the whole text when shorter)."""
    if not tokens:
        return set()
    if len(tokens) < size:
        return {" ".join(tokens)}
    return {" ".join(g) for g in zip(*[tokens[i:] for i in range(size)])}


class MinHashIndex:
    """Near-duplicate search: MinHashLSH over word shingles, exact Jaccard on the candidates.

    `threshold` is the Jaccard threshold of the LSH (which sets its bands and rows) and the
    cut-off applied to the exact Jaccard. LSH can miss pairs just above the threshold; raising
    `num_perm` lowers that chance.
    """

    def __init__(self, eval_texts: Sequence[str], shingle: int = DEFAULT_MINHASH_SHINGLE,
                 threshold: float = 0.5, num_perm: int = 128, seed: int = 1):
        from datasketch import MinHash, MinHashLSH

        self.shingle = shingle
        self.num_perm = num_perm
        self.seed = seed
        self.eval_tokens = [normalize_tokens(t) for t in eval_texts]
        self.eval_shingles = [shingles(toks, shingle) for toks in self.eval_tokens]
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        template = MinHash(num_perm=num_perm, seed=seed)
        # Built once: MinHash() would otherwise redraw its permutations for every row.
        self._perms, self._scheme = template.permutations, template.scheme
        self._minhash_cls = MinHash
        for eid, sh in enumerate(self.eval_shingles):
            if sh:
                self.lsh.insert(eid, self._minhash(sh))

    def __len__(self) -> int:
        return len(self.eval_tokens)

    def _minhash(self, sh: Iterable[str]):
        m = self._minhash_cls(num_perm=self.num_perm, seed=self.seed, permutations=self._perms,
                              scheme=self._scheme)
        m.update_batch([s.encode("utf-8") for s in sh])
        return m

    def scores(self, train_text: str) -> dict[int, float]:
        sh = shingles(normalize_tokens(train_text), self.shingle)
        if not sh:
            return {}
        out = {}
        for eid in self.lsh.query(self._minhash(sh)):
            ev = self.eval_shingles[eid]
            out[eid] = len(ev & sh) / len(ev | sh)
        return out

    def evidence(self, train_text: str, eval_id: int) -> Match:
        train_toks = normalize_tokens(train_text)
        sh = shingles(train_toks, self.shingle)
        ev = self.eval_shingles[eval_id]
        shared = ev & sh
        union = ev | sh
        toks = self.eval_tokens[eval_id]
        width = min(self.shingle, len(toks))
        covered = [False] * len(toks)
        for i in range(len(toks) - width + 1):
            if " ".join(toks[i : i + width]) in shared:
                covered[i : i + width] = [True] * width
        return Match(eval_id, len(shared) / len(union) if union else 0.0, len(shared), len(ev),
                     tuple(sorted(shared)[:5]), _overlap_snippet(toks, covered))


# ---------------------------------------------------------------------------------------------
# Scanning training rows (pure: rows in, (row, eval id, score) out)


def scan_rows(index, rows: Sequence[Row], start: int, end: int, fields: str, threshold: float,
              set_of_eval: Sequence[int]) -> list[tuple[int, int, float]]:
    """For rows[start:end], the best eval example per eval set with score >= threshold.

    Returns (row index, eval id, score) triples; ties go to the lowest eval id.
    """
    # The loop allocates millions of short-lived, acyclic tuples; with the cyclic GC on, each
    # allocation burst makes it re-traverse the index's hundreds of thousands of tuples (~25%
    # of the time). Nothing here can form a cycle, so pause it for the scan.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _scan_rows(index, rows, start, end, fields, threshold, set_of_eval)
    finally:
        if gc_was_enabled:
            gc.enable()


def _scan_rows(index, rows, start, end, fields, threshold, set_of_eval) -> list[tuple[int, int, float]]:
    out = []
    for i in range(start, end):
        row = rows[i]
        text = row if isinstance(row, str) else row_text(row, fields)
        scores = index.scores(text)
        if not scores:
            continue
        best: dict[int, tuple[float, int]] = {}
        for eid, s in scores.items():
            if s >= threshold:
                k = set_of_eval[eid]
                if k not in best or (s, -eid) > (best[k][0], -best[k][1]):
                    best[k] = (s, eid)
        out.extend((i, eid, s) for s, eid in best.values())
    return out


# Worker state for the forked pool: set once per process by the pool initializer, read by
# `_scan_task`. Fork shares the parent's rows and index copy-on-write; nothing is pickled.
_WORKER: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _WORKER.update(state)


def _scan_task(task: tuple[str, int, int]) -> tuple[str, list[tuple[int, int, float]]]:
    source, start, end = task
    w = _WORKER
    return source, scan_rows(w["index"], w["sources"][source], start, end, w["fields"],
                             w["threshold"], w["set_of_eval"])


def _scan_all(index, train_sources: dict[str, Sequence[Row]], fields: str, threshold: float,
              set_of_eval: Sequence[int], workers: int, chunk: int) -> dict[str, list[tuple[int, int, float]]]:
    found: dict[str, list[tuple[int, int, float]]] = {name: [] for name in train_sources}
    tasks = [(name, s, min(s + chunk, len(rows)))
             for name, rows in train_sources.items() for s in range(0, len(rows), chunk)]
    if workers <= 1 or len(tasks) <= 1:
        for name, s, e in tasks:
            found[name].extend(scan_rows(index, train_sources[name], s, e, fields, threshold, set_of_eval))
        return found
    state = {"index": index, "sources": train_sources, "fields": fields, "threshold": threshold,
             "set_of_eval": set_of_eval}
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
        for name, triples in pool.imap_unordered(_scan_task, tasks):
            found[name].extend(triples)
    for triples in found.values():
        triples.sort()
    return found


# ---------------------------------------------------------------------------------------------
# The report


def _build_index(mode: str, texts: list[str], ngram: int, threshold: float):
    builders: dict[str, Callable[[], Any]] = {
        "ngram": lambda: NgramIndex(texts, n=ngram),
        "exact": lambda: ExactIndex(texts),
        "minhash": lambda: MinHashIndex(texts, shingle=ngram, threshold=threshold),
    }
    if mode not in builders:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return builders[mode]()


def decontaminate(
    train_sources: dict[str, Sequence[Row]],
    eval_sets: dict[str, Sequence[str]],
    ngram: int | None = None,
    threshold: float = 0.5,
    mode: str = "ngram",
    fields: str | None = None,
    workers: int | None = None,
    chunk: int = 20_000,
) -> dict[str, Any]:
    """Flag training rows that overlap evaluation examples; return a JSON-ready report.

    train_sources: name → rows (dicts in any posttrain format, or plain strings).
    eval_sets: name → eval texts (usually the prompts).
    ngram: n-gram size for `ngram` (default 8, as TÜLU 3), shingle size in words for `minhash`
        (default 5); unused by `exact`.
    threshold: flag when score >= threshold (share of eval n-grams for `ngram`, Jaccard for
        `minhash`; `exact` scores are 1.0).
    fields: which text of a row to compare (`row_text`): default "all" for `ngram`/`minhash`,
        "prompt" for `exact` (the full conversation never equals a prompt).
    workers: processes (forked pool); default: all cores when there are over 50 000 rows.

    Report: `parameters`; `eval_sets` (sizes); `sources[name]` with `rows`, `contaminated_rows`
    and `flagged` (one entry per (row, eval set): row, eval_set, eval_index, score,
    matched/total grams, a few matched ngrams, snippet of the overlapping text); `summary` (one
    entry per training source × eval set: contaminated rows and rate, eval examples hit and
    rate); `seconds`.
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    if ngram is None:
        ngram = DEFAULT_MINHASH_SHINGLE if mode == "minhash" else 8
    if fields is None:
        fields = "prompt" if mode == "exact" else "all"
    if fields not in ("all", "prompt"):
        raise ValueError(f"fields must be 'all' or 'prompt'; got {fields!r}")
    total_rows = sum(len(rows) for rows in train_sources.values())
    if workers is None:
        workers = (os.cpu_count() or 1) if total_rows > 50_000 else 1
    if "fork" not in multiprocessing.get_all_start_methods():
        workers = 1

    # --- one index over every eval set; set_of_eval maps a global eval id to its set
    set_names = list(eval_sets)
    texts: list[str] = []
    set_of_eval: list[int] = []
    offsets: list[int] = []
    for k, name in enumerate(set_names):
        offsets.append(len(texts))
        texts.extend(eval_sets[name])
        set_of_eval.extend([k] * len(eval_sets[name]))
    index = _build_index(mode, texts, ngram, threshold)
    t_index = time.perf_counter() - t0

    # --- scan (parallel), then evidence for the flagged rows only
    found = _scan_all(index, train_sources, fields, threshold, set_of_eval, workers, chunk)
    sources: dict[str, Any] = {}
    hit_rows: dict[tuple[str, str], set[int]] = {}
    hit_evals: dict[tuple[str, str], set[int]] = {}
    for name, triples in found.items():
        rows = train_sources[name]
        flagged = []
        for i, eid, s in triples:
            row = rows[i]
            ev = index.evidence(row if isinstance(row, str) else row_text(row, fields), eid)
            set_name = set_names[set_of_eval[eid]]
            local = eid - offsets[set_of_eval[eid]]
            flagged.append({"row": i, "eval_set": set_name, "eval_index": local, "score": round(s, 6),
                            "matched": ev.matched, "total": ev.total, "ngrams": list(ev.ngrams),
                            "snippet": ev.snippet})
            hit_rows.setdefault((name, set_name), set()).add(i)
            hit_evals.setdefault((name, set_name), set()).add(local)
        sources[name] = {"rows": len(rows), "contaminated_rows": len({f["row"] for f in flagged}),
                         "flagged": flagged}

    summary = []
    for name, rows in train_sources.items():
        for set_name in set_names:
            n_rows = len(hit_rows.get((name, set_name), ()))
            n_evals = len(hit_evals.get((name, set_name), ()))
            n_eval = len(eval_sets[set_name])
            summary.append({"source": name, "eval_set": set_name, "train_rows": len(rows),
                            "contaminated_rows": n_rows, "contaminated_rate": n_rows / len(rows) if rows else 0.0,
                            "eval_examples": n_eval, "eval_examples_hit": n_evals,
                            "eval_hit_rate": n_evals / n_eval if n_eval else 0.0})
    seconds = time.perf_counter() - t0
    return {
        "parameters": {"mode": mode, "ngram": ngram, "threshold": threshold, "fields": fields,
                       "workers": workers},
        "eval_sets": {name: {"examples": len(eval_sets[name])} for name in set_names},
        "sources": sources,
        "summary": summary,
        "seconds": {"index": round(t_index, 3), "total": round(seconds, 3),
                    "rows_per_second": round(total_rows / seconds, 1) if seconds > 0 else None},
    }


def flagged_rows(report: dict[str, Any], source: str) -> list[int]:
    """Sorted distinct row indices of `source` flagged in `report`."""
    return sorted({f["row"] for f in report["sources"][source]["flagged"]})


def filter_rows(rows: Sequence[Row], flagged_indices: Iterable[int]) -> list[Row]:
    """`rows` without the flagged indices, order kept."""
    drop = set(flagged_indices)
    return [r for i, r in enumerate(rows) if i not in drop]


# ---------------------------------------------------------------------------------------------
# I/O (atomic: write a temp file beside the target, then os.replace)


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the report as indented JSON, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return _atomic_write(path, write)


def write_clean(rows: Sequence[Row], path: str | os.PathLike) -> Path:
    """Write rows in the format named by the suffix: .jsonl (one JSON object a line), .json (one
    array), .parquet (pyarrow). Plain-string rows are written as {"text": ...}."""
    records = [{"text": r} if isinstance(r, str) else r for r in rows]
    suffix = Path(path).suffix.lower()

    def write_jsonl(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(records, f, ensure_ascii=False)

    def write_parquet(tmp: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), tmp)

    writers = {".jsonl": write_jsonl, ".json": write_json, ".parquet": write_parquet}
    if suffix not in writers:
        raise ValueError(f"write_clean writes .jsonl, .json or .parquet; got {path!s}")
    return _atomic_write(path, writers[suffix])
