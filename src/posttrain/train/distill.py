"""On-policy distillation (``posttrain distill``): the student samples completions of the prompts
and learns to match, token by token, the next-token distribution of a teacher that shares its
tokenizer.

Objective, per step over the completion tokens y_1..y_T of a batch (Agarwal et al. 2024, GKD,
"On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes", arXiv:2306.13649,
Algorithm 1, λ its student-data fraction; Thinking Machines 2025, "On-Policy Distillation"):

    y ~ π_student(· | x)  with probability λ (``lmbda``), else y = the dataset's completion of x
    loss = (1 / #tokens) Σ_rows Σ_t D( π_student(· | x, y_<t) ‖ π_teacher(· | x, y_<t) )

with D = ``divergence``: ``reverse_kl`` KL(s‖t) (default), ``forward_kl`` KL(t‖s) or ``jsd``, GKD's
JSD(β) (β = 0 forward KL, β = 1 reverse KL; ``losses/distill.py``), both distributions at
``temperature`` (which also samples the student: the samples come from the distribution whose
divergence is minimised). The mean is over every completion token of the step on every process
(the engine's normaliser), so it does not depend on ``batch_size`` or the process count.

Memory: the divergence is taken through both LM heads a chunk of positions at a time
(``losses.distill.chunked_divergence``): only the final hidden states (B, T, H) of both models are
kept, never the (B, T, V) logits of either. Heads that are more than a matmul (or sharded) take the
plain path on full logits, with the same values.

Data: prompts (``prompt``, or ``messages`` ending in a user turn) and, for λ < 1, completions
(``prompt`` + ``completion``, or ``messages`` ending in assistant turns). A step takes
``prompts_per_step`` prompts (over all processes), ``group_size`` student samples each, seeded per
(seed, step, prompt) as in RL; on a dataset step each prompt contributes its one completion.

Departures: no gradient flows through the sampling (nor in GKD, for stability and cost); the
divergence is summed over the whole vocabulary at every sampled position, where Thinking Machines
use the sampled token's log-ratio log s(y_t) − log t(y_t) as a per-token advantage in a policy
gradient (its expectation under the student is the same reverse KL). Dropout stays off (as RL).

    posttrain distill teacher=runs/sft/model data=[prompts.jsonl] max_steps=100
    posttrain distill teacher=Qwen/Qwen2.5-7B-Instruct model=Qwen/Qwen2.5-0.5B-Instruct divergence=jsd lmbda=0.5
    accelerate launch --num_processes 2 -m posttrain.cli distill …
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, ClassVar

import torch

from posttrain.config import ConfigError, TrainingOptions, opt
from posttrain.data.formats import DataError
from posttrain.data.distill import dataset_batch, load_distill_rows
from posttrain.losses.distill import DIVERGENCES, chunked_divergence, full_logits_divergence


@dataclasses.dataclass
class DistillConfig(TrainingOptions):
    """``posttrain distill``: on-policy distillation from a teacher with the student's tokenizer."""

    data_kind: ClassVar[str] = "distill"   # how preflight checks the rows (data.formats.VALIDATORS)

    learning_rate: float = opt(1e-5, "peak learning rate (AdamW)", "Optimization")
    lr_schedule: str = opt("constant", "learning-rate schedule", "Optimization")
    warmup_ratio: float = opt(0.0, "share of steps spent warming the learning rate up from 0", "Optimization")
    # Data
    data: list[Any] = opt([{"source": "builtin:arithmetic_sft", "n": 400}], "training prompts (prompt, or messages "
                          "ending in a user turn), with completions for lmbda < 1 (prompt + completion, or messages "
                          "ending in assistant turns); list of specs or {source, fraction|count} entries", "Data")
    eval_data: list[Any] = opt([{"source": "builtin:arithmetic_sft:test", "n": 16}], "held-out prompts: the "
                               "divergence on the student's samples (seeded, the same at every evaluation) every "
                               "eval_steps, at the start and at the end ([] = none)", "Data")
    max_prompt_length: int = opt(512, "prompts longer than this (tokens) are dropped", "Data")
    # Teacher
    teacher: str = opt("", "the teacher: hub id, local folder, .gguf file or smollm2-135m-instruct; its tokenizer "
                       "must be the student's (checked before any weights load)", "Teacher")
    teacher_dtype: str = opt("", "teacher weights dtype (empty = dtype)", "Teacher")
    # Distillation
    divergence: str = opt("reverse_kl", "per-token divergence: reverse_kl KL(student‖teacher), forward_kl "
                          "KL(teacher‖student) or jsd (GKD's generalised JSD with beta)", "Distillation")
    beta: float = opt(0.5, "divergence=jsd: β in [0, 1]; 0 = forward KL, 1 = reverse KL (GKD, TRL)", "Distillation")
    lmbda: float = opt(1.0, "λ: share of steps on student samples (on-policy); the others train on the dataset's "
                       "completions, which the rows must then have (GKD's λ; 1 = purely on-policy)", "Distillation")
    temperature: float = opt(1.0, "τ: both distributions are softmax(logits / τ) in the divergence, and the student "
                             "samples at τ", "Distillation")
    chunked_loss: bool = opt(True, "take the divergence through the LM heads a chunk of tokens at a time: no "
                             "(B, T, V) logits of either model (plain path when a head is not a bias-free linear "
                             "layer)", "Distillation")
    # Sampling
    prompts_per_step: int = opt(8, "prompts per step, over all processes together (a multiple of the process count)",
                                "Sampling")
    group_size: int = opt(1, "student samples per prompt on on-policy steps", "Sampling")
    max_new_tokens: int = opt(48, "completion length limit (tokens); dataset completions are cut to it", "Sampling")
    top_p: float = opt(1.0, "nucleus sampling (1 = off)", "Sampling")
    top_k: int = opt(0, "top-k sampling (0 = off)", "Sampling")
    share_prompts: bool = opt(True, "run each group's prompt once and copy its KV cache to the group's rows, in "
                              "generation and in both models' forwards; off with several processes", "Sampling")
    # Logging
    save_samples: int = opt(2, "completions per step written to samples.jsonl (0 = none)", "Logging")

    def validate(self):
        super().validate()
        from posttrain.models.loading import DTYPES

        if not self.teacher.strip():
            raise ConfigError("teacher: give the teacher model (hub id, folder or .gguf) whose distribution the "
                              "student learns, e.g. teacher=runs/sft/model")
        if self.teacher == self.model:
            raise ConfigError(f"teacher={self.teacher!r} is the student itself: the divergence is 0 from the start, "
                              f"so there is nothing to learn. Name another model")
        if self.teacher_dtype and self.teacher_dtype not in (*DTYPES, "auto"):
            raise ConfigError(f"teacher_dtype={self.teacher_dtype!r}: choose auto, {', '.join(DTYPES)} or leave "
                              f"it empty (= dtype)")
        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"divergence={self.divergence!r}: choose one of {', '.join(DIVERGENCES)}")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"beta={self.beta}: must lie in [0, 1] (0 = forward KL, 1 = reverse KL)")
        if self.divergence != "jsd" and self.beta != 0.5:
            raise ConfigError(f"beta={self.beta} is the mixing weight of divergence=jsd; with divergence="
                              f"{self.divergence} it would be ignored: drop it or set divergence=jsd")
        if not 0 <= self.lmbda <= 1:
            raise ConfigError(f"lmbda={self.lmbda}: must lie in [0, 1] (the share of on-policy steps)")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature}: must be > 0")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError("top_p must lie in (0, 1] and top_k be >= 0 (0 = off)")
        if self.max_new_tokens < 1 or self.max_prompt_length < 1:
            raise ConfigError("max_new_tokens and max_prompt_length must be >= 1")
        if self.prompts_per_step < 1 or self.group_size < 1:
            raise ConfigError("prompts_per_step and group_size must be >= 1")
        if self.gradient_accumulation_steps != 1:
            raise ConfigError("gradient_accumulation_steps does not apply to distill: a step is prompts_per_step "
                              "prompts (× group_size samples), trained in micro-batches of batch_size rows; set "
                              "prompts_per_step for the step's size")

    def check_inputs(self, checked: dict[str, list[tuple[str, dict]]]):
        """After the rows' shape (``train/preflight.py``), before any weights load: completions for
        λ < 1, and a teacher with the student's tokenizer."""
        if self.lmbda < 1:
            for where, row in checked.get("data", []):
                if row["completion"] is None:
                    raise DataError(
                        f"{where}, field 'completion': missing, but lmbda={self.lmbda} trains on the dataset's own "
                        f"completions in {1 - self.lmbda:.0%} of the steps. Give prompt + completion rows (or "
                        f"messages ending in an assistant turn), or set lmbda=1 to train on student samples only")
        check_teacher(self.model, self.teacher)


