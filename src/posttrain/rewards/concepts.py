"""``concept_coverage``: the share of a concept set that a sentence uses (CommonGen's coverage).

CommonGen (Lin et al. 2020, "CommonGen: A Constrained Text Generation Challenge for Generative
Commonsense Reasoning", section 4) reports *coverage*: the percentage of input concepts present in
the generated sentence after lemmatisation. Here a concept counts as used when some word of the
prediction has the same Porter stem (the stemmer ``rouge`` uses, so "throws" and "throwing" match
"throw"); irregular forms a stemmer cannot join ("ran" for "run") are not matched, a departure
from the paper's lemmatiser.

Example::

    ground_truth: ["dog", "frisbee", "catch", "park"]      (or "dog, frisbee, catch, park")
    prediction:   "The dog catches a frisbee."
    -> dog, frisbee, catch used; park missing: score 3/4 = 0.75
"""

from __future__ import annotations

import functools
import re
from typing import Any

from posttrain.rewards.base import VerificationResult, Verifier, register

__all__ = ["ConceptCoverageVerifier", "concept_list"]


def concept_list(ground_truth: Any) -> list[str]:
    """The concepts of ``ground_truth``: a list of words or a comma-separated string."""
    if isinstance(ground_truth, str):
        concepts = [c.strip() for c in ground_truth.split(",")]
    elif isinstance(ground_truth, (list, tuple)) and all(isinstance(c, str) for c in ground_truth):
        concepts = [c.strip() for c in ground_truth]
    else:
        raise ValueError(f"concept_coverage ground truth must be a list of concept words or a comma-separated "
                         f"string, got {type(ground_truth).__name__} ({ground_truth!r:.80})")
    concepts = [c for c in concepts if c]
    if not concepts:
        raise ValueError("concept_coverage ground truth has no concept: give e.g. ['dog', 'ball', 'throw']")
    return concepts


@functools.lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import porter

    return porter.PorterStemmer()


def _stems(text: str) -> set[str]:
    stem = _stemmer().stem
    return {stem(w) for w in re.findall(r"[a-z0-9]+", text.lower())}


@register("concept_coverage")
class ConceptCoverageVerifier(Verifier):
    """Share of the concepts whose Porter stem is among the prediction's word stems.

    ``extracted`` is None; ``details`` lists the ``missing`` concepts."""

    measures = "the share of the row's concept words (CommonGen concept set) that the completion uses, stem-matched"
    partial_credit = True

    def check_ground_truth(self, ground_truth: Any) -> None:
        concept_list(ground_truth)

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:
        concepts = concept_list(ground_truth)
        used = _stems(prediction or "")
        missing = [c for c in concepts if not _stems(c) <= used]
        return VerificationResult((len(concepts) - len(missing)) / len(concepts), None, {"missing": missing})
