"""Supervised finetuning (``posttrain sft``).

Objective: next-token cross-entropy on assistant tokens only (system, user and the assistant
header are masked, see ``data/tokenize.py``), reduced as ``sum`` (TÜLU 3), ``token_mean`` or
``sequence_mean`` — each invariant to gradient accumulation and process count (``losses/sft.py``).
Data type: ``messages`` rows, or TRL's prompt-completion rows (``prompt`` + ``completion``; loss on
the completion only: plain text for two strings, the chat template for a message-list prompt,
``data/tokenize.py:encode_prompt_completion``). Conversations are packed padding-free by default.
Encoder-decoder models (T5, BART): the prompt is the encoder input and the completion (a
``messages`` row's last assistant turn) the decoder target, loss on the target tokens only
(``data/seq2seq.py``, ``models/seq2seq.py``); they need ``packing=false``.

    posttrain sft --config sft.yaml learning_rate=1e-5 max_steps=100
    accelerate launch --num_processes 2 -m posttrain.cli sft …   # several processes
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from posttrain.config import ConfigError, TrainingOptions, opt
from posttrain.data import DataError, mix_sources
from posttrain.data.sft import SFTBatches, tokenize_sft
from posttrain.data.packing import sequence_ids
from posttrain.losses.linear_ce import linear_cross_entropy
from posttrain.losses.sft import IGNORE_INDEX, sft_normalizer, sft_token_weights, token_nll
from posttrain.train.common import load_policy, log, prepare_run
from posttrain.train.engine import Engine
from posttrain.models.adapters import prompt_pooling
from posttrain.models.lm_head import labelled_head_inputs
from posttrain.models.seq2seq import decoder_start_id, is_encoder_decoder


SFT_REDUCTIONS = ("sum", "token_mean", "sequence_mean")


@dataclasses.dataclass
class SFTConfig(TrainingOptions):
    """``posttrain sft``: supervised finetuning on ``messages`` rows (assistant tokens only) or
    prompt-completion rows (completion tokens only)."""

    next_token_batches: ClassVar[bool] = True   # optimizer=tram can measure their KL (train/sam.py)
    prompt_adapters: ClassVar[tuple[str, ...]] = ("prompt", "attempt")   # models/adapters.py

    data: list[Any] = opt(["builtin:arithmetic_sft"], "training sources: a list of specs or "
                          "{source, fraction|count, split} entries (see data/sources.py)", "Data")
    eval_data: list[Any] = opt([], "held-out sources for eval loss (e.g. builtin:arithmetic_sft:test)", "Data")
    max_length: int = opt(512, "tokens per row; longer conversations are truncated", "Data")
    packing: bool = opt(True, "padding-free packing of several conversations per row", "Data")
    loss_reduction: str = opt("sum", "sum (TÜLU 3), token_mean or sequence_mean; each invariant to "
                              "gradient accumulation and process count", "Optimization")
    chunked_loss: bool = opt(True, "run the LM head only on trained tokens, in chunks, with its gradient "
                             "in the same pass: no full-vocabulary logits (plain path when the head is "
                             "not a bias-free linear layer)", "Optimization")

    def validate(self):
        super().validate()
        if self.loss_reduction not in SFT_REDUCTIONS:
            raise ConfigError(f"loss_reduction={self.loss_reduction!r}: choose one of {', '.join(SFT_REDUCTIONS)}")
        if self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length}: must be >= 2 tokens")
        if self.adapter in self.prompt_adapters and self.packing:
            raise ConfigError(f"adapter={self.adapter} puts a soft prompt before each row, and a packed row holds "
                              f"several conversations that would share one: add packing=false")


def weighted_token_nll(model, batch: dict, weights_BT: torch.Tensor, chunked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ weight · NLL over the batch's trained tokens, their NLLs). With ``chunked`` (and a plain
    linear head) the head runs only on trained positions, in chunks (``losses/linear_ce.py``); else
    on the full logits."""
    labels = batch["labels"]
    head = labelled_head_inputs(model, batch, chunked)
    if head is not None:
        hidden_NH, head_weight, target_N, mask = head
        return linear_cross_entropy(hidden_NH, head_weight, target_N, weights_BT[mask])
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask", "decoder_input_ids") if k in batch}
    nll, mask = token_nll(model(**inputs, use_cache=False).logits, labels)
    return (nll * weights_BT).sum(), nll[mask]


