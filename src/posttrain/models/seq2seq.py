"""Encoder-decoder (seq2seq) policies: T5, BART and kin, recognised by ``config.is_encoder_decoder``.

Everything that differs from the causal path lives here, so the trainers keep one code path and
ask this module only at the few places where the forward itself differs (``models/layout.py``'s
log-probs, ``train/rl/rollout.py``'s generation, the SFT and preference forwards).

Layout. The prompt is the *encoder* input, right-padded (``attention_mask`` 0 on padding; right,
not left, because BART's positions are absolute and would shift under left padding). The
completion is the *decoder* target: the decoder reads ``[start] + completion[:-1]`` (``start`` =
``config.decoder_start_token_id``) and its logits at position t predict completion token t, so
the logits of completion token t sit at decoder position t — where the causal layout has them at
``P - 1 + t``. Completions are right-padded after their EOS; the decoder is causal, so padding
never reaches an earlier position, and the loss mask drops it.

SFT batches use the causal code's *shifted* convention so that its loss functions apply
unchanged (``losses/sft.token_nll`` compares ``logits[:, :-1]`` with ``labels[:, 1:]``):
``decoder_input_ids = [start] + target`` and ``labels = [-100] + target``, one longer than the
target; the logits at the last position (after the EOS) are never scored.

Shared prompts (``share_prompts``, one process): each distinct prompt runs through the encoder
once and its hidden states are indexed out to the rows that share it (an index on the batch
dimension, so autograd sums the rows' gradients back), the seq2seq analogue of the causal KV-cache
copy in ``models/layout.py``; generation passes the same ``encoder_outputs`` to ``generate``.
"""

from __future__ import annotations

import torch

__all__ = ["is_encoder_decoder", "spec_is_encoder_decoder", "decoder_start_id", "encoder_inputs",
           "decoder_inputs", "decoder_logits", "decoder_token_logps", "generation_inputs"]


def _bare(model):
    """The transformers model under DDP / accelerate wrappers and peft (for its config and encoder)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def is_encoder_decoder(model) -> bool:
    """Whether a loaded model (wrapped or not) is an encoder-decoder."""
    return bool(getattr(getattr(_bare(model), "config", None), "is_encoder_decoder", False))


def spec_is_encoder_decoder(spec: str) -> bool:
    """Whether a model spec names an encoder-decoder, read from its ``config.json`` alone (no
    weights), so options can be checked before any model loads. False when the config cannot be
    read here (a hub id offline): loading the model then gives its own error."""
    from posttrain.models.loading import ModelError, resolve_model_path

    try:
        path = resolve_model_path(spec)
    except ModelError:
        return False
    from transformers import AutoConfig

    try:
        return bool(getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False))
    except (OSError, ValueError):
        return False


def decoder_start_id(model) -> int:
    """The token the decoder starts from (``decoder_start_token_id``; T5: pad, BART: EOS)."""
    bare = _bare(model)
    for source in (bare.config, getattr(bare, "generation_config", None)):
        start = getattr(source, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    raise ValueError("the encoder-decoder model's config has no decoder_start_token_id: set it in config.json")


def encoder_inputs(prompt_ids: list[list[int]], pad_id: int, device=None) -> dict:
    """Right-padded encoder batch: ``input_ids`` (B, P) and ``attention_mask`` (B, P)."""
    P = max(1, max(len(p) for p in prompt_ids))
    ids = torch.full((len(prompt_ids), P), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), P), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, :len(p)] = torch.tensor(list(p), dtype=torch.long)
        attention[i, :len(p)] = 1
    out = {"input_ids": ids, "attention_mask": attention}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def decoder_inputs(completion_ids_BT: torch.Tensor, start_id: int) -> torch.Tensor:
    """``[start] + completion[:-1]`` per row (B, T): what the decoder reads to predict each completion token."""
    start = torch.full_like(completion_ids_BT[:, :1], start_id)
    return torch.cat([start, completion_ids_BT[:, :-1]], dim=1)


def _encoded(model, prompt_ids, pad_id, device, share_prompts: bool) -> dict:
    """The encoder half of a forward's keyword arguments: the prompts themselves, or (``share_prompts``
    with repeated prompts) ``encoder_outputs`` run once per distinct prompt and indexed to the rows."""
    from posttrain.models.layout import distinct_prompts

    if share_prompts:
        unique, row_index = distinct_prompts(prompt_ids)
        if len(unique) < len(prompt_ids):
            from transformers.modeling_outputs import BaseModelOutput

            enc = encoder_inputs(unique, pad_id, device)
            hidden = _bare(model).get_encoder()(**enc).last_hidden_state
            index = row_index.to(device)
            return {"encoder_outputs": BaseModelOutput(last_hidden_state=hidden[index]),
                    "attention_mask": enc["attention_mask"][index]}
    return encoder_inputs(prompt_ids, pad_id, device)


def decoder_logits(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor, pad_id: int,
                   temperature: float = 1.0, share_prompts: bool = False) -> torch.Tensor:
    """Logits (B, T, V) that predict each completion token given its prompt, divided by ``temperature``
    (the seq2seq twin of ``models/layout.completion_logits``)."""
    device = completion_ids.device
    out = model(**_encoded(model, prompt_ids, pad_id, device, share_prompts),
                decoder_input_ids=decoder_inputs(completion_ids, decoder_start_id(model)), use_cache=False)
    return out.logits.float() / temperature


def decoder_token_logps(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor, pad_id: int,
                        mask_BT: torch.Tensor, temperature: float = 1.0, share_prompts: bool = False,
                        with_entropy: bool = False, action_mask_BTV: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (B, T) of each completion token, entropies (B, T) or None), 0 outside ``mask_BT``:
    log softmax(logits / temperature) of the decoder, teacher-forced on the completion. The full
    logits are taken (an encoder-decoder's head may rescale its input, T5's by d_model^-1/2, so the
    chunked head of ``models/lm_head.py`` does not apply)."""
    from posttrain.losses.policy import apply_action_mask, entropy_from_logits
    from posttrain.models.layout import gather_logps

    mask = mask_BT.bool()
    logits = decoder_logits(model, prompt_ids, completion_ids, pad_id, temperature, share_prompts)
    if action_mask_BTV is not None:
        logits = apply_action_mask(logits, action_mask_BTV)
    logps = gather_logps(logits, completion_ids).masked_fill(~mask, 0.0)
    entropy = entropy_from_logits(logits.detach()).masked_fill(~mask, 0.0) if with_entropy else None
    return logps, entropy


def generation_inputs(model, prompt_ids: list[list[int]], pad_id: int, device, share_prompts: bool = False) -> dict:
    """Keyword arguments for ``model.generate`` of an encoder-decoder: the right-padded prompts, or
    (``share_prompts``) each distinct prompt encoded once. ``generate`` returns ``[start] +
    completion`` per row: the completion starts at column 1."""
    with torch.no_grad():
        return _encoded(model, prompt_ids, pad_id, device, share_prompts)
