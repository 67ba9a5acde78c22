"""Preference pairs → tokens, shared by ``posttrain dpo``, ``orpo`` and ``reward`` (their options
and held-out evaluation: ``train/preference.py``; ``posttrain kto``'s unpaired examples reuse the
tokenisation: ``data/unpaired.py``).

Data type: preference rows (``prompt`` + ``chosen`` + ``rejected``, strings or message lists,
explicit or implicit prompt; optional ``margin`` and ``subset`` columns), normalised by
``data.formats.validate_preference_row``.

Tokenisation (chat-template tokenizers). The prompt is tokenised ONCE, as the rendered
generation prompt (``data.tokenize.encode_prompt``); each response's tokens are appended to that
same list, so chosen and rejected share exactly the same prompt tokens::

    prompt_text   = render(prompt, add_generation_prompt=True)      # "<|im_start|>system…assistant\\n"
    full_text     = render(prompt + response)                        # must start with prompt_text
    response_text = full_text[len(prompt_text):]  cut after the last EOS (no template separator)
    response_ids  = tokenizer(response_text, add_special_tokens=False)

Both pieces are tokenised without special tokens, so there is no doubled BOS and the system
prompt a template injects appears once, in the prompt. Every response token (up to and including
the EOS) is trained/scored; nothing after the EOS is.

Tokenizers without a chat template (encoders such as MiniLM) get the plain text
``"prompt\\n\\nresponse"`` with the tokenizer's own special tokens ([CLS] … [SEP]); such examples
have an empty ``prompt_ids`` and the whole sequence in ``chosen_ids`` / ``rejected_ids``.

Truncation: the prompt keeps its last ``max_prompt_length`` tokens; each response keeps its first
``max_length - len(prompt)`` tokens. Pairs left with an empty response are dropped and counted.

Shapes: ``PairBatches`` returns the concatenated batch of 2B rows — chosen rows 0..B-1, rejected
rows B..2B-1 — as ``input_ids_2BT``, ``attention_mask_2BT`` (right padding), ``labels_2BT``
(-100 on prompt and padding), ``margin_B``, plus ``num_pairs`` (an int).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from posttrain.data.formats import DataError, row_location, validate_preference_row
from posttrain.data.tokenize import IGNORE_INDEX, encode_prompt
from posttrain.data.templates import TemplateError


@dataclass
class PairStats:
    """What tokenisation did to the rows: counts for the log and the report."""

    rows: int = 0
    kept: int = 0
    skipped_invalid: int = 0
    dropped_empty: int = 0
    truncated: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    unit: str = "pairs"   # what ``kept`` counts: pairs, or unpaired examples (data/unpaired.py)

    def summary(self) -> str:
        text = f"{self.kept} {self.unit} of {self.rows} rows"
        if self.skipped_invalid:
            text += f", {self.skipped_invalid} invalid rows skipped (first: {self.skip_reasons[0]})"
        if self.dropped_empty:
            text += f", {self.dropped_empty} dropped (no response token left after truncation)"
        if self.truncated:
            text += f", {self.truncated} truncated"
        return text


def validate_pairs(rows: list[dict], source: str, skip_invalid: bool, stats: PairStats,
                   validate: Callable[[dict, str, int | None], dict] = validate_preference_row) -> list[dict]:
    """Rows normalised by ``validate`` (a ``data.formats`` validator); a bad row raises DataError
    naming it, or (``skip_invalid``) is counted."""
    if not rows:
        raise DataError(f"{source}: no rows (empty file or split)")
    out = []
    for i, row in enumerate(rows):
        try:
            where = row_location(row, source, i)   # the file's own line, whatever the shuffle did
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected an object with named columns, got {type(row).__name__}")
            out.append(validate(row, where, None))
        except DataError as e:
            if not skip_invalid:
                raise DataError(f"{e} (or set skip_invalid_rows=true to skip and count such rows)") from None
            stats.skipped_invalid += 1
            if len(stats.skip_reasons) < 5:
                stats.skip_reasons.append(str(e))
    stats.rows += len(rows)
    if not out:
        raise DataError(f"{source}: every row was invalid ({stats.skipped_invalid} skipped; first: "
                        f"{stats.skip_reasons[0] if stats.skip_reasons else '?'})")
    return out


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def response_text(tokenizer, prompt: list[dict], response: list[dict]) -> str:
    """The text the template renders after the generation prompt, ending at the response's EOS."""
    prompt_text = _render(tokenizer, prompt, add_generation_prompt=True)
    full = _render(tokenizer, prompt + response)
    if not full.startswith(prompt_text):
        raise TemplateError(
            "the chat template renders the prompt differently inside the full conversation than as a "
            "generation prompt, so chosen and rejected cannot share the prompt tokens: use template=tulu "
            "or template=chatml")
    text = full[len(prompt_text):]
    eos = tokenizer.eos_token
    cut = text.rfind(eos) if eos else -1
    return text[: cut + len(eos)] if cut != -1 else text


