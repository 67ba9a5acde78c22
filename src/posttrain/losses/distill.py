"""Per-token divergences between a student's and a teacher's next-token distributions, for
distillation (``posttrain distill``), and the same through the LM heads a chunk of tokens at a time.

With s = softmax(z_s / τ) the student's and t = softmax(z_t / τ) the teacher's distribution over
the vocabulary at one position (τ the ``temperature``):

    reverse_kl        KL(s ‖ t) = Σ_v s_v (log s_v − log t_v)        mode-seeking; on-policy distillation
                      (Agarwal et al. 2024, GKD; Thinking Machines 2025, "On-Policy Distillation")
    forward_kl        KL(t ‖ s) = Σ_v t_v (log t_v − log s_v)        mean-seeking; classic KD (Hinton et al. 2015)
    generalized_jsd   JSD(β) = β KL(t ‖ m) + (1 − β) KL(s ‖ m),   m = β t + (1 − β) s
                      (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
                      Self-Generated Mistakes", arXiv:2306.13649, eq. 1)

JSD(β) itself tends to 0 at both ends (m becomes s, or t); what the paper states is that its
*gradient* behaves like forward KL as β → 0 and like reverse KL as β → 1 (JSD(β)/β → KL(t ‖ s),
JSD(β)/(1 − β) → KL(s ‖ t)). As TRL's ``GKDTrainer.generalized_jsd_loss`` (trl 1.16,
``trl/experimental/gkd/gkd_trainer.py``), β = 0 and β = 1 are defined as those limits: β = 0 *is*
forward KL, β = 1 *is* reverse KL.

Each function takes logits ``(…, V)`` and a mask ``(…)`` and returns the divergence per position
``(…)``, 0 where the mask is 0 (no reduction: the trainer sums over completion tokens and the
engine divides by the step's global token count, so the loss is a token mean over the whole
batch). Everything is computed in float32 at least (float64 stays float64).

:func:`chunked_divergence` is the same divergence computed from the final hidden states and the LM
head weights, ``chunk_size`` positions at a time, with the student's gradient taken in the same
pass (as ``linear_ce.linear_cross_entropy`` does for SFT): for N positions only one chunk's
``(chunk, V)`` logits of each model exist at once, never the ``(N, V)`` ones.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (student z, teacher z) → per-position


def _masked(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return values if mask is None else torch.where(mask.bool(), values, torch.zeros_like(values))


def _log_probs(student_logits, teacher_logits, temperature: float):
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    return (torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1),
            torch.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ p (log p − log q) over the last dimension, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(s ‖ t) per position ``(…)``: the student's expected excess log-loss under its own samples."""
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    return _masked(_kl(log_s, log_t), mask)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(t ‖ s) per position ``(…)``: cross-entropy against the teacher's soft targets minus its entropy."""
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    return _masked(_kl(log_t, log_s), mask)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                    beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """JSD(β) = β KL(t ‖ m) + (1 − β) KL(s ‖ m), m = β t + (1 − β) s, per position ``(…)`` (GKD eq. 1);
    β = 0 is forward KL and β = 1 reverse KL (the limits of JSD(β)/β and JSD(β)/(1 − β), as TRL)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta}: must lie in [0, 1]")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, mask, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, mask, temperature)
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    # log m = log(β t + (1 − β) s), computed in log space so that tiny probabilities stay finite
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log1p(-beta)]), dim=0)
    return _masked(beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m), mask)


DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")


def divergence_fn(name: str, beta: float = 0.5, temperature: float = 1.0) -> Divergence:
    """The per-position divergence ``name`` (one of :data:`DIVERGENCES`) as ``f(student_logits,
    teacher_logits) -> (…)``, with its β and τ bound."""
    if name == "reverse_kl":
        return lambda s, t: reverse_kl(s, t, temperature=temperature)
    if name == "forward_kl":
        return lambda s, t: forward_kl(s, t, temperature=temperature)
    if name == "jsd":
        return lambda s, t: generalized_jsd(s, t, beta=beta, temperature=temperature)
    raise ValueError(f"unknown divergence {name!r}: choose one of {', '.join(DIVERGENCES)}")


# ---------------------------------------------------------------------------------------------
# Through the LM heads, a chunk of positions at a time


def default_chunk_size(vocab_size: int) -> int:
    """Positions per chunk so that one chunk's fp32 logits of one model stay near 32 MB (a chunk
    holds the student's and the teacher's logits and a few softmax-sized temporaries)."""
    return max(16, (1 << 23) // max(vocab_size, 1))


class _ChunkedDivergence(torch.autograd.Function):
    """Σ_i D(W_s h_s,i, W_t h_t,i) over N positions, ``chunk_size`` at a time. The loss is a plain
    sum of per-position terms, so each chunk's gradient is known in the forward: it is taken there
    (autograd over the chunk's logits only, then ∂/∂h = ∂/∂z · W_s and ∂/∂W_s = (∂/∂z)ᵀ h, as in
    ``linear_ce``), the chunk's logits are dropped, and backward only scales the stored gradients.
    The teacher's side never needs a gradient."""

    @staticmethod
    def forward(ctx, hidden_s_NH, weight_s_VH, hidden_t_NH, weight_t_VH, target_N, divergence: Divergence,
                inv_temperature: float, chunk_size: int, grad_hidden: bool, grad_weight: bool):
        n = hidden_s_NH.shape[0]
        acc = torch.promote_types(hidden_s_NH.dtype, torch.float32)
        divergence_N = torch.zeros(n, dtype=acc, device=hidden_s_NH.device)
        student_logp_N = torch.zeros(n, dtype=acc, device=hidden_s_NH.device)
        teacher_logp_N = torch.zeros(n, dtype=acc, device=hidden_s_NH.device)
        d_hidden = torch.zeros_like(hidden_s_NH) if grad_hidden else None
        d_weight = torch.zeros(weight_s_VH.shape, dtype=acc, device=weight_s_VH.device) if grad_weight else None
        for start in range(0, n, chunk_size):
            rows = slice(start, min(start + chunk_size, n))
            h = hidden_s_NH[rows]
            z_s = (h @ weight_s_VH.t()).to(acc)
            z_t = (hidden_t_NH[rows] @ weight_t_VH.t()).to(acc)
            y = target_N[rows, None]
            student_logp_N[rows] = (torch.log_softmax(z_s * inv_temperature, -1).gather(1, y)).squeeze(1)
            teacher_logp_N[rows] = (torch.log_softmax(z_t * inv_temperature, -1).gather(1, y)).squeeze(1)
            if not (grad_hidden or grad_weight):
                divergence_N[rows] = divergence(z_s, z_t)
                continue
            with torch.enable_grad():
                z_leaf = z_s.requires_grad_(True)
                values = divergence(z_leaf, z_t)
                (dz,) = torch.autograd.grad(values.sum(), z_leaf)
            divergence_N[rows] = values.detach()
            dz = dz.to(hidden_s_NH.dtype)
            if grad_hidden:
                d_hidden[rows] = dz @ weight_s_VH
            if grad_weight:
                d_weight += (dz.t() @ h).to(acc)
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.weight_dtype = weight_s_VH.dtype
        ctx.mark_non_differentiable(divergence_N, student_logp_N, teacher_logp_N)
        return divergence_N.sum(), divergence_N, student_logp_N, teacher_logp_N

    @staticmethod
    def backward(ctx, grad_total, *_unused):
        d_hidden, d_weight = ctx.saved_tensors
        if d_hidden is not None:
            d_hidden = d_hidden * grad_total.to(d_hidden.dtype)
        if d_weight is not None:
            d_weight = (d_weight * grad_total).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None, None, None, None, None, None, None


