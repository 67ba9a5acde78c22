"""GRPO (Shao et al. 2024, "DeepSeekMath", §4.1.2): group-relative advantages, one per sequence,

    Â_i = (r_i - mean(r_group)) / std(r_group)        (``advantage_normalize=std``)
    Â_i =  r_i - mean(r_group)                        (``center``: Dr. GRPO, Liu et al. 2025)

with the clipped surrogate of ``losses.policy.clipped_policy_loss`` (aggregation ``grpo``,
``dapo`` or ``dr_grpo``). Departures: groups whose rewards are all equal are dropped (DAPO's
dynamic sampling, without refilling the batch); one update per batch and β = 0 by default, so
the ratio is 1 and the loss is REINFORCE with group-normalised advantages.

    posttrain grpo max_steps=40 prompts_per_step=8 group_size=8 learning_rate=3e-6
    posttrain grpo aggregation=dapo clip_high=0.28              # DAPO
"""

from __future__ import annotations

import dataclasses

import torch

from posttrain.config import opt
from posttrain.losses.advantages import group_advantages, sequence_rewards
from posttrain.train.rl.algorithms.spec import Advantages
from posttrain.train.rl.config import RLConfig

__all__ = ["GRPOConfig", "grpo_advantages", "kept_groups", "kl_penalized_rewards"]


@dataclasses.dataclass
class GRPOConfig(RLConfig):
    """``posttrain grpo``: group-relative advantages (DeepSeekMath GRPO; DAPO / Dr. GRPO variants)."""

    algorithm: str = opt("grpo", "set by the command", "Algorithm")


def kl_penalized_rewards(scores_B: torch.Tensor, batch: dict, config: RLConfig) -> torch.Tensor:
    """One reward per sequence (B,): the score, minus β·Σ_t KL_t when ``kl_in=reward``."""
    return sequence_rewards(scores_B, batch["old_logps"], batch.get("ref_logps"), batch["mask"], config.beta,
                            config.kl_in, config.kl_estimator)


def kept_groups(zero_variance_G: torch.Tensor, config: RLConfig) -> torch.Tensor:
    """(B,) bool: the rows of groups with some reward variance, or every row when
    ``filter_zero_variance_groups`` is off."""
    if not config.filter_zero_variance_groups:
        return torch.ones(len(zero_variance_G) * config.group_size, dtype=torch.bool)
    return ~zero_variance_G.repeat_interleave(config.group_size)


def grpo_advantages(scores_B: torch.Tensor, batch: dict, config: RLConfig, reduce_sum=None) -> Advantages:
    """Group-normalised advantages (B,) of the KL-penalised rewards; rows are group-contiguous."""
    advantages_B, diag = group_advantages(kl_penalized_rewards(scores_B, batch, config), config.group_size,
                                          config.advantage_normalize)
    return Advantages(advantages_B, kept_groups(diag["zero_std_G"], config),
                      {"zero_variance_share": float(diag["frac_zero_std"])})