def plain_text(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages)


def encode_responses(tokenizer, prompt: list[dict], responses: list[list[dict]], max_length: int,
                     max_prompt_length: int | None, seq2seq: bool = False) -> tuple[list[int], list[list[int]], bool]:
    """``(prompt_ids, [response_ids, …], truncated)``: the prompt tokenised once and each response's
    tokens to append to it (see the module docstring for the rules). ``seq2seq`` without a chat
    template: the encoder's plain-text prompt and each response's decoder target
    (``data/seq2seq.py``) instead of one encoder sequence."""
    truncated = False
    if has_chat_template(tokenizer) or seq2seq:
        if has_chat_template(tokenizer):
            prompt_ids = encode_prompt(tokenizer, prompt)
            encoded = [tokenizer(response_text(tokenizer, prompt, r), add_special_tokens=False)["input_ids"]
                       for r in responses]
        else:
            from posttrain.data.seq2seq import decoder_target_ids, encoder_prompt_ids

            prompt_ids = encoder_prompt_ids(tokenizer, prompt)
            encoded = [decoder_target_ids(tokenizer, plain_text(r)) for r in responses]
        if max_prompt_length and len(prompt_ids) > max_prompt_length:
            prompt_ids, truncated = prompt_ids[-max_prompt_length:], True
        room = max(0, max_length - len(prompt_ids))
        if any(len(r) > room for r in encoded):
            truncated = True
        return list(prompt_ids), [list(r[:room]) for r in encoded], truncated
    # encoders: one plain text, the tokenizer's own [CLS] … [SEP], truncated from the left
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        encoded = [tokenizer(plain_text(prompt) + "\n\n" + plain_text(r), truncation=True,
                             max_length=max_length)["input_ids"] for r in responses]
    finally:
        tokenizer.truncation_side = side
    return [], encoded, any(len(e) >= max_length for e in encoded)


def encode_pair_row(tokenizer, row: dict, max_length: int, max_prompt_length: int | None,
                    seq2seq: bool = False) -> dict:
    """One normalised preference row → ``{prompt_ids, chosen_ids, rejected_ids, margin, subset,
    truncated}`` (see the module docstring for the rules)."""
    prompt_ids, (chosen_ids, rejected_ids), truncated = encode_responses(
        tokenizer, row["prompt"], [row["chosen"], row["rejected"]], max_length, max_prompt_length, seq2seq)
    margin = row.get("margin")
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
            "margin": float(margin) if margin is not None else 0.0, "subset": str(row.get("subset") or ""),
            "truncated": truncated}


def tokenize_pairs(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int | None, source: str,
                   skip_invalid: bool = False, kind: str = "preference",
                   seq2seq: bool = False) -> tuple[list[dict], PairStats]:
    """Validate (errors name the row, or count skips), tokenise (cached on disk), drop empties.
    ``seq2seq``: prompts and responses of an encoder-decoder (``encode_responses``)."""
    from posttrain.data.cache import cached_tokenize

    stats = PairStats()
    valid = validate_pairs(rows, source, skip_invalid, stats)
    settings = {"kind": kind, "max_length": max_length, "max_prompt_length": max_prompt_length,
                "chat": has_chat_template(tokenizer), "version": 1,
                **({"seq2seq": 1} if seq2seq else {})}

    def encode(rs):
        return [encode_pair_row(tokenizer, r, max_length, max_prompt_length, seq2seq) for r in rs]

    keep_cols = ("prompt", "chosen", "rejected", "margin", "subset")
    examples, _hit = cached_tokenize([{k: r[k] for k in keep_cols if k in r} for r in valid], tokenizer,
                                     settings, encode)
    kept = keep_with_responses(examples, ("chosen_ids", "rejected_ids"), stats, source, max_length, "pair")
    return kept, stats


def keep_with_responses(examples: list[dict], response_keys: tuple[str, ...], stats: PairStats, source: str,
                        max_length: int, what: str) -> list[dict]:
    """The tokenised examples whose every response still has a token after truncation (counted in
    ``stats``); none left is a ``DataError`` saying which setting to change."""
    kept = []
    for e in examples:
        stats.truncated += bool(e["truncated"])
        if any(len(e[key]) == 0 for key in response_keys):
            stats.dropped_empty += 1
            continue
        kept.append(e)
    stats.kept = len(kept)
    if not kept:
        raise DataError(f"{source}: no {what} has a response token left after truncation to max_length="
                        f"{max_length}: raise max_length or lower max_prompt_length")
    return kept


