"""Rows → encoder prompt and decoder target tokens, for encoder-decoder models (T5, BART; the
forward side is ``models/seq2seq.py``).

- Encoder prompt (``encoder_prompt_ids``): a message list is rendered with the tokenizer's chat
  template and its generation prompt when the tokenizer has one (the ids ``encode_prompt`` gives
  the causal path, so RL, eval and SFT see the same prompt), else the messages' contents joined by
  blank lines; a string prompt is tokenised as it is. Plain text keeps the tokenizer's own special
  tokens (T5 appends ``</s>`` to its encoder input).
- Decoder target (``decoder_target_ids``): the completion text without special tokens, then EOS.
- SFT rows (``encode_seq2seq_sft``): a prompt-completion row's prompt is the encoder input and its
  completion the target (a message-list completion: its last assistant turn). A ``messages`` row
  trains its *last* assistant turn, everything before it being the encoder prompt (a conversation
  with several assistant turns gives one example, not one per turn). Labels use the shifted
  convention of ``models/seq2seq.py``: ``[-100] + target``. ``max_length`` cuts the encoder input
  and the target each from the right (the target then has no EOS).

Example: ``{"prompt": "Concepts: dog, ball, park.", "completion": "The dog chases a ball in the park."}``
→ encoder ``tokenizer("Concepts: dog, ball, park.")``, labels ``[-100, The, dog, …, ., <eos>]``.
"""

from __future__ import annotations

import torch

from posttrain.data.tokenize import IGNORE_INDEX, encode_prompt

__all__ = ["encoder_prompt_ids", "decoder_target_ids", "split_last_turn", "encode_seq2seq_sft", "collate_seq2seq"]


def encoder_prompt_ids(tokenizer, prompt: str | list[dict], template: str | None = None) -> list[int]:
    """The encoder's token ids for a prompt (module docstring)."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    if template or getattr(tokenizer, "chat_template", None):
        return encode_prompt(tokenizer, prompt, template)
    return list(tokenizer("\n\n".join(m["content"] for m in prompt))["input_ids"])


def decoder_target_ids(tokenizer, text: str) -> list[int]:
    """The completion's tokens (no special tokens) followed by EOS: what the decoder learns to emit."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def split_last_turn(messages: list[dict]) -> tuple[list[dict], str]:
    """(the messages before the last assistant turn, that turn's content)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return list(messages[:last]), messages[last]["content"]


def encode_seq2seq_sft(tokenizer, row: dict, max_length: int) -> dict:
    """``{"input_ids": encoder ids, "labels": [-100] + target}`` of a validated SFT row."""
    if "messages" in row:
        prompt, target = split_last_turn(row["messages"])
    else:
        prompt, completion = row["prompt"], row["completion"]
        target = completion if isinstance(completion, str) else split_last_turn(completion)[1]
    encoder = encoder_prompt_ids(tokenizer, prompt)[:max_length]
    labels = [IGNORE_INDEX] + decoder_target_ids(tokenizer, target)[:max_length]
    return {"input_ids": encoder, "labels": labels}


def collate_seq2seq(examples: list[dict], pad_id: int, start_id: int) -> dict:
    """A right-padded batch: encoder ``input_ids`` / ``attention_mask`` (B, P), ``labels`` (B, T+1)
    (-100 on padding) and ``decoder_input_ids`` (B, T+1) = the labels with the start token in front
    and padding elsewhere (``models/seq2seq.sft_decoder_inputs``)."""
    P = max(len(e["input_ids"]) for e in examples)
    T = max(len(e["labels"]) for e in examples)
    ids = torch.full((len(examples), P), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), P), dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e["input_ids"])] = torch.tensor(e["input_ids"], dtype=torch.long)
        attention[i, :len(e["input_ids"])] = 1
        labels[i, :len(e["labels"])] = torch.tensor(e["labels"], dtype=torch.long)
    decoder = labels.clone()
    decoder[decoder == IGNORE_INDEX] = pad_id
    decoder[:, 0] = start_id
    return {"input_ids": ids, "attention_mask": attention, "decoder_input_ids": decoder, "labels": labels}
