"""Online RL with verifiable (or any) rewards: ``posttrain grpo | rloo | ppo | nlpo``.

One loop for every algorithm. Each rollout step:

1. take ``prompts_per_step`` prompts (seeded order, resumable), sample ``group_size``
   completions each through the rollout backend (tokens + loss masks + sampling log-probs);
2. score them with the composed reward (verifiers, custom ``module:function`` rewards, reward
   models; minus ``no_eos_penalty`` for completions cut off before EOS);
3. one no-grad forward each for π_old (the policy itself, dropout off: ratio = 1 at the first
   update), π_ref (when β > 0), the value model (PPO/NLPO) and the masking policy (NLPO). When
   each rollout gets exactly one update (``ppo_epochs = num_minibatches = 1``, no value model or
   action mask: the GRPO/RLOO default) π_old *is* the policy being updated, so its log-probs are
   the update forward's own, detached, and the separate π_old pass is skipped (one forward fewer
   per step, the same gradient; TRL's GRPOTrainer does the same at ``num_iterations = 1``);
4. advantages from ``algorithms.ALGORITHMS[algorithm]``;
5. ``ppo_epochs`` passes of ``num_minibatches`` clipped-surrogate updates
   (``losses.policy.clipped_policy_loss``; + ``value_coef`` · clipped value loss for PPO/NLPO),
   each through ``Engine.accumulate_gradients`` in micro-batches of ``batch_size`` rows, the
   loss divided by the step's global normaliser (rows for ``grpo``, tokens for ``dapo``,
   rows × ``max_new_tokens`` for ``dr_grpo``), so accumulation does not change the gradient.

GRPO departs from DeepSeekMath in the usual ways: one update per batch by default (so ρ = 1 and
the clip never binds, i.e. REINFORCE with group-normalised advantages, as nanochat's chat_rl
says of itself), β = 0 by default (no reference model; DAPO and Dr. GRPO drop it too), and
zero-variance groups are dropped rather than resampled. The log-probs of the update divide the
logits by the sampling temperature; top-p/top-k truncation is not reflected in them (as TRL).
Dropout stays off during RL (the policy runs in eval mode for every forward).

    posttrain grpo max_steps=40 prompts_per_step=8 group_size=8 learning_rate=3e-6
    posttrain ppo reward='[{function: mypkg.rm:score}]' beta=0.05
    posttrain nlpo mask_top_p=0.9 mask_refresh_steps=5
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from posttrain.data import encode_prompt, mix_sources, validate_rows
from posttrain.models import resolve_model_path
from posttrain.losses.kl import AdaptiveKLController, FixedKLController, kl_estimate
from posttrain.losses.policy import clipped_policy_loss, explained_variance, masked_mean, nlpo_topp_mask, value_loss
from posttrain.rewards.compose import build_reward
from posttrain.train.common import load_policy, log, prepare_run
from posttrain.train.engine import Engine, TrainingError, _Progress
from posttrain.train.layout import completion_token_logps, prompt_sharing
from posttrain.train.rl.algorithms import ALGORITHMS, ValueModel
from posttrain.train.rl.config import RLConfig
from posttrain.train.rl.rollout import Rollout, TopPActionMask, completion_logits, forward_inputs, make_backend

__all__ = ["run_rl", "load_prompts", "reward_spec", "heldout_accuracy", "RLState"]


# ---------------------------------------------------------------------------------------------
# Data and reward


def load_prompts(sources: list, tokenizer, max_prompt_length: int, seed: int, source: str,
                 needs_answer: bool = True) -> list[dict]:
    """Validated RLVR rows with their prompt token ids (``prompt_ids``); too-long prompts dropped.
    ``needs_answer=False``: rows may be bare prompts (no verifier component reads them)."""
    rows = validate_rows(mix_sources(sources, seed=seed), "rlvr" if needs_answer else "rl_prompt", source)
    for row in rows:
        row["prompt_ids"] = encode_prompt(tokenizer, row["messages"])
    return [r for r in rows if len(r["prompt_ids"]) <= max_prompt_length]


def reward_spec(config: RLConfig) -> list:
    """The configured components, with ``verifiable_reward`` as the correct value of verifier
    components that do not set their own."""
    spec = []
    for entry in config.reward:
        entry = dict(entry)
        if "verifier" in entry:
            entry.setdefault("correct_value", config.verifiable_reward)
        spec.append(entry)
    return spec


def score(reward, rows: list[dict], rollout: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
    """Total reward per completion (B,) and the mean of each component (``reward/<name>``)."""
    picked = [rows[i] for i in rollout.prompt_index.tolist()]
    keys = dict.fromkeys(k for r in picked for k in r if k not in ("messages", "prompt_ids"))
    columns = {key: [r.get(key) for r in picked] for key in keys}
    totals, parts = reward([r["messages"] for r in picked], rollout.texts, finished=rollout.finished.tolist(),
                           **columns)
    means = {}
    for name, values in parts.items():
        finite = [v for v in values if not math.isnan(v)]
        means[f"reward/{name}"] = sum(finite) / len(finite) if finite else float("nan")
    return torch.tensor(totals, dtype=torch.float32), means


@torch.no_grad()
def heldout_accuracy(backend, rows: list[dict], max_new_tokens: int, batch_size: int = 32) -> dict:
    """Greedy accuracy on held-out RLVR rows, scored by each row's verifier (the same registry
    the reward uses). Returns accuracy, n, correct, response_length, truncated_share, and
    ``items`` (per row: ground truth, completion, score)."""
    from posttrain.rewards import get_verifier

    verifiers: dict = {}
    scores, lengths, truncated, items = [], [], [], []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        out = backend.generate([r["prompt_ids"] for r in chunk], n=1, max_new_tokens=max_new_tokens, greedy=True)
        for row, text, m, done in zip(chunk, out.texts, out.completion_mask, out.finished):
            name = row["verifier"]
            verifiers.setdefault(name, get_verifier(name))
            scores.append(verifiers[name](text, row["ground_truth"]).score)
            items.append({"ground_truth": row["ground_truth"], "completion": text, "score": scores[-1]})
            lengths.append(float(m.sum()))
            truncated.append(0.0 if done else 1.0)
    n = len(scores)
    return {"accuracy": sum(scores) / n, "n": n, "correct": sum(scores), "response_length": sum(lengths) / n,
            "truncated_share": sum(truncated) / n, "items": items}


# ---------------------------------------------------------------------------------------------
# State beyond what Engine checkpoints: KL coefficient, value model, mask-policy refresh


class RLState:
    """What an RL checkpoint holds besides the policy/optimizer/RNG that ``Engine`` saves, in
    ``checkpoints/rl-step-N.pt`` (written before the engine's checkpoint, so a complete
    checkpoint always has its file)."""

    def __init__(self, kl_controller, value=None):
        self.kl_controller, self.value = kl_controller, value  # value: (ValueModel, optimizer, scheduler)

    def path(self, engine: Engine, step: int) -> Path:
        return engine.checkpoint_dir() / f"rl-step-{step:06d}.pt"

    def save(self, engine: Engine, step: int):
        if not engine.is_main:
            return
        blob = {"kl_coef": self.kl_controller.value}
        if self.value is not None:
            model, optimizer, scheduler = self.value
            blob.update(value_model=model.state_dict(), value_optimizer=optimizer.state_dict(),
                        value_scheduler=scheduler.state_dict())
        engine.checkpoint_dir().mkdir(parents=True, exist_ok=True)
        tmp = self.path(engine, step).with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(self.path(engine, step))
        keep = {p.name.split("-")[1] for p in engine.checkpoint_dir().glob("step-*")} | {f"{step:06d}"}
        for old in engine.checkpoint_dir().glob("rl-step-*.pt"):
            if old.stem.split("-")[-1] not in keep:
                old.unlink()

    def load(self, engine: Engine, step: int):
        path = self.path(engine, step)
        if not path.exists():
            raise TrainingError(f"checkpoint step {step} has no {path.name}: start a new run folder")
        blob = torch.load(path, weights_only=False)
        self.kl_controller.value = blob["kl_coef"]
        if self.value is not None:
            model, optimizer, scheduler = self.value
            model.load_state_dict(blob["value_model"])
            optimizer.load_state_dict(blob["value_optimizer"])
            scheduler.load_state_dict(blob["value_scheduler"])


# ---------------------------------------------------------------------------------------------
# The run


def run_rl(config: RLConfig, command: str = "posttrain grpo"):
    # --- run folder, policy, tokenizer, engine (accelerate, optimizer, checkpoints, metrics)
    run_dir = prepare_run(config, command)
    torch.manual_seed(config.seed)
    policy, tokenizer = load_policy(config)
    engine = Engine(config, policy, tokenizer)
    main = engine.is_main
    device = engine.accelerator.device
    algorithm = config.algorithm
    is_ppo = algorithm in ("ppo", "nlpo")

    # --- data: RLVR rows with tokenised prompts; held-out rows for greedy accuracy
    needs_answer = any("verifier" in entry for entry in config.reward)   # else bare prompts will do
    rows = load_prompts(config.data, tokenizer, config.max_prompt_length, config.seed, "data", needs_answer)
    if len(rows) < config.prompts_per_step:
        raise TrainingError(f"{len(rows)} prompts for a step of prompts_per_step={config.prompts_per_step}")
    eval_rows = load_prompts(config.eval_data, tokenizer, config.max_prompt_length, config.seed, "eval_data") \
        if config.eval_data else []
    if config.eval_size > 0:
        eval_rows = eval_rows[:config.eval_size]
    reward = build_reward(reward_spec(config), no_eos_penalty=config.no_eos_penalty)
    log(f"[bold]{algorithm}[/] {len(rows)} prompts, {len(eval_rows)} held-out; reward = "
        + " + ".join(f"{w:g}·{n}" for n, _, w in reward.components), main)

    # --- models. Order: the optimizer needs the final trainable parameters (LoRA applied), the
    # reference and masking copies are taken before training changes anything.
    total = config.max_steps if config.max_steps > 0 else max(1, int(len(rows) / config.prompts_per_step
                                                                        * config.num_epochs))
    updates = total * config.ppo_epochs * config.num_minibatches
    optimizer, scheduler = engine.build_optimizer(updates)
    engine.model, optimizer = engine.accelerator.prepare(engine.model, optimizer)
    policy = engine.model
    reference = None
    if config.beta > 0:
        reference = None if config.lora_rank > 0 else _frozen_copy(policy)  # LoRA: adapters disabled
    mask_model = _frozen_copy(policy) if algorithm == "nlpo" else None
    value = None
    if is_ppo:
        spec = config.model if config.value_model == "policy" else config.value_model
        value_model = ValueModel.from_spec(spec, dtype=config.dtype, zero_head=config.value_model == "policy")
        value_model.to(device)
        value_options = dataclasses.replace(config, learning_rate=config.value_learning_rate or config.learning_rate)
        value_optimizer, value_scheduler = Engine(value_options, value_model, accelerator=engine.accelerator) \
            .build_optimizer(updates)
        value = (value_model, value_optimizer, value_scheduler)
    kl_controller = AdaptiveKLController(config.beta, config.kl_target, config.kl_horizon) if config.kl_target > 0 \
        else FixedKLController(config.beta)
    rl_state = RLState(kl_controller, value)
    single_update = update_gives_old_logps(config)
    share = prompt_sharing(config.share_prompts, engine.world)
    backend = make_backend(config.rollout_backend, policy, tokenizer, model_path=resolve_model_path(config.model),
                           batch_size=max(config.batch_size, config.prompts_per_step * config.group_size),
                           share_prompts=share, cache=config.rollout_cache)

    # --- resume
    checkpoint = engine.latest_checkpoint() if config.resume else None
    if checkpoint is not None:
        engine.load_checkpoint(checkpoint, optimizer, scheduler)
        rl_state.load(engine, engine.state.step)
        engine._truncate_metrics(engine.state.step)
        if mask_model is not None:  # departure: the masking policy restarts from the resumed policy
            mask_model.load_state_dict(_unwrap(engine, policy).state_dict())
        backend.update_weights(policy)
        log(f"resuming from {checkpoint} (step {engine.state.step} of {total})", main)
    elif main:
        for stale in (engine.metrics_path, run_dir / "eval_samples.jsonl", run_dir / "samples.jsonl"):
            stale.unlink(missing_ok=True)

    def heldout(_model) -> dict:
        result = heldout_accuracy(backend, eval_rows, config.max_new_tokens)
        if main:  # per-row results for paired before/after comparisons
            with (run_dir / "eval_samples.jsonl").open("a") as f:
                for i, item in enumerate(result.pop("items")):
                    f.write(json.dumps({"step": engine.state.step, "index": i, **item}) + "\n")
        result.pop("items", None)
        return result

    eval_fn = heldout if eval_rows else None
    if eval_fn is not None and engine.state.step == 0:
        engine._evaluate(eval_fn)  # the base model's accuracy, logged at step 0

    # --- one optimizer update on a minibatch: the clipped surrogate (+ value loss)
    def update_step(model, micro):
        model.eval()  # dropout off (Engine._evaluate leaves the model in train mode)
        b = micro["batch"]
        rows_ = micro["rows"].cpu()
        prompts = [b["prompt_ids"][i] for i in rows_.tolist()]
        completion = b["completion_ids"][rows_].to(device)
        mask = b["mask"][rows_].to(device)
        keep = b["keep"][rows_].to(device) if "keep" in b else None
        logps, entropy = token_logps(model, prompts, completion, mask, tokenizer.pad_token_id, config, share, keep,
                                     with_entropy=single_update)
        if single_update:  # π_old = this very forward (ratio ≡ 1); kept for the step's metrics
            b["old_logps"][rows_] = logps.detach().cpu()
            b["entropy_sum"] += float(entropy.sum())
            b["measured"][rows_] = True
        advantages = b["advantages"][rows_].to(device)
        in_loss = config.kl_in == "loss" and kl_controller.value > 0 and "ref_logps" in b
        loss, diag = clipped_policy_loss(
            logps, b["old_logps"][rows_].to(device), advantages, mask, config.clip_low, config.clip_high,
            aggregation=config.aggregation, normalizer=1.0, kl_coef=kl_controller.value if in_loss else 0.0,
            ref_logps_BT=b["ref_logps"][rows_].to(device) if in_loss else None, kl_kind=config.kl_estimator)
        metrics = {k: diag[k].detach() for k in ("clip_fraction", "ratio_mean", "approx_kl")}   # on the device
        if is_ppo:
            inputs = forward_inputs(prompts, completion, tokenizer.pad_token_id, device=device)
            P = inputs.pop("prompt_length")
            values = value[0](**inputs)[:, P - 1:P - 1 + completion.shape[1]]
            vloss, vdiag = value_loss(values, b["old_values"][rows_].to(device), b["returns"][rows_].to(device),
                                      mask, clip=config.value_clip or None)
            loss = loss + config.value_coef * vloss * normalizer(micro)  # token-mean value loss, weighted by share
            metrics.update(value_loss=vloss.detach(), value_clip_fraction=vdiag["value_clip_fraction"].detach())
        return loss, metrics

    def normalizer(micro) -> float:
        b, rows_ = micro["batch"], micro["rows"].cpu()
        if config.aggregation == "grpo":
            return float(len(rows_))
        if config.aggregation == "dapo":
            return float(b["mask"][rows_].sum())
        return float(len(rows_) * config.max_new_tokens)  # dr_grpo

    # --- the loop
    progress = _Progress(total, algorithm, enabled=config.progress and main)
    progress.advance_to(engine.state.step)
    samples_path = run_dir / "samples.jsonl"
    last_record: dict = {}
    with progress:
        while engine.state.step < total:
            if mask_model is not None and engine.state.step % config.mask_refresh_steps == 0:
                mask_model.load_state_dict(_unwrap(engine, policy).state_dict())
            step_rows = _next_prompts(engine, rows, config.prompts_per_step)

            step_start = time.perf_counter()
            # 1. sample
            action_mask = (lambda attn: TopPActionMask(mask_model, attn, config.mask_top_p)) if mask_model else None
            rollout = backend.generate([r["prompt_ids"] for r in step_rows], n=config.group_size,
                                       max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                       top_p=config.top_p, top_k=config.top_k, action_mask=action_mask)
            # 2. score
            scores_B, component_means = score(reward, step_rows, rollout)
            # 3. π_old, π_ref, values, action mask: no-grad forwards on the update's layout
            train_start = time.perf_counter()
            batch = _score_batch(rollout, policy, reference, mask_model, value, config, device,
                                 policy_pass=not single_update, share=share)
            # 4. advantages
            adv = ALGORITHMS[algorithm](scores_B, batch, config)
            batch["advantages"] = adv.advantages
            if adv.returns is not None:
                batch["returns"] = adv.returns
            kept = adv.keep.nonzero().squeeze(-1)
            # 5. clipped updates over minibatches
            update_metrics: list[dict] = []
            grad_norms = []
            loss = 0.0
            if len(kept) > 0:
                for _ in range(config.ppo_epochs):
                    order = kept[torch.randperm(len(kept))]
                    for minibatch in torch.tensor_split(order, min(config.num_minibatches, len(order))):
                        micro = [{"batch": batch, "rows": r} for r in torch.split(minibatch, config.batch_size)]
                        loss, metrics = engine.accumulate_gradients(micro, update_step, normalizer)
                        if not math.isfinite(loss):
                            optimizer.zero_grad(set_to_none=True)
                            raise TrainingError(
                                f"the loss became {loss} at step {engine.state.step + 1}; training stopped before "
                                f"the update. Last good checkpoint: {engine.latest_checkpoint() or 'none yet'}. "
                                f"Lower learning_rate or check the reward.")
                        grad_norms.append(_optimizer_step(engine, optimizer, scheduler, policy, config))
                        if value is not None:
                            _optimizer_step(engine, value[1], value[2], value[0], config)
                        update_metrics.append({"loss": loss, **metrics})
                backend.update_weights(policy)
            train_seconds = time.perf_counter() - train_start
            engine.state.step += 1

            # 6. metrics
            mask = batch["mask"]
            tokens = float(mask.sum())
            # rows whose π_old log-probs exist: all, or (single_update) the rows that were trained
            measured_mask = mask * batch["measured"][:, None]
            measured_tokens = float(measured_mask.sum())
            record = {"step": engine.state.step, "epoch": engine.state.epoch, "lr": scheduler.get_last_lr()[0],
                      "reward_mean": float(scores_B.mean()), "reward_std": float(scores_B.std()) if len(scores_B) > 1
                      else 0.0, **component_means,
                      "response_length": tokens / mask.shape[0],
                      "truncated_share": float((~rollout.finished).float().mean()),
                      "entropy": batch["entropy_sum"] / max(measured_tokens, 1.0),
                      "logp_mismatch": float(masked_mean((rollout.sampling_logps - batch["old_logps"]).abs(),
                                                         measured_mask)),
                      "trained_share": len(kept) / mask.shape[0],
                      "generation_tokens_per_s": tokens / max(rollout.seconds, 1e-9),
                      "training_tokens_per_s": tokens * config.ppo_epochs * len(kept) / mask.shape[0]
                      / max(train_seconds, 1e-9)}
            record["tokens_per_s"] = record["training_tokens_per_s"]
            record["step_seconds"] = time.perf_counter() - step_start
            if "ref_logps" in batch and measured_tokens > 0:
                record["kl"] = float(masked_mean(kl_estimate(batch["old_logps"], batch["ref_logps"],
                                                             config.kl_estimator), measured_mask))
                record["beta"] = kl_controller.value
                kl_controller.update(record["kl"] * tokens / mask.shape[0], n_steps=mask.shape[0])
            record.update(adv.metrics)
            if update_metrics:
                for key in update_metrics[0]:
                    record[key] = sum(m[key] for m in update_metrics) / len(update_metrics)
                if grad_norms[0] is not None:
                    record["grad_norm"] = sum(grad_norms) / len(grad_norms)
            else:
                record["loss"] = 0.0
            if is_ppo:
                record["explained_variance"] = float(explained_variance(batch["old_values"], batch["returns"], mask))
            if engine.state.step % config.logging_steps == 0 or engine.state.step == total:
                engine._log(record)
                progress.update(engine.state.step, record)
            last_record = record
            _write_samples(samples_path, engine, rollout, scores_B, config.save_samples)

            if eval_fn is not None and config.eval_steps > 0 and engine.state.step % config.eval_steps == 0 \
                    and engine.state.step != total:
                engine._evaluate(eval_fn)
            if config.save_steps > 0 and engine.state.step % config.save_steps == 0 and engine.state.step != total:
                rl_state.save(engine, engine.state.step)
                engine.save_checkpoint(optimizer, scheduler)

    # --- final evaluation, checkpoint, model, reports
    if eval_fn is not None:
        last_record.update(engine._evaluate(eval_fn))
    rl_state.save(engine, engine.state.step)
    engine.save_checkpoint(optimizer, scheduler)
    out = engine.save_final()
    if main:
        from posttrain.reports.training import write_training_report

        write_reward_report_inputs(run_dir, config, reward, kl_controller)
        write_training_report(run_dir, algorithm.upper(), extra={"prompts": len(rows), "held-out": len(eval_rows),
                                                                  "reward": [n for n, _, _ in reward.components]})
        log(f"[green]done[/]: model in {out}, report in {run_dir / 'report.md'}", main)
    return last_record


# ---------------------------------------------------------------------------------------------
# Helpers of the loop


def update_gives_old_logps(config: RLConfig) -> bool:
    """Whether π_old is exactly the policy of the (only) update of each rollout batch, so its
    log-probs can come from the update's own forward (module docstring, step 3). PPO and NLPO
    keep the separate pass: their value model and action mask are computed beside it."""
    return config.ppo_epochs == 1 and config.num_minibatches == 1 and config.algorithm in ("grpo", "rloo")


def _unwrap(engine: Engine, model):
    return engine.accelerator.unwrap_model(model)


def _frozen_copy(model):
    copy_ = copy.deepcopy(getattr(model, "module", model)).eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_


def _next_prompts(engine: Engine, rows: list[dict], count: int) -> list[dict]:
    """The next ``count`` prompts of the seeded epoch order (``Engine``'s order and position, so
    a resumed run continues with the prompts it would have seen)."""
    state = engine.state
    if state.position + count > len(rows):
        state.epoch += 1
        state.position = 0
    order = engine._epoch_order(len(rows), state.epoch)
    picked = [rows[i] for i in order[state.position:state.position + count]]
    state.position += count
    return picked


def token_logps(model, prompts: list[list[int]], completion: torch.Tensor, mask: torch.Tensor, pad_id: int,
                config: RLConfig, share: bool, keep: torch.Tensor | None = None, with_entropy: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``train/layout.completion_token_logps`` with this run's temperature, ``chunked_loss`` and
    NLPO action mask ``keep``: log-probs (B, T) and, with ``with_entropy``, entropies (B, T)."""
    return completion_token_logps(model, prompts, completion, pad_id, mask, config.temperature, share,
                                  with_entropy, config.chunked_loss, action_mask_BTV=keep)


