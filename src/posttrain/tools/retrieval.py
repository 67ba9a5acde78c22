"""The ``retrieval`` tool: BM25 search over a local corpus file (no network, no index server).

A corpus is a ``.jsonl`` file with a ``text`` field per line (``title`` optional) or any other
text file with one passage per non-empty line. Scoring is Okapi BM25 (Robertson & Zaragoza 2009,
"The Probabilistic Relevance Framework: BM25 and Beyond", eq. 3.15) with the usual k1 = 1.5,
b = 0.75 and the non-negative idf log(1 + (N - n + 0.5) / (n + 0.5)) of Lucene; tokens are
lower-cased runs of letters and digits.

Example::

    >>> search = make_retrieval("corpus.jsonl")
    >>> search("capital of France")
    '[1] Paris is the capital of France. …'
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Callable

__all__ = ["BM25Index", "load_corpus", "make_retrieval", "CorpusError"]

TOKEN = re.compile(r"[a-z0-9]+")


class CorpusError(ValueError):
    """A corpus file the retrieval tool cannot read; the message names the file and line."""


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def load_corpus(path: str | Path) -> list[str]:
    """The passages of a corpus file (module docstring), in file order."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"retrieval_corpus={str(path)!r}: no such file; give a .jsonl file with a 'text' "
                          "field per line or a text file with one passage per line")
    passages = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{number}: not valid JSON ({e.msg}); each line must be an object "
                                  "with a 'text' field") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise CorpusError(f"{path}:{number}: field 'text' is missing or not a string; each line must "
                                  "be an object like {\"text\": \"…\"}")
            passages.append(f"{row['title']}: {row['text']}" if isinstance(row.get("title"), str) else row["text"])
        else:
            passages.append(line.strip())
    if not passages:
        raise CorpusError(f"{path}: the corpus has no passages")
    return passages


class BM25Index:
    """Okapi BM25 over ``passages`` (module docstring)."""

    def __init__(self, passages: list[str], k1: float = 1.5, b: float = 0.75):
        self.passages, self.k1, self.b = passages, k1, b
        self.counts = [Counter(tokens(p)) for p in passages]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.mean_length = sum(self.lengths) / max(len(passages), 1) or 1.0
        frequency = Counter(t for c in self.counts for t in c)
        n = len(passages)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    def scores(self, query: str) -> list[float]:
        terms = tokens(query)
        out = []
        for counts, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.mean_length)
            out.append(sum(self.idf.get(t, 0.0) * counts[t] * (self.k1 + 1) / (counts[t] + norm)
                           for t in terms if counts[t]))
        return out

    def search(self, query: str, k: int = 3) -> list[tuple[int, float]]:
        """The ``k`` best (passage index, score) pairs with a positive score, best first."""
        ranked = sorted(enumerate(self.scores(query)), key=lambda item: (-item[1], item[0]))
        return [(i, s) for i, s in ranked[:k] if s > 0]


def make_retrieval(corpus: str | Path, k: int = 3) -> Callable[[str], str]:
    """The ``retrieval`` tool over ``corpus``: a function with a docstring and type hints, so its
    JSON schema comes from ``get_json_schema`` like any user tool."""
    index = BM25Index(load_corpus(corpus))

    def retrieval(query: str) -> str:
        """Search the document collection and return the most relevant passages.

        Args:
            query: What to search for, in a few words.
        """
        hits = index.search(query, k)
        if not hits:
            return "no passage matches the query"
        return "\n".join(f"[{rank}] {index.passages[i]}" for rank, (i, _) in enumerate(hits, start=1))

    return retrieval
