"""Preference losses: the DPO family, KTO (unpaired), ORPO (reference-free, with an NLL term) and
the Bradley–Terry reward-model loss.

Every DPO-family variant is a function of one "logit" per pair,

    h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))    reference-based types
    h = log π(y_w) - log π(y_l)                                          reference-free types

and ``beta``. ``dpo_loss`` builds h from the four log-prob tensors, looks the variant up in
``PREFERENCE_LOSSES`` and returns per-example losses plus detached implicit rewards.

Variants (``loss_type``, TRL alias in brackets), per-example loss, and what they need:

``dpo`` (``sigmoid``)            (1-ε)·(-log σ(βh)) + ε·(-log σ(-βh))   reference; summed log-probs
    Rafailov et al. 2023, eq. 7; ε > 0 is conservative DPO (cDPO, Mitchell 2023).
``dpo_norm`` (``sigmoid_norm``)  same as ``dpo``                         reference; MEAN log-probs
    TÜLU 3's length-normalised DPO (Lambert et al. 2024), run there with β = 5.
``simpo``                        -log σ(βh - γ)                          no reference; MEAN log-probs
    Meng et al. 2024, eq. 6.
``ipo``                          (h - 1/(2β))²                           reference; summed log-probs
    Azar et al. 2023 (ΨPO with Ψ = identity).
``hinge``                        max(0, 1 - βh)                          reference; summed log-probs
    SLiC-HF (Zhao et al. 2023) calibration loss in RSO's reference-normalised form.

Two losses of the family are not functions of h, and each has its own trainer: ``kto_loss``
(unpaired desirable / undesirable completions against a KL reference point, ``posttrain kto``)
and ``orpo_loss`` (chosen-response NLL plus an odds-ratio term, no reference, ``posttrain orpo``).

"summed" = sequence log-prob (sum over the completion's tokens), "MEAN" = per-token mean. The
loss never sees lengths; trainers read ``loss_spec(loss_type)`` to decide whether to run a
reference model and which log-probs to feed.

Reference implementations: the ``sigmoid`` loss of TRL's first DPOTrainer,
``trl/trainer/dpo_trainer.py`` (huggingface/trl@9d58faa767ee18f52217b32b82d75807c8ce404a,
``dpo_loss``: same logits, losses and rewards); TRL's later ``dpo_trainer.py`` for ``ipo`` /
``hinge`` / ``label_smoothing`` and ``cpo_trainer.py`` for ``simpo`` (``simpo_gamma``), and
open-instruct's ``open_instruct/dpo_utils.py`` for ``dpo_norm`` (these three not pinned).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_ALIASES",
    "LOSS_SPECS",
    "PREFERENCE_LOSSES",
    "LossSpec",
    "bradley_terry_loss",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "kto_loss",
    "kto_reference_point",
    "log_odds",
    "loss_spec",
    "orpo_loss",
    "sigmoid_loss",
    "simpo_loss",
    "wpo_weights",
]


# --------------------------------------------------------------------------------------------
# What each loss needs from the trainer


@dataclass(frozen=True)
class LossSpec:
    """What a preference loss needs from its caller.

    needs_reference: the loss uses π_ref log-probs (else the reference forward pass is skipped
        and ``None`` may be passed for the reference arguments).
    length_normalized: the caller passes per-token MEAN log-probs instead of summed ones.
    """

    needs_reference: bool
    length_normalized: bool


# --------------------------------------------------------------------------------------------
# One function per variant: h_B (the pairwise logit) and beta -> per-example loss (B,)


def sigmoid_loss(logits_B: torch.Tensor, beta: float, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO's logistic loss (Rafailov et al. 2023, eq. 7), with conservative label smoothing.

        loss = (1 - ε)·(-log σ(β h)) + ε·(-log σ(-β h))

    ε = ``label_smoothing`` is the assumed probability that a preference label is flipped
    (cDPO; Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"); ε = 0 is
    plain DPO. Used for both ``dpo`` (summed log-probs) and ``dpo_norm`` (mean log-probs).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    scaled_B = beta * logits_B
    return -(1.0 - label_smoothing) * F.logsigmoid(scaled_B) - label_smoothing * F.logsigmoid(-scaled_B)


def simpo_loss(logits_B: torch.Tensor, beta: float, *, gamma: float = 0.5) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6): reference-free, on per-token mean log-probs,

        loss = -log σ(β h - γ),   h = mean log π(y_w) - mean log π(y_l)

    ``gamma`` is the plain target reward margin γ (in reward units, the same space as βh), as in
    TRL's ``CPOConfig.simpo_gamma`` (default 0.5). SimPO's own code takes ``gamma_beta_ratio``
    = γ/β instead; convert with γ = β · gamma_beta_ratio (their recipes: β ≈ 2–2.5,
    γ/β ≈ 0.3–0.5, so γ ≈ 1). Note ``dpo_loss``'s default β = 0.1 is a DPO value, far too small
    for SimPO.
    """
    return -F.logsigmoid(beta * logits_B - gamma)


