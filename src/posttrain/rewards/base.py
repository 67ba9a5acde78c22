"""The verifier interface and its explicit registry.

A verifier turns ``(prediction, ground_truth)`` into a :class:`VerificationResult` whose
``score`` lies in [0, 1]. The same registry serves RLVR rewards and evaluation metrics, so what is
optimised is what is measured. Verifiers register themselves by name with :func:`register`;
unknown names are errors that list what exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["VerificationResult", "Verifier", "register", "get_verifier", "list_verifiers"]


@dataclass
class VerificationResult:
    """What a verifier returns. ``score`` in [0, 1]; ``extracted`` is the answer it read off the
    prediction (None when nothing could be extracted); ``details`` is free-form evidence
    (per-instruction results, per-test outcomes, error text)."""

    score: float
    extracted: Any = None
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 <= float(self.score) <= 1.0:
            raise ValueError(f"verifier score must lie in [0, 1], got {self.score}")
        self.score = float(self.score)


class Verifier:
    """Base class: subclasses set ``name`` and implement ``__call__``."""

    name: str = ""
    # For the Reward Report (rewards/describe.py): what the score measures, and whether it takes
    # values strictly between 0 and 1 (None: not declared, and the report claims neither).
    measures: str = ""
    partial_credit: bool | None = None
    # True for a graded similarity to a reference (ROUGE, BLEU, embeddings): the score is how close
    # the completion is to the reference text, not whether a check accepts it, and the Reward
    # Report says so instead of "accepted / correct".
    similarity: bool = False

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:  # pragma: no cover
        raise NotImplementedError

    def score_batch(self, predictions: list[str], ground_truths: list[Any]) -> list[VerificationResult]:
        """Score many pairs at once; the default calls the verifier once per pair. Verifiers that
        batch better (one encoder forward for every pair) override it."""
        return [self(p, g) for p, g in zip(predictions, ground_truths, strict=True)]

    def check_ground_truth(self, ground_truth: Any) -> None:
        """Raise ValueError (saying what is wrong) when no prediction could be scored against
        ``ground_truth``. Trainers call it on every row before the model loads, so a bad row
        fails the run at once instead of at the step that samples it."""


_REGISTRY: dict[str, Callable[[], Verifier]] = {}


def register(name: str):
    """Class decorator: ``@register("gsm8k")`` makes ``get_verifier("gsm8k")`` build it."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"verifier {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def get_verifier(name: str, **options) -> Verifier:
    """Build the verifier registered under ``name`` (options go to its constructor)."""
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown verifier {name!r}; known verifiers: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name](**options)


def list_verifiers() -> list[str]:
    return sorted(_REGISTRY)