def sft_step(reduction: str, chunked_loss: bool = True):
    """The engine's step: (numerator, metrics), numerator as in ``losses/sft.py``."""

    def step(model, batch):
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        weights = sft_token_weights(mask, sequence_ids(batch)[:, 1:], reduction)
        numerator, nll = weighted_token_nll(model, batch, weights, chunked_loss)
        tokens = mask.sum().clamp_min(1)
        return numerator, {"token_nll": nll.sum().detach() / tokens, "trained_tokens": tokens}   # on the device

    return step


def sft_normalizer_fn(reduction: str):
    return lambda batch: sft_normalizer(batch["labels"], sequence_ids(batch), reduction)


@torch.no_grad()
def heldout_loss(model, batches: SFTBatches, batch_size: int, chunked: bool = True) -> dict:
    """Mean per-token NLL on held-out conversations."""
    total, count = 0.0, 0
    for start in range(0, len(batches), batch_size):
        batch = batches(list(range(start, min(start + batch_size, len(batches)))))
        batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
        mask = (batch["labels"][:, 1:] != IGNORE_INDEX).float()
        with prompt_pooling(model, batch):   # ATTEMPT reads the prompt as in training (else a no-op)
            _, nll = weighted_token_nll(model, batch, mask, chunked)
        total += float(nll.sum())
        count += int(mask.sum())
    return {"loss": total / max(count, 1)}


def run_sft(config: SFTConfig, command: str = "posttrain sft"):
    # --- run folder, model, tokenizer
    run_dir = prepare_run(config, command)
    model, tokenizer = load_policy(config)
    engine = Engine(config, model, tokenizer)
    main = engine.is_main

    # --- data: mix, validate, tokenise (cached), pack
    rows = mix_sources(config.data, seed=config.seed)
    # An encoder-decoder trains its decoder on the completion given the prompt (models/seq2seq.py).
    start_id = decoder_start_id(model) if is_encoder_decoder(model) else None
    examples, dropped = tokenize_sft(rows, tokenizer, config.max_length, source="data", seq2seq=start_id is not None)
    if not examples:  # else the engine would blame the data size or the batch
        raise DataError(f"data: every one of the {dropped} conversations is longer than max_length="
                        f"{config.max_length} tokens before its first assistant token, so nothing is left to "
                        f"train on. Raise max_length or shorten the prompts")
    log(f"[bold]sft[/] {len(examples)} conversations ({dropped} dropped: no trained token left after "
        f"truncation to {config.max_length})", main)
    batches = SFTBatches(examples, tokenizer.pad_token_id, config.max_length, config.packing, start_id)
    eval_fn = None
    if config.eval_data:
        eval_rows = mix_sources(config.eval_data, seed=config.seed)
        eval_examples, _ = tokenize_sft(eval_rows, tokenizer, config.max_length, source="eval_data",
                                        seq2seq=start_id is not None)
        eval_batches = SFTBatches(eval_examples, tokenizer.pad_token_id, config.max_length, config.packing, start_id)
        eval_fn = lambda m: heldout_loss(m, eval_batches, config.batch_size, config.chunked_loss)  # noqa: E731

    # --- train
    step = sft_step(config.loss_reduction, config.chunked_loss)
    if config.adapter == "attempt":   # x̂ pools over the prompt; log the attention per source
        from posttrain.models.adapters import instance_pooling

        step = instance_pooling(step)
    last = engine.fit(len(batches), batches, step,
                      normalizer_fn=sft_normalizer_fn(config.loss_reduction), eval_fn=eval_fn, description="sft")
    out = engine.save_final()
    if main:
        from posttrain.reports.training import write_training_report

        write_training_report(run_dir, "SFT", extra={"conversations": len(examples), "dropped": dropped})
        log(f"[green]done[/]: model in {out}, report in {run_dir / 'report.md'}", main)
    return last
