"""Online RL with verifiable (or any) rewards: ``posttrain grpo | rloo | ppo | nlpo | …`` (every
algorithm of ``posttrain.train.rl.algorithms.ALGORITHMS``).

One rollout step for every algorithm, run by the engine's loop (``Engine.loop``: progress,
logging, evaluation, checkpoints and resume are the ones SFT and DPO use; each update is
``Engine.update``). Each rollout step:

1. take ``prompts_per_step`` prompts of the seeded order (the global number: N processes take
   a contiguous share each), sample ``group_size`` completions each through the rollout backend
   (tokens + loss masks + sampling log-probs), completion j of prompt i drawn from its own
   stream seeded by (seed, step, i, j), so the samples do not depend on the process count;
2. score them with the composed reward (verifiers, custom ``module:function`` rewards, reward
   models; minus ``no_eos_penalty`` for completions cut off before EOS);
3. one no-grad forward each for π_old (the policy itself, dropout off: ratio = 1 at the first
   update), π_ref (when β > 0), the value model and the masking policy (when the algorithm's
   spec has them: PPO/NLPO, NLPO). When each rollout gets exactly one update (``ppo_epochs =
   num_minibatches = 1``, no value model or action mask, and no KL in the reward, which the
   advantages would read from π_old: the GRPO/RLOO default) π_old *is* the policy being
   updated, so its log-probs are the update forward's own, detached, and the separate π_old pass
   is skipped (one forward fewer per step, the same gradient; TRL's GRPOTrainer does the same
   at ``num_iterations = 1``);
4. advantages from the spec's estimator (``AlgorithmSpec.advantages``);
5. ``ppo_epochs`` passes of ``num_minibatches`` updates with the spec's policy loss
   (``losses.policy.clipped_policy_loss`` unless the algorithm has its own; + ``value_coef`` ·
   clipped value loss with a value model), each an ``Engine.update`` over micro-batches of
   ``batch_size`` rows per process, the loss divided by the step's global normaliser
   (``losses.policy.aggregation_normalizer``: rows for ``grpo``, tokens for ``dapo``, rows ×
   ``max_new_tokens`` for ``dr_grpo``), so neither accumulation nor the process count changes
   the gradient. Minibatches are drawn from all processes' rows (``minibatch_plan``); batch
   statistics (PPO's advantage whitening, the step's metrics) are reduced over processes. Within
   a minibatch, rows of like completion width share a micro-batch, and every forward (here and in
   step 3's chunks) stops at its rows' last sampled token (``row_widths``): the right padding of
   the batch's longest row is never run, and the loss is unchanged (causal models).

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
from collections import deque
import math
import time
from pathlib import Path

import torch

from posttrain.data import DataError, encode_prompt, mix_sources, validate_rows
from posttrain.data.seq2seq import encoder_prompt_ids
from posttrain.models.seq2seq import is_encoder_decoder
from posttrain.models import resolve_model_path
from posttrain.losses.kl import AdaptiveKLController, FixedKLController, kl_estimate
from posttrain.losses.policy import aggregation_normalizer, explained_variance, masked_mean, nlpo_topp_mask, \
    tis_weights, value_loss
from posttrain.rewards.compose import build_reward
from posttrain.rewards.judge import JudgeReward
from posttrain.train.common import (check_prompts_split, launched_processes, load_policy, log, prepare_run,
                                    prompt_steps)
from accelerate.utils import gather_object
from posttrain.train.engine import Engine, TrainingError
from posttrain.models.layout import completion_token_logps, prompt_sharing
from posttrain.train.rl.algorithms import algorithm_spec
from posttrain.train.rl.algorithms.ppo import completion_values
from posttrain.train.rl.config import RLConfig
from posttrain.tools import EnvironmentPool, ToolChat, environment_factory
from posttrain.train.rl.multiturn import MultiTurnRollout, episode_metrics
from posttrain.train.rl.rollout import Rollout, TopPActionMask, completion_logits, make_backend

__all__ = ["run_rl", "load_prompts", "reward_spec", "heldout_accuracy", "heldout_items", "RLState"]


# ---------------------------------------------------------------------------------------------
# Data and reward


def load_prompts(sources: list, tokenizer, max_prompt_length: int, seed: int, source: str,
                 needs_answer: bool = True, seq2seq: bool = False) -> list[dict]:
    """Validated RLVR rows with their prompt token ids (``prompt_ids``); too-long prompts dropped.
    ``needs_answer=False``: rows may be bare prompts (no verifier component reads them).
    ``seq2seq``: the ids are an encoder-decoder's encoder input (``data/seq2seq.encoder_prompt_ids``)."""
    rows = validate_rows(mix_sources(sources, seed=seed), "rlvr" if needs_answer else "rl_prompt", source)
    encode = encoder_prompt_ids if seq2seq else encode_prompt
    for row in rows:
        row["prompt_ids"] = encode(tokenizer, row["messages"])
    kept = [r for r in rows if len(r["prompt_ids"]) <= max_prompt_length]
    if not kept:  # say so, rather than "0 prompts for a step"
        raise DataError(f"{source}: every one of the {len(rows)} prompts is longer than max_prompt_length="
                        f"{max_prompt_length} tokens. Raise max_prompt_length or shorten the prompts")
    return kept


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


