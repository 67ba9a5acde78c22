"""NLPO (Ramamurthy et al. 2023, "Is Reinforcement Learning (Not) for Natural Language
Processing?", Alg. 1): PPO whose actions are masked to the top-p tokens of a masking policy, a
frozen copy of the policy refreshed every ``mask_refresh_steps`` rollout steps. The mask is
applied at sampling (``rollout.TopPActionMask``) and in every log-prob of the update, the
reference's included (``losses.policy.nlpo_topp_mask``). Advantages and losses are PPO's.
Departure: on resume the masking policy restarts from the resumed policy.

    posttrain nlpo mask_top_p=0.9 mask_refresh_steps=5
"""

from __future__ import annotations

import dataclasses

from posttrain.config import ConfigError, opt
from posttrain.train.rl.algorithms.ppo import PPOConfig

__all__ = ["NLPOConfig"]


@dataclasses.dataclass
class NLPOConfig(PPOConfig):
    """``posttrain nlpo``: PPO whose actions are masked to the top-p tokens of a periodically
    refreshed copy of the policy (Ramamurthy et al. 2023)."""

    algorithm: str = opt("nlpo", "set by the command", "Algorithm")
    mask_top_p: float = opt(0.9, "keep the smallest set of the masking policy's tokens with this much mass", "NLPO")
    mask_refresh_steps: int = opt(5, "copy the policy into the masking policy every N rollout steps", "NLPO")

    def validate(self):
        super().validate()
        if not 0 < self.mask_top_p <= 1:
            raise ConfigError("mask_top_p must lie in (0, 1]")
        if self.mask_refresh_steps < 1:
            raise ConfigError("mask_refresh_steps must be >= 1")
        if self.rollout_backend != "hf" or self.placement != "local":
            raise ConfigError("nlpo applies its action mask inside transformers generate in the training process: "
                              "use rollout_backend=hf placement=local")
