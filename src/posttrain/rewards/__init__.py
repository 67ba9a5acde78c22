"""Verifiers and rewards: one registry for RLVR rewards and evaluation metrics.

``get_verifier(name)(prediction, ground_truth).score`` is a float in [0, 1]. Built-in names:
``gsm8k``, ``math``, ``ifeval`` (strict), ``ifeval_loose``, ``code``, and the graded similarities
``rouge``, ``bleu`` (``nlg.py``) and ``embedding_similarity`` (``embedding.py``). Each module registers its
verifiers explicitly; importing this package imports them all.
"""

from posttrain.rewards.base import VerificationResult, Verifier, get_verifier, list_verifiers, register
from posttrain.rewards import gsm8k, math, ifeval, code, nlg, concepts, embedding, compose  # noqa: F401  (register verifiers)

__all__ = ["VerificationResult", "Verifier", "get_verifier", "list_verifiers", "register"]
