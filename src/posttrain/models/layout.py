"""The padded layout of prompt + completion forwards, and sharing a prompt between rows.

Layout (the one ``generate`` uses): prompts left-padded to a common length P, completions
right-padded after them; position ids count real tokens only. The logits that predict completion
token t sit at position P - 1 + t.

Shared prompts: when several rows continue the same prompt (a GRPO group of k samples; a DPO
pair's chosen and rejected responses), the prompt's keys and values are computed once and copied
to each row (``DynamicCache.batch_select_indices``, an index on the batch dimension, so autograd
sums the rows' gradients back into the one prompt pass). Every row's computation is unchanged; only
repeated work is dropped. Used by the RL trainers, DPO and reward models (``share_prompts``).
"""

from __future__ import annotations

import torch

from posttrain.losses.linear_ce import linear_log_probs
from posttrain.models.kv_cache import kv_cache, with_cache
from posttrain.losses.policy import apply_action_mask, entropy_from_logits
from posttrain.models.lm_head import capture_final_hidden, chunkable_head, final_hidden_states
from posttrain.models import seq2seq

__all__ = ["forward_inputs", "prompt_sharing", "distinct_prompts", "shared_prompt_cache", "continue_from_cache", "shared_prefix_logits",
           "completion_logits", "gather_logps", "completion_token_logps", "completion_head_inputs"]