class PairBatches:
    """Collate pair indices into one concatenated batch: chosen rows first, then rejected rows.

    Right padding with ``pad_id``; ``attention_mask`` marks real tokens; ``labels`` carry the
    response tokens only. With ``share_prompts`` the same rows also come as ``prompts`` (B token
    lists) and ``response_ids`` / ``response_mask`` (2B, R) for forwards that run each prompt
    once (and always with ``separate_prompts``: an encoder-decoder's prompt is its encoder input). Extra per-pair tensors (e.g. precomputed reference log-probs) can be attached with ``extras={"name": tensor of shape (N, …)}``; they are indexed per batch.
    """

    def __init__(self, examples: list[dict], pad_id: int, extras: dict[str, torch.Tensor] | None = None,
                 share_prompts: bool = False, separate_prompts: bool = False):
        self.examples, self.pad_id, self.extras = examples, pad_id, dict(extras or {})
        self.share_prompts = share_prompts   # tells the forward (dpo.completion_logps) which layout to run
        self.separate_prompts = separate_prompts   # an encoder-decoder: prompts and responses, always

    def __len__(self):
        return len(self.examples)

    def lengths(self) -> list[int]:
        return pair_lengths(self.examples)

    def content(self) -> list[dict]:
        """The token ids that decide every log-prob of the batches (a reference cache key)."""
        return [{"p": e["prompt_ids"], "c": e["chosen_ids"], "r": e["rejected_ids"]} for e in self.examples]

    def _shared_layout(self, pairs: list[dict]) -> dict:
        """The same rows as (prompt, response) for a shared-prompt forward (``models/layout.py``):
        each pair's prompt once, the 2B responses (chosen, then rejected) right-padded."""
        responses = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
        lengths = torch.tensor([len(r) for r in responses])
        response_ids = torch.full((len(responses), int(lengths.max())), self.pad_id, dtype=torch.long)
        for r, response in enumerate(responses):
            response_ids[r, :len(response)] = torch.tensor(list(response), dtype=torch.long)
        return {"prompts": [list(p["prompt_ids"]) for p in pairs], "pad_id": self.pad_id, "response_ids": response_ids,
                "response_mask": torch.arange(response_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)}

    def __call__(self, indices: list[int]) -> dict:
        pairs = [self.examples[i] for i in indices]
        seqs = [(p["prompt_ids"], p["chosen_ids"]) for p in pairs] + [(p["prompt_ids"], p["rejected_ids"]) for p in pairs]
        batch = {**pad_rows(seqs, self.pad_id),
                 "margin": torch.tensor([p["margin"] for p in pairs], dtype=torch.float32),
                 "num_pairs": len(pairs), "share_prompts": self.share_prompts}
        if self.share_prompts or self.separate_prompts:
            batch.update(self._shared_layout(pairs))
        index = torch.tensor(indices, dtype=torch.long)
        for name, values in self.extras.items():
            batch[name] = values[index]
        return batch


def pad_rows(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """(prompt, response) rows right-padded to one width: ``input_ids``, ``attention_mask`` (1 on
    real tokens) and ``labels`` (the response tokens, -100 elsewhere), each (rows, width)."""
    width = max(len(a) + len(b) for a, b in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (prompt, response) in enumerate(seqs):
        n, m = len(prompt), len(response)
        ids[r, : n + m] = torch.tensor(list(prompt) + list(response), dtype=torch.long)
        labels[r, n: n + m] = torch.tensor(list(response), dtype=torch.long)
        mask[r, : n + m] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pair_lengths(pairs: list[dict]) -> list[int]:
    """Tokens of each pair's longer side (its padded width in a batch), for ``group_by_length``."""
    return [len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs]


def pair_count(batch: dict) -> float:
    """The engine's normalizer for pair losses: the loss of a step is the mean over its pairs."""
    return float(batch["num_pairs"])


def length_ordered_batches(batches, batch_size: int) -> list[list[int]]:
    """Indices of ``batches`` (``PairBatches``, ``UnpairedBatches``) in batches of similar length
    (shortest first): less padding for no-grad passes. The reference precompute and the held-out
    evaluation use the same batches, so at step 0 (policy = reference) every implicit reward is
    exactly 0, not 0 up to padding-dependent rounding."""
    lengths = batches.lengths()
    order = sorted(range(len(batches)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def encode_sequence(tokenizer, prompt: list[dict], response: list[dict], max_length: int,
                    max_prompt_length: int | None = None) -> list[int]:
    """The ids of one prompt + response, exactly as a pair's chosen row (for reward-model scoring)."""
    e = encode_pair_row(tokenizer, {"prompt": prompt, "chosen": response, "rejected": response}, max_length,
                        max_prompt_length)
    return e["prompt_ids"] + e["chosen_ids"]
