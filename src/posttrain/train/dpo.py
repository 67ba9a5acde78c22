"""Direct preference optimisation (``posttrain dpo``): DPO, length-normalised DPO, SimPO, IPO, hinge.

Objective (Rafailov et al. 2023, eq. 7), per pair (x, y_w, y_l):

    loss = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

averaged over pairs (normalizer = number of pairs, so the loss is invariant to gradient
accumulation and process count). The variant is ``loss_type`` (``losses/preference.py`` has one
function per variant; ``sigmoid`` / ``sigmoid_norm`` are TRL's names for ``dpo`` / ``dpo_norm``).
The trainer asks ``loss_spec(loss_type)`` whether a reference model is needed and whether to feed
per-token MEAN log-probs (``dpo_norm``, ``simpo``) instead of summed ones.

Data type: preference rows (``prompt`` + ``chosen`` + ``rejected``), tokenised by
``data/preference.py``: the prompt is tokenised once and shared by chosen and rejected;
chosen and rejected run in one concatenated forward (2B right-padded rows).

Reference (``reference=``):
- ``precomputed`` (default): one no-grad pass of the initial policy before training; the summed
  log-probs are cached on disk under a hash of the model files, the token ids (so data, tokenizer,
  template and truncation settings) and the dtype, so no reference model sits in memory while
  training and a second run with the same inputs does no reference forward at all.
- ``copy``: a frozen copy of the initial policy in memory, run every step.
- ``lora_base``: the policy with its LoRA adapters disabled (needs ``lora_rank`` > 0).

Departures: WPO (``wpo=true``) weights each pair by exp(mean log π(y_w) + mean log π(y_l)) without
WPO's "weight alignment" calibration (see ``losses.preference.wpo_weights``); multi-turn
responses train on every token after the prompt up to the final EOS.

    posttrain dpo loss_type=dpo_norm beta=5 learning_rate=5e-7 max_steps=200
    posttrain dpo data=[prefs.jsonl] reference=copy
    accelerate launch --num_processes 2 -m posttrain.cli dpo …
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Callable

import torch

from posttrain.config import ConfigError, opt
from posttrain.train.preference import PreferenceOptions
from posttrain.losses.preference import LOSS_ALIASES, LOSS_SPECS, PREFERENCE_LOSSES, dpo_loss, loss_spec, \
    wpo_weights

REFERENCES = ("precomputed", "copy", "lora_base")
SHOWN = ("loss", "accuracy", "margin", "logps_accuracy")  # start-of-training eval values printed and reported
Reference = Callable[[torch.nn.Module, dict], torch.Tensor]  # (policy, batch) -> (2B,) summed ref log-probs


@dataclasses.dataclass
class DPOConfig(PreferenceOptions):
    """``posttrain dpo``: preference optimisation on ``prompt`` / ``chosen`` / ``rejected`` rows."""

    learning_rate: float = opt(5e-6, "peak learning rate (AdamW); DPO wants far less than SFT", "Optimization")
    loss_type: str = opt("dpo", "dpo (sigmoid), dpo_norm (sigmoid_norm), simpo, ipo, hinge", "Preference")
    beta: float = opt(0.1, "β: KL strength / inverse temperature (dpo 0.1; TÜLU 3 dpo_norm 5; simpo 2–2.5)",
                      "Preference")
    label_smoothing: float = opt(0.0, "ε in [0, 0.5): assumed label-flip rate (cDPO); dpo / dpo_norm only",
                                 "Preference")
    simpo_gamma: float = opt(0.5, "SimPO target margin γ in reward units (simpo only)", "Preference")
    wpo: bool = opt(False, "weight pairs by the policy's probability of producing them (WPO)", "Preference")
    reference: str = opt("precomputed", "precomputed (one cached pass before training), copy (frozen copy in "
                         "memory) or lora_base (adapters disabled; needs lora_rank > 0)", "Preference")
    chunked_loss: bool = opt(True, "run the LM head only on response tokens, in chunks, recomputing them in "
                             "backward: no full-vocabulary logits (plain path when the head is not a "
                             "bias-free linear layer)", "Optimization")
    eval_at_start: bool = opt(True, "evaluate the held-out pairs once before the first step", "Logging")

    def validate(self):
        super().validate()
        if self.loss_type not in LOSS_SPECS:
            raise ConfigError(f"loss_type={self.loss_type!r}: choose one of {', '.join(LOSS_SPECS)}")
        if self.reference not in REFERENCES:
            raise ConfigError(f"reference={self.reference!r}: choose one of {', '.join(REFERENCES)}")
        if self.reference == "lora_base" and self.lora_rank <= 0:
            raise ConfigError("reference=lora_base runs the policy with its adapters disabled, so it needs "
                              "lora_rank > 0; use reference=precomputed or copy for full finetuning")
        if self.beta <= 0:
            raise ConfigError(f"beta={self.beta}: must be > 0")
        accepted = loss_keywords(self.loss_type)
        if self.label_smoothing and "label_smoothing" not in accepted:
            raise ConfigError(f"label_smoothing={self.label_smoothing} applies to dpo / dpo_norm only, "
                              f"not loss_type={self.loss_type}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing={self.label_smoothing}: must lie in [0, 0.5)")
        if self.simpo_gamma != 0.5 and "gamma" not in accepted:
            raise ConfigError(f"simpo_gamma applies to loss_type=simpo only, not {self.loss_type}")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(f"max_prompt_length={self.max_prompt_length} must lie in (0, max_length="
                              f"{self.max_length}) so every response keeps some tokens")


def loss_keywords(loss_type: str) -> set[str]:
    """The keyword options the variant's loss function takes (read off its signature)."""
    fn = PREFERENCE_LOSSES[LOSS_ALIASES.get(loss_type, loss_type)]
    return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def loss_options(config: DPOConfig) -> dict[str, float]:
    available = {"label_smoothing": config.label_smoothing, "gamma": config.simpo_gamma}
    return {k: v for k, v in available.items() if k in loss_keywords(config.loss_type)}