# ---------------------------------------------------------------------------------------------
# Teacher and data


def check_teacher(student: str, teacher: str) -> None:
    """Refuse a teacher whose tokenizer differs from the student's (token → id maps compared), or
    whose head is smaller than that vocabulary: the divergence compares the two distributions id by
    id. Reads tokenizer and config files only, no weights."""
    from transformers import AutoConfig

    from posttrain.models import load_tokenizer, resolve_model_path

    ours, theirs = load_tokenizer(student).get_vocab(), load_tokenizer(teacher).get_vocab()
    if ours != theirs:
        differing = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda item: item[1])
        token, index = differing[0]
        side = "the student's" if ours.get(token) == index else "the teacher's"
        raise ConfigError(f"teacher={teacher!r} does not share the tokenizer of model={student!r} ({len(theirs)} vs "
                          f"{len(ours)} tokens; e.g. {token!r} is id {index} only in {side}): distillation compares "
                          f"next-token distributions id by id. Pick a teacher of the student's model family")
    for name, spec in (("model", student), ("teacher", teacher)):
        try:
            config = AutoConfig.from_pretrained(resolve_model_path(spec))
        except (OSError, ValueError):
            continue   # e.g. an adapter folder: the heads are compared again once loaded (shared_vocab_size)
        size = getattr(config.get_text_config(), "vocab_size", None)
        if size is not None and size < len(ours):
            raise ConfigError(f"{name}={spec!r}: its head has {size} rows for a tokenizer of {len(ours)} tokens")


