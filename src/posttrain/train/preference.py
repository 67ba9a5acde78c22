"""What the preference trainers (``posttrain dpo``, ``orpo``, ``kto``, ``reward``) share beyond the
data (``data/preference.py``, ``data/unpaired.py``): their data options, the log-probs of a batch's
responses, the held-out evaluation of a step, and the run's start and end (evaluation before the
first step, final model, report)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from posttrain.config import TrainingOptions, opt
from posttrain.data.preference import PairBatches, length_ordered_batches, pair_count


@dataclasses.dataclass
class PreferenceDataOptions(TrainingOptions):
    """Data options shared by the preference trainers (``dpo``, ``orpo``, ``kto``, ``reward``)."""

    data: list[Any] = opt(["builtin:arithmetic_preference", "builtin:ifeval_preference"],
                          "training sources: a list of specs or {source, fraction|count, split} entries", "Data")
    eval_data: list[Any] = opt([{"source": "builtin:arithmetic_preference:test", "count": 100},
                                {"source": "builtin:ifeval_preference:test", "count": 50}],
                               "held-out rows: preference accuracy ([] = none)", "Data")
    max_length: int = opt(512, "tokens per prompt + response; responses are cut from the right", "Data")
    max_prompt_length: int = opt(256, "prompt tokens kept (from the end of the prompt)", "Data")
    skip_invalid_rows: bool = opt(False, "skip and count invalid rows (chosen == rejected, empty response, "
                                  "missing prompt, …) instead of stopping with an error naming the row", "Data")


@dataclasses.dataclass
class PreferenceOptions(PreferenceDataOptions):
    """Options of the trainers on pairs (``dpo``, ``orpo``, ``reward``)."""

    share_prompts: bool = opt(True, "run each pair's prompt once; chosen and rejected continue from its KV cache "
                              "(same values up to float rounding, less compute; decoder models). Off with "
                              "several processes", "Model")


def chunked_loss_option():
    """The ``chunked_loss`` option, declared once for every trainer that scores responses with the LM head."""
    return opt(True, "run the LM head only on response tokens, in chunks, recomputing them in backward: no "
               "full-vocabulary logits (plain path when the head is not a bias-free linear layer)", "Optimization")


def eval_at_start_option():
    return opt(True, "evaluate the held-out rows once before the first step", "Logging")


# ---------------------------------------------------------------------------------------------
# Log-probs of a batch's responses


def completion_logps(model, batch: dict, chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums_R, counts_R): summed log-probs of each row's response tokens and their number, for a
    batch of R right-padded (prompt, response) rows (``labels`` -100 off the response).

    ``batch["share_prompts"]`` (pairs, ``share_prompts``): each pair's prompt runs once and both
    responses continue from its KV cache (``models/layout.py``); the prompt's own logits are never
    computed. ``chunked`` (``chunked_loss``): the LM head runs only on response tokens, a chunk at
    a time (``losses/linear_ce.linear_log_probs``). Same values up to rounding either way. An
    encoder-decoder's batches always come as prompts and responses (``models/seq2seq.py``)."""
    from posttrain.losses.linear_ce import linear_log_probs
    from posttrain.losses.sft import token_nll
    from posttrain.models.layout import completion_token_logps
    from posttrain.models.lm_head import labelled_head_inputs

    if "prompts" in batch:   # shared prompts, or an encoder-decoder (prompt → encoder, response → decoder)
        responses, mask = batch["response_ids"], batch["response_mask"]
        prompts = batch["prompts"] * 2   # chosen rows, then rejected rows: each prompt twice
        logps, _ = completion_token_logps(model, prompts, responses, batch["pad_id"], mask,
                                          share_prompts=bool(batch.get("share_prompts")), chunked=chunked)
        return logps.sum(-1), mask.sum(-1)
    head = labelled_head_inputs(model, batch, chunked)
    if head is None:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        nll_RT, mask_RT = token_nll(model(**inputs, use_cache=False).logits, batch["labels"])
        return -nll_RT.sum(-1), mask_RT.sum(-1)
    hidden_NH, head_weight, target_N, mask = head
    logp_N, _ = linear_log_probs(hidden_NH, head_weight, target_N)
    row_N = mask.nonzero()[:, 0]
    sums = torch.zeros(mask.shape[0], dtype=logp_N.dtype, device=logp_N.device).index_add(0, row_N, logp_N)
    return sums, mask.sum(-1)


