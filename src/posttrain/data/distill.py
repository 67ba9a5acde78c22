"""Distillation rows → tokens (``posttrain distill``, ``train/distill.py``).

Data type: prompts (``prompt``, or ``messages`` ending in a user turn) with optional completions
(``prompt`` + ``completion``, or ``messages`` ending in assistant turns), normalised by
``data.formats.validate_distill_row``. A prompt is tokenised as the rendered generation prompt
(``data.tokenize.encode_prompt``, what the student samples after); a completion as the tokens that
follow it, up to and including the EOS, exactly as preference responses are (``data/preference.py``
``encode_responses``), so dataset completions and student samples share one layout.
"""

from __future__ import annotations

import torch

from posttrain.data.formats import DataError, validate_rows
from posttrain.data.preference import encode_responses
from posttrain.data.sources import mix_sources
from posttrain.data.tokenize import encode_prompt


def load_distill_rows(sources: list, tokenizer, max_prompt_length: int, max_new_tokens: int, seed: int,
                      field: str) -> list[dict]:
    """Validated rows as ``prompt_ids`` and ``completion_ids`` (None for a prompt-only row), the
    completion cut to ``max_new_tokens`` (``truncated`` marks a cut); prompts over
    ``max_prompt_length`` tokens are dropped (all of them dropped is an error that says so)."""
    rows = validate_rows(mix_sources(sources, seed=seed), "distill", field)
    kept = []
    for row in rows:
        completion_ids, truncated = None, False
        if row["completion"] is not None:
            prompt_ids, (completion_ids,), _ = encode_responses(tokenizer, row["messages"], [row["completion"]],
                                                                max_length=1 << 30, max_prompt_length=None)
            truncated = len(completion_ids) > max_new_tokens
            completion_ids = completion_ids[:max_new_tokens]
        else:
            prompt_ids = encode_prompt(tokenizer, row["messages"])
        if len(prompt_ids) <= max_prompt_length and completion_ids != []:
            kept.append({"prompt_ids": prompt_ids, "completion_ids": completion_ids, "truncated": truncated})
    if not kept:
        raise DataError(f"{field}: every one of the {len(rows)} prompts is longer than max_prompt_length="
                        f"{max_prompt_length} tokens. Raise max_prompt_length or shorten the prompts")
    return kept


def dataset_batch(rows: list[dict], pad_id: int) -> dict:
    """The rows' own completions in the layout of a student rollout: ``prompt_ids`` (B lists),
    ``completion_ids`` (B, T) right-padded with ``pad_id``, ``mask`` (B, T) float (1 on completion
    tokens), ``finished`` (B,) bool (False where the completion was cut)."""
    T = max(len(r["completion_ids"]) for r in rows)
    completion = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    for i, r in enumerate(rows):
        completion[i, :len(r["completion_ids"])] = torch.tensor(r["completion_ids"])
        mask[i, :len(r["completion_ids"])] = 1
    return {"prompt_ids": [r["prompt_ids"] for r in rows], "completion_ids": completion, "mask": mask,
            "finished": torch.tensor([not r["truncated"] for r in rows])}
