"""The LM head in chunks: linear + cross-entropy and linear + log-probs without the full-vocabulary logits.

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

:func:`linear_log_probs` is the same head-in-chunks idea for log-probs whose upstream gradient is
only known after the forward (DPO's per-pair sigmoid, the PPO/GRPO surrogate): forward keeps each
position's logsumexp, backward recomputes the chunk's logits, ∂ log p_y / ∂z = onehot(y) − softmax(z).
It costs one extra head matmul and saves the N × V logits and their softmax.
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


class _LinearLogProbs(torch.autograd.Function):
    """Per-position log-probs of given tokens (and optionally the entropy) through the LM head, in
    chunks. Unlike cross-entropy with known weights, a log-prob's upstream gradient (a DPO pair's
    σ(−margin), a PPO advantage × ratio) is only known after the forward, so the chunk's logits are
    recomputed in backward — one extra head matmul, in exchange for never holding N × V logits."""

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, target_N, inv_temperature: float, chunk_size: int, with_entropy: bool):
        n = hidden_NH.shape[0]
        acc = torch.promote_types(hidden_NH.dtype, torch.float32)
        logp_N = torch.empty(n, dtype=acc, device=hidden_NH.device)
        lse_N = torch.empty(n, dtype=acc, device=hidden_NH.device)
        entropy_N = torch.zeros(n if with_entropy else 0, dtype=acc, device=hidden_NH.device)
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            logits = (hidden_NH[rows] @ weight_VH.t()).to(acc) * inv_temperature
            lse = torch.logsumexp(logits, dim=-1)
            lse_N[rows] = lse
            logp_N[rows] = logits.gather(1, target_N[rows, None]).squeeze(1) - lse
            if with_entropy:   # H = logsumexp(z) − Σ softmax(z)·z
                entropy_N[rows] = lse - (logits.sub(lse[:, None]).exp_() * logits).sum(-1)
        ctx.save_for_backward(hidden_NH, weight_VH, target_N, lse_N)
        ctx.inv_temperature, ctx.chunk_size = inv_temperature, chunk_size
        ctx.mark_non_differentiable(entropy_N)
        return logp_N, entropy_N

    @staticmethod
    def backward(ctx, grad_logp_N, _grad_entropy):
        hidden_NH, weight_VH, target_N, lse_N = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        acc = lse_N.dtype
        d_hidden = torch.empty_like(hidden_NH) if need_hidden else None
        d_weight = torch.zeros(weight_VH.shape, dtype=acc, device=weight_VH.device) if need_weight else None
        for start in range(0, hidden_NH.shape[0], ctx.chunk_size):
            rows = slice(start, min(start + ctx.chunk_size, hidden_NH.shape[0]))
            h = hidden_NH[rows]
            logits = (h @ weight_VH.t()).to(acc) * ctx.inv_temperature
            # ∂ log p_y / ∂z = (onehot(y) − softmax(z)) / T, times the upstream gradient
            dz = logits.sub_(lse_N[rows, None]).exp_().neg_()
            dz[torch.arange(dz.shape[0], device=dz.device), target_N[rows]] += 1
            dz.mul_((grad_logp_N[rows].to(acc) * ctx.inv_temperature)[:, None])
            dz = dz.to(hidden_NH.dtype)
            if need_hidden:
                d_hidden[rows] = dz @ weight_VH
            if need_weight:
                d_weight += (dz.t() @ h).to(acc)
        if d_weight is not None:
            d_weight = d_weight.to(weight_VH.dtype)
        return d_hidden, d_weight, None, None, None, None


def linear_log_probs(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, target_N: torch.Tensor,
                     temperature: float = 1.0, with_entropy: bool = False, chunk_size: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_softmax(hidden @ W.T / temperature)[target]`` per position (differentiable in ``hidden``
    and ``W``) and, with ``with_entropy``, the distribution's entropy per position (detached; None
    otherwise), without building the N × V logits. Targets must be real token ids (no -100)."""
    chunk = chunk_size or default_chunk_size(weight_VH.shape[0])
    logp, entropy = _LinearLogProbs.apply(hidden_NH, weight_VH, target_N, 1.0 / temperature, chunk, with_entropy)
    return logp, (entropy if with_entropy else None)
