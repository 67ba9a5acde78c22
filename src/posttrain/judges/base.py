"""The judge interface: what every LM judge (local model, HTTP server) offers.

- ``score(prompt_messages, completion) -> JudgeScore``: a rubric score (1-10 by default) read off
  the judge's reply; ``score`` is NaN when the reply held no readable score (a recorded failure,
  never an exception), and ``raw`` keeps the reply so a failure can be inspected.
- ``score_many(prompts, completions) -> list[JudgeScore]``: the same, batched (the way callers
  should use it: a local judge generates a batch at once, an HTTP judge sends requests in threads).
- ``compare(prompt_messages, a, b) -> float``: P(a is better than b), judged both ways round
  (:func:`swap_averaged`), because LM judges favour one position (usually the first) whatever
  the answers are. NaN when neither order gave a readable verdict. ``compare_many`` batches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

__all__ = ["Judge", "JudgeError", "JudgeScore", "swap_averaged"]


class JudgeError(RuntimeError):
    """A judge that cannot answer at all (server unreachable after retries, a 4xx reply, a reply
    that is not the API's JSON). An unreadable *score* is not an error: see :class:`JudgeScore`."""


@dataclass(frozen=True)
class JudgeScore:
    """One rubric judgement: ``score`` (NaN when unreadable) and the judge's ``raw`` reply."""

    score: float
    raw: str

    @property
    def ok(self) -> bool:
        return not math.isnan(self.score)


@runtime_checkable
class Judge(Protocol):
    spec: str

    def score(self, prompt_messages: list[dict], completion: str) -> JudgeScore: ...

    def score_many(self, prompts: list[list[dict]], completions: list[str]) -> list[JudgeScore]: ...

    def compare(self, prompt_messages: list[dict], a: str, b: str) -> float: ...

    def compare_many(self, prompts: list[list[dict]], a: list[str], b: list[str]) -> list[float]: ...


def swap_averaged(prefers_first: Callable[[str, str], float | None], a: str, b: str) -> float:
    """P(a better than b) from a one-order verdict ``prefers_first(first, second)`` (P(first
    better), or None when unreadable), asked in both orders and averaged:
    ``(p(a, b) + 1 - p(b, a)) / 2``. A judge that always picks the first position gives 0.5 for
    any pair instead of 1.0. With one order unreadable the other is used alone; with both, NaN."""
    forward, backward = prefers_first(a, b), prefers_first(b, a)
    votes = [p for p in (forward, None if backward is None else 1.0 - backward) if p is not None]
    return sum(votes) / len(votes) if votes else math.nan
