"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071): GRPO's
group-normalised advantages, with the importance ratio and its clip taken per *sequence*:

    s_i(θ) = (π_θ(y_i|x) / π_old(y_i|x))^(1/|y_i|)
           = exp( (1/|y_i|) Σ_t [log π_θ(y_{i,t}) - log π_old(y_{i,t})] )             §4.1, eq. 7
    J(θ)   = E[ (1/G) Σ_i min( s_i Â_i, clip(s_i, 1 - ε_low, 1 + ε_high) Â_i ) ]     §4.1, eq. 5

The loss is written in the paper's token form, GSPO-token (§4.3):

    s_{i,t} = sg[s_i] · π_θ(y_{i,t}) / sg[π_θ(y_{i,t})]
    ℓ_{i,t} = -min( s_{i,t} Â_i, clip(s_{i,t}, 1 - ε_low, 1 + ε_high) Â_i )

s_{i,t} equals s_i in value and ∇s_{i,t} = s_i ∇log π_θ(y_{i,t}), so with one advantage per
sequence and the ``grpo`` aggregation ((1/B) Σ_i (1/|y_i|) Σ_t ℓ_{i,t}) the gradient is the
sequence objective's, (1/B) Σ_i s_i Â_i (1/|y_i|) Σ_t ∇log π_θ(y_{i,t}) while unclipped and 0
once s_i leaves the clip range on the side its advantage pushes (§4.2). The token form also
carries the per-token truncated-IS weights and the in-loss KL like every other loss here.

Defaults are the paper's (§5.1): ε_low = 3e-4, ε_high = 4e-4 (a sequence ratio is a geometric
mean of token ratios, so it moves far less than one token's), each rollout batch split into 4
minibatches (so the update is off-policy and the clip matters), no KL term (β = 0). With one
update per batch s_i = 1 and GSPO is GRPO's REINFORCE. Departure: none in the loss; zero-variance
groups are dropped as in GRPO.

    posttrain gspo max_steps=40 prompts_per_step=8 group_size=8 learning_rate=3e-6
"""

from __future__ import annotations

import dataclasses

import torch

from posttrain.config import opt
from posttrain.losses.policy import clipped_surrogate, per_token, ratio_diagnostics, reduce_policy_loss
from posttrain.train.rl.config import RLConfig

__all__ = ["GSPOConfig", "gspo_policy_loss"]


@dataclasses.dataclass
class GSPOConfig(RLConfig):
    """``posttrain gspo``: sequence-level ratio and clip on group-relative advantages (Zheng et al. 2025)."""

    algorithm: str = opt("gspo", "set by the command", "Algorithm")
    clip_low: float = opt(3e-4, "sequence-ratio clip ε (lower side; GSPO §5.1)", "Update")
    clip_high: float = opt(4e-4, "sequence-ratio clip ε (upper side; GSPO §5.1)", "Update")
    num_minibatches: int = opt(4, "optimizer updates per pass (GSPO §5.1 splits each rollout batch in 4)", "Update")


def gspo_policy_loss(logps_BT: torch.Tensor, old_logps_BT: torch.Tensor, advantages: torch.Tensor,
                     mask_BT: torch.Tensor, clip_low: float = 3e-4, clip_high: float | None = None,
                     aggregation: str = "grpo", normalizer: float | torch.Tensor | None = None, **penalties
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO-token's clipped surrogate (module docstring), aggregated by ``aggregation`` /
    ``normalizer`` (``losses.policy``'s table; the paper's is ``grpo``).

    Args: as ``losses.policy.clipped_policy_loss``; ``advantages`` is (B,) one per sequence
        (GSPO) or (B, T); ``clip_high=None`` means ε_high = ε_low; ``penalties`` (``kl_coef``,
        ``ref_logps_BT``, ``kl_kind``, ``is_weights_BT``) go to ``losses.policy.reduce_policy_loss``.

    Returns:
        loss: scalar.
        diagnostics (detached): ``policy_loss``, ``kl`` (with kl_coef > 0), ``clip_fraction``
        (= ``clip_fraction_low`` + ``clip_fraction_high``: the share of tokens in sequences
        whose ratio s_i is clipped on the side its advantage pushes), ``ratio_mean`` and
        ``ratio_max`` of s_i (token-weighted), ``approx_kl`` from the per-token ratios.
    """
    clip_high = clip_low if clip_high is None else clip_high
    mask_BT = mask_BT.to(logps_BT.dtype)
    advantages_BT = per_token(advantages)

    log_ratio_BT = (logps_BT - old_logps_BT.detach()) * mask_BT
    log_sequence_ratio_B1 = log_ratio_BT.sum(-1, keepdim=True) / mask_BT.sum(-1, keepdim=True).clamp(min=1)
    # s_{i,t} = sg[s_i] · π_θ / sg[π_θ]: the value of s_i, the gradient s_i · ∇log π_θ(y_{i,t})
    sequence_ratio_BT = torch.exp(log_sequence_ratio_B1.detach() + logps_BT - logps_BT.detach())
    policy_loss_BT, is_low_clipped_BT, is_high_clipped_BT = clipped_surrogate(sequence_ratio_BT, advantages_BT,
                                                                              clip_low, clip_high)
    loss, diagnostics = reduce_policy_loss(policy_loss_BT, logps_BT, mask_BT, aggregation, normalizer, **penalties)
    diagnostics.update(ratio_diagnostics(log_ratio_BT, sequence_ratio_BT.detach(), is_low_clipped_BT,
                                         is_high_clipped_BT, mask_BT))
    return loss, diagnostics
