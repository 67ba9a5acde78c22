"""Linear + cross-entropy in chunks: the LM head's full-vocabulary logits are never materialised.

For N trained positions, hidden size H and vocabulary V, the plain path builds an N × V logit
matrix (upcast to fp32) and keeps it, plus its softmax, for backward: for 8 rows of 2048 tokens
and V = 32 000 that is 2 GB. Here the positions go through the head ``chunk_size`` at a time and
the gradient is computed in the same pass, as Liger-Kernel's fused linear cross-entropy does
(Hsu et al. 2024, arXiv:2410.10989): for one position with logits z = W h, target y and weight w,

    ℓ = w · (logsumexp(z) − z_y),     ∂ℓ/∂z = w · (softmax(z) − onehot(y)),
    ∂ℓ/∂h = Wᵀ ∂ℓ/∂z,                 ∂ℓ/∂W = (∂ℓ/∂z) hᵀ   (summed over positions).

So only one chunk's logits exist at a time, and the head costs the same three matmuls as the plain
path (forward, input grad, weight grad) with no recomputation. The price: the loss must be a
*weighted sum* of token NLLs with weights known before backward — which every SFT reduction is
(``sum`` and ``token_mean``: weight 1, the engine divides by the global count; ``sequence_mean``:
1 / tokens in the token's sequence).
"""

from __future__ import annotations

import torch

from posttrain.losses.sft import IGNORE_INDEX


def default_chunk_size(vocab_size: int) -> int:
    """Positions per chunk so that one chunk's fp32 logits stay near 64 MB."""
    return max(16, (1 << 24) // max(vocab_size, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, target_N, weight_N, chunk_size: int, grad_hidden: bool,
                grad_weight: bool):
        n = hidden_NH.shape[0]
        acc = torch.promote_types(hidden_NH.dtype, torch.float32)   # bf16 inputs: softmax and sums in fp32
        nll_N = torch.zeros(n, dtype=acc, device=hidden_NH.device)
        d_hidden = torch.empty_like(hidden_NH) if grad_hidden else None
        d_weight = torch.zeros(weight_VH.shape, dtype=acc, device=weight_VH.device) if grad_weight else None
        valid_N = target_N != IGNORE_INDEX
        safe_target = target_N.clamp_min(0)
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            h = hidden_NH[rows]
            logits = (h @ weight_VH.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            y = safe_target[rows]
            nll_N[rows] = (lse - logits.gather(1, y[:, None]).squeeze(1)) * valid_N[rows]
            if not (grad_hidden or grad_weight):
                continue
            # logits become ∂ℓ/∂z in place: softmax − onehot, scaled by the token's weight.
            dz = logits.sub_(lse[:, None]).exp_()
            dz[torch.arange(dz.shape[0], device=dz.device), y] -= 1
            dz.mul_((weight_N[rows] * valid_N[rows])[:, None])
            dz = dz.to(hidden_NH.dtype)
            if grad_hidden:
                d_hidden[rows] = dz @ weight_VH
            if grad_weight:
                d_weight += (dz.t() @ h).to(acc)
        ctx.save_for_backward(d_hidden if grad_hidden else None, d_weight if grad_weight else None)
        ctx.weight_dtype = weight_VH.dtype
        loss = (nll_N * weight_N.to(acc)).sum()
        ctx.mark_non_differentiable(nll_N)
        return loss, nll_N

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        d_hidden, d_weight = ctx.saved_tensors
        if d_hidden is not None:
            d_hidden = d_hidden * grad_loss.to(d_hidden.dtype)
        if d_weight is not None:
            d_weight = (d_weight * grad_loss).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None, None, None, None


def linear_cross_entropy(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, target_N: torch.Tensor,
                         weight_N: torch.Tensor | None = None, chunk_size: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_i weight_i · CE(weight_VH @ hidden_i, target_i)`` over positions whose target is not -100,
    and the per-position NLLs (detached, 0 where ignored), without building the N × V logits.

    Equal (to float rounding) to ``(F.cross_entropy(hidden @ W.T, target, reduction="none") *
    weight).sum()`` in value and in the gradients for ``hidden`` and ``W``.
    """
    if weight_N is None:
        weight_N = torch.ones(target_N.shape, dtype=torch.float32, device=target_N.device)
    chunk = chunk_size or default_chunk_size(weight_VH.shape[0])
    grad_on = torch.is_grad_enabled()
    return _LinearCrossEntropy.apply(hidden_NH, weight_VH, target_N, weight_N, chunk,
                                     grad_on and hidden_NH.requires_grad, grad_on and weight_VH.requires_grad)
