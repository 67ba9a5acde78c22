"""Policy-gradient losses: the clipped surrogate with GRPO / DAPO / Dr. GRPO aggregation, the
clipped value loss, entropy, and NLPO's top-p action mask.

Shapes: B sequences (completions) × T completion tokens (× V vocabulary). ``mask_BT`` is 1 on
tokens that were sampled from the policy and 0 on padding and on forced tokens (tool output).

Reduction is explicit and is the part that changes results. ``clipped_policy_loss`` computes a
per-token loss ℓ_{i,t} and reduces it with one of ``AGGREGATIONS``, each a numerator and a
denominator; ``normalizer`` replaces the denominator. The other policy losses (GSPO, CISPO, in
``posttrain.train.rl.algorithms``) compute their own ℓ_{i,t} and reduce it the same way through
``reduce_policy_loss``:

``grpo``       (1/B) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}        GRPO, Shao et al. 2024, eq. 3
    Keeps a per-sequence length bias: each sequence counts once, so a token of a long
    completion weighs less (long wrong answers are penalised less per token, short right
    answers rewarded more per token).
``dapo``       Σ_{i,t} ℓ_{i,t} / Σ_{i,t} m_{i,t}      DAPO, Yu et al. 2025, §3.3 (token-level loss)
    Removes the per-sequence bias: every token weighs the same. The denominator still varies
    with the batch's total length.
``dr_grpo``    Σ_{i,t} ℓ_{i,t} / (B · L)              Dr. GRPO, Liu et al. 2025
    Removes both: L = ``max_completion_length`` is a constant, so no length enters the weight.
    B·L defaults to the padded size of ``mask_BT``; pass ``normalizer = num_sequences ×
    max_completion_length`` to use the true constant.
``token_sum``  Σ_{i,t} ℓ_{i,t}                        plain sum, meant for use with ``normalizer``

Gradient accumulation and multiple processes: the local ``dapo`` / ``dr_grpo`` denominators are
per micro-batch, so summing micro-batch gradients is not the loss of the whole batch. Pass
``normalizer`` = the count over the whole optimizer step (e.g. the active-token count summed over
micro-batches and processes for ``dapo``/``token_sum``, or global B × L for ``dr_grpo``); then
the sum of micro-batch losses is exactly the global loss. For ``grpo`` it replaces B.
``aggregation_normalizer`` is that count for a set of rows (written once: the RL trainer sums it
over micro-batches and processes).

Reference code: TRL ``trl/trainer/grpo_trainer.py``
(huggingface/trl@d2b69d769dab6f77acbfd33252bcd7d22765571b, ``GRPOTrainer._compute_loss``: the
per-token term, ``grpo`` / ``bnpo`` / ``dr_grpo`` reductions, and the low/high clip fractions).
Names differ: our local-denominator ``dapo`` is TRL's ``bnpo``; later TRL versions add a ``dapo``
that divides by the active tokens of the global batch, i.e. ours with ``normalizer``. The value
loss follows TRL's ``trl/trainer/ppo_trainer.py`` (``cliprange_value``; not pinned).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from posttrain.losses.kl import kl_estimate

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "aggregate",
    "aggregation_normalizer",
    "tis_weights",
    "apply_action_mask",
    "clipped_policy_loss",
    "clipped_surrogate",
    "entropy_from_logits",
    "explained_variance",
    "masked_mean",
    "nlpo_topp_mask",
    "per_token",
    "ratio_diagnostics",
    "reduce_policy_loss",
    "value_loss",
]


_Denominator = float | torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ x·m / Σ m (0 when the mask is empty)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------
# Aggregations: per-token loss (B, T) and mask (B, T) -> numerator; mask and L -> denominator


def _sum_of_sequence_means(loss_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    return ((loss_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1)).sum()


def _token_sum(loss_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    return (loss_BT * mask_BT).sum()


def _count_sequences(mask_BT: torch.Tensor, max_completion_length: int) -> _Denominator:
    return float(mask_BT.shape[0])


def _count_tokens(mask_BT: torch.Tensor, max_completion_length: int) -> _Denominator:
    return mask_BT.sum().clamp(min=1)


def _count_sequence_slots(mask_BT: torch.Tensor, max_completion_length: int) -> _Denominator:
    return float(mask_BT.shape[0] * max_completion_length)


def _one(mask_BT: torch.Tensor, max_completion_length: int) -> _Denominator:
    return 1.0


class Aggregation(NamedTuple):
    """A reduction of per-token losses: ``numerator(loss_BT, mask_BT)`` divided by
    ``denominator(mask_BT, max_completion_length)`` (module table)."""

    numerator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    denominator: Callable[[torch.Tensor, int], _Denominator]


AGGREGATIONS: dict[str, Aggregation] = {
    "grpo": Aggregation(_sum_of_sequence_means, _count_sequences),
    "dapo": Aggregation(_token_sum, _count_tokens),
    "dr_grpo": Aggregation(_token_sum, _count_sequence_slots),
    "token_sum": Aggregation(_token_sum, _one),
}


def _aggregation(name: str) -> Aggregation:
    try:
        return AGGREGATIONS[name]
    except KeyError:
        raise ValueError(f"unknown aggregation {name!r}; known: {sorted(AGGREGATIONS)}") from None


def aggregation_normalizer(aggregation: str, mask_BT: torch.Tensor, max_completion_length: int | None = None) -> float:
    """What ``aggregation`` divides the summed loss of these rows by: B (``grpo``), the sampled
    tokens Σ m (``dapo``), B × ``max_completion_length`` (``dr_grpo``; default: the padded T)
    or 1 (``token_sum``). A trainer that splits an optimizer step into micro-batches and
    processes sums this over all of them and passes the total as ``normalizer``."""
    length = mask_BT.shape[1] if max_completion_length is None else max_completion_length
    return float(_aggregation(aggregation).denominator(mask_BT, length))


def aggregate(
    loss_BT: torch.Tensor, mask_BT: torch.Tensor, aggregation: str, normalizer: _Denominator | None = None
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar with ``AGGREGATIONS[aggregation]`` (module table);
    ``normalizer``, when given, replaces the aggregation's denominator."""
    reduction = _aggregation(aggregation)
    mask_BT = mask_BT.to(loss_BT.dtype)
    numerator = reduction.numerator(loss_BT, mask_BT)
    return numerator / (reduction.denominator(mask_BT, mask_BT.shape[1]) if normalizer is None else normalizer)


