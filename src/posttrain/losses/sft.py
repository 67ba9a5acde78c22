"""Supervised finetuning loss: next-token cross-entropy on trained tokens, with the reduction
named explicitly.

Each reduction returns a *numerator* for the micro-batch; the engine divides the sum of
numerators over the whole optimizer step (all micro-batches, all processes) by the matching
global *normalizer*, so the gradient does not change with accumulation steps or process count.
Every numerator is a weighted sum of token losses (``sft_token_weights``), which is what lets the
chunked head of ``losses/linear_ce.py`` compute its gradient in the forward pass:

| reduction       | numerator (per micro-batch)            | normalizer (global)     |
|-----------------|----------------------------------------|-------------------------|
| ``sum``         | Σ token losses (TÜLU 3's choice)        | 1                       |
| ``token_mean``  | Σ token losses                          | number of trained tokens |
| ``sequence_mean`` | Σ over sequences of their mean loss   | number of sequences     |
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of ``labels[t+1]`` given ``logits[t]`` → (nll_BT, mask_BT),
    both aligned with ``labels[:, 1:]``; ignored positions have nll 0 and mask False."""
    logits = logits_BTV[:, :-1].float()
    target = labels_BT[:, 1:]
    mask = target != IGNORE_INDEX
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.clamp_min(0).reshape(-1),
                          reduction="none").view_as(target)
    return nll * mask, mask


def sft_token_weights(mask_BT: torch.Tensor, seq_ids_BT: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Per-token weights whose weighted NLL sum is the micro-batch numerator of the table above:
    1 on trained tokens for ``sum`` and ``token_mean``; 1 / (trained tokens in the token's sequence)
    for ``sequence_mean``; 0 elsewhere."""
    if reduction in ("sum", "token_mean"):
        return mask_BT.float()
    if reduction == "sequence_mean":
        _, inverse = torch.unique(seq_ids_BT[mask_BT], return_inverse=True)
        n = int(inverse.max()) + 1 if inverse.numel() else 0
        counts = torch.zeros(n, device=mask_BT.device).index_add(0, inverse, torch.ones(inverse.shape,
                                                                                        device=mask_BT.device))
        weights = torch.zeros(mask_BT.shape, device=mask_BT.device)
        weights[mask_BT] = 1.0 / counts[inverse]
        return weights
    raise ValueError(f"unknown loss reduction {reduction!r}; choose sum, token_mean or sequence_mean")


def sft_normalizer(labels_BT: torch.Tensor, seq_ids_BT: torch.Tensor | None, reduction: str) -> float | None:
    """The micro-batch share of the global normalizer (None for ``sum``: no division)."""
    mask = labels_BT[:, 1:] != IGNORE_INDEX
    if reduction == "sum":
        return None
    if reduction == "token_mean":
        return float(mask.sum())
    return float(torch.unique(seq_ids_BT[:, 1:][mask]).numel())
