"""Embedding similarity: how close the completion's meaning is to the reference's, by a sentence
encoder (the embedded all-MiniLM-L6-v2 by default).

Both texts are embedded as ``posttrain.models.embeddings.embed_texts`` does (mean-pooled over
tokens, L2-normalised, the sentence-transformers pipeline of all-MiniLM-L6-v2), so their dot
product is the cosine similarity ``c`` in [-1, 1]. The score maps it into [0, 1]:

- ``mapping="clip"`` (default): ``max(c, 0)``. Unrelated sentences land near 0 under MiniLM and
  an identical one at 1; the rare negative cosine (no closer than unrelated) scores 0 as well.
- ``mapping="affine"``: ``(1 + c) / 2``, which keeps the order of negative cosines too (unrelated
  text then scores about 0.5).

With several references the best cosine counts. Example::

    get_verifier("embedding_similarity")("A dog is running across a field.",
                                         "The dog runs across the field.").score    # 0.96
    get_verifier("embedding_similarity")("Stock prices fell sharply today.",
                                         "The dog runs across the field.").score    # 0.07

Options (``{verifier: embedding_similarity, options: {...}}``): ``encoder`` (``minilm``, a local
encoder folder, or ``hash`` / ``hash:DIM`` for the weight-free hashed bag of words), ``mapping``,
``max_length`` (tokens per text), ``batch_size``. The encoder loads once per process; a batch of
completions is embedded in one pass with its references (``score_batch``), nothing cached on disk.
"""

from __future__ import annotations

from typing import Any

import torch

from posttrain.rewards.base import VerificationResult, Verifier, register
from posttrain.rewards.nlg import references

__all__ = ["EmbeddingSimilarityVerifier", "MAPPINGS"]

MAPPINGS = {"clip": lambda c: max(c, 0.0), "affine": lambda c: (1.0 + c) / 2.0}


@register("embedding_similarity")
class EmbeddingSimilarityVerifier(Verifier):
    """The mapped cosine similarity (module docstring) of the completion's and the best
    reference's embeddings. ``details``: the raw ``cosine`` and the best reference's index."""

    partial_credit = True
    similarity = True

    def __init__(self, encoder: str = "minilm", mapping: str = "clip", max_length: int = 256, batch_size: int = 64):
        from posttrain.models.embeddings import resolve_encoder

        if mapping not in MAPPINGS:
            raise ValueError(f"embedding_similarity mapping={mapping!r}: choose one of {', '.join(MAPPINGS)}")
        self.encoder = encoder
        self._resolved = resolve_encoder(encoder)   # an unknown encoder fails here, before training
        self.mapping, self.max_length, self.batch_size = mapping, int(max_length), int(batch_size)
        shown = {"clip": "max(cosine, 0)", "affine": "(1 + cosine) / 2"}[mapping]
        self.measures = (f"cosine similarity of the completion's and the reference's sentence embeddings "
                         f"({encoder} encoder), mapped to [0, 1] as {shown}")

    def check_ground_truth(self, ground_truth: Any) -> None:
        references(ground_truth, "embedding_similarity")

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:
        return self.score_batch([prediction], [ground_truth])[0]

    def score_batch(self, predictions: list[str], ground_truths: list[Any]) -> list[VerificationResult]:
        from posttrain.models.embeddings import embed_texts

        if len(predictions) != len(ground_truths):
            raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} ground truths")
        if not predictions:
            return []
        refs = [references(gt, "embedding_similarity") for gt in ground_truths]
        texts = [p or "" for p in predictions] + [r for rs in refs for r in rs]
        # one encoder pass over every distinct text of the batch; the disk cache is for fixed data
        # sets (selection, routing), not for completions that change every step
        vectors_ND = embed_texts(texts, model=self.encoder, batch_size=self.batch_size,
                                 max_length=self.max_length, use_cache=False)
        out, start = [], len(predictions)
        for i, rs in enumerate(refs):
            cosines_R = vectors_ND[start:start + len(rs)] @ vectors_ND[i]
            start += len(rs)
            best = int(torch.argmax(cosines_R))
            cosine = float(cosines_R[best].clamp(-1.0, 1.0))   # unit vectors: |c| <= 1 up to rounding
            out.append(VerificationResult(min(max(MAPPINGS[self.mapping](cosine), 0.0), 1.0), None,
                                          {"cosine": cosine, "reference": best}))
        return out