def score(reward, rows: list[dict], rollout: Rollout) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
    """Total reward per completion (B,) and, per component ``reward/<name>``, the sum and count
    of its defined (non-NaN) values, to be averaged over all processes. An LM-judge component also
    gives ``reward/<name>/unscored``: the share of completions whose judge reply held no readable
    rating (they add 0 to the total)."""
    picked = [rows[i] for i in rollout.prompt_index.tolist()]
    keys = dict.fromkeys(k for r in picked for k in r if k not in ("messages", "prompt_ids"))
    columns = {key: [r.get(key) for r in picked] for key in keys}
    totals, parts = reward([r["messages"] for r in picked], rollout.texts, finished=rollout.finished.tolist(),
                           **columns)
    env_rewards = getattr(rollout, "env_rewards", None)   # multi-turn: the environment's summed step rewards
    if env_rewards is not None:
        totals = [t + float(e) for t, e in zip(totals, env_rewards)]
        parts = {**parts, "environment": env_rewards.tolist()}
    sums = {}
    judges = {name for name, fn, _ in reward.components if isinstance(fn, JudgeReward)}
    for name, values in parts.items():
        finite = [v for v in values if not math.isnan(v)]
        sums[f"reward/{name}"] = (float(sum(finite)), len(finite))
        if name in judges:
            sums[f"reward/{name}/unscored"] = (float(len(values) - len(finite)), len(values))
    return torch.tensor(totals, dtype=torch.float32), sums


@torch.no_grad()
def heldout_items(backend, rows: list[dict], max_new_tokens: int, batch_size: int = 32, first_index: int = 0,
                  stride: int = 1) -> list[dict]:
    """Greedy completions of held-out RLVR rows, scored by each row's verifier (the same registry
    the reward uses): per row its ``index`` (``first_index + i·stride``: the row's place in the
    whole held-out set when each process takes every ``stride``-th row), ground truth,
    completion, score, length and whether it was cut off."""
    from posttrain.rewards import get_verifier

    verifiers: dict = {}
    items = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        out = backend.generate([r["prompt_ids"] for r in chunk], n=1, max_new_tokens=max_new_tokens, greedy=True,
                               **({"rows": chunk} if getattr(backend, "needs_rows", False) else {}))
        for row, text, m, done in zip(chunk, out.texts, out.completion_mask, out.finished):
            name = row["verifier"]
            verifiers.setdefault(name, get_verifier(name))
            items.append({"index": first_index + len(items) * stride, "ground_truth": row["ground_truth"],
                          "completion": text, "score": verifiers[name](text, row["ground_truth"]).score,
                          "length": float(m.sum()), "truncated": not bool(done)})
    return items


def summarize_heldout(items: list[dict]) -> dict:
    """accuracy, n, correct, response_length, truncated_share of scored held-out ``items``."""
    n = max(len(items), 1)
    return {"accuracy": sum(i["score"] for i in items) / n, "n": len(items), "correct": sum(i["score"] for i in items),
            "response_length": sum(i["length"] for i in items) / n,
            "truncated_share": sum(i["truncated"] for i in items) / n}


def heldout_on_processes(engine: Engine, backend, rows: list[dict], max_new_tokens: int, run_dir: Path) -> dict:
    """``summarize_heldout`` of the greedy held-out items, the rows shared out over the processes;
    the main process appends every row's result to ``eval_samples.jsonl`` (for paired before/after
    comparisons)."""
    # Each process answers every world-th held-out row; the main process writes them all.
    # (Sharded, every process generates every row: lockstep generation needs equal calls.)
    split = engine.world > 1 and not engine.sharded
    mine = heldout_items(backend, rows[engine.rank::engine.world] if split else rows, max_new_tokens,
                         first_index=engine.rank if split else 0, stride=engine.world if split else 1)
    items = sorted(gather_object(mine) if split else mine, key=lambda item: item["index"])
    if engine.is_main:
        with (run_dir / "eval_samples.jsonl").open("a") as f:
            for item in items:
                f.write(json.dumps({"step": engine.state.step, **item}) + "\n")
    return summarize_heldout(items)


def heldout_accuracy(backend, rows: list[dict], max_new_tokens: int, batch_size: int = 32) -> dict:
    """Greedy accuracy on held-out RLVR rows (``summarize_heldout``), with the scored ``items``."""
    items = heldout_items(backend, rows, max_new_tokens, batch_size)
    return {**summarize_heldout(items), "items": items}


# ---------------------------------------------------------------------------------------------
# State beyond what Engine checkpoints