# ---------------------------------------------------------------------------------------------
# Data, evaluation, and the run's start and end


def load_pairs(config: PreferenceOptions, tokenizer, engine, name: str) -> tuple[PairBatches, PairBatches, Any]:
    """Training and held-out pairs of ``config.data`` / ``config.eval_data``: validated (errors
    name the row, or counted skips), tokenised (cached), logged and batched (prompts shared in one
    process). Returns (train batches, held-out batches (empty without eval_data), train stats)."""
    from posttrain.data import mix_sources
    from posttrain.data.preference import tokenize_pairs
    from posttrain.models.layout import prompt_sharing
    from posttrain.models.seq2seq import is_encoder_decoder
    from posttrain.train.common import log

    seq2seq = is_encoder_decoder(engine.model)   # prompt → encoder, responses → decoder (models/seq2seq.py)

    def pairs_of(sources, field):
        return tokenize_pairs(mix_sources(sources, seed=config.seed), tokenizer, config.max_length,
                              config.max_prompt_length, field, config.skip_invalid_rows, seq2seq=seq2seq)

    pairs, stats = pairs_of(config.data, "data")
    log(f"[bold]{name}[/] {stats.summary()}", engine.is_main)
    eval_pairs = []
    if config.eval_data:
        eval_pairs, eval_stats = pairs_of(config.eval_data, "eval_data")
        log(f"[bold]{name}[/] held out: {eval_stats.summary()}", engine.is_main)
    share = prompt_sharing(config.share_prompts, engine.world)
    return (PairBatches(pairs, tokenizer.pad_token_id, share_prompts=share, separate_prompts=seq2seq),
            PairBatches(eval_pairs, tokenizer.pad_token_id, share_prompts=share, separate_prompts=seq2seq), stats)


@torch.no_grad()
def evaluate_step(model, batches, step, batch_size: int, count: Callable[[dict], float] = pair_count,
                  prepare: Callable[[torch.nn.Module, list[dict]], list[dict]] | None = None) -> dict:
    """Held-out metrics of a ``step``: loss = Σ numerators / Σ ``count`` (pairs, or examples), every
    metric weighted by ``count``. ``prepare(model, batches) -> batches`` runs on all the held-out
    batches at once before the step (KTO: its KL reference point over the whole held-out set)."""
    device = next(model.parameters()).device
    to_device = lambda b: {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}  # noqa: E731
    ordered = (to_device(batches(indices)) for indices in length_ordered_batches(batches, batch_size))
    if prepare is not None:
        ordered = prepare(model, list(ordered))
    totals: dict[str, float] = {}
    n = 0.0
    for batch in ordered:   # weighted means: order-free
        numerator, metrics = step(model, batch)
        k = count(batch)
        totals["loss"] = totals.get("loss", 0.0) + float(numerator)
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * k
        n += k
    return {name: value / max(n, 1) for name, value in totals.items()}


def evaluate_at_start(config, engine, model, eval_fn, shown: tuple[str, ...]) -> dict:
    """``start_eval_*``: the held-out metrics of the initial policy (``eval_at_start``), not when
    resuming. Run before ``engine.fit``, on the bare model."""
    from posttrain.train.common import log

    if eval_fn is None or not config.eval_at_start or (config.resume and engine.latest_checkpoint()):
        return {}
    model.to(engine.accelerator.device).eval()
    start_eval = {f"start_eval_{k}": v for k, v in eval_fn(model).items()}
    model.train()
    log("  eval @ step 0: " + ", ".join(f"{k}={start_eval['start_eval_' + k]:.4f}" for k in shown), engine.is_main)
    return start_eval


def save_and_report(engine, run_dir, title: str, last: dict, start_eval: dict, shown: tuple[str, ...],
                    extra: dict) -> dict:
    """Save the final model, write the run report (``extra`` settings, held-out values at step 0)
    and return the last logged record with ``start_eval``."""
    from posttrain.train.common import log

    out = engine.save_final()
    last.update(start_eval)
    if engine.is_main:
        from posttrain.reports.training import write_training_report

        extra = {**extra, **{f"held-out {k} at step 0": f"{start_eval['start_eval_' + k]:.4f}"
                             for k in shown if start_eval}}
        write_training_report(run_dir, title, extra=extra)
        log(f"[green]done[/]: model in {out}, report in {run_dir / 'report.md'}", engine.is_main)
    return last
