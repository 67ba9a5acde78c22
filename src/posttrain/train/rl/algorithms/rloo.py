"""RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): REINFORCE with a
leave-one-out baseline, one advantage per sequence,

    A_i = r_i - 1/(k-1) Σ_{j≠i} r_j

with the clipped surrogate of ``losses.policy.clipped_policy_loss``. No value model; groups of
equal rewards are kept by default (their advantages are 0 anyway).

    posttrain rloo group_size=4
"""

from __future__ import annotations

import dataclasses

import torch

from posttrain.config import opt
from posttrain.losses.advantages import rloo_advantages
from posttrain.train.rl.algorithms.grpo import kept_groups, kl_penalized_rewards
from posttrain.train.rl.algorithms.spec import Advantages
from posttrain.train.rl.config import RLConfig

__all__ = ["RLOOConfig", "rloo_algorithm_advantages"]


@dataclasses.dataclass
class RLOOConfig(RLConfig):
    """``posttrain rloo``: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024)."""

    algorithm: str = opt("rloo", "set by the command", "Algorithm")
    filter_zero_variance_groups: bool = opt(False, "drop groups whose rewards are all equal", "Update")


def rloo_algorithm_advantages(scores_B: torch.Tensor, batch: dict, config: RLConfig, reduce_sum=None) -> Advantages:
    """Leave-one-out advantages (B,) of the KL-penalised rewards; rows are group-contiguous."""
    rewards_B = kl_penalized_rewards(scores_B, batch, config)
    rewards_GK = rewards_B.view(-1, config.group_size)
    zero_variance_G = (rewards_GK == rewards_GK[:, :1]).all(1)
    return Advantages(rloo_advantages(rewards_B, config.group_size), kept_groups(zero_variance_G, config),
                      {"zero_variance_share": float(zero_variance_G.float().mean())})