def forward_inputs(prompt_ids: list[list[int]], completion_ids: torch.Tensor | None, pad_id: int,
                   device=None) -> dict:
    """Left-padded prompts followed by right-padded completions, the layout ``generate`` uses.

    Returns ``input_ids`` (B, P+T), ``attention_mask`` (B, P+T) (0 on left padding only: the
    completion's right padding is masked by the loss mask, and causal attention keeps it from
    touching earlier tokens), ``position_ids`` (B, P+T), and ``prompt_length`` P: the logits that
    predict completion token t sit at position P - 1 + t.
    """
    P = max(len(p) for p in prompt_ids)
    B = len(prompt_ids)
    prompt_BP = torch.full((B, P), pad_id, dtype=torch.long)
    attention_BP = torch.zeros((B, P), dtype=torch.long)
    for i, ids in enumerate(prompt_ids):
        prompt_BP[i, P - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_BP[i, P - len(ids):] = 1
    if completion_ids is not None:
        input_ids = torch.cat([prompt_BP, completion_ids.cpu()], dim=1)
        attention = torch.cat([attention_BP, torch.ones_like(completion_ids.cpu())], dim=1)
    else:
        input_ids, attention = prompt_BP, attention_BP
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    out = {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    out["prompt_length"] = P
    return out


def prompt_sharing(enabled: bool, processes: int) -> bool:
    """Whether a trainer shares prompts: sharing runs two forwards per backward, which is untested
    under DDP, so it is used in one process only."""
    return enabled and processes == 1


def distinct_prompts(prompt_ids: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """The distinct prompts (in first-seen order: a GRPO group's rows, a DPO pair's chosen and
    rejected rows), and for each row the index of its prompt among them, (B,) long."""
    unique: dict[tuple[int, ...], int] = {}
    index = [unique.setdefault(tuple(ids), len(unique)) for ids in prompt_ids]
    return [list(ids) for ids in unique], torch.tensor(index, dtype=torch.long)


def shared_prompt_cache(model, unique_prompts: list[list[int]], row_index: torch.Tensor, pad_id: int, device,
                        logits_to_keep: int | None = 1):
    """Run each distinct prompt once and copy its KV cache to every row that shares it.

    A group of n completions of one prompt needs the prompt's keys and values n times, but
    computing them once is enough: the rows' prompt tokens are identical, so their hidden states
    are too. Autograd flows back through the copies (an index on the batch dimension), so
    gradients are those of n separate forwards. Returns the model output of the prompt pass
    (logits of its last ``logits_to_keep`` positions, one row per distinct prompt; ``None`` for a
    backbone without an LM head) with its cache expanded to the B rows, and the rows' prompt
    layout (``forward_inputs``)."""
    prompt = forward_inputs(unique_prompts, None, pad_id, device=device)
    prompt.pop("prompt_length")
    extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
    out = model(**prompt, use_cache=True, **extra)
    index = row_index.to(device)
    kv_cache(out).batch_select_indices(index)
    return out, {k: v[index] for k, v in prompt.items()}


def continue_from_cache(model, prompt: dict, cache, continuation_ids: torch.Tensor, **forward_kwargs):
    """Run ``continuation_ids`` (B, T) after the rows' cached prompts: token t sits at position
    (real prompt tokens) + t, attending to the prompt's real tokens and the continuation so far."""
    T = continuation_ids.shape[1]
    positions = prompt["position_ids"][:, -1:] + 1 + torch.arange(T, device=continuation_ids.device)
    attention = torch.cat([prompt["attention_mask"], torch.ones_like(continuation_ids)], dim=1)
    return model(input_ids=continuation_ids, attention_mask=attention, position_ids=positions,
                 use_cache=True, **with_cache(cache), **forward_kwargs)


def shared_prefix_logits(model, unique_prompts: list[list[int]], row_index: torch.Tensor,
                         completion_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Logits (B, T, V) that predict each of row b's completion tokens after the prompt
    ``unique_prompts[row_index[b]]``, with each distinct prompt run once (:func:`shared_prompt_cache`)."""
    out, prompt = shared_prompt_cache(model, unique_prompts, row_index, pad_id, completion_ids.device)
    first = out.logits[row_index.to(completion_ids.device)]  # predicts completion token 0
    if completion_ids.shape[1] == 1:
        return first
    rest = continue_from_cache(model, prompt, kv_cache(out), completion_ids[:, :-1]).logits
    return torch.cat([first, rest], dim=1)


def completion_logits(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor, pad_id: int,
                      temperature: float = 1.0, share_prompts: bool = False) -> torch.Tensor:
    """Logits (B, T, V) that predict each completion token, divided by ``temperature`` (the
    sampling temperature, so that log-probs are those of the distribution sampled from).

    ``share_prompts``: rows with the same prompt (a GRPO group) run it once
    (:func:`shared_prefix_logits`). Same values as the plain pass up to float rounding, at
    (distinct prompts + B) / B of its prompt cost. An encoder-decoder takes its own layout
    (``models/seq2seq.py``: the prompt through the encoder, the completion through the decoder)."""
    if seq2seq.is_encoder_decoder(model):
        return seq2seq.decoder_logits(model, prompt_ids, completion_ids, pad_id, temperature, share_prompts)
    T = completion_ids.shape[1]
    if share_prompts:
        unique, row_index = distinct_prompts(prompt_ids)
        if len(unique) < len(prompt_ids):
            return shared_prefix_logits(model, unique, row_index, completion_ids, pad_id).float() / temperature
    inputs = forward_inputs(prompt_ids, completion_ids, pad_id, device=completion_ids.device)
    inputs.pop("prompt_length")
    # only the last T + 1 positions need the LM head (the prompt's logits are never used)
    logits = model(**inputs, use_cache=False, logits_to_keep=T + 1).logits[:, :T].float()
    return logits / temperature


def gather_logps(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position: (B, T)."""
    logps_BTV = torch.log_softmax(logits_BTV, dim=-1)
    return logps_BTV.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)


def completion_token_logps(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor, pad_id: int,
                           mask_BT: torch.Tensor, temperature: float = 1.0, share_prompts: bool = False,
                           with_entropy: bool = False, chunked: bool = True,
                           action_mask_BTV: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (B, T) of each completion token, entropies (B, T) or None), both 0 outside
    ``mask_BT``, under ``softmax(logits / temperature)``.

    ``chunked`` (and a plain linear head, ``models/lm_head.py``): the head runs only on the masked
    positions, a chunk at a time (``losses/linear_ce.linear_log_probs``), so no (B, T, V) logits
    exist; else the plain path (:func:`completion_logits`). Same values up to float rounding.
    ``action_mask_BTV`` (NLPO: the tokens allowed at each position) acts on the full logits, so it
    takes the plain path. An encoder-decoder takes its own layout (``models/seq2seq.py``)."""
    if seq2seq.is_encoder_decoder(model):
        return seq2seq.decoder_token_logps(model, prompt_ids, completion_ids, pad_id, mask_BT, temperature,
                                           share_prompts, with_entropy, action_mask_BTV)
    mask = mask_BT.bool()
    head = chunkable_head(model) if chunked and action_mask_BTV is None else None
    if head is None:
        logits = completion_logits(model, prompt_ids, completion_ids, pad_id, temperature, share_prompts)
        if action_mask_BTV is not None:
            logits = apply_action_mask(logits, action_mask_BTV)
        logps = gather_logps(logits, completion_ids).masked_fill(~mask, 0.0)   # masked_fill: -inf · 0 is nan
        entropy = entropy_from_logits(logits.detach()).masked_fill(~mask, 0.0) if with_entropy else None
        return logps, entropy
    decoder, weight = head
    hidden = _completion_hidden(model, decoder, prompt_ids, completion_ids, pad_id, share_prompts)
    logp_N, entropy_N = linear_log_probs(hidden[mask], weight, completion_ids[mask], temperature, with_entropy)
    scatter = lambda values: torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(
        mask, values)  # noqa: E731
    return scatter(logp_N), (scatter(entropy_N) if with_entropy else None)


def completion_head_inputs(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor, pad_id: int,
                           share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What the LM head needs to score each completion token itself: ``(hidden (B, T, H), head weight
    (V, H))``, the final hidden states at the positions whose logits :func:`completion_logits`
    returns, from forwards that run the head on one position only; None when the head must run whole
    (``models/lm_head.chunkable_head``), and the caller takes :func:`completion_logits`."""
    head = chunkable_head(model)
    if head is None:
        return None
    decoder, weight = head
    return _completion_hidden(model, decoder, prompt_ids, completion_ids, pad_id, share_prompts), weight


def _completion_hidden(model, decoder, prompt_ids, completion_ids, pad_id, share_prompts):
    """The final hidden states (B, T, H) that predict each completion token (the positions whose
    logits :func:`completion_logits` returns), with the head run on one position per forward."""
    T = completion_ids.shape[1]
    if share_prompts:
        unique, row_index = distinct_prompts(prompt_ids)
        if len(unique) < len(prompt_ids):
            with capture_final_hidden(decoder) as prompt_pass:
                out, prompt = shared_prompt_cache(model, unique, row_index, pad_id, completion_ids.device)
            first = prompt_pass["hidden"][:, -1:][row_index.to(completion_ids.device)]
            if T == 1:
                return first
            with capture_final_hidden(decoder) as rest:
                continue_from_cache(model, prompt, kv_cache(out), completion_ids[:, :-1], logits_to_keep=1)
            return torch.cat([first, rest["hidden"]], dim=1)
    inputs = forward_inputs(prompt_ids, completion_ids, pad_id, device=completion_ids.device)
    P = inputs.pop("prompt_length")
    return final_hidden_states(model, decoder, inputs)[:, P - 1:P - 1 + T]