class RLState:
    """What an RL checkpoint holds besides the models, optimizers, RNG and prompt position that
    ``Engine`` saves: the KL coefficient. Loading it also brings the rollout backend and the NLPO
    masking policy to the resumed weights."""

    def __init__(self, kl_controller, engine: Engine, backend, mask_model=None):
        self.kl_controller, self.engine, self.backend, self.mask_model = kl_controller, engine, backend, mask_model
        self.pending: deque = deque()   # async: (step, prompt indices, handle) submitted, not yet trained on
        self.resubmit = None            # set by run_rl: queues one step's generation again

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_controller.value, "pending": [(s, picked) for s, picked, _ in self.pending]}

    def load_state_dict(self, blob: dict):
        self.kl_controller.value = blob["kl_coef"]
        if self.mask_model is not None:  # departure: the masking policy restarts from the resumed policy
            self.mask_model.load_state_dict(self.engine.unwrapped().state_dict())
        self.backend.update_weights(self.engine.unwrapped())
        # Async: the batches queued at the checkpoint were lost with the workers; their prompts
        # (already counted in the data position) are generated again, from the resumed weights.
        self.pending = deque((s, picked, self.resubmit(picked, s)) for s, picked in blob.get("pending", []))


# ---------------------------------------------------------------------------------------------
# The run


