"""Unpaired preference examples → tokens, for ``posttrain kto``.

Data type: unpaired preference rows (TRL's KTO format), ``prompt`` + ``completion`` (strings or
message lists) + ``label`` (true = desirable, false = undesirable). Preference rows (``prompt`` +
``chosen`` + ``rejected``) are accepted too and unpaired (``data.formats.unpair``, as TRL's
``unpair_preference_dataset``): the chosen completion becomes a desirable example and the rejected
one an undesirable example of the same prompt::

    {"prompt": "2+3?", "completion": "5", "label": true}          → (2+3?, 5, desirable)
    {"prompt": "2+3?", "chosen": "5", "rejected": "6"}            → (2+3?, 5, desirable), (2+3?, 6, undesirable)

Tokenisation is the preference pairs' (``data.preference.encode_responses``): the prompt rendered
once with the generation prompt and tokenised once, the completion's tokens (up to and including
its EOS) appended; the prompt keeps its last ``max_prompt_length`` tokens, the completion its
first ``max_length - len(prompt)``.

Mismatched completions, for KTO's KL reference point (``losses.preference.kto_reference_point``):
each example also carries ``mismatched_ids``, the completion of another example whose prompt
differs — the next such example in a seeded order — cut to fit after its own prompt. The pairing is
fixed for the run, as TRL builds its KL dataset once (completions shifted by one row), so the
reference log-probs of the mismatched pairs are precomputed with the others.

Shapes: ``UnpairedBatches`` returns 2B rows — rows 0..B-1 each example's (prompt, completion),
rows B..2B-1 its (prompt, mismatched completion) — as ``input_ids``, ``attention_mask`` (right
padding) and ``labels`` (-100 on prompt and padding), like ``PairBatches``; plus ``desirable``
(B,) bool and ``num_examples`` (an int).
"""

from __future__ import annotations

import torch

from posttrain.data.formats import DataError, unpair, validate_unpaired_row
from posttrain.data.preference import PairStats, encode_responses, has_chat_template, keep_with_responses, pad_rows, \
    validate_pairs


def encode_unpaired_row(tokenizer, row: dict, max_length: int, max_prompt_length: int | None) -> dict:
    """One unpaired example → ``{prompt_ids, completion_ids, desirable, subset, truncated}``."""
    prompt_ids, (completion_ids,), truncated = encode_responses(tokenizer, row["prompt"], [row["completion"]],
                                                                max_length, max_prompt_length)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "desirable": bool(row["label"]),
            "subset": str(row.get("subset") or ""), "truncated": truncated}


def tokenize_unpaired(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int | None, source: str,
                      skip_invalid: bool = False, seed: int = 0) -> tuple[list[dict], PairStats]:
    """Validate (errors name the row, or count skips), unpair, tokenise (cached on disk), drop
    examples left without a completion token, and give each its mismatched completion."""
    from posttrain.data.cache import cached_tokenize

    stats = PairStats(unit="examples")
    valid = validate_pairs(rows, source, skip_invalid, stats, validate=validate_unpaired_row)
    unpaired = [example for row in valid for example in unpair(row)]
    settings = {"kind": "unpaired", "max_length": max_length, "max_prompt_length": max_prompt_length,
                "chat": has_chat_template(tokenizer), "version": 1}

    def encode(examples):
        return [encode_unpaired_row(tokenizer, e, max_length, max_prompt_length) for e in examples]

    keep_cols = ("prompt", "completion", "label", "subset")
    examples, _hit = cached_tokenize([{k: e[k] for k in keep_cols if k in e} for e in unpaired], tokenizer,
                                     settings, encode)
    kept = keep_with_responses(examples, ("completion_ids",), stats, source, max_length, "example")
    try:
        partners = mismatched_partners([e["prompt_ids"] for e in kept], seed)
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None
    for e, j in zip(kept, partners):
        e["mismatched_ids"] = kept[j]["completion_ids"][: max(1, max_length - len(e["prompt_ids"]))]
    return kept, stats


def mismatched_partners(prompt_ids: list[list[int]], seed: int) -> list[int]:
    """For each example, the index of the example whose completion it is paired with for the KL
    estimate: the next one after it, cyclically, in a seeded random order, skipping examples with
    the same prompt (an unpaired preference row's two completions share one). ValueError when
    every prompt is the same."""
    keys = [tuple(p) for p in prompt_ids]
    if len(set(keys)) < 2:
        raise ValueError("every example has the same prompt tokens, so no completion can be paired with another "
                         "prompt for KTO's KL reference point (a tokenizer without a chat template? set "
                         "template=chatml); add rows with other prompts")
    n = len(keys)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    partners = [0] * n
    for position, i in enumerate(order):
        ahead = 1
        while keys[order[(position + ahead) % n]] == keys[i]:
            ahead += 1
        partners[i] = order[(position + ahead) % n]
    return partners


class UnpairedBatches:
    """Collate example indices into one batch of 2B rows: the examples' own rows, then their
    mismatched rows (see the module docstring). Extra per-example tensors (the precomputed
    reference log-probs, (N, 2): own completion, mismatched completion) are attached with
    ``extras={"name": tensor}`` and indexed per batch, as in ``PairBatches``."""

    share_prompts = False   # the mismatched rows run in a no-grad pass of their own: no prompt to share

    def __init__(self, examples: list[dict], pad_id: int, extras: dict[str, torch.Tensor] | None = None):
        self.examples, self.pad_id, self.extras = examples, pad_id, dict(extras or {})

    def __len__(self):
        return len(self.examples)

    def lengths(self) -> list[int]:
        """Tokens of each example's longer row (its padded width), for ``group_by_length``."""
        return [len(e["prompt_ids"]) + max(len(e["completion_ids"]), len(e["mismatched_ids"])) for e in self.examples]

    def content(self) -> list[dict]:
        """The token ids that decide every log-prob of the batches (a reference cache key)."""
        return [{"p": e["prompt_ids"], "c": e["completion_ids"], "m": e["mismatched_ids"]} for e in self.examples]

    def class_counts(self) -> tuple[int, int]:
        """(desirable, undesirable) examples."""
        desirable = sum(bool(e["desirable"]) for e in self.examples)
        return desirable, len(self.examples) - desirable

    def __call__(self, indices: list[int]) -> dict:
        examples = [self.examples[i] for i in indices]
        seqs = ([(e["prompt_ids"], e["completion_ids"]) for e in examples]
                + [(e["prompt_ids"], e["mismatched_ids"]) for e in examples])
        batch = {**pad_rows(seqs, self.pad_id),
                 "desirable": torch.tensor([bool(e["desirable"]) for e in examples], dtype=torch.bool),
                 "num_examples": len(examples), "share_prompts": False}
        index = torch.tensor(indices, dtype=torch.long)
        for name, values in self.extras.items():
            batch[name] = values[index]
        return batch


def split_mismatched(batch: dict) -> tuple[dict, dict]:
    """A 2B-row ``UnpairedBatches`` batch as two B-row batches (``input_ids``, ``attention_mask``,
    ``labels``): the examples' own rows and their mismatched rows, each cut to its longest row."""
    B = batch["num_examples"]
    return _rows(batch, slice(0, B)), _rows(batch, slice(B, 2 * B))


def _rows(batch: dict, rows: slice) -> dict:
    width = int(batch["attention_mask"][rows].sum(-1).max())   # right padding: real tokens come first
    return {k: batch[k][rows, :width] for k in ("input_ids", "attention_mask", "labels")}


def example_count(batch: dict) -> float:
    """The engine's normalizer for KTO: the loss of a step is the mean over its examples."""
    return float(batch["num_examples"])