# --------------------------------------------------------------------------------------------
# Policy loss


def clipped_policy_loss(
    logps_BT: torch.Tensor,
    old_logps_BT: torch.Tensor,
    advantages: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    aggregation: str = "grpo",
    normalizer: float | torch.Tensor | None = None,
    *,
    kl_coef: float = 0.0,
    ref_logps_BT: torch.Tensor | None = None,
    kl_kind: str = "k3",
    is_weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) as a loss, per token, aggregated.

        ρ_{i,t} = exp(log π(o_t) - log π_old(o_t))
        ℓ_{i,t} = -min(ρ A, clip(ρ, 1 - ε_low, 1 + ε_high) A) + β_KL · KL_{i,t}

    ε_high ≠ ε_low is DAPO's clip-higher (Yu et al. 2025, §3.1; they use ε_low = 0.2,
    ε_high = 0.28); ``clip_high=None`` means ε_high = ε_low (PPO). The optional KL term
    (``kl_coef`` > 0) is GRPO's in-loss penalty (Shao et al. 2024, eq. 3 with the k3 estimator of
    eq. 4): ``kl_estimate(logps_BT, ref_logps_BT, kl_kind)`` per token, aggregated like the rest.

    Departures: none in the per-token term. On-policy (a single update per batch)
    ``old_logps_BT`` is ``logps_BT.detach()``, ρ = 1 and the loss is REINFORCE with the given
    advantages.

    Args:
        logps_BT: (B, T) log π of the sampled tokens (with grad).
        old_logps_BT: (B, T) log π_old of the same tokens, from the sampling policy (no grad).
        advantages: (B,) one per sequence (GRPO/RLOO) or (B, T) per token (GAE).
        mask_BT: (B, T) 1 on tokens to train on.
        aggregation, normalizer: reduction (module table).
        kl_coef, ref_logps_BT, kl_kind: optional KL-to-reference term.
        is_weights_BT: optional per-token importance weights (no grad) multiplying the clipped
            term: ``tis_weights`` corrects for tokens sampled by another engine or policy version.

    Returns:
        loss: scalar.
        diagnostics (detached scalars; token means are over active tokens):
            ``policy_loss`` (the clipped term alone, aggregated like the loss),
            ``kl`` (aggregated KL estimate; only with kl_coef > 0),
            ``clip_fraction`` = ``clip_fraction_low`` + ``clip_fraction_high`` (tokens where the
            clipped term is the one taken: ρ < 1-ε_low with A < 0, or ρ > 1+ε_high with A > 0),
            ``ratio_mean``, ``ratio_max``, ``approx_kl`` (k3 estimate of KL[π_old ‖ π] on the
            tokens sampled from π_old, mean of (ρ - 1) - log ρ: how far this update has moved).
    """
    clip_high = clip_low if clip_high is None else clip_high
    mask_BT = mask_BT.to(logps_BT.dtype)
    advantages_BT = per_token(advantages)

    log_ratio_BT = logps_BT - old_logps_BT.detach()
    ratio_BT = torch.exp(log_ratio_BT)
    policy_loss_BT, is_low_clipped_BT, is_high_clipped_BT = clipped_surrogate(ratio_BT, advantages_BT, clip_low,
                                                                              clip_high)
    loss, diagnostics = reduce_policy_loss(policy_loss_BT, logps_BT, mask_BT, aggregation, normalizer, kl_coef=kl_coef,
                                           ref_logps_BT=ref_logps_BT, kl_kind=kl_kind, is_weights_BT=is_weights_BT)
    diagnostics.update(ratio_diagnostics(log_ratio_BT, ratio_BT, is_low_clipped_BT, is_high_clipped_BT, mask_BT))
    return loss, diagnostics


# --------------------------------------------------------------------------------------------
# Parts every policy loss shares (``clipped_policy_loss`` here; GSPO and CISPO in
# ``posttrain.train.rl.algorithms``)


def clipped_surrogate(ratio_BT: torch.Tensor, advantages_BT: torch.Tensor, clip_low: float, clip_high: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's per-token clipped term (Schulman et al. 2017, eq. 7), as a loss:

        ℓ = -min(ρ A, clip(ρ, 1 - ε_low, 1 + ε_high) A)

    Returns ℓ (B, T) and two bool (B, T) masks of where the clip binds (the gradient is 0
    there): ρ < 1 - ε_low with A < 0, and ρ > 1 + ε_high with A > 0."""
    unclipped_BT = ratio_BT * advantages_BT
    clipped_BT = torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high) * advantages_BT
    with torch.no_grad():
        is_low_clipped_BT = (ratio_BT < 1.0 - clip_low) & (advantages_BT < 0)
        is_high_clipped_BT = (ratio_BT > 1.0 + clip_high) & (advantages_BT > 0)
    return -torch.min(unclipped_BT, clipped_BT), is_low_clipped_BT, is_high_clipped_BT


