"""Reaching past a causal LM's head: the final hidden states and the head's weight, so a loss can
run the head itself (``losses/linear_ce.py``) on the positions it needs instead of taking the
model's full ``(B, T, V)`` logits.

The forward still goes through the top-level model — so DDP's gradient hooks, accelerate's
autocast wrapper and peft adapters all stay in play — with ``logits_to_keep=1`` (the head runs on
one position per row); a forward hook on the decoder hands back its output, the hidden states
after the final norm, which is exactly what the head would have read.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch

# Config attributes of models whose head does more than a bias-free matmul (Gemma 2/3 soft-capping,
# Cohere's logit scale, Granite's logit divisor): those keep the plain path.
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _causal_lm(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):   # DDP, accelerate
        model = model.module
    if hasattr(model, "get_base_model"):                                            # peft
        model = model.get_base_model()
    return model


@functools.cache
def _takes_logits_to_keep(model_class: type) -> bool:
    # Once per class: chunkable_head runs every step.
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def chunkable_head(model) -> tuple[torch.nn.Module, torch.nn.Parameter] | None:
    """(decoder, head weight) when the head is a plain bias-free linear layer we may run ourselves,
    else None (the caller keeps the plain path)."""
    lm = _causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    decoder = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    if type(head) is not torch.nn.Linear or head.bias is not None or not isinstance(decoder, torch.nn.Module):
        return None
    config = getattr(lm, "config", None)
    if getattr(config, "is_encoder_decoder", False):   # its decoder is not the base model (models/seq2seq.py)
        return None
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _HEAD_TRANSFORMS):
        return None
    weight = head.weight
    # Sharded weights (FSDP DTensor, DeepSpeed ZeRO-3) are only whole inside the head's own forward.
    if hasattr(weight, "ds_id") or type(weight.data).__name__ == "DTensor":
        return None
    if not _takes_logits_to_keep(type(lm)):
        return None
    return decoder, weight


class _Captured(dict):
    def __missing__(self, key):   # e.g. a forward patched onto the instance that runs another module
        raise RuntimeError("the model's forward did not run its decoder, so the chunked LM head cannot read "
                           "its hidden states: set chunked_loss=false")


@contextlib.contextmanager
def capture_final_hidden(decoder: torch.nn.Module):
    """Inside the block, every forward of ``decoder`` stores its output hidden states ``(B, T, H)`` in
    the yielded dict under ``"hidden"`` (the last forward wins; reading it when none ran is an error
    that says what to do)."""
    captured = _Captured()

    def keep(_module, _args, output):
        captured["hidden"] = output[0]

    handle = decoder.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def final_hidden_states(model, decoder: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The decoder's output ``(B, T, H)`` for ``inputs``, from a top-level forward that runs the head
    on one position only."""
    with capture_final_hidden(decoder) as captured:
        model(**inputs, use_cache=False, logits_to_keep=1)
    return captured["hidden"]


def labelled_head_inputs(model, batch: dict, chunked: bool = True):
    """What the head needs to score a labelled batch's trained tokens (``labels[:, 1:]`` not
    ignored, each predicted from the position before it): ``(hidden_NH, head_weight_VH, target_N,
    mask_BT)``, with N the trained tokens in row-major order — or None when the head must run
    whole (``chunked`` off, or a head that is more than a matmul), and the caller takes the logits.
    SFT feeds these to the fused weighted cross-entropy, DPO to the chunked log-probs."""
    head = chunkable_head(model) if chunked else None
    if head is None:
        return None
    decoder, weight = head
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    targets = batch["labels"][:, 1:]
    mask = targets != -100   # IGNORE_INDEX (losses/sft.py)
    return final_hidden_states(model, decoder, inputs)[:, :-1][mask], weight, targets[mask], mask