def run_rl(config: RLConfig, command: str = "posttrain grpo", on_ray: bool = False):
    """Train ``config``. ``placement=ray``: the learner runs as a Ray actor (on this node, so the
    run folder is where the user looks) and samples through ``rollout_workers`` worker actors."""
    world = launched_processes()
    if config.placement == "ray" and not on_ray:
        if world > 1:
            raise TrainingError("placement=ray runs one learner actor; for several learner processes use "
                                "accelerate launch with placement=local")
        from posttrain.train.rl.ray_rollout import connect, run_on_ray

        from posttrain.train.preflight import preflight

        preflight(config)   # every input checked before the cluster starts (the learner claims the folder)
        connect(config.ray_address or None)
        config = dataclasses.replace(config, out=str(Path(config.out).resolve()))   # the actor's cwd may differ
        # num_cpus=0: the learner's CPU time is not Ray's to schedule; the workers hold the CPUs.
        return run_on_ray(run_rl, config, command, on_ray=True, num_cpus=0,
                          num_gpus=1 if torch.cuda.is_available() else 0)
    check_prompts_split(config.prompts_per_step, world)
    # --- run folder, policy, tokenizer, engine (accelerate, optimizer, checkpoints, metrics)
    run_dir = prepare_run(config, command)
    policy, tokenizer = load_policy(config)
    engine = Engine(config, policy, tokenizer)
    main, device = engine.is_main, engine.device
    algorithm = config.algorithm
    spec = algorithm_spec(algorithm)
    local_prompts = config.prompts_per_step // engine.world

    # --- data: RLVR rows with tokenised prompts; held-out rows for greedy accuracy
    needs_answer = any("verifier" in entry for entry in config.reward)   # else bare prompts will do
    seq2seq = is_encoder_decoder(policy)   # prompts are its encoder input (models/seq2seq.py)
    rows = load_prompts(config.data, tokenizer, config.max_prompt_length, config.seed, "data", needs_answer, seq2seq)
    total = prompt_steps(config, len(rows))
    eval_rows = load_prompts(config.eval_data, tokenizer, config.max_prompt_length, config.seed, "eval_data",
                             seq2seq=seq2seq) if config.eval_data else []
    if config.eval_size > 0:
        eval_rows = eval_rows[:config.eval_size]
    reward = build_reward(reward_spec(config), no_eos_penalty=config.no_eos_penalty)
    log(f"[bold]{algorithm}[/] {len(rows)} prompts, {len(eval_rows)} held-out, {engine.world} process(es); "
        "reward = " + " + ".join(f"{w:g}·{n}" for n, _, w in reward.components), main)

    # --- models. The optimizers need the final trainable parameters (LoRA applied); the
    # reference and masking copies are taken before training changes anything.
    extra = {}
    if spec.value_model:
        from posttrain.train.rl.algorithms.ppo import build_value_model

        start = config.model if config.value_model == "policy" else config.value_model
        extra["value"] = (build_value_model(start, dtype=config.dtype, zero_head=config.value_model == "policy"),
                          config.value_learning_rate or None)
    value_model = engine.setup(total * config.ppo_epochs * config.num_minibatches, extra).get("value")
    reference = None
    if spec.needs_reference(config):
        reference = None if config.lora_rank > 0 else _frozen_copy(engine.unwrapped())  # LoRA: adapters disabled
    mask_model = _frozen_copy(engine.unwrapped()) if spec.action_mask else None
    kl_controller = AdaptiveKLController(config.beta, config.kl_target, config.kl_horizon) if config.kl_target > 0 \
        else FixedKLController(config.beta)
    single_update = update_gives_old_logps(config)
    share = prompt_sharing(config.share_prompts, engine.world)
    # Generation runs on the bare model (DDP's wrapper has no generate); sharded, its forwards
    # gather each layer's weights, so the processes generate in lockstep (``synced``).
    backend = rollout_backend(config, engine, tokenizer, local_prompts, share)
    rl_state = RLState(kl_controller, engine, backend, mask_model)

    def heldout(_model) -> dict:
        return heldout_on_processes(engine, backend, eval_rows, config.max_new_tokens, run_dir)

    # --- one optimizer update on a minibatch: the clipped surrogate (+ value loss)
    def update_step(model, micro):
        model.eval()  # dropout off (Engine.evaluate leaves the model in train mode)
        b, weight = micro["batch"], micro["weight"]
        rows_ = micro["rows"].cpu()
        # Only the columns up to the micro-batch's last sampled token: the rest is right padding
        # that a causal model never lets earlier positions see, so the loss and its gradient are
        # those of the full width (minibatch_plan groups rows of like width to make this pay).
        width = max(int(row_widths(b["mask"][rows_]).max()), 1)

        def rows_of(key):   # this micro-batch's rows of b[key], trimmed to ``width`` where per token
            value = b[key]
            return (value[rows_, :width] if value.dim() > 1 else value[rows_]).to(device)

        prompts = [b["prompt_ids"][i] for i in rows_.tolist()]
        completion, mask = rows_of("completion_ids"), rows_of("mask")
        keep = rows_of("keep") if "keep" in b else None
        logps, entropy = token_logps(model, prompts, completion, mask, tokenizer.pad_token_id, config, share, keep,
                                     with_entropy=single_update)
        if single_update and weight > 0:  # π_old = this very forward (ratio ≡ 1); kept for the step's metrics
            b["old_logps"][rows_, :width] = logps.detach().cpu()
            b["entropy_sum"] += float(entropy.sum())
            b["measured"][rows_] = True
        advantages = rows_of("advantages")   # (B,) per sequence or (B, T) per token (GAE)
        in_loss = config.kl_in == "loss" and kl_controller.value > 0 and "ref_logps" in b
        old_logps = rows_of("old_logps")
        weights = tis_weights(old_logps, rows_of("sampling_logps"), config.tis_cap, mask) \
            if config.tis_cap > 0 else None
        loss, diag = spec.policy_loss(
            logps, old_logps, advantages, mask, config.clip_low, config.clip_high,
            aggregation=config.aggregation, normalizer=1.0, kl_coef=kl_controller.value if in_loss else 0.0,
            ref_logps_BT=rows_of("ref_logps") if in_loss else None, kl_kind=config.kl_estimator,
            is_weights_BT=weights)
        metrics = {k: diag[k].detach() for k in ("clip_fraction", "ratio_mean", "approx_kl")}   # on the device
        if weights is not None:
            metrics["rollout/tis_weight_mean"] = masked_mean(weights, mask).detach()
        if value_model is not None:
            values = completion_values(value_model, prompts, completion, tokenizer.pad_token_id, device)
            vloss, vdiag = value_loss(values, rows_of("old_values"), rows_of("returns"), mask,
                                      clip=config.value_clip or None)
            loss = loss + config.value_coef * vloss * normalizer(micro)  # token-mean value loss, weighted by share
            metrics.update(value_loss=vloss.detach(), value_clip_fraction=vdiag["value_clip_fraction"].detach())
        metrics["metric_weight"] = float(mask.sum()) * weight   # the metrics are token means
        return loss * weight, metrics

    def normalizer(micro) -> float:
        mask_BT = micro["batch"]["mask"][micro["rows"].cpu()]
        return aggregation_normalizer(config.aggregation, mask_BT, config.completion_limit()) * micro["weight"]

    def submit(picked: list[int], submit_step: int):
        """Queue step ``submit_step``'s generation on the Ray workers (async_steps > 0)."""
        return backend.submit([rows[i]["prompt_ids"] for i in picked], n=config.group_size,
                              max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, top_k=config.top_k,
                              seeds=[prompt_seed(config.seed, submit_step, i) for i in picked])

    rl_state.resubmit = submit

    # --- one rollout step: sample, score, advantages, updates
    def rl_step() -> dict:
        step = engine.state.step
        if mask_model is not None and step % config.mask_refresh_steps == 0:
            mask_model.load_state_dict(engine.unwrapped().state_dict())
        # A step's prompts are a global draw; this process takes its contiguous share, and each
        # prompt's completions are seeded by (seed, step, prompt), so any process count samples
        # the same completions.
        step_start = time.perf_counter()
        staleness = 0
        if config.async_steps > 0:
            # Generation runs up to async_steps policy versions ahead: batches for the next steps
            # are already queued on the workers (each samples with the weights of its submit time).
            while len(rl_state.pending) < config.async_steps + 1:
                submit_step = step + len(rl_state.pending)
                picked = engine.next_units(len(rows), config.prompts_per_step)
                rl_state.pending.append((submit_step, picked, submit(picked, submit_step)))
            _, mine, handle = rl_state.pending.popleft()
            rollout, version = backend.result(handle)
            staleness = backend.version - version
        else:
            picked = engine.next_units(len(rows), config.prompts_per_step)
            mine = picked[engine.rank * local_prompts:(engine.rank + 1) * local_prompts]
            action_mask = (lambda attn: TopPActionMask(mask_model, attn, config.mask_top_p)) if mask_model else None
            rollout = backend.generate([rows[i]["prompt_ids"] for i in mine], n=config.group_size,
                                       max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                       top_p=config.top_p, top_k=config.top_k, action_mask=action_mask,
                                       seeds=[prompt_seed(config.seed, step, i) for i in mine],
                                       **({"rows": [rows[i] for i in mine]} if config.multi_turn else {}))
        step_rows = [rows[i] for i in mine]
        scores_B, component_sums = score(reward, step_rows, rollout)
        train_start = time.perf_counter()
        batch = _score_batch(rollout, engine.model, reference, mask_model=mask_model, value=value_model,
                             config=config, device=device, policy_pass=not single_update, share=share)
        adv = spec.advantages(scores_B, batch, config, reduce_sum=engine.all_reduce_sum)
        batch["advantages"] = adv.advantages
        if adv.returns is not None:
            batch["returns"] = adv.returns
        updates = []
        for epoch in range(config.ppo_epochs):
            for micro in minibatch_plan(engine, adv.keep, config, seed=prompt_seed(config.seed, step, -1 - epoch),
                                        widths_B=row_widths(batch["mask"])):
                updates.append(engine.update([{"batch": batch, **m} for m in micro], update_step, normalizer))
        if updates:
            backend.update_weights(engine.unwrapped())
        train_seconds = time.perf_counter() - train_start
        record = step_metrics(engine, rollout, scores_B, component_sums, batch, adv, updates, kl_controller, config)
        record["step_seconds"] = time.perf_counter() - step_start
        record["rollout/staleness"] = staleness   # policy versions between sampling and this update
        record["training_tokens_per_s"] = record.pop("trained_tokens") / max(train_seconds, 1e-9)
        record["tokens_per_s"] = record["training_tokens_per_s"]
        if config.multi_turn:
            record.update(episode_metrics(engine, rollout))
        _write_samples(run_dir / "samples.jsonl", engine, rollout, scores_B, config.save_samples, step + 1)
        return record

    try:
        last_record = engine.loop(total, rl_step, heldout if eval_rows else None, algorithm, extra_state=rl_state,
                                  eval_at_start=True)
    finally:
        if hasattr(backend, "close"):
            backend.close()

    # --- final model and reports
    out = engine.save_final()
    if main:
        from posttrain.reports.reward_report import write_reward_report
        from posttrain.reports.training import write_training_report

        write_reward_report_inputs(run_dir, config, reward, kl_controller)
        write_training_report(run_dir, algorithm.upper(), extra={"prompts": len(rows), "held-out": len(eval_rows),
                                                                  "reward": [n for n, _, _ in reward.components]})
        write_reward_report(run_dir)   # a recipe writes it again with its before/after evaluation
        log(f"[green]done[/]: model in {out}, reports in {run_dir / 'report.md'} and "
            f"{run_dir / 'reward_report.md'}", main)
    return last_record