def per_token(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages as (B, T) or (B, 1) (broadcast over tokens), detached: one per sequence (B,)
    becomes a column."""
    return (advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages).detach()


def reduce_policy_loss(
    policy_loss_BT: torch.Tensor,
    logps_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    aggregation: str,
    normalizer: _Denominator | None,
    *,
    kl_coef: float = 0.0,
    ref_logps_BT: torch.Tensor | None = None,
    kl_kind: str = "k3",
    is_weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A per-token policy loss ℓ_{i,t} (B, T) to the scalar that is optimised:

        aggregate(w_{i,t} · ℓ_{i,t} + β_KL · KL_{i,t})

    with ``is_weights_BT`` w (no grad; 1 when None) and, when ``kl_coef`` β_KL > 0, GRPO's
    in-loss KL ``kl_estimate(logps_BT, ref_logps_BT, kl_kind)``, both reduced by
    ``aggregation`` / ``normalizer`` (module table). Returns the loss and the detached
    diagnostics ``policy_loss`` (w·ℓ alone, aggregated the same way) and ``kl`` (with β_KL > 0).
    """
    if is_weights_BT is not None:
        policy_loss_BT = policy_loss_BT * is_weights_BT.detach()
    loss_BT = policy_loss_BT
    diagnostics: dict[str, torch.Tensor] = {}
    if kl_coef:
        if ref_logps_BT is None:
            raise ValueError("kl_coef > 0 needs ref_logps_BT")
        kl_BT = kl_estimate(logps_BT, ref_logps_BT.detach(), kl_kind)
        loss_BT = loss_BT + kl_coef * kl_BT
        diagnostics["kl"] = aggregate(kl_BT.detach(), mask_BT, aggregation, normalizer).detach()
    loss = aggregate(loss_BT, mask_BT, aggregation, normalizer)
    diagnostics["policy_loss"] = aggregate(policy_loss_BT.detach(), mask_BT, aggregation, normalizer)
    return loss, diagnostics


@torch.no_grad()
def ratio_diagnostics(log_ratio_BT: torch.Tensor, ratio_BT: torch.Tensor, is_low_clipped_BT: torch.Tensor,
                      is_high_clipped_BT: torch.Tensor, mask_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far the update has moved, as detached token means over ``mask_BT``:
    ``clip_fraction`` = ``clip_fraction_low`` + ``clip_fraction_high`` (the shares of tokens
    the caller marks clipped on each side), ``ratio_mean``, ``ratio_max`` and ``approx_kl``
    (k3 estimate of KL[π_old ‖ π] on tokens sampled from π_old: mean of (ρ - 1) - log ρ, with
    ρ = exp(``log_ratio_BT``), the per-token ratio)."""
    clip_low_frac = masked_mean(is_low_clipped_BT.to(mask_BT.dtype), mask_BT)
    clip_high_frac = masked_mean(is_high_clipped_BT.to(mask_BT.dtype), mask_BT)
    return {"clip_fraction": clip_low_frac + clip_high_frac, "clip_fraction_low": clip_low_frac,
            "clip_fraction_high": clip_high_frac, "ratio_mean": masked_mean(ratio_BT, mask_BT),
            "ratio_max": ratio_BT.masked_fill(mask_BT == 0, float("-inf")).max(),
            "approx_kl": masked_mean(torch.expm1(log_ratio_BT) - log_ratio_BT, mask_BT)}


def tis_weights(trainer_logps_BT: torch.Tensor, sampler_logps_BT: torch.Tensor, cap: float,
                mask_BT: torch.Tensor | None = None) -> torch.Tensor:
    """Truncated importance-sampling weights (Yao et al. 2025, "Your Efficient RL Framework
    Secretly Brings You Off-Policy RL Training"; Espeholt et al. 2018 truncate the same way):

        w_t = min(π_trainer(o_t) / π_sampler(o_t), C) = min(exp(log π_trainer − log π_sampler), C)

    The sampler (vLLM, another kernel, a stale policy version) drew the tokens; the gradient is
    for the trainer's π_old, so each token's term is reweighted by the ratio of the two, capped at
    C to bound the variance. No gradient flows through the weights; masked tokens get 0."""
    w_BT = torch.exp(trainer_logps_BT.detach().float() - sampler_logps_BT.detach().float()).clamp(max=cap)
    return w_BT if mask_BT is None else w_BT * mask_BT


# --------------------------------------------------------------------------------------------
# Value function


def value_loss(
    values_BT: torch.Tensor,
    old_values_BT: torch.Tensor,
    returns_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, masked mean over tokens:

        V_clip = V_old + clip(V - V_old, -ε, ε)
        loss   = mean_t ½ · max((V - R)², (V_clip - R)²)

    Not in the PPO paper: it is OpenAI baselines' ``ppo2`` value clipping, kept by TRL's
    PPOTrainer (``cliprange_value``) and torchtune's PPOLoss; Engstrom et al. 2020
    ("Implementation Matters in Deep RL") found it does not help. ``clip=None`` turns it off
    (½ (V - R)²). Reduction: token mean over the mask (``masked_mean``), like TRL.

    Returns:
        loss: scalar.
        diagnostics (detached): ``value_clip_fraction`` (tokens where the clipped error is the
        larger one), ``value_mean``, ``value_error`` (masked mean of (V - R)²).
    """
    mask_BT = mask_BT.to(values_BT.dtype)
    returns_BT = returns_BT.detach()
    unclipped_BT = (values_BT - returns_BT) ** 2
    if clip is None:
        loss_BT = unclipped_BT
        clipped_more_BT = torch.zeros_like(unclipped_BT)
    else:
        old_values_BT = old_values_BT.detach()
        values_clipped_BT = old_values_BT + torch.clamp(values_BT - old_values_BT, -clip, clip)
        clipped_BT = (values_clipped_BT - returns_BT) ** 2
        loss_BT = torch.max(unclipped_BT, clipped_BT)
        clipped_more_BT = (clipped_BT > unclipped_BT).to(mask_BT.dtype)
    loss = 0.5 * masked_mean(loss_BT, mask_BT)
    diagnostics = {
        "value_clip_fraction": masked_mean(clipped_more_BT, mask_BT).detach(),
        "value_mean": masked_mean(values_BT.detach(), mask_BT),
        "value_error": masked_mean(unclipped_BT.detach(), mask_BT),
    }
    return loss, diagnostics


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over the masked entries (population variances); detached scalar.

    1 is a perfect value function, 0 is no better than a constant, < 0 is worse. NaN when the
    returns have zero variance.
    """
    values, returns = values.detach(), returns.detach()
    if mask is None:
        mask = torch.ones_like(returns)
    mask = mask.to(returns.dtype)

    def _var(x: torch.Tensor) -> torch.Tensor:
        mean = masked_mean(x, mask)
        return masked_mean((x - mean) ** 2, mask)

    return 1.0 - _var(returns - values) / _var(returns)


# --------------------------------------------------------------------------------------------
# Entropy and action masks


def entropy_from_logits(logits_BTV: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, per position:

        H = logsumexp(z) - Σ_v softmax(z)_v z_v

    Tokens masked to -inf (``apply_action_mask``) have probability 0 and contribute 0, with a
    finite gradient (their logits are replaced before the product, so no 0·∞ appears).
    Returns (B, T) (any leading shape); no reduction.
    """
    probs_BTV = torch.softmax(logits_BTV, dim=-1)
    finite_logits_BTV = torch.where(probs_BTV > 0, logits_BTV, torch.zeros_like(logits_BTV))
    return torch.logsumexp(logits_BTV, dim=-1) - (probs_BTV * finite_logits_BTV).sum(-1)


def nlpo_topp_mask(logits_BV: torch.Tensor, top_p: float, tol: float = 1e-9) -> torch.Tensor:
    """NLPO's action mask (Ramamurthy et al. 2023, "Is Reinforcement Learning (Not) for Natural
    Language Processing?", Alg. 1): keep exactly the smallest set of most likely tokens whose
    cumulative probability is ≥ ``top_p`` under the masking policy's ``logits_BV``.

    A token is kept iff the probability of the tokens strictly more likely than it (in sorted
    order) is < top_p, so the argmax is always kept. Probabilities and their cumulative sums are
    computed in float64, and a prefix whose mass is within ``tol`` of top_p counts as reaching it,
    so probs [0.5, 0.3, 0.15, 0.05] with top_p = 0.8 keep two tokens whatever the rounding of
    0.5 + 0.3. Ties are broken by ``torch.sort``'s order.

    Returns: bool (B, V) (any leading shape), True on kept tokens.
    """
    probs_BV = torch.softmax(logits_BV.double(), dim=-1)
    sorted_probs_BV, order_BV = torch.sort(probs_BV, dim=-1, descending=True)
    mass_before_BV = torch.cumsum(sorted_probs_BV, dim=-1) - sorted_probs_BV
    keep_sorted_BV = mass_before_BV < top_p - tol
    keep_sorted_BV[..., 0] = True
    return torch.zeros_like(keep_sorted_BV).scatter(-1, order_BV, keep_sorted_BV)


def apply_action_mask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set logits outside ``mask`` (bool, same shape) to -inf, so sampling and softmax only see
    the kept actions. Returns a new tensor."""
    return logits.masked_fill(~mask, float("-inf"))
