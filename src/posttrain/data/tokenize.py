"""Tokenisation with assistant-only labels.

One algorithm for every template: render the conversation with the tokenizer's chat template,
find the character span of each assistant turn's content and its EOS by rendering prefixes
(``messages[:i]`` with the generation prompt marks where turn ``i`` starts; ``messages[:i+1]``
marks where it ends), tokenise the whole text once with offsets, and label the tokens that start
inside a span. Everything else gets -100: system and user turns, the assistant header, and any
separator after the EOS.
"""

from __future__ import annotations

from posttrain.data.templates import TemplateError, resolve_template

IGNORE_INDEX = -100


def _render(tokenizer, messages, add_generation_prompt=False, template: str | None = None) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         chat_template=template)


def assistant_spans(tokenizer, messages: list[dict], template: str | None = None,
                    first_trained: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans ``[start, end)`` to train on: the assistant turns
    from message ``first_trained`` on (earlier ones are context, e.g. a prompt-completion row's prompt)."""
    template = resolve_template(tokenizer, template)
    text = _render(tokenizer, messages, template=template)
    eos = tokenizer.eos_token
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < first_trained:
            continue
        start = len(_render(tokenizer, messages[:i], add_generation_prompt=True, template=template)) if i else 0
        prefix = _render(tokenizer, messages[: i + 1], template=template)
        if not text.startswith(prefix) or not prefix[:start] == text[:start]:
            raise TemplateError(
                "the chat template does not render conversations prefix-consistently, so assistant "
                "turns cannot be located: use template=tulu or template=chatml"
            )
        end = len(prefix)
        # Train on the content and its EOS, not on a separator the template adds after the EOS.
        cut = prefix.rfind(eos, start, end) if eos else -1
        if cut != -1:
            end = cut + len(eos)
        spans.append((start, end))
    return text, spans


def encode_conversation(tokenizer, messages: list[dict], template: str | None = None,
                        max_length: int | None = None, first_trained: int = 0) -> dict:
    """``{"input_ids": [...], "labels": [...]}`` with -100 on every token that is not trained.

    ``template`` names a chat template (``tulu``, ``chatml``); ``None`` uses the tokenizer's own.
    The tokenizer is not modified. ``max_length`` truncates from the right. ``first_trained``:
    assistant turns before this message index are context, not trained.
    """
    text, spans = assistant_spans(tokenizer, messages, template, first_trained)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for t, (start, _end) in enumerate(enc["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
            labels[t] = input_ids[t]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_prompt(tokenizer, messages: list[dict], template: str | None = None) -> list[int]:
    """Token ids of a prompt ending with the generation prompt (for generation and preference data)."""
    text = _render(tokenizer, messages, add_generation_prompt=True, template=resolve_template(tokenizer, template))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def common_prefix_length(ids: list[int], other_ids: list[int]) -> int:
    """Number of leading tokens the two sequences share."""
    n = 0
    for a, b in zip(ids, other_ids):
        if a != b:
            break
        n += 1
    return n


def encode_prompt_completion(tokenizer, prompt: str | list[dict], completion: str | list[dict],
                             template: str | None = None, max_length: int | None = None) -> dict:
    """A prompt-completion row (``data/formats.py``) as ``{"input_ids", "labels"}``, labels on the
    completion only, as TRL's SFTTrainer builds it (``trl/trainer/sft_trainer.py``, ``tokenize_fn``):

    - string prompt: plain text, no chat template. The completion gets the EOS token appended
      (unless it ends with it); ``prompt`` and ``prompt + completion`` are tokenised with the
      tokenizer's own special tokens and the completion starts where the two token sequences first
      differ (a token that merges across the boundary is trained, as in TRL);
    - message-list prompt: the conversation ``prompt + completion`` (a string completion is one
      assistant turn) through the chat template; the completion's assistant turns are trained (content and EOS), each starting after the
      generation prompt, exactly as ``encode_conversation`` does for ``messages`` rows.

    ``max_length`` truncates from the right.
    """
    if not isinstance(prompt, str):
        if isinstance(completion, str):   # one assistant turn
            completion = [{"role": "assistant", "content": completion}]
        return encode_conversation(tokenizer, list(prompt) + list(completion), template, max_length,
                                   first_trained=len(prompt))
    eos = tokenizer.eos_token or ""
    full = prompt + completion + ("" if completion.endswith(eos) else eos)
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    input_ids = list(tokenizer(full)["input_ids"])
    # the common prefix, not len(prompt_ids): a token merging across the boundary, or an end token
    # the tokenizer appends to the prompt alone, must not shift the completion
    start = common_prefix_length(prompt_ids, input_ids)
    labels = [IGNORE_INDEX] * start + input_ids[start:]
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}