@torch.no_grad()
def _score_batch(rollout: Rollout, policy, reference, mask_model, value, config, device,
                 policy_pass: bool = True, share: bool = False) -> dict:
    """Tensors of one rollout step (CPU): completion ids and mask, π_old, π_ref, values, the
    NLPO action mask, and the policy's summed entropy over sampled tokens. Without
    ``policy_pass`` π_old and the entropy are left for the update to fill (zeros; ``measured``
    marks the rows that have them). ``share``: each group's prompt runs once (``completion_logits``)."""
    pad = rollout.pad_id
    batch = {"prompt_ids": rollout.prompt_ids, "completion_ids": rollout.completion_ids,
             "mask": rollout.completion_mask}
    old, ref, vals, keeps, entropy_sum = [], [], [], [], 0.0
    B = len(rollout.prompt_ids)
    chunk = max(config.batch_size, 1)
    policy.eval()  # dropout off, here and in the updates: see the module docstring
    for s in range(0, len(rollout.prompt_ids), chunk):
        prompts = rollout.prompt_ids[s:s + chunk]
        completion = rollout.completion_ids[s:s + chunk].to(device)
        mask = rollout.completion_mask[s:s + chunk].to(device)
        keep = None
        if mask_model is not None:
            keep = nlpo_topp_mask(completion_logits(mask_model, prompts, completion, pad, share_prompts=share),
                                  config.mask_top_p)
            keeps.append(keep.cpu())
        if policy_pass:
            logps, entropy = token_logps(policy, prompts, completion, mask, pad, config, share, keep, with_entropy=True)
            old.append(logps.cpu())
            entropy_sum += float(entropy.sum())
        if config.beta > 0:
            if reference is not None:
                ref.append(token_logps(reference, prompts, completion, mask, pad, config, share, keep)[0].cpu())
            else:
                with policy.disable_adapter():
                    ref.append(token_logps(policy, prompts, completion, mask, pad, config, share, keep)[0].cpu())
        if value is not None:
            inputs = forward_inputs(prompts, completion, pad, device=device)
            P = inputs.pop("prompt_length")
            vals.append(value[0](**inputs)[:, P - 1:P - 1 + completion.shape[1]].cpu())
    mask = rollout.completion_mask
    batch["old_logps"] = torch.cat(old) * mask if old else torch.zeros(mask.shape)
    batch["measured"] = torch.full((B,), policy_pass)
    if ref:
        batch["ref_logps"] = torch.cat(ref) * mask
    if vals:
        batch["old_values"] = torch.cat(vals) * mask
    if keeps:
        batch["keep"] = torch.cat(keeps)
    batch["entropy_sum"] = entropy_sum
    return batch