# ---------------------------------------------------------------------------------------------
# Helpers of the loop


def rollout_backend(config: RLConfig, engine: Engine, tokenizer, local_prompts: int, share: bool):
    """The configured rollout backend. Generation runs on the bare model (DDP's wrapper has no
    generate); sharded, its forwards gather each layer's weights, so the processes generate in
    lockstep (``synced``). vLLM engines load the starting weights from the model folder."""
    model_path = resolve_model_path(config.model)
    episodes = multi_turn_setup(config, tokenizer) if config.multi_turn else None
    # vLLM's context: the prompt (with the tools block of multi-turn episodes) and the longest completion
    context = config.max_prompt_length + config.completion_limit() + (episodes[2].prompt_overhead() if episodes else 0)
    vllm_options = {"dtype": config.dtype if config.dtype != "auto" else "bfloat16",
                    "max_model_len": context,
                    "gpu_memory_utilization": config.vllm_gpu_memory_utilization, "seed": config.seed}
    if config.placement == "ray":
        from posttrain.train.rl.ray_rollout import RayRollout

        return RayRollout(config.model, num_workers=config.rollout_workers, backend=config.rollout_backend,
                          template=config.template, dtype=config.dtype, attn_implementation=config.attn_implementation,
                          batch_size=max(config.batch_size, local_prompts * config.group_size), share_prompts=share,
                          cache=config.rollout_cache, address=config.ray_address or None,
                          gpus_per_worker=1 if torch.cuda.is_available() and config.rollout_backend == "vllm" else 0,
                          backend_options={"vllm_options": vllm_options} if config.rollout_backend == "vllm" else None)
    if config.rollout_backend == "vllm-server":
        from posttrain.train.rl.server import VLLMServerRollout

        return VLLMServerRollout(config.vllm_server_urls, tokenizer,
                                 config.weight_sync_dir or str(engine.run_dir / "weight_sync"), is_main=engine.is_main,
                                 barrier=engine.accelerator.wait_for_everyone)
    backend = make_backend(config.rollout_backend, engine.unwrapped(), tokenizer, model_path=model_path,
                           batch_size=max(config.batch_size, local_prompts * config.group_size), share_prompts=share,
                           cache=config.rollout_cache, synced=engine.sharded, vllm_options=vllm_options)
    if episodes:   # episodes of several turns over the same backend (train/rl/multiturn.py)
        make_environment, tools, _ = episodes
        backend = MultiTurnRollout(backend, tokenizer, make_environment, tools,
                                   EnvironmentPool(config.environment_workers, config.tool_timeout), config.max_turns,
                                   config.max_episode_tokens)
    return backend


