"""What differs between GRPO, RLOO, PPO and NLPO: the advantage estimate (and, for PPO/NLPO, a
value loss). Everything else — sampling, rewards, the clipped update, KL, checkpoints — is the
one loop in ``trainer.py``. The math lives in ``posttrain.losses``; this file only wires it.

=========  ==============================================  =====================================
algorithm  advantage                                       departures
=========  ==============================================  =====================================
grpo       (r - mean_group) / std_group, one per sequence   zero-variance groups dropped (DAPO's
           (Shao et al. 2024, §4.1.2; ``center`` = Dr.      dynamic sampling without refill); KL
           GRPO)                                            k3 in the loss as in the paper
rloo       r - mean of the other k-1 rewards (Ahmadian et   sequence-level, no value model
           al. 2024)
ppo        GAE on per-token rewards: -β·KL_t on every       separate value model (policy weights
           token, + the score on the last one (Ziegler et   + fresh scalar head, or a reward
           al. 2019); whitened; clipped value loss          model as in TÜLU 3)
nlpo       as ppo, with logits masked to the top-p tokens   mask policy refreshed every
           of a periodically refreshed policy copy          ``mask_refresh_steps`` rollout steps
           (Ramamurthy et al. 2023)
=========  ==============================================  =====================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.losses.advantages import gae, group_advantages, rloo_advantages, whiten
from posttrain.losses.kl import kl_estimate

__all__ = ["Advantages", "ALGORITHMS", "sequence_rewards", "token_rewards", "ValueModel"]


@dataclass
class Advantages:
    """advantages: (B,) per sequence or (B, T) per token; keep: (B,) bool rows to train on;
    returns / old_values: (B, T) value targets and values at rollout time (PPO/NLPO only)."""

    advantages: torch.Tensor
    keep: torch.Tensor
    metrics: dict
    returns: torch.Tensor | None = None
    old_values: torch.Tensor | None = None


def sequence_rewards(scores_B, old_logps_BT, ref_logps_BT, mask_BT, beta: float, kl_in: str, kl_estimator: str):
    """The score, minus β·Σ_t KL_t when the KL goes into the reward (``kl_in="reward"``)."""
    if kl_in != "reward" or beta == 0 or ref_logps_BT is None:
        return scores_B
    kl_B = (kl_estimate(old_logps_BT, ref_logps_BT, kl_estimator) * mask_BT).sum(-1)
    return scores_B - beta * kl_B


def token_rewards(scores_B, old_logps_BT, ref_logps_BT, mask_BT, beta: float, kl_in: str, kl_estimator: str):
    """Per-token rewards for GAE: -β·KL_t on each token (when ``kl_in="reward"``) plus the
    sequence score on the last sampled token (Ziegler et al. 2019; TRL's PPOTrainer)."""
    rewards_BT = torch.zeros_like(mask_BT)
    if kl_in == "reward" and beta > 0 and ref_logps_BT is not None:
        rewards_BT = -beta * kl_estimate(old_logps_BT, ref_logps_BT, kl_estimator) * mask_BT
    last_B = (mask_BT.sum(-1) - 1).clamp(min=0).long()
    rewards_BT[torch.arange(mask_BT.shape[0]), last_B] += scores_B
    return rewards_BT


def grpo_advantages(scores_B, batch, config, reduce_sum=None) -> Advantages:
    rewards_B = sequence_rewards(scores_B, batch["old_logps"], batch.get("ref_logps"), batch["mask"], config.beta,
                                 config.kl_in, config.kl_estimator)
    advantages_B, diag = group_advantages(rewards_B, config.group_size, config.advantage_normalize)
    zero_G = diag["zero_std_G"]
    keep = ~zero_G.repeat_interleave(config.group_size) if config.filter_zero_variance_groups else \
        torch.ones_like(advantages_B, dtype=torch.bool)
    return Advantages(advantages_B, keep, {"zero_variance_share": float(diag["frac_zero_std"])})


def rloo_algorithm_advantages(scores_B, batch, config, reduce_sum=None) -> Advantages:
    rewards_B = sequence_rewards(scores_B, batch["old_logps"], batch.get("ref_logps"), batch["mask"], config.beta,
                                 config.kl_in, config.kl_estimator)
    advantages_B = rloo_advantages(rewards_B, config.group_size)
    zero_G = (rewards_B.view(-1, config.group_size) == rewards_B.view(-1, config.group_size)[:, :1]).all(1)
    keep = ~zero_G.repeat_interleave(config.group_size) if config.filter_zero_variance_groups else \
        torch.ones_like(advantages_B, dtype=torch.bool)
    return Advantages(advantages_B, keep, {"zero_variance_share": float(zero_G.float().mean())})


def ppo_advantages(scores_B, batch, config, reduce_sum=None) -> Advantages:
    mask_BT = batch["mask"]
    rewards_BT = token_rewards(scores_B, batch["old_logps"], batch.get("ref_logps"), mask_BT, config.beta,
                               config.kl_in, config.kl_estimator)
    advantages_BT, returns_BT = gae(rewards_BT, batch["old_values"], mask_BT, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages_BT = whiten(advantages_BT, mask_BT, reduce_sum=reduce_sum)  # over all processes' rows
    keep = torch.ones(mask_BT.shape[0], dtype=torch.bool)
    return Advantages(advantages_BT, keep, {}, returns=returns_BT, old_values=batch["old_values"])


# Each takes (scores_B, batch, config, reduce_sum): group statistics stay within a process (a
# prompt's group is never split), batch statistics go through ``reduce_sum`` (``Engine.all_reduce_sum``).
ALGORITHMS = {"grpo": grpo_advantages, "rloo": rloo_algorithm_advantages, "ppo": ppo_advantages,
              "nlpo": ppo_advantages}


class ValueModel(torch.nn.Module):
    """PPO's critic: a *separate* model (not a head on the policy) — the backbone and scalar head
    of an ``AutoModelForSequenceClassification``, read at every position instead of only the
    last. Built from the policy's weights with a zero-initialised head (``value_model=policy``),
    or from a trained reward model (TÜLU 3 initialises the value model from the RM)."""

    def __init__(self, sequence_classifier):
        super().__init__()
        prefix = sequence_classifier.base_model_prefix
        self.backbone = getattr(sequence_classifier, prefix)
        self.head = getattr(sequence_classifier, "score", None) or getattr(sequence_classifier, "classifier")
        self.config = sequence_classifier.config

    @classmethod
    def from_spec(cls, spec: str, dtype: str = "float32", zero_head: bool = True) -> "ValueModel":
        from posttrain.models import load_model

        model = cls(load_model(spec, dtype=dtype, task="sequence_classification"))
        if zero_head:
            torch.nn.init.zeros_(model.head.weight)
            if getattr(model.head, "bias", None) is not None:
                torch.nn.init.zeros_(model.head.bias)
        return model

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1).float()  # (B, L)
