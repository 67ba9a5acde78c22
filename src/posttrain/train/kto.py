"""Kahneman–Tversky optimisation (``posttrain kto``): preference tuning from completions labelled
desirable or undesirable, no pairs needed.

Objective (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
eq. 7), per example (x, y) with label desirable / undesirable:

    r     = log π(y|x) - log π_ref(y|x)
    loss  = λ_D · (1 - σ(β (r - z_ref)))       y desirable
    loss  = λ_U · (1 - σ(β (z_ref - r)))       y undesirable

averaged over the examples of the optimizer step (normalizer = number of examples, so the loss is
invariant to gradient accumulation and process count; ``losses.preference.kto_loss``).

The KL reference point z_ref (``losses.preference.kto_reference_point``) is the paper's estimate of
KL(π ‖ π_ref): each example's prompt x_i paired with another example's completion y'_i (a
mismatched pair), z_ref = max(0, mean_i [log π(y'_i|x_i) - log π_ref(y'_i|x_i)]), without gradient.
It is one number per optimizer step: a no-grad pass over the step's mismatched rows runs before
the step's backward passes (the engine's ``prepare_step``) and the log-ratios of every process are
gathered, so z_ref — and with it the loss — does not depend on how the step is split into
micro-batches and processes. Held-out evaluation estimates z_ref once over the whole held-out set.

Data type: unpaired preference rows (``prompt`` + ``completion`` + ``label``, TRL's KTO format);
preference rows (``prompt`` + ``chosen`` + ``rejected``) are unpaired into a desirable and an
undesirable example (``data/unpaired.py``). At step 0 (π = π_ref) r = 0 and z_ref = 0, so the loss
is (λ_D·n_D + λ_U·n_U) / (2n): 0.5 with the default weights.

Reference (``reference=``, ``train/reference.py``): ``precomputed`` (default; one cached no-grad
pass before training, over both the examples' completions and their mismatched ones), ``copy`` or
``lora_base``.

Departures from the paper: z_ref is estimated per optimizer step (the global batch), not per
micro-batch; each example's mismatched completion is fixed for the run (the next example with
another prompt in a seeded order, as TRL's KL dataset is built once), so it comes from another row
of the data, not necessarily of the same batch, and its reference log-prob can be precomputed.

    posttrain kto data=[feedback.jsonl] beta=0.1 learning_rate=5e-6
    posttrain kto desirable_weight=3 max_steps=200      # 3 undesirable rows per desirable one: λ_D·n_D = λ_U·n_U
    accelerate launch --num_processes 2 -m posttrain.cli kto …
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import ClassVar

import torch

from posttrain.config import ConfigError, opt
from posttrain.data.unpaired import split_mismatched
from posttrain.losses.preference import kto_loss, kto_reference_point
from posttrain.train.preference import PreferenceDataOptions, chunked_loss_option, completion_logps, \
    eval_at_start_option
from posttrain.train.reference import Reference, check_reference, reference_option

SHOWN = ("loss", "accuracy", "margin", "kl")  # start-of-training eval values printed and reported


@dataclasses.dataclass
class KTOConfig(PreferenceDataOptions):
    """``posttrain kto``: KTO on ``prompt`` / ``completion`` / ``label`` rows (or unpaired preference rows)."""

    next_token_batches: ClassVar[bool] = True   # optimizer=tram can measure their KL (train/sam.py)

    data_kind: ClassVar[str] = "unpaired"   # how preflight checks the rows (data.formats.VALIDATORS)

    learning_rate: float = opt(5e-6, "peak learning rate (AdamW); KTO, like DPO, wants far less than SFT",
                               "Optimization")
    beta: float = opt(0.1, "β: how fast the value function saturates around the KL reference point", "Preference")
    desirable_weight: float = opt(1.0, "λ_D: weight of desirable examples' losses", "Preference")
    undesirable_weight: float = opt(1.0, "λ_U: weight of undesirable examples' losses (the paper suggests "
                                    "λ_D·n_D / (λ_U·n_U) between 1 and 4/3)", "Preference")
    reference: str = reference_option()
    chunked_loss: bool = chunked_loss_option()
    eval_at_start: bool = eval_at_start_option()

    def validate(self):
        super().validate()
        check_reference(self)
        if self.beta <= 0:
            raise ConfigError(f"beta={self.beta}: must be > 0")
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be > 0 (to ignore a class, drop its rows)")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(f"max_prompt_length={self.max_prompt_length} must lie in (0, max_length="
                              f"{self.max_length}) so every completion keeps some tokens")


# ---------------------------------------------------------------------------------------------
# The KL reference point, before each step


def mismatched_kl(reference: Reference, chunked: bool, gather=None, autocast=contextlib.nullcontext):
    """``prepare(model, batches) -> batches`` (the engine's ``prepare_step``; the held-out
    evaluation's ``prepare``): for 2B-row ``UnpairedBatches`` batches, the reference log-probs of
    all rows and the policy's of the mismatched rows in one no-grad pass, then z_ref over every
    batch given (and, with ``gather`` = ``Engine.all_gather``, every process). Returns each batch's
    B example rows with ``ref_logps`` (B,), ``desirable``, ``num_examples`` and the shared
    ``kl_reference_point``."""

    def prepare(model, batches: list[dict]) -> list[dict]:
        device = next(model.parameters()).device
        prepared, mismatched_logps = [], []
        with torch.no_grad(), autocast():
            for batch in batches:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                B = batch["num_examples"]
                ref_2B = reference(model, batch).float()   # own completions, then mismatched ones
                own, mismatched = split_mismatched(batch)
                policy_B = completion_logps(model, mismatched, chunked)[0].float()
                mismatched_logps.append(torch.stack([policy_B, ref_2B[B:]], dim=1))
                prepared.append({**own, "desirable": batch["desirable"], "num_examples": B, "ref_logps": ref_2B[:B]})
        both_M2 = torch.cat(mismatched_logps)
        if gather is not None:
            both_M2 = gather(both_M2)   # every process's mismatched pairs, in rank order
        z = kto_reference_point(both_M2[:, 0], both_M2[:, 1]).to(device)
        return [{**b, "kl_reference_point": z} for b in prepared]

    return prepare


# ---------------------------------------------------------------------------------------------
# One step


def kto_step(config: KTOConfig):
    """``step(model, batch) -> (Σ per-example losses, metrics)`` on a prepared batch; the engine
    divides by the number of examples."""

    def step(model, batch):
        logps_B, _ = completion_logps(model, batch, config.chunked_loss)
        z = batch["kl_reference_point"]
        losses_B, rewards_B = kto_loss(logps_B, batch["ref_logps"].to(logps_B.dtype), batch["desirable"], z,
                                       beta=config.beta, desirable_weight=config.desirable_weight,
                                       undesirable_weight=config.undesirable_weight)
        sign_B = batch["desirable"].to(rewards_B.dtype) * 2 - 1
        beyond_B = sign_B * (rewards_B - config.beta * z)   # β(r - z_ref), positive on the label's side
        metrics = {   # device tensors: the engine moves a step's metrics to the host in one transfer
            "kl": z.detach().float(),
            "margin": beyond_B.mean(),
            "accuracy": (beyond_B > 0).float().mean(),
            "logps": logps_B.detach().mean(),
        }
        return losses_B.sum(), metrics

    return step


# ---------------------------------------------------------------------------------------------
# The run


def run_kto(config: KTOConfig, command: str = "posttrain kto") -> dict:
    from posttrain.data import mix_sources
    from posttrain.data.unpaired import UnpairedBatches, example_count, tokenize_unpaired
    from posttrain.train.common import load_policy, log, prepare_run
    from posttrain.train.engine import Engine
    from posttrain.train.preference import evaluate_at_start, evaluate_step, save_and_report
    from posttrain.train.reference import build_reference

    # --- run folder, policy, tokenizer
    run_dir = prepare_run(config, command)
    model, tokenizer = load_policy(config)
    engine = Engine(config, model, tokenizer)
    main = engine.is_main

    # --- data: validate (errors name the row, or counted skips), unpair, tokenise (cached), mismatch
    def examples_of(sources, field):
        return tokenize_unpaired(mix_sources(sources, seed=config.seed), tokenizer, config.max_length,
                                 config.max_prompt_length, field, config.skip_invalid_rows, seed=config.seed)

    examples, stats = examples_of(config.data, "data")
    batches = UnpairedBatches(examples, tokenizer.pad_token_id)
    desirable, undesirable = batches.class_counts()
    balance = config.desirable_weight * desirable / max(config.undesirable_weight * undesirable, 1e-12)
    log(f"[bold]kto[/] β={config.beta}: {stats.summary()}; {desirable} desirable, {undesirable} undesirable "
        f"(λ_D·n_D / λ_U·n_U = {balance:.2f}" + ("" if 1 <= balance <= 4 / 3 else
                                               ", outside the paper's suggested [1, 4/3]: see desirable_weight") + ")",
        main)
    eval_batches = UnpairedBatches([], tokenizer.pad_token_id)
    if config.eval_data:
        eval_examples, eval_stats = examples_of(config.eval_data, "eval_data")
        eval_batches = UnpairedBatches(eval_examples, tokenizer.pad_token_id)
        log(f"[bold]kto[/] held out: {eval_stats.summary()}", main)

    # --- reference, built before the engine wraps the policy
    reference, cache_hit = build_reference(config, model, [b for b in (batches, eval_batches) if len(b)], tokenizer,
                                           engine, "kto")
    step = kto_step(config)

    # --- evaluation: the held-out loss with z_ref estimated over the whole held-out set
    eval_fn = None
    if len(eval_batches):
        eval_fn = lambda m: evaluate_step(m, eval_batches, step, config.batch_size, count=example_count,  # noqa: E731
                                          prepare=mismatched_kl(reference, config.chunked_loss))
    start_eval = evaluate_at_start(config, engine, model, eval_fn, SHOWN)

    # --- train: z_ref over each step's global batch, then the step
    prepare = mismatched_kl(reference, config.chunked_loss, gather=engine.all_gather,
                            autocast=engine.accelerator.autocast)
    last = engine.fit(len(batches), batches, step, normalizer_fn=example_count, eval_fn=eval_fn, description="kto",
                      lengths=batches.lengths(), prepare_step=prepare)
    last["reference_cache_hit"] = config.reference == "precomputed" and cache_hit
    extra = {"beta": config.beta, "desirable_weight": config.desirable_weight,
             "undesirable_weight": config.undesirable_weight, "reference": config.reference,
             "examples": f"{stats.summary()}; {desirable} desirable, {undesirable} undesirable"}
    return save_and_report(engine, run_dir, "KTO", last, start_eval, SHOWN, extra)
