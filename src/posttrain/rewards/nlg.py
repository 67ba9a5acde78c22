"""NLG-metric verifiers: ROUGE-L and sentence BLEU against one or more reference texts.

RL4LMs (Ramamurthy et al. 2023, "Is Reinforcement Learning (Not) for Natural Language
Processing?") trains on automatic NLG metrics as rewards; these two are its most used. Each is the
reference package's own number, not a re-implementation, so a score here equals the one a paper
reports with the same package:

- ``rouge``: ROUGE-L F1 as ``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)``
  computes it (https://github.com/google-research/google-research/tree/master/rouge): lower-cased
  words of ``[a-z0-9]``, Porter-stemmed; F1 of precision LCS/|prediction| and recall
  LCS/|reference|. With several references, the best F1 (``RougeScorer.score_multi``).
- ``bleu``: sacreBLEU's ``sentence_bleu(prediction, references).score / 100``
  (https://github.com/mjpost/sacrebleu): 13a tokenisation, exponential smoothing, effective
  order, brevity penalty against the closest reference length; several references are used
  together (clipped n-gram counts over all of them), as BLEU defines.

Example (one CommonGen-style row)::

    ground_truth: "The dog runs across the field."       (or a list of reference strings)
    prediction:   "A dog is running across a field."
    rouge -> LCS {dog, run, across, field} = 4 of 7 and 6 words: P 4/7, R 4/6, F1 0.615
    bleu  -> sentence BLEU / 100 (low: only unigrams and one bigram match)

Both are graded similarities to the reference text (``similarity = True``): a fluent paraphrase
scores low, and a completion can score well by copying reference words. The ground truth is a
non-empty reference string or a non-empty list of them.
"""

from __future__ import annotations

import functools
from typing import Any

from posttrain.rewards.base import VerificationResult, Verifier, register

__all__ = ["references", "RougeVerifier", "BleuVerifier"]


def references(ground_truth: Any, verifier: str) -> list[str]:
    """The reference texts of ``ground_truth``: a string, or a list of strings. ValueError (saying
    what to give instead) for anything else, an empty list, or an empty reference."""
    hint = "give a reference string, or a list of reference strings"
    if isinstance(ground_truth, str):
        refs = [ground_truth]
    elif isinstance(ground_truth, (list, tuple)):
        refs = list(ground_truth)
        if not refs:
            raise ValueError(f"{verifier} ground truth is an empty list: {hint}")
        bad = next((r for r in refs if not isinstance(r, str)), None)
        if bad is not None:
            raise ValueError(f"{verifier} ground truth holds a {type(bad).__name__} ({bad!r:.80}), not a string: {hint}")
    else:
        raise ValueError(f"{verifier} ground truth must be text, got {type(ground_truth).__name__} "
                         f"({ground_truth!r:.80}): {hint}")
    for i, ref in enumerate(refs):
        if not ref.strip():
            where = "the reference" if len(refs) == 1 else f"reference {i + 1} of {len(refs)}"
            raise ValueError(f"{verifier} ground truth: {where} is empty; every reference needs some text")
    return refs


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    """One scorer per process (it holds a Porter stemmer; scoring keeps no state between calls)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@register("rouge")
class RougeVerifier(Verifier):
    """ROUGE-L F1 of the prediction against the reference(s), the best over references.

    ``extracted`` is None (nothing is read off the prediction); ``details`` gives the best
    reference's precision, recall and its 0-based index."""

    measures = "ROUGE-L F1 (longest common word subsequence, stemmed) between the completion and its reference text"
    partial_credit = True
    similarity = True

    def check_ground_truth(self, ground_truth: Any) -> None:
        from rouge_score.tokenizers import DefaultTokenizer

        tokenizer = DefaultTokenizer(use_stemmer=False)   # the scorer's tokenizer (stemming drops no word)
        for ref in references(ground_truth, "rouge"):
            if not tokenizer.tokenize(ref):
                raise ValueError(f"rouge ground truth: reference {ref!r:.80} has no word ROUGE can compare (its "
                                 "tokenizer keeps only the letters a-z and digits 0-9, so every completion would "
                                 "score 0); use bleu or embedding_similarity for text in other scripts")

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:
        refs = references(ground_truth, "rouge")
        scorer = _rouge_scorer()
        # score(target, prediction): precision is over the prediction's words, recall the reference's
        scores = [scorer.score(ref, prediction or "")["rougeL"] for ref in refs]
        best = max(range(len(scores)), key=lambda i: scores[i].fmeasure)   # first of ties, as score_multi
        s = scores[best]
        return VerificationResult(min(max(s.fmeasure, 0.0), 1.0), None,
                                  {"precision": s.precision, "recall": s.recall, "reference": best})


@register("bleu")
class BleuVerifier(Verifier):
    """sacreBLEU sentence BLEU of the prediction against every reference, divided by 100.

    ``details`` gives the BLEU score (0-100), the brevity penalty and the n-gram precisions."""

    measures = "sentence BLEU (sacreBLEU, n-grams up to 4, brevity penalty) of the completion against its reference text, / 100"
    partial_credit = True
    similarity = True

    def check_ground_truth(self, ground_truth: Any) -> None:
        references(ground_truth, "bleu")

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:
        from sacrebleu import sentence_bleu

        refs = references(ground_truth, "bleu")
        result = sentence_bleu(prediction or "", refs)
        return VerificationResult(min(max(result.score / 100.0, 0.0), 1.0), None,
                                  {"bleu": result.score, "bp": result.bp, "precisions": list(result.precisions)})
