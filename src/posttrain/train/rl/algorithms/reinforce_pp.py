"""REINFORCE++ (Hu et al. 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
Language Models", arXiv 2501.03262): PPO's machinery without the critic.

- Token-level KL penalty in the reward, the score on the last token:
      r_t = 1[t = |o|] · r(x, y) - β · KL_t,   KL_t = log π_old(o_t) - log π_ref(o_t)   (k1)
- The advantage of a token is its return, summed to the end of the sequence (γ = 1):
      A_t = r(x, y) - β Σ_{s ≥ t} KL_s
- Advantages normalised over the *global* batch (every token of every sequence of the step, on
  all processes): A ← (A - mean) / std, instead of per prompt group as GRPO does.
- PPO's clipped surrogate (``losses.policy.clipped_policy_loss``), token mean.

This is the paper's REINFORCE++ for any number of samples per prompt (k ≥ 1); its later
"REINFORCE++ w/ baseline" (group mean subtracted first) is not this command. The return is
GAE with V ≡ 0 and λ = 1 (``losses.advantages.gae``), and the normalisation is
``losses.advantages.whiten`` with ``reduce_sum``, so two processes give the same advantages as
one. Defaults: k1 KL in the reward (the paper's KL_t) with β = 0.01 — our choice, the paper
fixes no single value —, ε = 0.2, one update per rollout batch, token-mean loss.

    posttrain reinforce_pp prompts_per_step=8 group_size=2 beta=0.01 learning_rate=3e-6
"""

from __future__ import annotations

import dataclasses

import torch

from posttrain.config import opt
from posttrain.losses.advantages import gae, token_rewards, whiten
from posttrain.train.rl.algorithms.spec import Advantages
from posttrain.train.rl.config import RLConfig

__all__ = ["ReinforcePPConfig", "reinforce_pp_advantages"]


@dataclasses.dataclass
class ReinforcePPConfig(RLConfig):
    """``posttrain reinforce_pp``: critic-free PPO with a token-level KL penalty and globally
    normalised returns (REINFORCE++, Hu et al. 2025)."""

    algorithm: str = opt("reinforce_pp", "set by the command", "Algorithm")
    beta: float = opt(0.01, "KL coefficient of the per-token penalty in the reward", "KL")
    kl_in: str = opt("reward", "REINFORCE++ folds -β·KL (k1) per token into the reward", "KL")
    kl_estimator: str = opt("k1", "per-token KL estimator (the paper: k1 = log π_old - log π_ref)", "KL")
    aggregation: str = opt("dapo", "loss reduction (dapo = token mean)", "Update")
    filter_zero_variance_groups: bool = opt(False, "drop groups whose rewards are all equal (REINFORCE++ "
                                            "normalises over the batch, not per group: off)", "Update")


def reinforce_pp_advantages(scores_B: torch.Tensor, batch: dict, config: RLConfig, reduce_sum=None) -> Advantages:
    """Per-token advantages (B, T): the return-to-go of ``token_rewards`` (the score on the last
    token, -β·KL_t on each token when ``kl_in=reward``), whitened over every sampled token of the
    global batch (``reduce_sum`` sums over processes)."""
    mask_BT = batch["mask"]
    rewards_BT = token_rewards(scores_B, batch["old_logps"], batch.get("ref_logps"), mask_BT, config.beta,
                               config.kl_in, config.kl_estimator)
    # GAE with V ≡ 0, γ = λ = 1: δ_t = r_t and Â_t = Σ_{s ≥ t} r_s, the undiscounted return-to-go
    returns_BT, _ = gae(rewards_BT, torch.zeros_like(rewards_BT), mask_BT, gamma=1.0, lam=1.0)
    advantages_BT = whiten(returns_BT, mask_BT, reduce_sum=reduce_sum)
    return Advantages(advantages_BT, torch.ones(mask_BT.shape[0], dtype=torch.bool), {})