def multi_turn_setup(config: RLConfig, tokenizer) -> tuple:
    """The configured environment factory, the tools it shows and their chat rendering."""
    make_environment, tools = environment_factory(config.environment, config.tools, config.retrieval_corpus,
                                                  config.environment_options)
    return make_environment, tools, ToolChat(tokenizer, [t.schema for t in tools])


def update_gives_old_logps(config: RLConfig) -> bool:
    """Whether π_old is exactly the policy of the (only) update of each rollout batch, so its
    log-probs can come from the update's own forward (module docstring, step 3). Algorithms with
    a value model or an action mask keep the separate pass (those are computed beside it), and
    so does a KL in the reward (the advantages read π_old's log-probs before any update)."""
    spec = algorithm_spec(config.algorithm)
    kl_in_reward = config.kl_in == "reward" and spec.needs_reference(config)
    return (config.ppo_epochs == 1 and config.num_minibatches == 1 and not spec.value_model
            and not spec.action_mask and not kl_in_reward)


def prompt_seed(seed: int, step: int, prompt: int) -> int:
    """The sampling seed of dataset prompt ``prompt`` at rollout step ``step`` (0-based)."""
    return (seed * 1_000_003 + step) * 10_000_019 + prompt


def row_widths(mask_BT: torch.Tensor) -> torch.Tensor:
    """Per row, the number of columns up to and including its last mask-1 token (0 for a row with
    none), (B,) long. What lies after it (right padding; an episode's tokens after its last sampled
    one) never reaches the loss, and a causal model never lets it change an earlier position."""
    if mask_BT.shape[1] == 0:
        return torch.zeros(len(mask_BT), dtype=torch.long)
    columns = torch.arange(1, mask_BT.shape[1] + 1, device=mask_BT.device)
    return (mask_BT.ne(0) * columns).max(-1).values