def ipo_loss(logits_B: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", the sampled loss of ΨPO with Ψ = identity; β plays the paper's τ):

        loss = (h - 1/(2β))²

    Departure from TRL: TRL's DPOTrainer feeds IPO per-token MEAN log-probs; the paper (and
    this spec: ``length_normalized=False``) uses sequence log-probs.
    """
    return (logits_B - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(logits_B: torch.Tensor, beta: float) -> torch.Tensor:
    """Hinge loss on the reference-normalised logit (SLiC-HF, Zhao et al. 2023, calibration loss
    with δ = 1/β; the reference-normalised form is RSO's, Liu et al. 2024):

        loss = max(0, 1 - β h)

    Departure from SLiC-HF: the paper's hinge is on policy log-prob differences without a
    reference model; this (like TRL's ``hinge``) uses the DPO logit h with π_ref.
    """
    return torch.relu(1.0 - beta * logits_B)


PREFERENCE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "dpo": sigmoid_loss,
    "dpo_norm": sigmoid_loss,
    "simpo": simpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
}

_CANONICAL_SPECS: dict[str, LossSpec] = {
    "dpo": LossSpec(needs_reference=True, length_normalized=False),
    "dpo_norm": LossSpec(needs_reference=True, length_normalized=True),
    "simpo": LossSpec(needs_reference=False, length_normalized=True),
    "ipo": LossSpec(needs_reference=True, length_normalized=False),
    "hinge": LossSpec(needs_reference=True, length_normalized=False),
}

#: TRL's names for our types.
LOSS_ALIASES: dict[str, str] = {"sigmoid": "dpo", "sigmoid_norm": "dpo_norm"}

#: Every accepted ``loss_type`` (aliases included) -> what it needs.
LOSS_SPECS: dict[str, LossSpec] = {
    **_CANONICAL_SPECS,
    **{alias: _CANONICAL_SPECS[name] for alias, name in LOSS_ALIASES.items()},
}


def _canonical(loss_type: str) -> str:
    name = LOSS_ALIASES.get(loss_type, loss_type)
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss_type {loss_type!r}; known: {sorted(LOSS_SPECS)}")
    return name


def loss_spec(loss_type: str) -> LossSpec:
    """The ``LossSpec`` of ``loss_type`` (aliases accepted); ValueError if unknown."""
    return _CANONICAL_SPECS[_canonical(loss_type)]


# --------------------------------------------------------------------------------------------
# The entry point


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    loss_type: str = "dpo",
    *,
    weights: torch.Tensor | None = None,
    **options: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example DPO-family loss (see the module table for every ``loss_type``).

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) log π of the chosen / rejected
            completions: summed over tokens, or per-token means where
            ``loss_spec(loss_type).length_normalized``.
        ref_chosen_logps, ref_rejected_logps: (B,) the same under π_ref, reduced the same way;
            ``None`` allowed (and ignored if given) for reference-free types.
        beta: β, the inverse temperature / KL strength (DPO: 0.1; TÜLU 3 ``dpo_norm``: 5;
            SimPO: 2–2.5).
        loss_type: a key of ``LOSS_SPECS``.
        weights: optional (B,) per-example weights multiplying the losses (detached), e.g.
            ``wpo_weights(...)`` for WPO.
        **options: the variant's own keyword options (``dpo``/``dpo_norm``: ``label_smoothing``;
            ``simpo``: ``gamma``); anything else is a TypeError.

    Returns:
        losses: (B,) per-example loss, not reduced (the caller takes the mean).
        chosen_rewards, rejected_rewards: (B,) detached implicit rewards,
            β·(log π - log π_ref) for reference-based types and β·log π for reference-free ones.
    """
    name = _canonical(loss_type)
    if _CANONICAL_SPECS[name].needs_reference:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(f"loss_type {loss_type!r} needs reference log-probs (got None)")
        chosen_logratios_B = policy_chosen_logps - ref_chosen_logps
        rejected_logratios_B = policy_rejected_logps - ref_rejected_logps
    else:
        chosen_logratios_B = policy_chosen_logps
        rejected_logratios_B = policy_rejected_logps
    logits_B = chosen_logratios_B - rejected_logratios_B
    losses_B = PREFERENCE_LOSSES[name](logits_B, beta, **options)
    if weights is not None:
        losses_B = losses_B * weights.detach()
    chosen_rewards_B = beta * chosen_logratios_B.detach()
    rejected_rewards_B = beta * rejected_logratios_B.detach()
    return losses_B, chosen_rewards_B, rejected_rewards_B


def wpo_weights(
    policy_chosen_logps_B: torch.Tensor,
    policy_rejected_logps_B: torch.Tensor,
    max_weight: float | None = 1.0,
) -> torch.Tensor:
    """WPO example weights (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
    Optimization"): how likely the current policy is to have produced the (off-policy) pair,

        w = exp(ℓ(y_w) + ℓ(y_l)),   ℓ(y) = (1/|y|) Σ_t log π(y_t | x, y_<t)

    The caller passes per-token MEAN policy log-probs ℓ (the length normalisation). Detached:
    the weight scales the loss but gets no gradient. Pass to ``dpo_loss(..., weights=w)``.

    Departure: the paper's "weight alignment" replaces log π(y_t) by
    log π(y_t) - log Σ_v π(v)² per token before averaging; that needs the full distribution, so
    do it upstream and pass the calibrated means here (TRL's ``use_weighting`` does that). With
    calibration the weight can exceed 1, so it is clamped at ``max_weight`` (TRL: 1; None: no
    clamp).
    """
    weights_B = torch.exp(policy_chosen_logps_B.detach() + policy_rejected_logps_B.detach())
    if max_weight is not None:
        weights_B = weights_B.clamp(max=max_weight)
    return weights_B


# --------------------------------------------------------------------------------------------
# KTO: desirable / undesirable completions, no pairs


def kto_reference_point(policy_mismatched_logps: torch.Tensor, ref_mismatched_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z_ref, the paper's biased estimate of KL(π_θ ‖ π_ref) (Ethayarajh et
    al. 2024, §4.1, the z_0 of eq. 7):

        z_ref = max(0, mean_i [log π_θ(y'_i | x_i) - log π_ref(y'_i | x_i)])

    over mismatched pairs: prompt x_i with the completion y'_i of another row (another prompt), so
    y'_i is a plausible output that was not labelled for x_i. Clamped at 0 because a KL is never
    negative; detached, as in the paper: z_ref only sets where the value function saturates, and
    no gradient flows through it.

    Args: (M,) summed log-probs of the M mismatched completions under π_θ and π_ref.
    Returns: a 0-dim tensor without gradient. Every process must pass all M values (the trainer
    gathers them), so z_ref is one number per optimizer step.
    """
    logratios_M = policy_mismatched_logps.detach() - ref_mismatched_logps.detach()
    return logratios_M.mean().clamp(min=0.0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable_mask: torch.Tensor,
    kl_reference_point: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, eq. 7: L = E[λ_y - v(x, y)] with the Kahneman–Tversky value
    function v), per example:

        r = log π_θ(y|x) - log π_ref(y|x)                      (summed log-probs)
        loss = λ_D · (1 - σ(β (r - z_ref)))     y desirable
        loss = λ_U · (1 - σ(β (z_ref - r)))     y undesirable

    z_ref = ``kl_reference_point`` (``kto_reference_point``; detached again here, so it never
    carries gradient), λ_D / λ_U = ``desirable_weight`` / ``undesirable_weight``. At init
    (π_θ = π_ref) r = 0 and z_ref = 0, so every loss is λ_y / 2.

    Reduction: none; the trainer takes the mean over examples (``posttrain kto``: the engine's
    normaliser is the number of examples in the optimizer step, on every process).

    Reference implementation: TRL's ``KTOTrainer.kto_loss`` with ``loss_type="kto"``
    (huggingface/trl@b12c2cf006effb32a3408d0ad61dbc8ef7d75119): the same per-example losses and
    rewards; TRL returns desirable losses first, here each example keeps its place.

    Returns:
        losses_B: (B,) per-example loss.
        rewards_B: (B,) detached implicit rewards β·r.
    """
    z = torch.as_tensor(kl_reference_point, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    logratios_B = policy_logps - ref_logps
    desirable_B = desirable_mask.to(torch.bool)
    losses_B = torch.where(desirable_B,
                           desirable_weight * (1.0 - torch.sigmoid(beta * (logratios_B - z))),
                           undesirable_weight * (1.0 - torch.sigmoid(beta * (z - logratios_B))))
    return losses_B, beta * logratios_B.detach()


# --------------------------------------------------------------------------------------------
# ORPO: NLL of the chosen response plus an odds-ratio term, no reference

#: ORPO's P(y|x) is capped at exp(MAX_MEAN_LOGP) ≈ 1 - 1e-6: at P = 1 the odds are infinite (a float32
#: log-softmax returns exactly 0 for a near-certain token), so the log odds would be inf and the
#: gradient nan. Above the cap the odds-ratio term has no gradient; the NLL term keeps its own.
MAX_MEAN_LOGP = -1e-6


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log odds(y|x) = log P - log(1 - P), with P = exp(ℓ) and ℓ the per-token MEAN log-prob of y
    (ORPO's P_θ(y|x), Hong et al. 2024, §4.1; odds: eq. 4), computed stably:

        log(1 - P) = log(-expm1(ℓ))    for ℓ > -ln 2   (1 - exp(ℓ) cancels catastrophically near 0)
                   = log1p(-exp(ℓ))    otherwise

    (Mächler 2012, "Accurately computing log(1 - exp(-|a|))"). TRL's ``odds_ratio_loss`` writes
    ``log1p(-exp(ℓ))`` everywhere, which loses digits as P → 1: in float32 its log odds is 0.013
    low at ℓ = -1e-6 and inf once exp(ℓ) rounds to 1 (ℓ > -3e-8). ℓ is first capped at
    ``MAX_MEAN_LOGP``.
    """
    capped = mean_logps.clamp(max=MAX_MEAN_LOGP)
    near_one = capped > -math.log(2.0)
    # each branch evaluated where it is accurate; the other side's input is swapped for a safe value
    log1m_near = torch.log(-torch.expm1(torch.where(near_one, capped, torch.full_like(capped, -1.0))))
    log1m_far = torch.log1p(-torch.exp(torch.where(near_one, torch.full_like(capped, -1.0), capped)))
    return capped - torch.where(near_one, log1m_near, log1m_far)


def orpo_loss(
    policy_chosen_mean_logps: torch.Tensor,
    policy_rejected_mean_logps: torch.Tensor,
    orpo_lambda: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO (Hong et al. 2024, eq. 6: L_ORPO = E[L_SFT + λ·L_OR]; L_OR: eq. 7), reference-free,
    per pair, on per-token MEAN log-probs ℓ of the responses:

        L_SFT = -ℓ(y_w)                                         NLL of the chosen response
        L_OR  = -log σ(log odds(y_w) - log odds(y_l))           odds(y) = P / (1 - P), P = exp ℓ(y)
        loss  = L_SFT + λ · L_OR

    λ = ``orpo_lambda`` (the paper's λ, 0.1; TRL's ``ORPOConfig.beta``). Log odds via
    :func:`log_odds` (stable near P = 1).

    Reduction: none; the trainer takes the mean over pairs. Departure from TRL's ORPOTrainer
    (``trl/trainer/orpo_trainer.py``, huggingface/trl@4795c7d2610c16ea18b74b70456ae825aa64b026):
    there L_SFT is one cross-entropy over every prompt and response token of the batch's chosen
    rows (a token mean, so long responses weigh more); here it is each chosen response's per-token
    mean NLL (response tokens only, as the paper's L_SFT on y_w), then the mean over pairs. The
    odds-ratio term is the same.

    Returns:
        losses_B: (B,) per-pair loss.
        nll_B: (B,) detached L_SFT.
        log_odds_ratio_B: (B,) detached log odds(y_w) - log odds(y_l).
    """
    log_odds_ratio_B = log_odds(policy_chosen_mean_logps) - log_odds(policy_rejected_mean_logps)
    nll_B = -policy_chosen_mean_logps
    losses_B = nll_B - orpo_lambda * F.logsigmoid(log_odds_ratio_B)
    return losses_B, nll_B.detach(), log_odds_ratio_B.detach()


# --------------------------------------------------------------------------------------------
# Reward model


def bradley_terry_loss(
    chosen_scores_B: torch.Tensor,
    rejected_scores_B: torch.Tensor,
    margin_B: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley–Terry pairwise reward-model loss, per example:

        loss = -log σ(r_c - r_r - m) + c·(r_c + r_r)²

    m = ``margin_B`` is Llama 2's preference-strength margin (Touvron et al. 2023, eq. 2; 0 when
    None). The second term is reward centering (Eisenstein et al. 2023, "Helping or Herding?
    Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking"), c = ``center_coef``:
    it pins the free additive constant of the rewards so that they sum to ≈ 0 per pair (TRL's
    ``center_rewards_coefficient``, suggested 0.01).

    Returns:
        losses_B: (B,) not reduced.
        accuracy_B: (B,) detached float, 1.0 where r_c > r_r (ties count as wrong).
    """
    logits_B = chosen_scores_B - rejected_scores_B
    if margin_B is not None:
        logits_B = logits_B - margin_B
    losses_B = -F.logsigmoid(logits_B)
    if center_coef:
        losses_B = losses_B + center_coef * (chosen_scores_B + rejected_scores_B) ** 2
    accuracy_B = (chosen_scores_B > rejected_scores_B).detach().to(chosen_scores_B.dtype)
    return losses_B, accuracy_B