def chunked_divergence(hidden_s_NH: torch.Tensor, weight_s_VH: torch.Tensor, hidden_t_NH: torch.Tensor,
                       weight_t_VH: torch.Tensor, target_N: torch.Tensor, name: str = "reverse_kl",
                       beta: float = 0.5, temperature: float = 1.0, chunk_size: int | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``Σ_i D(student_i, teacher_i)`` over N positions (differentiable in the student's hidden
    states and head weight; the teacher's are constants), with the logits of both models built
    ``chunk_size`` positions at a time. Returns the sum and, detached, per position: ``divergence``
    (N,), and the log-probs of ``target_N`` (the tokens that follow: sampled or given) under the
    student (``student_logps``) and the teacher (``teacher_logps``), both at ``temperature``.

    Equal (to float rounding) in value and gradient to ``divergence_fn(name, beta, temperature)``
    on the full logits ``hidden_s @ W_s.T`` and ``hidden_t @ W_t.T``."""
    divergence = divergence_fn(name, beta, temperature)
    inv_temperature = 1.0 / temperature
    chunk = chunk_size or default_chunk_size(weight_s_VH.shape[0])
    grad_on = torch.is_grad_enabled()
    total, divergence_N, student_N, teacher_N = _ChunkedDivergence.apply(
        hidden_s_NH, weight_s_VH, hidden_t_NH.detach(), weight_t_VH.detach(), target_N, divergence,
        inv_temperature, chunk, grad_on and hidden_s_NH.requires_grad, grad_on and weight_s_VH.requires_grad)
    return total, {"divergence": divergence_N, "student_logps": student_N, "teacher_logps": teacher_N}


def full_logits_divergence(student_logits_NV: torch.Tensor, teacher_logits_NV: torch.Tensor, target_N: torch.Tensor,
                           name: str = "reverse_kl", beta: float = 0.5, temperature: float = 1.0
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`chunked_divergence` from logits already built (the plain path: heads that are more than
    a matmul, sharded head weights); the same outputs."""
    divergence_N = divergence_fn(name, beta, temperature)(student_logits_NV, teacher_logits_NV.detach())
    logps = [torch.log_softmax(z.detach().to(divergence_N.dtype) / temperature, -1)
             .gather(1, target_N[:, None]).squeeze(1) for z in (student_logits_NV, teacher_logits_NV)]
    return divergence_N.sum(), {"divergence": divergence_N.detach(), "student_logps": logps[0],
                                "teacher_logps": logps[1]}