# ---------------------------------------------------------------------------------------------
# Log-probs of the responses in a concatenated batch


def completion_logps(model, batch: dict, chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums_2B, counts_2B): summed log-probs of each row's response tokens and their number.

    ``batch["share_prompts"]`` (``DPOConfig.share_prompts``): each pair's prompt runs once and both
    responses continue from its KV cache (``models/layout.py``); the prompt's own logits are never
    computed. ``chunked`` (``DPOConfig.chunked_loss``): the LM head runs only on response tokens, a
    chunk at a time (``losses/linear_ce.linear_log_probs``). Same values up to rounding either way."""
    from posttrain.losses.linear_ce import linear_log_probs
    from posttrain.losses.sft import token_nll
    from posttrain.models.layout import completion_token_logps
    from posttrain.models.lm_head import labelled_head_inputs

    if batch.get("share_prompts"):
        responses, mask = batch["response_ids"], batch["response_mask"]
        prompts = batch["prompts"] * 2   # chosen rows, then rejected rows: each prompt twice
        logps, _ = completion_token_logps(model, prompts, responses, batch["pad_id"], mask, share_prompts=True,
                                          chunked=chunked)
        return logps.sum(-1), mask.sum(-1)
    head = labelled_head_inputs(model, batch, chunked)
    if head is None:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        nll_2BT, mask_2BT = token_nll(model(**inputs, use_cache=False).logits, batch["labels"])
        return -nll_2BT.sum(-1), mask_2BT.sum(-1)
    hidden_NH, head_weight, target_N, mask = head
    logp_N, _ = linear_log_probs(hidden_NH, head_weight, target_N)
    row_N = mask.nonzero()[:, 0]
    sums = torch.zeros(mask.shape[0], dtype=logp_N.dtype, device=logp_N.device).index_add(0, row_N, logp_N)
    return sums, mask.sum(-1)


@torch.no_grad()
def compute_reference_logps(model, batches, batch_size: int, device, chunked: bool = True) -> torch.Tensor:
    """(N, 2) summed reference log-probs [chosen, rejected] of every pair: one no-grad pass."""
    from posttrain.data.preference import length_ordered_batches

    was_training = model.training
    model.eval()
    out = torch.zeros(len(batches), 2, dtype=torch.float64)
    for idx in length_ordered_batches(batches, batch_size):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batches(idx).items()}
        sums, _ = completion_logps(model, batch, chunked)
        chosen, rejected = sums.double().cpu().chunk(2)
        out[idx, 0], out[idx, 1] = chosen, rejected
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


def reference_cache_path(config: DPOConfig, examples: list[dict], tokenizer) -> Path:
    from posttrain.data.cache import content_key
    from posttrain.models.embedded import posttrain_home

    rows = [{"p": e["prompt_ids"], "c": e["chosen_ids"], "r": e["rejected_ids"]} for e in examples]
    # batch_size, share_prompts and chunked_loss decide the batches' padding and layout, so the float rounding:
    # with them in the key, step-0 evaluation reproduces the cached values exactly (h = 0).
    settings = {"model": model_fingerprint(config.model), "dtype": config.dtype, "template": config.template,
                "max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
                "batch_size": config.batch_size, "share_prompts": config.share_prompts,
                "chunked_loss": config.chunked_loss, "version": 2}
    return posttrain_home() / "reference_logps" / f"{content_key(rows, tokenizer, settings)}.pt"


def precomputed_reference(config, model, batches, tokenizer, engine) -> tuple[torch.Tensor, bool]:
    """(N, 2) reference log-probs, from the disk cache when present; returns (logps, cache_hit)."""
    path = reference_cache_path(config, batches.examples, tokenizer)
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
    """Precomputed: the (B, 2) ``ref_logps`` the collator attached → (2B,) chosen rows then rejected."""
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


# ---------------------------------------------------------------------------------------------
# One step


def dpo_step(config: DPOConfig, reference: Reference | None):
    """``step(model, batch) -> (Σ per-pair losses, metrics)``; the engine divides by the pair count."""
    spec = loss_spec(config.loss_type)
    options = loss_options(config)

    def step(model, batch):
        sums_2B, counts_2B = completion_logps(model, batch, config.chunked_loss)
        counts_2B = counts_2B.clamp_min(1)
        logps_2B = sums_2B / counts_2B if spec.length_normalized else sums_2B
        chosen_B, rejected_B = logps_2B.chunk(2)
        ref_chosen_B = ref_rejected_B = None
        if spec.needs_reference:
            ref_2B = reference(model, batch).to(sums_2B.dtype)
            ref_2B = ref_2B / counts_2B if spec.length_normalized else ref_2B
            ref_chosen_B, ref_rejected_B = ref_2B.chunk(2)
        weights_B = wpo_weights(*(sums_2B / counts_2B).chunk(2)) if config.wpo else None
        losses_B, chosen_rewards_B, rejected_rewards_B = dpo_loss(
            chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, beta=config.beta, loss_type=config.loss_type,
            weights=weights_B, **options)
        mean_chosen_B, mean_rejected_B = (sums_2B.detach() / counts_2B).chunk(2)
        metrics = {   # device tensors: the engine moves a step's metrics to the host in one transfer
            "rewards/chosen": chosen_rewards_B.detach().mean(),
            "rewards/rejected": rejected_rewards_B.detach().mean(),
            "margin": (chosen_rewards_B - rejected_rewards_B).detach().mean(),
            "accuracy": (chosen_rewards_B > rejected_rewards_B).float().mean(),
            "logps/chosen": chosen_B.detach().mean(),
            "logps/rejected": rejected_B.detach().mean(),
            "logps_accuracy": (mean_chosen_B > mean_rejected_B).float().mean(),
        }
        if weights_B is not None:
            metrics["wpo_weight"] = weights_B.detach().mean()
        return losses_B.sum(), metrics

    return step


# ---------------------------------------------------------------------------------------------
# The run


def run_dpo(config: DPOConfig, command: str = "posttrain dpo") -> dict:
    from posttrain.data import mix_sources
    from posttrain.train.common import load_policy, log, prepare_run
    from posttrain.train.engine import Engine
    from posttrain.models.layout import prompt_sharing
    from posttrain.data.preference import PairBatches, pair_count, pair_lengths, tokenize_pairs
    from posttrain.train.preference import evaluate_pairs

    # --- run folder, policy, tokenizer
    run_dir = prepare_run(config, command)
    model, tokenizer = load_policy(config)
    engine = Engine(config, model, tokenizer)
    main = engine.is_main
    spec = loss_spec(config.loss_type)

    # --- data: mix, validate (errors name the row, or counted skips), tokenise (cached)
    pairs, stats = tokenize_pairs(mix_sources(config.data, seed=config.seed), tokenizer, config.max_length,
                                  config.max_prompt_length, "data", config.skip_invalid_rows)
    log(f"[bold]dpo[/] {config.loss_type} β={config.beta}: {stats.summary()}", main)
    eval_pairs, eval_stats = [], None
    if config.eval_data:
        eval_pairs, eval_stats = tokenize_pairs(mix_sources(config.eval_data, seed=config.seed), tokenizer,
                                                config.max_length, config.max_prompt_length, "eval_data",
                                                config.skip_invalid_rows)
        log(f"[bold]dpo[/] held out: {eval_stats.summary()}", main)
    share = prompt_sharing(config.share_prompts, engine.world)
    batches = PairBatches(pairs, tokenizer.pad_token_id, share_prompts=share)
    eval_batches = PairBatches(eval_pairs, tokenizer.pad_token_id, share_prompts=share)

    # --- reference: what the loss needs, built before the engine wraps the policy
    reference, cache_hits = None, []
    device = engine.accelerator.device
    if not spec.needs_reference:
        log(f"[bold]dpo[/] {config.loss_type} is reference-free: no reference model", main)
    elif config.reference == "precomputed":
        for b in (batches, eval_batches) if eval_pairs else (batches,):
            logps, hit = precomputed_reference(config, model, b, tokenizer, engine)
            b.extras["ref_logps"] = logps
            cache_hits.append(hit)
        reference = reference_from_batch
        log(f"[bold]dpo[/] reference log-probs {'read from the cache' if all(cache_hits) else 'precomputed'}", main)
    elif config.reference == "copy":
        reference = frozen_copy_reference(model, device, config.chunked_loss)
    else:
        reference = functools.partial(lora_base_reference, chunked=config.chunked_loss)
    step = dpo_step(config, reference)

    # --- evaluation: preference accuracy of the implicit reward on held-out pairs
    eval_fn = None
    start_eval = {}
    if eval_pairs:
        eval_fn = lambda m: evaluate_pairs(m, eval_batches, step, config.batch_size)  # noqa: E731
        if config.eval_at_start and not (config.resume and engine.latest_checkpoint()):
            model.to(device).eval()
            start_eval = {f"start_eval_{k}": v for k, v in eval_fn(model).items()}
            model.train()
            log("  eval @ step 0: " + ", ".join(f"{k}={start_eval['start_eval_' + k]:.4f}" for k in SHOWN), main)

    # --- train
    last = engine.fit(len(batches), batches, step, normalizer_fn=pair_count, eval_fn=eval_fn, description="dpo",
                      lengths=pair_lengths(pairs))
    out = engine.save_final()
    last.update(start_eval)
    last["reference_cache_hit"] = bool(cache_hits) and all(cache_hits)
    if main:
        from posttrain.reports.training import write_training_report

        extra = {"loss_type": config.loss_type, "beta": config.beta, "reference": config.reference
                 if spec.needs_reference else "none (reference-free)", "pairs": stats.summary()}
        extra.update({f"held-out {k} at step 0": f"{start_eval['start_eval_' + k]:.4f}" for k in SHOWN if start_eval})
        write_training_report(run_dir, "DPO", extra=extra)
        log(f"[green]done[/]: model in {out}, report in {run_dir / 'report.md'}", main)
    return last