def minibatch_plan(engine: Engine, keep_B: torch.Tensor, config: RLConfig, seed: int,
                   widths_B: torch.Tensor | None = None) -> list[list[dict]]:
    """This process's micro-batches for each minibatch update of one PPO epoch.

    The kept rows of *all* processes are shuffled with a generator seeded by ``seed`` (per step and epoch)
    and cut into ``num_minibatches`` minibatches, so a minibatch is the same set of rows whatever
    the process count; each process takes its own rows of it, ``batch_size`` at a time. With
    ``widths_B`` (``row_widths`` of this process's rows) they are taken widest first, so rows of
    like length share a micro-batch and ``update_step`` trims each to its own width; which rows
    make a minibatch (one optimizer step) does not change. Processes
    must run the same number of forwards and backwards (DDP and FSDP synchronise in them): one
    with fewer micro-batches pads with weight-0 ones (a real row, its loss times 0)."""
    B = len(keep_B)
    keep_all = engine.all_gather(keep_B.to(torch.uint8)).bool()
    kept = keep_all.nonzero().squeeze(-1)
    if len(kept) == 0:
        return []
    g = torch.Generator().manual_seed(seed % (2**63))
    order = kept[torch.randperm(len(kept), generator=g)]
    plan = []
    for minibatch in torch.tensor_split(order, min(config.num_minibatches, len(order))):
        local = minibatch[minibatch // B == engine.rank] - engine.rank * B
        if widths_B is not None:   # widest first: the memory peak comes with the first micro-batch
            local = local[torch.sort(widths_B[local], descending=True, stable=True).indices]
        micro = [{"rows": r, "weight": 1.0} for r in torch.split(local, config.batch_size)]
        most = int(engine.all_gather(torch.tensor([len(micro)])).max())
        micro += [{"rows": torch.zeros(1, dtype=torch.long), "weight": 0.0}] * (most - len(micro))
        plan.append(micro)
    return plan


def step_metrics(engine: Engine, rollout: Rollout, scores_B: torch.Tensor, component_sums: dict, batch: dict,
                 adv, updates: list[dict], kl_controller, config: RLConfig) -> dict:
    """The rollout step's record, over all processes' rows (one all-reduce of sums and counts)."""
    mask = batch["mask"]
    measured_mask = mask * batch["measured"][:, None]   # rows whose π_old log-probs exist
    # |sampler − trainer| log-prob per sampled token, the trainer's taken before the update
    gap_BT = (rollout.sampling_logps - batch["old_logps"]).abs()
    trained_rows = adv.keep.float()
    sums = {"rows": float(mask.shape[0]), "tokens": float(mask.sum()), "measured_tokens": float(measured_mask.sum()),
            "reward": float(scores_B.sum()), "reward_sq": float((scores_B ** 2).sum()),
            "truncated": float((~rollout.finished).float().sum()), "entropy": batch["entropy_sum"],
            "mismatch": float((gap_BT * measured_mask).sum()),
            "kept": float(trained_rows.sum()), "trained_tokens": float((mask.sum(-1) * trained_rows).sum()),
            "generation_seconds": rollout.seconds}
    for name, (total, count) in component_sums.items():
        sums[f"{name}:sum"], sums[f"{name}:count"] = total, count
    if "ref_logps" in batch:
        sums["kl"] = float((kl_estimate(batch["old_logps"], batch["ref_logps"], config.kl_estimator)
                            * measured_mask).sum())
    for key, value in adv.metrics.items():
        sums[f"adv:{key}"] = value
    if "old_values" in batch:
        sums["explained_variance"] = float(explained_variance(batch["old_values"], batch["returns"], mask))
    names = list(sums)
    sums = dict(zip(names, engine.all_reduce_sum([sums[k] for k in names])))
    n, world = sums["rows"], engine.world
    mean = sums["reward"] / n
    record = {"lr": engine.trainables[0].scheduler.get_last_lr()[0], "reward_mean": mean,
              "reward_std": math.sqrt(max(sums["reward_sq"] - n * mean ** 2, 0.0) / (n - 1)) if n > 1 else 0.0}
    for name in component_sums:
        count = sums[f"{name}:count"]
        record[name] = sums[f"{name}:sum"] / count if count else float("nan")
    record.update({"response_length": sums["tokens"] / n, "truncated_share": sums["truncated"] / n,
                   "entropy": sums["entropy"] / max(sums["measured_tokens"], 1.0),
                   "rollout/logprob_abs_diff_mean": sums["mismatch"] / max(sums["measured_tokens"], 1.0),
                   "rollout/logprob_abs_diff_max": engine.all_reduce_max(
                       float((gap_BT * measured_mask).max()) if measured_mask.any() else 0.0),
                   "trained_share": sums["kept"] / n,
                   # processes generate side by side: tokens over the slowest-on-average time
                   "generation_tokens_per_s": sums["tokens"] / max(sums["generation_seconds"] / world, 1e-9),
                   "trained_tokens": sums["trained_tokens"] * config.ppo_epochs})
    if "kl" in sums and sums["measured_tokens"] > 0:
        record["kl"] = sums["kl"] / sums["measured_tokens"]
        record["beta"] = kl_controller.value
        kl_controller.update(record["kl"] * sums["tokens"] / n, n_steps=int(n))
    record.update({key[4:]: sums[key] / world for key in names if key.startswith("adv:")})
    if "explained_variance" in sums:
        record["explained_variance"] = sums["explained_variance"] / world   # mean over processes
    if updates:
        for key in updates[0]:
            if key != "lr":
                record[key] = sum(u[key] for u in updates) / len(updates)
    else:
        record["loss"] = 0.0
    return record


def _frozen_copy(model):
    copy_ = copy.deepcopy(getattr(model, "module", model)).eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_


def token_logps(model, prompts: list[list[int]], completion: torch.Tensor, mask: torch.Tensor, pad_id: int,
                config: RLConfig, share: bool, keep: torch.Tensor | None = None, with_entropy: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``train/layout.completion_token_logps`` with this run's temperature, ``chunked_loss`` and
    NLPO action mask ``keep``: log-probs (B, T) and, with ``with_entropy``, entropies (B, T)."""
    return completion_token_logps(model, prompts, completion, pad_id, mask, config.temperature, share,
                                  with_entropy, config.chunked_loss, action_mask_BTV=keep)


@torch.no_grad()
def _score_batch(rollout: Rollout, policy, reference, mask_model=None, value=None, config=None, device=None,
                 policy_pass: bool = True, share: bool = False) -> dict:
    """Tensors of one rollout step (CPU): completion ids and mask, π_old, π_ref, values, the
    NLPO action mask, and the policy's summed entropy over sampled tokens. Without
    ``policy_pass`` π_old and the entropy are left for the update to fill (zeros; ``measured``
    marks the rows that have them). ``share``: each group's prompt runs once (``completion_logits``)."""
    pad = rollout.pad_id
    batch = {"prompt_ids": rollout.prompt_ids, "completion_ids": rollout.completion_ids,
             "mask": rollout.completion_mask, "sampling_logps": rollout.sampling_logps}
    old, ref, vals, keeps, entropy_sum = [], [], [], [], 0.0
    B, T = rollout.completion_mask.shape
    chunk = max(config.batch_size, 1)
    policy.eval()  # dropout off, here and in the updates: see the module docstring
    for s in range(0, len(rollout.prompt_ids), chunk):
        # each chunk's forwards stop at its last sampled token (as update_step's); zeros after it
        width = max(int(row_widths(rollout.completion_mask[s:s + chunk]).max()), 1)
        prompts = rollout.prompt_ids[s:s + chunk]
        completion = rollout.completion_ids[s:s + chunk, :width].to(device)
        mask = rollout.completion_mask[s:s + chunk, :width].to(device)
        keep = None
        if mask_model is not None:
            keep = nlpo_topp_mask(completion_logits(mask_model, prompts, completion, pad, share_prompts=share),
                                  config.mask_top_p)
            keeps.append(_widen(keep.cpu(), T, True))   # padding: every token allowed (no -inf logits)
        if policy_pass:
            logps, entropy = token_logps(policy, prompts, completion, mask, pad, config, share, keep, with_entropy=True)
            old.append(_widen(logps.cpu(), T))
            entropy_sum += float(entropy.sum())
        if config.beta > 0:
            if reference is not None:
                logps = token_logps(reference, prompts, completion, mask, pad, config, share, keep)[0]
            else:
                with policy.disable_adapter():
                    logps = token_logps(policy, prompts, completion, mask, pad, config, share, keep)[0]
            ref.append(_widen(logps.cpu(), T))
        if value is not None:
            vals.append(_widen(completion_values(value, prompts, completion, pad, device).cpu(), T))
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


def _widen(x: torch.Tensor, T: int, fill=0) -> torch.Tensor:
    """``x`` (b, w, …) right-padded with ``fill`` to (b, T, …)."""
    out = x.new_full((x.shape[0], T, *x.shape[2:]), fill)
    out[:, :x.shape[1]] = x
    return out


def _write_samples(path: Path, engine: Engine, rollout: Rollout, scores_B: torch.Tensor, count: int, step: int):
    """The first ``count`` completions of the step (the main process's share) into ``samples.jsonl``."""
    if count <= 0 or not engine.is_main:
        return
    with path.open("a") as f:
        for i in range(min(count, len(rollout.texts))):
            episode = {"episode": rollout.transcripts[i], "end": rollout.end_reasons[i]} \
                if hasattr(rollout, "transcripts") else {}
            f.write(json.dumps({"step": step, "completion": rollout.texts[i], **episode,
                                "reward": float(scores_B[i]), "finished": bool(rollout.finished[i])}) + "\n")


def episode_reward_component(config: RLConfig) -> dict:
    """The ``environment`` component of a multi-turn run's reward (``reward/environment``, weight
    1): a tool environment (``tools=[…]`` or a built-in tool name) pays no step reward; any other
    environment pays what its ``step`` returns."""
    from posttrain.rewards.describe import environment_description
    from posttrain.tools.spec import BUILTIN_TOOLS

    tool_environment = not config.environment or config.environment in BUILTIN_TOOLS
    tools = [str(t) for t in config.tools] or ([config.environment] if tool_environment else [])
    return environment_description(config.environment, tools, pays_step_rewards=not tool_environment
                                   ).as_dict("environment", 1.0)


def write_reward_report_inputs(run_dir: Path, config: RLConfig, reward, kl_controller) -> Path:
    """``reward_report_inputs.json``: what was optimised (each reward component's description) and
    how it tracked held-out accuracy; ``reports.reward_report.write_reward_report`` renders it."""
    from posttrain.reports.training import read_metrics

    records = read_metrics(run_dir)
    train = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    blob = {
        "algorithm": config.algorithm,
        "model": config.model,
        "data": config.data, "eval_data": config.eval_data,
        "reward_components": reward.describe(),   # each component's own description (rewards/describe.py)
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
    if config.multi_turn:   # the environment's step rewards are a reward component of their own (docs/tools.md)
        blob["reward_components"] = blob["reward_components"] + [episode_reward_component(config)]
        blob["episodes"] = {"environment": config.environment, "tools": list(config.tools),
                            "max_turns": config.max_turns, "max_new_tokens": config.max_new_tokens,
                            "max_episode_tokens": config.max_episode_tokens}
    path = Path(run_dir) / "reward_report_inputs.json"
    path.write_text(json.dumps(blob, indent=2, default=str))
    return path