def _optimizer_step(engine: Engine, optimizer, scheduler, model, config) -> float | None:
    grad_norm = None
    if config.max_grad_norm > 0:
        grad_norm = float(engine.accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _write_samples(path: Path, engine: Engine, rollout: Rollout, scores_B: torch.Tensor, count: int):
    if count <= 0 or not engine.is_main:
        return
    with path.open("a") as f:
        for i in range(min(count, len(rollout.texts))):
            f.write(json.dumps({"step": engine.state.step, "completion": rollout.texts[i],
                                "reward": float(scores_B[i]), "finished": bool(rollout.finished[i])}) + "\n")


def write_reward_report_inputs(run_dir: Path, config: RLConfig, reward, kl_controller) -> Path:
    """``reward_report_inputs.json``: what was optimised and how it tracked held-out accuracy."""
    from posttrain.reports.training import read_metrics

    records = read_metrics(run_dir)
    train = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    components = []
    for entry, (name, _, weight) in zip(reward_spec(config), reward.components):
        kind = next(k for k in ("verifier", "function", "reward_model") if k in entry)
        target = entry.get(kind)
        components.append({"name": name, "kind": kind, "target": target if isinstance(target, str) else repr(target),
                           "weight": weight, "correct_value": entry.get("correct_value")})
    blob = {
        "algorithm": config.algorithm,
        "model": config.model,
        "data": config.data, "eval_data": config.eval_data,
        "reward_components": components,
        "no_eos_penalty": config.no_eos_penalty,
        "verifiable_reward": config.verifiable_reward,
        "kl": {"beta": config.beta, "final_beta": kl_controller.value, "estimator": config.kl_estimator,
               "in": config.kl_in, "adaptive_target": config.kl_target or None},
        "sampling": {"prompts_per_step": config.prompts_per_step, "group_size": config.group_size,
                     "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                     "top_p": config.top_p, "top_k": config.top_k},
        "steps": [{k: r[k] for k in r if k == "step" or k in ("reward_mean", "reward_std", "kl") or
                   k.startswith("reward/")} for r in train],
        "heldout": [{"step": r["step"], "accuracy": r["eval_accuracy"], "n": r.get("eval_n")} for r in evals],
    }
    path = Path(run_dir) / "reward_report_inputs.json"
    path.write_text(json.dumps(blob, indent=2, default=str))
    return path
