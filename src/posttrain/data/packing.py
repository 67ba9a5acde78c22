"""Batches for training: padding-free packing, with a padded fallback.

Packing puts several sequences in one row of ``max_length`` tokens (best-fit decreasing, as TRL's
``bfd``) with ``position_ids`` restarting at 0 at each sequence. transformers builds a
block-diagonal causal mask from those restarts when no ``attention_mask`` is passed (and no KV
cache is used), so attention never crosses a boundary: the logits of a packed row equal the logits
of its sequences run one by one (``tests/test_data.py`` checks this).

Shapes: every batch holds ``input_ids_BT``, ``labels_BT`` and ``position_ids_BT`` (packed) or
``attention_mask_BT`` (padded), under the names transformers uses (no suffix).
"""

from __future__ import annotations

import bisect

import torch

from posttrain.data.tokenize import IGNORE_INDEX


def pack_sequences(examples: list[dict], max_length: int) -> list[list[int]]:
    """Group example indices into rows of at most ``max_length`` tokens (best-fit decreasing).
    Examples longer than ``max_length`` must have been truncated before."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (space left, row index)
    for i in order:
        length = len(examples[i]["input_ids"])
        if length > max_length:
            raise ValueError(f"example {i} has {length} tokens > max_length {max_length}; truncate first")
        k = bisect.bisect_left(free, (length, -1))
        if k < len(free):
            space, r = free.pop(k)
            rows[r].append(i)
            bisect.insort(free, (space - length, r))
        else:
            rows.append([i])
            bisect.insort(free, (max_length - length, len(rows) - 1))
    return rows


def collate_packed(examples: list[dict], rows: list[list[int]], pad_id: int, max_length: int | None = None) -> dict:
    """Tensors for packed rows; the tail of each row is padding with its own position run."""
    width = max_length or max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for i in row:
            seq_ids, seq_labels = examples[i]["input_ids"], examples[i]["labels"]
            n = len(seq_ids)
            ids[b, t:t + n] = torch.tensor(seq_ids)
            lab = torch.tensor(seq_labels)
            lab[0] = IGNORE_INDEX  # the first token of a sequence is never predicted from the previous one
            labels[b, t:t + n] = lab
            positions[b, t:t + n] = torch.arange(n)
            t += n
        positions[b, t:] = torch.arange(width - t)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def collate_padded(examples: list[dict], pad_id: int) -> dict:
    """Right-padded batch with an attention mask (the fallback when packing is off)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[b, :n] = torch.tensor(e["input_ids"])
        labels[b, :n] = torch.tensor(e["labels"])
        mask[b, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def sequence_ids(batch: dict) -> torch.Tensor:
    """(B, T) index of the sequence each token belongs to, unique across the batch."""
    if "position_ids" in batch:
        starts = (batch["position_ids"] == 0).long()
        local = starts.cumsum(-1) - 1
        width = batch["position_ids"].shape[1]
        return local + torch.arange(local.shape[0]).unsqueeze(1) * width
    B, T = batch["labels"].shape if "labels" in batch else batch["input_ids"].shape   # seq2seq: the decoder's
    return torch.arange(B).unsqueeze(1).expand(B, T)
