"""CISPO (MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning
Attention", arXiv 2506.13585, §3.1): clip the importance-sampling *weight* and stop its
gradient, instead of clipping the token's update, so every token keeps a gradient:

    r_{i,t} = π_θ(o_{i,t}) / π_old(o_{i,t})
    r̂_{i,t} = clip(r_{i,t}, 1 - ε_low, 1 + ε_high)
    J(θ)    = E[ 1/Σ_i|o_i| · Σ_i Σ_t sg(r̂_{i,t}) Â_{i,t} log π_θ(o_{i,t}) ]        (eqs. 4–5)

with GRPO's group-normalised advantages Â_i (their eq. 2). PPO's min(ρA, clip(ρ)A) sets the
gradient of a token to 0 once its ratio leaves the clip range, and the rare "fork" tokens
("However", "Wait") are the ones whose ratios move most; CISPO only bounds how much such a token
counts. The reduction is token-level, 1/Σ_i|o_i| (``aggregation=dapo``).

Defaults: the paper sets ε_low "to a large value" (no lower bound on the weight): ε_low = 1
makes the bound 0, which a ratio never reaches. It tunes ε_high without publishing the value;
0.28 is DAPO's clip-higher and the default of Trinity-RFT's CISPO loss. With one update per
rollout batch r = 1 and CISPO's gradient is GRPO's with ``dapo`` aggregation; the weight starts
to matter with several minibatches or epochs, or with stale rollouts. Departures: none in the
loss; the paper's token-wise mask variant (its eqs. 6–7) is not implemented. The logged ``loss``
is the paper's -Σ r̂·Â·log π / Σ|o|, so its scale follows the log-probs, not the ratio as PPO's.

    posttrain cispo num_minibatches=4 prompts_per_step=8 group_size=8 learning_rate=3e-6
"""

from __future__ import annotations

import dataclasses

import torch

from posttrain.config import opt
from posttrain.losses.policy import per_token, ratio_diagnostics, reduce_policy_loss
from posttrain.train.rl.config import RLConfig

__all__ = ["CISPOConfig", "cispo_policy_loss"]


@dataclasses.dataclass
class CISPOConfig(RLConfig):
    """``posttrain cispo``: clipped, stop-gradient IS weights on every token's REINFORCE term (MiniMax-M1)."""

    algorithm: str = opt("cispo", "set by the command", "Algorithm")
    clip_low: float = opt(1.0, "IS-weight clip ε_low: the weight is kept ≥ 1 - ε_low (1 = no lower bound, as "
                          "MiniMax-M1)", "Update")
    clip_high: float = opt(0.28, "IS-weight clip ε_high: the weight is kept ≤ 1 + ε_high", "Update")
    aggregation: str = opt("dapo", "loss reduction (dapo: 1/Σ|o_i|, MiniMax-M1 eq. 4)", "Update")


def cispo_policy_loss(logps_BT: torch.Tensor, old_logps_BT: torch.Tensor, advantages: torch.Tensor,
                      mask_BT: torch.Tensor, clip_low: float = 1.0, clip_high: float | None = 0.28,
                      aggregation: str = "dapo", normalizer: float | torch.Tensor | None = None, **penalties
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO's per-token loss ℓ_{i,t} = -sg(clip(r_{i,t}, 1 - ε_low, 1 + ε_high)) · Â · log π_θ(o_{i,t})
    (module docstring), aggregated by ``aggregation`` / ``normalizer`` (the paper's is ``dapo``).

    Args: as ``losses.policy.clipped_policy_loss``; ``clip_high=None`` means ε_high = ε_low;
        ``penalties`` (``kl_coef``, ``ref_logps_BT``, ``kl_kind``, ``is_weights_BT``) go to
        ``losses.policy.reduce_policy_loss``.

    Returns:
        loss: scalar; its gradient w.r.t. log π_θ(o_{i,t}) is -r̂_{i,t} Â / (normaliser) on every
        token, clipped or not.
        diagnostics (detached): ``policy_loss``, ``kl`` (with kl_coef > 0), ``clip_fraction``
        (= ``clip_fraction_low`` + ``clip_fraction_high``: tokens whose weight was clipped,
        whatever the sign of Â, since none loses its gradient), ``ratio_mean``, ``ratio_max``
        and ``approx_kl`` of the unclipped ratios.
    """
    clip_high = clip_low if clip_high is None else clip_high
    mask_BT = mask_BT.to(logps_BT.dtype)
    advantages_BT = per_token(advantages)

    log_ratio_BT = logps_BT.detach() - old_logps_BT.detach()
    ratio_BT = torch.exp(log_ratio_BT)
    weight_BT = torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)   # sg(r̂): no gradient through it
    policy_loss_BT = -weight_BT * advantages_BT * logps_BT

    loss, diagnostics = reduce_policy_loss(policy_loss_BT, logps_BT, mask_BT, aggregation, normalizer, **penalties)
    diagnostics.update(ratio_diagnostics(log_ratio_BT, ratio_BT, ratio_BT < 1.0 - clip_low, ratio_BT > 1.0 + clip_high,
                                         mask_BT))
    return loss, diagnostics
