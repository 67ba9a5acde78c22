"""What the preference trainers (``posttrain dpo``, ``posttrain reward``) share beyond the data
(``data/preference.py``): their data options and the held-out evaluation of a pair step."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from posttrain.config import TrainingOptions, opt
from posttrain.data.preference import PairBatches, length_ordered_batches


@dataclasses.dataclass
class PreferenceOptions(TrainingOptions):
    """Data options shared by the preference trainers (``dpo``, ``reward``)."""

    data: list[Any] = opt(["builtin:arithmetic_preference", "builtin:ifeval_preference"],
                          "training sources: a list of specs or {source, fraction|count, split} entries", "Data")
    eval_data: list[Any] = opt([{"source": "builtin:arithmetic_preference:test", "count": 100},
                                {"source": "builtin:ifeval_preference:test", "count": 50}],
                               "held-out pairs: preference accuracy ([] = none)", "Data")
    max_length: int = opt(512, "tokens per prompt + response; responses are cut from the right", "Data")
    max_prompt_length: int = opt(256, "prompt tokens kept (from the end of the prompt)", "Data")
    skip_invalid_rows: bool = opt(False, "skip and count invalid rows (chosen == rejected, empty response, "
                                  "missing prompt, …) instead of stopping with an error naming the row", "Data")
    share_prompts: bool = opt(True, "run each pair's prompt once; chosen and rejected continue from its KV cache "
                              "(same values up to float rounding, less compute; decoder models). Off with "
                              "several processes", "Model")


@torch.no_grad()
def evaluate_pairs(model, batches: PairBatches, step, batch_size: int) -> dict:
    """Held-out metrics of a pair ``step`` (loss = numerator / pairs, every metric weighted by pairs)."""
    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    n = 0
    for indices in length_ordered_batches(batches, batch_size):  # weighted means: order-free
        batch = batches(indices)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        numerator, metrics = step(model, batch)
        k = batch["num_pairs"]
        totals["loss"] = totals.get("loss", 0.0) + float(numerator)
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * k
        n += k
    return {name: value / max(n, 1) for name, value in totals.items()}
