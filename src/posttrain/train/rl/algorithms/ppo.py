"""PPO for language models (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022), as
TÜLU 3 and TRL's PPOTrainer run it: per-token rewards (-β·KL_t on every sampled token, the
score on the last), GAE(γ, λ) advantages whitened over the global batch, the clipped surrogate
and a clipped value loss on a *separate* value model (``ValueModel``).

    posttrain ppo reward='[{reward_model: runs/rm/model}]' beta=0.05 value_model=runs/rm/model
"""

from __future__ import annotations

import dataclasses

import torch

from posttrain.config import ConfigError, opt
from posttrain.losses.advantages import gae, token_rewards, whiten
from posttrain.train.rl.algorithms.spec import Advantages
from posttrain.train.rl.config import RLConfig

__all__ = ["PPOConfig", "ValueModel", "Seq2SeqValueModel", "build_value_model", "completion_values",
           "ppo_advantages"]


@dataclasses.dataclass
class PPOConfig(RLConfig):
    """``posttrain ppo``: PPO with a separate value model, GAE, value clipping, whitening, and the
    per-token KL penalty in the reward (TÜLU 3's PPO / TRL's PPOTrainer)."""

    algorithm: str = opt("ppo", "set by the command", "Algorithm")
    group_size: int = opt(1, "completions sampled per prompt", "Sampling")
    beta: float = opt(0.05, "KL coefficient of the per-token penalty in the reward", "KL")
    kl_in: str = opt("reward", "PPO folds -β·KL (k1) per token into the reward", "KL")
    kl_estimator: str = opt("k1", "per-token KL estimator", "KL")
    aggregation: str = opt("dapo", "loss reduction (dapo = token mean, as TRL's PPOTrainer)", "Update")
    filter_zero_variance_groups: bool = opt(False, "drop groups whose rewards are all equal", "Update")
    ppo_epochs: int = opt(2, "passes over each rollout batch", "Update")
    num_minibatches: int = opt(2, "optimizer updates per pass", "Update")
    value_model: str = opt("policy", "value model init: 'policy' (the policy's weights + a fresh scalar head, a "
                           "separate model) or a reward-model folder (AutoModelForSequenceClassification, as "
                           "TÜLU 3 did)", "Value")
    value_learning_rate: float = opt(0.0, "value model learning rate (0 = learning_rate)", "Value")
    gamma: float = opt(1.0, "GAE discount", "Value")
    lam: float = opt(0.95, "GAE λ", "Value")
    value_clip: float = opt(0.2, "value clipping range (0 = off)", "Value")
    value_coef: float = opt(0.1, "weight of the value loss", "Value")
    whiten_advantages: bool = opt(True, "whiten GAE advantages over the batch", "Value")

    def validate(self):
        super().validate()
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ConfigError("gamma and lam must lie in [0, 1]")
        if self.value_coef < 0 or self.value_clip < 0:
            raise ConfigError("value_coef and value_clip must be >= 0")


def ppo_advantages(scores_B: torch.Tensor, batch: dict, config: PPOConfig, reduce_sum=None) -> Advantages:
    """GAE advantages and returns (B, T) of the per-token rewards, against the values at rollout
    time ``batch["old_values"]``; whitened over all processes' rows (``reduce_sum``)."""
    mask_BT = batch["mask"]
    rewards_BT = token_rewards(scores_B, batch["old_logps"], batch.get("ref_logps"), mask_BT, config.beta,
                               config.kl_in, config.kl_estimator)
    advantages_BT, returns_BT = gae(rewards_BT, batch["old_values"], mask_BT, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages_BT = whiten(advantages_BT, mask_BT, reduce_sum=reduce_sum)
    keep = torch.ones(mask_BT.shape[0], dtype=torch.bool)
    return Advantages(advantages_BT, keep, {}, returns=returns_BT, old_values=batch["old_values"])


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


class Seq2SeqValueModel(torch.nn.Module):
    """PPO's critic for an encoder-decoder policy (``models/seq2seq.py``): a separate copy of the
    policy's encoder-decoder body (``AutoModel``: T5Model, BartModel; no LM head) and a
    zero-initialised scalar head on the *decoder* states. The value of the state before completion
    token t is read at decoder position t, which has seen the prompt (through the encoder) and
    ``[start] + completion[:t]``: the state the causal ``ValueModel`` reads at ``P - 1 + t``."""

    def __init__(self, body, start_id: int):
        super().__init__()
        self.backbone, self.start_id, self.config = body, start_id, body.config
        width = getattr(body.config, "d_model", None) or body.config.hidden_size
        self.head = torch.nn.Linear(width, 1, dtype=next(body.parameters()).dtype)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_spec(cls, spec: str, dtype: str = "float32") -> "Seq2SeqValueModel":
        from transformers import AutoModel

        from posttrain.models import resolve_model_path
        from posttrain.models.loading import DTYPES

        body = AutoModel.from_pretrained(resolve_model_path(spec), dtype="auto" if dtype == "auto" else DTYPES[dtype])
        start = body.config.decoder_start_token_id
        return cls(body, int(start if start is not None else body.config.pad_token_id))

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                               use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1).float()  # (B, T)


def build_value_model(spec: str, dtype: str = "float32", zero_head: bool = True) -> torch.nn.Module:
    """The value model for ``value_model`` = ``spec``: ``Seq2SeqValueModel`` for an encoder-decoder
    (from the policy's weights only: ``train/seq2seq.py``), else ``ValueModel``."""
    from posttrain.models.seq2seq import spec_is_encoder_decoder

    if spec_is_encoder_decoder(spec):
        return Seq2SeqValueModel.from_spec(spec, dtype)
    return ValueModel.from_spec(spec, dtype=dtype, zero_head=zero_head)


def completion_values(value_model, prompt_ids: list[list[int]], completion_ids: torch.Tensor, pad_id: int,
                      device) -> torch.Tensor:
    """Values (B, T) of the states before each completion token, from the (possibly wrapped)
    value model's forward: the causal layout ``models/layout.forward_inputs`` (read at ``P - 1 + t``)
    or the encoder-decoder one."""
    from posttrain.models.layout import forward_inputs
    from posttrain.models.seq2seq import decoder_inputs, encoder_inputs

    bare = getattr(value_model, "module", value_model)
    if isinstance(bare, Seq2SeqValueModel):
        return value_model(**encoder_inputs(prompt_ids, pad_id, device),
                           decoder_input_ids=decoder_inputs(completion_ids, bare.start_id))
    inputs = forward_inputs(prompt_ids, completion_ids, pad_id, device=device)
    P = inputs.pop("prompt_length")
    return value_model(**inputs)[:, P - 1:P - 1 + completion_ids.shape[1]]
