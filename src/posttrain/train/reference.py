"""The reference policy π_ref of the trainers that need one (``posttrain dpo``, ``posttrain kto``).

A reference is a function ``(policy, batch) -> (2B,)`` summed log-probs of a batch's 2B response
rows under the initial policy (DPO: chosen rows then rejected rows; KTO: the examples' own
completions then their mismatched ones). ``reference=`` picks how it is obtained:

- ``precomputed`` (default): one no-grad pass of the initial policy before training; the summed
  log-probs are cached on disk under a hash of the model files, the token ids (so data, tokenizer,
  template and truncation settings) and the dtype, so no reference model sits in memory while
  training and a second run with the same inputs does no reference forward at all.
- ``copy``: a frozen copy of the initial policy in memory, run every step.
- ``lora_base``: the policy with its LoRA adapters disabled (needs ``lora_rank`` > 0).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Callable

import torch

from posttrain.config import ConfigError, opt
from posttrain.train.preference import completion_logps

REFERENCES = ("precomputed", "copy", "lora_base")
Reference = Callable[[torch.nn.Module, dict], torch.Tensor]  # (policy, batch) -> (2B,) summed ref log-probs


def reference_option():
    """The ``reference`` option, declared once for every trainer that has one."""
    return opt("precomputed", "precomputed (one cached pass before training), copy (frozen copy in memory) or "
               "lora_base (adapters disabled; needs lora_rank > 0)", "Preference")


def check_reference(config) -> None:
    """The checks of ``config.reference`` every trainer with a reference shares."""
    if config.reference not in REFERENCES:
        raise ConfigError(f"reference={config.reference!r}: choose one of {', '.join(REFERENCES)}")
    if getattr(config, "adapter", "full") == "prompt":
        if config.reference == "precomputed":   # its cache is keyed on the base model, not on the initial prompt
            raise ConfigError("adapter=prompt: use reference=lora_base (the model without its soft prompt) or "
                              "reference=copy (the policy with its initial prompt), not precomputed")
        return
    if config.reference == "lora_base" and config.lora_rank <= 0:
        raise ConfigError("reference=lora_base runs the policy with its adapters disabled, so it needs "
                          "lora_rank > 0; use reference=precomputed or copy for full finetuning")


@torch.no_grad()
def compute_reference_logps(model, batches, batch_size: int, device, chunked: bool = True) -> torch.Tensor:
    """(N, 2) summed reference log-probs of every unit's two response rows ([chosen, rejected] for
    pairs; [completion, mismatched completion] for KTO's examples): one no-grad pass."""
    from posttrain.data.preference import length_ordered_batches

    was_training = model.training
    model.eval()
    out = torch.zeros(len(batches), 2, dtype=torch.float64)
    for idx in length_ordered_batches(batches, batch_size):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batches(idx).items()}
        sums, _ = completion_logps(model, batch, chunked)
        first, second = sums.double().cpu().chunk(2)
        out[idx, 0], out[idx, 1] = first, second
    model.train(was_training)
    return out


def model_fingerprint(spec: str) -> dict:
    """What identifies the initial weights: the spec, its resolved path, and its files' sizes/mtimes."""
    from posttrain.models import resolve_model_path

    path = resolve_model_path(spec)
    files = []
    if Path(path).is_dir():
        files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(path).iterdir()
                       if f.suffix in (".safetensors", ".bin", ".json", ".gguf"))
    return {"spec": spec, "path": path, "files": files}


def reference_cache_path(config, batches, tokenizer) -> Path:
    from posttrain.data.cache import content_key
    from posttrain.models.embedded import posttrain_home

    # batch_size, share_prompts and chunked_loss decide the batches' padding and layout, so the float rounding:
    # with them in the key, step-0 evaluation reproduces the cached values exactly (h = 0).
    settings = {"model": model_fingerprint(config.model), "dtype": config.dtype, "template": config.template,
                "max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
                "batch_size": config.batch_size, "share_prompts": batches.share_prompts,
                "chunked_loss": config.chunked_loss, "version": 2}
    return posttrain_home() / "reference_logps" / f"{content_key(batches.content(), tokenizer, settings)}.pt"


def precomputed_reference(config, model, batches, tokenizer, engine) -> tuple[torch.Tensor, bool]:
    """(N, 2) reference log-probs, from the disk cache when present; returns (logps, cache_hit)."""
    path = reference_cache_path(config, batches, tokenizer)
    hit = path.exists()
    if not hit and engine.is_main:
        model.to(engine.accelerator.device)
        logps = compute_reference_logps(model, batches, config.batch_size, engine.accelerator.device,
                                        config.chunked_loss)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(logps)}")
        torch.save(logps, tmp)
        tmp.replace(path)
    engine.accelerator.wait_for_everyone()
    return torch.load(path), hit


def reference_from_batch(model, batch: dict) -> torch.Tensor:
    """Precomputed: the (B, 2) ``ref_logps`` the collator attached → (2B,), first column's rows first."""
    ref_B2 = batch["ref_logps"]
    return torch.cat([ref_B2[:, 0], ref_B2[:, 1]]).float()


def frozen_copy_reference(model, device, chunked: bool = True) -> Reference:
    ref = copy.deepcopy(model).to(device).eval()
    ref.requires_grad_(False)

    def reference(_policy, batch):
        with torch.no_grad():
            return completion_logps(ref, batch, chunked)[0]

    return reference


def lora_base_reference(policy, batch: dict, chunked: bool = True) -> torch.Tensor:
    """The policy (possibly DDP-wrapped) run with its LoRA adapters disabled."""
    inner = getattr(policy, "module", policy)
    with torch.no_grad(), inner.disable_adapter():
        return completion_logps(policy, batch, chunked)[0]


def build_reference(config, model, batch_sets: list, tokenizer, engine, name: str) -> tuple[Reference, bool]:
    """The reference ``config.reference`` asks for, built before the engine wraps the policy.
    ``precomputed`` attaches each of ``batch_sets``' (N, 2) log-probs as its ``ref_logps`` extra.
    Returns (reference, whether every precomputed set came from the disk cache)."""
    from posttrain.train.common import log

    if config.reference == "copy":
        return frozen_copy_reference(model, engine.accelerator.device, config.chunked_loss), False
    if config.reference == "lora_base":
        return functools.partial(lora_base_reference, chunked=config.chunked_loss), False
    hits = []
    for batches in batch_sets:
        logps, hit = precomputed_reference(config, model, batches, tokenizer, engine)
        batches.extras["ref_logps"] = logps
        hits.append(hit)
    log(f"[bold]{name}[/] reference log-probs {'read from the cache' if all(hits) else 'precomputed'}", engine.is_main)
    return reference_from_batch, all(hits)