def shared_vocab_size(student, teacher, tokenizer) -> int:
    """The head rows both models have. Families pad their heads to different sizes (Qwen2.5 0.5B vs
    7B); the rows past the tokenizer's tokens are never sampled, so the divergence runs over the
    first ``min`` rows of both."""
    sizes = [m.get_output_embeddings().weight.shape[0] for m in (getattr(student, "module", student), teacher)]
    if min(sizes) < len(tokenizer):
        raise ConfigError(f"the heads have {sizes[0]} (student) and {sizes[1]} (teacher) rows for a tokenizer of "
                          f"{len(tokenizer)} tokens")
    return min(sizes)


def load_teacher(config: DistillConfig, device):
    """The teacher, frozen and in eval mode on ``device``."""
    from posttrain.models import load_model

    teacher = load_model(config.teacher, dtype=config.teacher_dtype or config.dtype,
                         attn_implementation=config.attn_implementation, device=device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """Whether step ``step`` trains on student samples: a draw < λ from a stream seeded by (seed,
    step), the same on every process and after a resume."""
    from posttrain.train.rl.trainer import prompt_seed

    g = torch.Generator().manual_seed(prompt_seed(seed, step, -2) % (2**63))
    return float(torch.rand(1, generator=g)) < lmbda


# ---------------------------------------------------------------------------------------------
# One micro-batch: student and teacher on the same completions, the divergence chunk by chunk


def distill_step(config: DistillConfig, teacher, pad_id: int, share: bool, vocab: int):
    """``step(model, micro) -> (Σ per-token divergences, metrics)``; the engine divides by the
    step's completion tokens on every process (``normalizer``)."""
    from posttrain.models.layout import completion_head_inputs, completion_logits
    from posttrain.models.lm_head import chunkable_head

    options = {"name": config.divergence, "beta": config.beta, "temperature": config.temperature}
    chunked = config.chunked_loss and chunkable_head(teacher) is not None   # the student's is asked per step

    def step(model, micro):
        model.eval()   # dropout off, as in RL (Engine.evaluate leaves the model in train mode)
        prompts, completion = micro["prompt_ids"], micro["completion_ids"]
        mask = micro["mask"].bool()
        student = completion_head_inputs(model, prompts, completion, pad_id, share) if chunked else None
        with torch.no_grad():
            taught = None if student is None else completion_head_inputs(teacher, prompts, completion, pad_id, share)
        if student is not None and taught is not None:
            (hidden_s, weight_s), (hidden_t, weight_t) = student, taught
            total, parts = chunked_divergence(hidden_s[mask], weight_s[:vocab], hidden_t[mask], weight_t[:vocab],
                                              completion[mask], **options)
        else:   # the plain path: full logits, the same values
            logits_s = completion_logits(model, prompts, completion, pad_id, share_prompts=share)[mask][:, :vocab]
            with torch.no_grad():
                logits_t = completion_logits(teacher, prompts, completion, pad_id, share_prompts=share)[mask][:, :vocab]
            total, parts = full_logits_divergence(logits_s, logits_t, completion[mask], **options)
        tokens = parts["divergence"].new_tensor(float(mask.sum()))
        metrics = {   # device tensors, token means (metric_weight): the engine reduces them over processes
            "divergence": parts["divergence"].sum() / tokens,
            "logprob_gap": (parts["teacher_logps"] - parts["student_logps"]).sum() / tokens,
            "logps/student": parts["student_logps"].sum() / tokens,
            "logps/teacher": parts["teacher_logps"].sum() / tokens,
            "metric_weight": float(mask.sum()),
        }
        return total, metrics

    return step


def normalizer(micro: dict) -> float:
    return float(micro["mask"].sum())


def micro_batches(batch: dict, size: int) -> list[dict]:
    return [{"prompt_ids": batch["prompt_ids"][s:s + size], "completion_ids": batch["completion_ids"][s:s + size],
             "mask": batch["mask"][s:s + size]} for s in range(0, len(batch["prompt_ids"]), size)]


# ---------------------------------------------------------------------------------------------
# The run


def run_distill(config: DistillConfig, command: str = "posttrain distill") -> dict:
    from posttrain.models.layout import prompt_sharing
    from posttrain.train.common import (check_prompts_split, launched_processes, load_policy, log, prepare_run,
                                        prompt_steps)
    from posttrain.train.engine import Engine
    from posttrain.train.rl.rollout import HFRollout
    from posttrain.train.rl.trainer import prompt_seed

    check_prompts_split(config.prompts_per_step, launched_processes())
    # --- run folder (rows, λ and the teacher's tokenizer checked first), student, tokenizer, engine
    run_dir = prepare_run(config, command)
    student, tokenizer = load_policy(config)
    engine = Engine(config, student, tokenizer)
    main, rank, pad_id = engine.is_main, engine.rank, tokenizer.pad_token_id
    local_prompts = config.prompts_per_step // engine.world

    # --- data: tokenised prompts (and completions)
    rows = load_distill_rows(config.data, tokenizer, config.max_prompt_length, config.max_new_tokens, config.seed,
                             "data")
    total = prompt_steps(config, len(rows))
    eval_rows = load_distill_rows(config.eval_data, tokenizer, config.max_prompt_length, config.max_new_tokens,
                                  config.seed, "eval_data") if config.eval_data else []
    log(f"[bold]distill[/] {config.divergence}{f' β={config.beta}' if config.divergence == 'jsd' else ''} from "
        f"{config.teacher}, λ={config.lmbda}, τ={config.temperature}: {len(rows)} prompts, {len(eval_rows)} "
        f"held-out, {engine.world} process(es)", main)

    # --- models: optimizer over the student (LoRA applied), then the frozen teacher
    engine.setup(total)
    teacher = load_teacher(config, engine.device)
    vocab = shared_vocab_size(engine.unwrapped(), teacher, tokenizer)
    share = prompt_sharing(config.share_prompts, engine.world)
    # Sampling runs on the bare student (DDP's wrapper has no generate); sharded, in lockstep.
    backend = HFRollout(engine.unwrapped(), tokenizer, share_prompts=share, synced=engine.sharded,
                        batch_size=max(config.batch_size, local_prompts * config.group_size))
    step_fn = distill_step(config, teacher, pad_id, share, vocab)

    def sample(prompt_ids: list[list[int]], n: int, seeds: list[int]) -> dict:
        rollout = backend.generate(prompt_ids, n=n, max_new_tokens=config.max_new_tokens,
                                   temperature=config.temperature, top_p=config.top_p, top_k=config.top_k, seeds=seeds)
        return {"prompt_ids": rollout.prompt_ids, "completion_ids": rollout.completion_ids,
                "mask": rollout.completion_mask, "finished": rollout.finished}

    # --- held-out: the divergence on the student's samples of the held-out prompts, seeded the same
    # at every evaluation; each process takes every world-th prompt (all of them when sharded)
    def heldout(_model) -> dict:
        split = engine.world > 1 and not engine.sharded
        mine = list(range(len(eval_rows)))[rank::engine.world] if split else list(range(len(eval_rows)))
        sums = torch.zeros(4, dtype=torch.float64)   # divergence, log-prob gap, tokens, rows
        bare = engine.unwrapped()
        for s in range(0, len(mine), config.batch_size):
            picked = mine[s:s + config.batch_size]
            batch = sample([eval_rows[i]["prompt_ids"] for i in picked], 1,
                           [prompt_seed(config.seed, -1, i) for i in picked])
            micro = {k: v.to(engine.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            _, metrics = step_fn(bare, micro)
            tokens = metrics["metric_weight"]
            sums += torch.tensor([float(metrics["divergence"]) * tokens, float(metrics["logprob_gap"]) * tokens,
                                  tokens, len(picked)], dtype=torch.float64)
        if split:
            sums = torch.tensor(engine.all_reduce_sum(sums.tolist()), dtype=torch.float64)
        divergence, gap, tokens, n = sums.tolist()
        return {"divergence": divergence / max(tokens, 1), "logprob_gap": gap / max(tokens, 1),
                "response_length": tokens / max(n, 1)}

    # --- one step: sample (or take the dataset's completions), one update on the divergence
    def train_step() -> dict:
        step, start = engine.state.step, time.perf_counter()
        picked = engine.next_units(len(rows), config.prompts_per_step)
        mine = picked[rank * local_prompts:(rank + 1) * local_prompts]
        on_policy = on_policy_step(config.seed, step, config.lmbda)
        if on_policy:
            batch = sample([rows[i]["prompt_ids"] for i in mine], config.group_size,
                           [prompt_seed(config.seed, step, i) for i in mine])
        else:
            batch = dataset_batch([rows[i] for i in mine], pad_id)
        generated = time.perf_counter()
        record = engine.update(micro_batches(batch, config.batch_size), step_fn, normalizer)
        rows_, tokens, truncated = engine.all_reduce_sum([len(batch["prompt_ids"]), float(batch["mask"].sum()),
                                                          float((~batch["finished"]).sum())])
        record.update({"on_policy": float(on_policy), "response_length": tokens / rows_,
                       "truncated_share": truncated / rows_, "tokens": tokens,
                       "generation_seconds": generated - start, "step_seconds": time.perf_counter() - start})
        write_samples(run_dir / "samples.jsonl", engine, tokenizer, batch, config.save_samples, step + 1, on_policy)
        return record

    last = engine.loop(total, train_step, heldout if eval_rows else None, "distill", eval_at_start=True)

    # --- final model and report
    out = engine.save_final()
    if main:
        from posttrain.reports.training import write_training_report

        write_training_report(run_dir, "On-policy distillation", extra={
            "teacher": config.teacher, "divergence": config.divergence + (f" (β={config.beta})" if
                                                                          config.divergence == "jsd" else ""),
            "lmbda": config.lmbda, "temperature": config.temperature, "prompts": len(rows),
            "held-out prompts": len(eval_rows)})
        log(f"[green]done[/]: model in {out}, report in {run_dir / 'report.md'}", main)
    return last


def write_samples(path, engine, tokenizer, batch: dict, count: int, step: int, on_policy: bool):
    """The first ``count`` completions of the step (the main process's share) into ``samples.jsonl``."""
    if count <= 0 or not engine.is_main:
        return
    with path.open("a") as f:
        for ids, m in list(zip(batch["completion_ids"], batch["mask"]))[:count]:
            text = tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
            f.write(json.dumps({"step": step, "on_policy": on_policy, "completion": text}) + "\n")
