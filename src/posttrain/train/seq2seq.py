"""Which training options an encoder-decoder policy (T5, BART: ``models/seq2seq.py``) supports,
checked from the model's ``config.json`` before any weights load (``train/preflight.py``).

Supported: ``posttrain sft`` (padded rows), ``posttrain dpo`` and the RL trainers on the ``hf``
rollout backend in the training process (with reference model and PPO's value model). Refused, each
with what to do instead, rather than silently run another way:

- ``packing=true`` (SFT): packed rows are a causal-LM layout (one decoder stream per row);
- ``rollout_backend=vllm|vllm-server``, ``placement=ray``: the rollout engines and workers take a
  causal prompt + completion layout;
- ``nlpo`` (its action mask is computed with a causal forward during sampling), multi-turn tool
  episodes (their transcripts are one causal token stream);
- a PPO ``value_model`` other than ``policy`` (the value head sits on the policy's decoder states);
- every other trainer (``kto``, ``orpo``, ``reward``, ``online-dpo``, ``distill``).
"""

from __future__ import annotations

from posttrain.config import ConfigError


def check_seq2seq_options(options) -> None:
    """Raise a ConfigError for an encoder-decoder ``options.model`` with options it cannot run."""
    from posttrain.models.seq2seq import spec_is_encoder_decoder

    if not spec_is_encoder_decoder(options.model):
        return
    from posttrain.train.dpo import DPOConfig
    from posttrain.train.rl.algorithms import ALGORITHMS
    from posttrain.train.rl.config import RLConfig
    from posttrain.train.sft import SFTConfig

    where = f"model={options.model} is an encoder-decoder (config.is_encoder_decoder)"
    if isinstance(options, SFTConfig):
        if options.packing:
            raise ConfigError(f"{where}: its rows cannot be packed; set packing=false")
        return
    if isinstance(options, DPOConfig):
        return
    if not isinstance(options, RLConfig):
        raise ConfigError(f"{where}: this command supports causal LMs only; encoder-decoders train with "
                          f"posttrain sft, dpo, grpo, rloo, ppo and the other RL commands except nlpo")
    refusals = [
        (options.rollout_backend != "hf", f"rollout_backend={options.rollout_backend}", "rollout_backend=hf"),
        (options.placement != "local", f"placement={options.placement}", "placement=local"),
        (options.multi_turn, "multi-turn tool episodes", "single-turn RL"),
        (ALGORITHMS[options.algorithm].action_mask, f"{options.algorithm} (an action mask at sampling time)",
         "ppo"),
        (getattr(options, "value_model", "policy") != "policy",
         f"value_model={getattr(options, 'value_model', '')}", "value_model=policy"),
    ]
    for refused, what, instead in refusals:
        if refused:
            raise ConfigError(f"{where}: {what} is not supported for encoder-decoder policies; use {instead}")
