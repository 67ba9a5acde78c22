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

Reference (``reference=``, ``train/reference.py``): ``precomputed`` (default; one no-grad pass of
the initial policy before training, cached on disk), ``copy`` (a frozen copy in memory) or
``lora_base`` (the policy with its LoRA adapters disabled).

Departures: WPO (``wpo=true``) weights each pair by exp(mean log π(y_w) + mean log π(y_l)) without
WPO's "weight alignment" calibration (see ``losses.preference.wpo_weights``); multi-turn
responses train on every token after the prompt up to the final EOS.

    posttrain dpo loss_type=dpo_norm beta=5 learning_rate=5e-7 max_steps=200
    posttrain dpo data=[prefs.jsonl] reference=copy
    accelerate launch --num_processes 2 -m posttrain.cli dpo …
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import ClassVar

from posttrain.config import ConfigError, opt
from posttrain.losses.preference import LOSS_ALIASES, LOSS_SPECS, PREFERENCE_LOSSES, dpo_loss, loss_spec, \
    wpo_weights
from posttrain.train.preference import PreferenceOptions, chunked_loss_option, completion_logps, \
    eval_at_start_option
from posttrain.train.reference import Reference, check_reference, reference_option

SHOWN = ("loss", "accuracy", "margin", "logps_accuracy")  # start-of-training eval values printed and reported
OWN_COMMANDS = {"kto": "posttrain kto", "orpo": "posttrain orpo"}   # losses of the family with trainers of their own


@dataclasses.dataclass
class DPOLossOptions:
    """The DPO family's loss options, shared by ``posttrain dpo`` (offline pairs) and ``posttrain
    online-dpo`` (pairs judged from the policy's own samples); checked by ``check_dpo_loss``."""

    loss_type: str = opt("dpo", "dpo (sigmoid), dpo_norm (sigmoid_norm), simpo, ipo, hinge", "Preference")
    beta: float = opt(0.1, "β: KL strength / inverse temperature (dpo 0.1; TÜLU 3 dpo_norm 5; simpo 2–2.5)",
                      "Preference")
    label_smoothing: float = opt(0.0, "ε in [0, 0.5): assumed label-flip rate (cDPO); dpo / dpo_norm only",
                                 "Preference")
    simpo_gamma: float = opt(0.5, "SimPO target margin γ in reward units (simpo only)", "Preference")
    wpo: bool = opt(False, "weight pairs by the policy's probability of producing them (WPO)", "Preference")

    def check_dpo_loss(self):
        if self.loss_type in OWN_COMMANDS:
            raise ConfigError(f"loss_type={self.loss_type!r}: {self.loss_type.upper()} has a trainer of its own, "
                              f"run `{OWN_COMMANDS[self.loss_type]}`")
        if self.loss_type not in LOSS_SPECS:
            raise ConfigError(f"loss_type={self.loss_type!r}: choose one of {', '.join(LOSS_SPECS)}")
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


@dataclasses.dataclass
class DPOConfig(DPOLossOptions, PreferenceOptions):
    """``posttrain dpo``: preference optimisation on ``prompt`` / ``chosen`` / ``rejected`` rows."""

    next_token_batches: ClassVar[bool] = True   # optimizer=tram can measure their KL (train/sam.py)
    prompt_adapters: ClassVar[tuple[str, ...]] = ("prompt",)   # models/adapters.py

    learning_rate: float = opt(5e-6, "peak learning rate (AdamW); DPO wants far less than SFT", "Optimization")
    reference: str = reference_option()
    chunked_loss: bool = chunked_loss_option()
    eval_at_start: bool = eval_at_start_option()

    def validate(self):
        super().validate()
        self.check_dpo_loss()
        check_reference(self)
        if self.adapter == "prompt" and self.share_prompts:
            raise ConfigError("adapter=prompt puts the soft prompt before each row, and share_prompts runs a pair's "
                              "prompt once through a KV cache without it: add share_prompts=false")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(f"max_prompt_length={self.max_prompt_length} must lie in (0, max_length="
                              f"{self.max_length}) so every response keeps some tokens")


def loss_keywords(loss_type: str) -> set[str]:
    """The keyword options the variant's loss function takes (read off its signature)."""
    fn = PREFERENCE_LOSSES[LOSS_ALIASES.get(loss_type, loss_type)]
    return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def loss_options(config: DPOLossOptions) -> dict[str, float]:
    available = {"label_smoothing": config.label_smoothing, "gamma": config.simpo_gamma}
    return {k: v for k, v in available.items() if k in loss_keywords(config.loss_type)}


# ---------------------------------------------------------------------------------------------
# One step


def dpo_step(config, reference: Reference | None):
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
    from posttrain.data.preference import pair_count
    from posttrain.train.common import load_policy, log, prepare_run
    from posttrain.train.engine import Engine
    from posttrain.train.preference import evaluate_at_start, evaluate_step, load_pairs, save_and_report
    from posttrain.train.reference import build_reference

    # --- run folder, policy, tokenizer
    run_dir = prepare_run(config, command)
    model, tokenizer = load_policy(config)
    engine = Engine(config, model, tokenizer)
    spec = loss_spec(config.loss_type)

    # --- data: mix, validate (errors name the row, or counted skips), tokenise (cached)
    log(f"[bold]dpo[/] {config.loss_type} β={config.beta}", engine.is_main)
    batches, eval_batches, stats = load_pairs(config, tokenizer, engine, "dpo")

    # --- reference: what the loss needs, built before the engine wraps the policy
    reference, cache_hit = None, False
    if spec.needs_reference:
        reference, cache_hit = build_reference(config, model, [b for b in (batches, eval_batches) if len(b)],
                                               tokenizer, engine, "dpo")
    else:
        log(f"[bold]dpo[/] {config.loss_type} is reference-free: no reference model", engine.is_main)
    step = dpo_step(config, reference)

    # --- evaluation: preference accuracy of the implicit reward on held-out pairs
    eval_fn = None
    if len(eval_batches):
        eval_fn = lambda m: evaluate_step(m, eval_batches, step, config.batch_size)  # noqa: E731
    start_eval = evaluate_at_start(config, engine, model, eval_fn, SHOWN)

    # --- train
    last = engine.fit(len(batches), batches, step, normalizer_fn=pair_count, eval_fn=eval_fn, description="dpo",
                      lengths=batches.lengths())
    last["reference_cache_hit"] = spec.needs_reference and config.reference == "precomputed" and cache_hit
    extra = {"loss_type": config.loss_type, "beta": config.beta, "reference": config.reference
             if spec.needs_reference else "none (reference-free)", "pairs": stats.summary()}
    return save_and_report(engine, run_dir, "DPO", last, start_eval, SHOWN, extra)
