"""Odds-ratio preference optimisation (``posttrain orpo``): supervised finetuning and preference
tuning in one stage, with no reference model.

Objective (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
eqs. 6–7), per pair (x, y_w, y_l), with ℓ(y) the per-token MEAN log-prob of response y:

    loss = -ℓ(y_w) + λ · -log σ(log odds(y_w) - log odds(y_l)),    odds(y) = P / (1 - P), P = exp ℓ(y)

averaged over pairs (normalizer = number of pairs, so the loss is invariant to gradient
accumulation and process count; ``losses.preference.orpo_loss``). λ = ``orpo_lambda`` (paper: 0.1;
TRL's ``ORPOConfig`` calls it ``beta``). The log odds are computed stably near P = 1
(``losses.preference.log_odds``), with P capped at 1 - 1e-6.

Data type: preference rows (``prompt`` + ``chosen`` + ``rejected``), tokenised and batched as for
``posttrain dpo`` (``data/preference.py``): one prompt tokenisation per pair, chosen and rejected
in one forward (each pair's prompt run once with ``share_prompts``).

Departures: the NLL term is each chosen response's per-token mean over its response tokens, then
the mean over pairs; TRL's ORPOTrainer takes one token mean over the prompt and response tokens of
the batch's chosen rows. Multi-turn responses train on every token after the prompt up to the
final EOS, as in DPO.

    posttrain orpo model=HuggingFaceTB/SmolLM2-135M orpo_lambda=0.1 learning_rate=8e-6 max_steps=300
    posttrain orpo data=[prefs.jsonl] lora_rank=16
    accelerate launch --num_processes 2 -m posttrain.cli orpo …
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from posttrain.config import ConfigError, opt
from posttrain.losses.preference import orpo_loss
from posttrain.train.preference import PreferenceOptions, chunked_loss_option, completion_logps, \
    eval_at_start_option

SHOWN = ("loss", "nll", "accuracy", "log_odds_ratio")  # start-of-training eval values printed and reported


@dataclasses.dataclass
class ORPOConfig(PreferenceOptions):
    """``posttrain orpo``: ORPO on ``prompt`` / ``chosen`` / ``rejected`` rows, no reference model."""

    next_token_batches: ClassVar[bool] = True   # optimizer=tram can measure their KL (train/sam.py)

    learning_rate: float = opt(5e-6, "peak learning rate (AdamW)", "Optimization")
    orpo_lambda: float = opt(0.1, "λ: weight of the odds-ratio term next to the chosen response's NLL (paper 0.1; "
                             "TRL calls it beta)", "Preference")
    chunked_loss: bool = chunked_loss_option()
    eval_at_start: bool = eval_at_start_option()

    def validate(self):
        super().validate()
        if self.orpo_lambda < 0:
            raise ConfigError(f"orpo_lambda={self.orpo_lambda}: must be >= 0 (0 leaves only the NLL of the "
                              f"chosen responses, i.e. SFT)")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(f"max_prompt_length={self.max_prompt_length} must lie in (0, max_length="
                              f"{self.max_length}) so every response keeps some tokens")


def orpo_step(config: ORPOConfig):
    """``step(model, batch) -> (Σ per-pair losses, metrics)``; the engine divides by the pair count."""

    def step(model, batch):
        sums_2B, counts_2B = completion_logps(model, batch, config.chunked_loss)
        chosen_B, rejected_B = (sums_2B / counts_2B.clamp_min(1)).chunk(2)   # per-token means ℓ(y)
        losses_B, nll_B, log_odds_ratio_B = orpo_loss(chosen_B, rejected_B, config.orpo_lambda)
        metrics = {   # device tensors: the engine moves a step's metrics to the host in one transfer
            "nll": nll_B.mean(),
            "log_odds_ratio": log_odds_ratio_B.mean(),
            "accuracy": (log_odds_ratio_B > 0).float().mean(),
            "logps/chosen": chosen_B.detach().mean(),
            "logps/rejected": rejected_B.detach().mean(),
        }
        return losses_B.sum(), metrics

    return step


def run_orpo(config: ORPOConfig, command: str = "posttrain orpo") -> dict:
    from posttrain.data.preference import pair_count
    from posttrain.train.common import load_policy, log, prepare_run
    from posttrain.train.engine import Engine
    from posttrain.train.preference import evaluate_at_start, evaluate_step, load_pairs, save_and_report

    # --- run folder, policy (no reference model), tokenizer
    run_dir = prepare_run(config, command)
    model, tokenizer = load_policy(config)
    engine = Engine(config, model, tokenizer)

    # --- data: mix, validate (errors name the row, or counted skips), tokenise (cached)
    log(f"[bold]orpo[/] λ={config.orpo_lambda}, reference-free", engine.is_main)
    batches, eval_batches, stats = load_pairs(config, tokenizer, engine, "orpo")
    step = orpo_step(config)

    # --- evaluation: held-out loss, NLL and odds-ratio accuracy
    eval_fn = None
    if len(eval_batches):
        eval_fn = lambda m: evaluate_step(m, eval_batches, step, config.batch_size)  # noqa: E731
    start_eval = evaluate_at_start(config, engine, model, eval_fn, SHOWN)

    # --- train
    last = engine.fit(len(batches), batches, step, normalizer_fn=pair_count, eval_fn=eval_fn, description="orpo",
                      lengths=batches.lengths())
    extra = {"orpo_lambda": config.orpo_lambda, "pairs": stats.summary()}
    return save_and_report(engine, run_dir, "ORPO", last, start_eval, SHOWN, extra)
