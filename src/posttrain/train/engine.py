"""The one training engine every trainer uses.

A trainer hands ``Engine.fit`` the number of training *units* (packed rows, pairs, …), a
``collate`` that turns unit indices into a batch, and a ``step_fn(model, batch) -> (numerator,
metrics)``. The engine owns everything else: accelerate (DDP / FSDP / DeepSpeed, gloo on CPU),
AdamW (or SAM / TRAM around it: ``optimizer=``, ``train/sam.py``) and the schedule, gradient
accumulation, clipping, mixed precision, seeded data order,
checkpoints (HF model + optimizer + scheduler + RNG + data position, written atomically, newest K
kept), exact resume, ``metrics.jsonl``, a rich progress bar, tensorboard/W&B, and a NaN guard.
A loss that needs a quantity of the whole step before any micro-batch's backward (KTO's KL
reference point) computes it in ``prepare_step``, which sees all of a process's micro-batches.

Trainers whose step is more than one optimizer update (RL: rollout → score → advantages → several
updates) use the same pieces directly: ``setup`` (optimizers, ``accelerate.prepare``), ``update``
(one optimizer update from a list of micro-batches: accumulate, NaN guard, clip, step) and
``loop`` (the step cadence: progress, logging, evaluation, checkpoints, resume, with the
trainer's own extra state saved inside each checkpoint). ``fit`` is ``loop`` over ``update``.

Loss scaling: the loss of one optimizer step is Σ numerators / N, where N is the global
normalizer that ``normalizer_fn`` counts over every micro-batch of the step on every process
(trained tokens, sequences, pairs; or no division). Each micro-batch's backward uses
``numerator * world_size / N`` (DDP averages gradients over processes), so the gradient is the
same for batch 8 × accumulation 1, batch 4 × accumulation 2, and 2 processes × batch 4.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from posttrain.config import TrainingOptions

StepFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


SHARDED_STATE = "sharded_state"   # accelerate's save_state folder inside a checkpoint (FSDP, DeepSpeed)


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on (the message says what to do)."""


@dataclass
class TrainState:
    step: int = 0          # optimizer steps taken
    epoch: int = 0         # current pass over the data
    position: int = 0      # units of this epoch already consumed (on all processes together)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_accelerator(options: TrainingOptions):
    from accelerate import Accelerator

    precision = options.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    log_with = None if options.report_to == "none" else options.report_to
    refuse_sharding_without_gpu()
    # cpu=True lets accelerate pick MULTI_CPU (gloo) when launched with several processes on CPU.
    return Accelerator(mixed_precision=precision, log_with=log_with, project_dir=options.out,
                       cpu=not torch.cuda.is_available())


def refuse_sharding_without_gpu():
    """FSDP and DeepSpeed (from ``accelerate launch --config_file fsdp2.yaml|zero*.yaml``) need
    CUDA here: on CPU accelerate would quietly fall back to plain DDP (``cpu=True``), so a run
    that asked for sharding would train unsharded. Refuse instead, naming the config."""
    if torch.cuda.is_available():
        return
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "false").lower() in ("1", "true", "yes"):
            config = os.environ.get("ACCELERATE_CONFIG_FILE") or "the accelerate config"
            raise TrainingError(
                f"{name} was requested ({variable}=true, from {config}) but no CUDA GPU is available: "
                f"sharded training needs GPUs (NCCL). On CPU, launch with the DDP config "
                f"(accelerate_configs/ddp.yaml) or `accelerate launch --multi_gpu --num_processes N` (gloo).")


def group_by_length(order: list[int], lengths: list[int], per_step: int, generator: torch.Generator,
                    steps_per_group: int = 50) -> list[int]:
    """Reorder one epoch so that each optimizer step's units have similar lengths.

    The random ``order`` is cut into groups of ``steps_per_group`` steps; each group is sorted by
    length (longest first) and cut into steps; then the steps of the whole epoch are shuffled.
    Every unit still appears once per epoch and step order stays random; only which units share a
    step changes (the idea of Hugging Face's LengthGroupedSampler, at optimizer-step granularity so
    gradient accumulation and several processes see the same grouping). Padding per step falls
    from the longest row of a random draw to that of its length neighbours."""
    # The epoch's last partial step is dropped by the engine: take it from the random order, so
    # which units miss this epoch stays random rather than "the shortest of the last group".
    whole = len(order) - len(order) % per_step
    order, tail = order[:whole], order[whole:]
    group = per_step * steps_per_group
    sorted_order: list[int] = []
    for start in range(0, len(order), group):
        sorted_order += sorted(order[start:start + group], key=lambda i: -lengths[i])
    steps = [sorted_order[i:i + per_step] for i in range(0, len(sorted_order), per_step)]
    shuffled = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
    return [unit for step in shuffled for unit in step] + tail


@dataclass
class Trainable:
    """A model the engine optimises: the policy, and for PPO its value model (own learning rate)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    name: str = "model"


class Engine:
    def __init__(self, options: TrainingOptions, model: torch.nn.Module, tokenizer=None, accelerator=None):
        self.options = options
        self.run_dir = Path(options.out)
        self.tokenizer = tokenizer
        self.accelerator = accelerator or make_accelerator(options)
        self.model = model
        self.trainables: list[Trainable] = []   # set by setup: [policy, *extra models]
        self.sharpness = None                    # optimizer=sam|tram: train/sam.py's second pass (set by setup)
        self.state = TrainState()
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._lengths: list[int] | None = None   # per-unit lengths for group_by_length (set by fit)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def sharded(self) -> bool:
        """Whether each process holds only a shard of the weights (FSDP, DeepSpeed)."""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def unwrapped(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """The bare model (no DDP / FSDP / DeepSpeed wrapper): for generate, saving, copies."""
        return self.accelerator.unwrap_model(self.model if model is None else model)

    # ------------------------------------------------------------------ data order
    def epoch_order(self, num_units: int, epoch: int) -> list[int]:
        """The seeded order of epoch ``epoch`` (the same on every process)."""
        g = torch.Generator().manual_seed(self.options.seed * 100_003 + epoch)
        order = torch.randperm(num_units, generator=g).tolist()
        if self.options.group_by_length and self._lengths is not None:
            order = group_by_length(order, self._lengths, self._units_per_step(), g)
        return order

    def _units_per_step(self) -> int:
        return self.options.batch_size * self.options.gradient_accumulation_steps * self.world

    def steps_per_epoch(self, num_units: int) -> int:
        return num_units // self._units_per_step()

    def next_units(self, num_units: int, count: int) -> list[int]:
        """The next ``count`` unit indices of the seeded epoch order, for all processes together
        (a new epoch starts when fewer than ``count`` remain); the position is checkpointed, so a
        resumed run continues with the units it would have seen."""
        if self.state.position + count > num_units:
            self.state.epoch += 1
            self.state.position = 0
        chunk = self.epoch_order(num_units, self.state.epoch)[self.state.position:self.state.position + count]
        self.state.position += count
        return chunk

    def _step_indices(self, num_units: int) -> list[list[int]]:
        """This process's micro-batches (lists of unit indices) for the next optimizer step.
        A step takes ``batch × accumulation × world`` consecutive units of the epoch order;
        micro-batch ``j`` of process ``p`` is the ``(j·world + p)``-th slice, so the global set
        of units per step does not depend on how it is split."""
        o = self.options
        chunk = self.next_units(num_units, self._units_per_step())
        slices = [chunk[i * o.batch_size:(i + 1) * o.batch_size] for i in range(len(chunk) // o.batch_size)]
        return [slices[j * self.world + self.rank] for j in range(o.gradient_accumulation_steps)]

    # ------------------------------------------------------------------ collectives
    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over processes (one collective for the whole list)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def all_reduce_max(self, value: float) -> float:
        """The largest ``value`` over processes."""
        if self.world == 1:
            return value
        return float(self.all_gather(torch.tensor([value], dtype=torch.float64)).max())

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` (same shape on each) concatenated in rank order along dim 0."""
        if self.world == 1:
            return tensor
        return self.accelerator.gather(tensor.to(self.device)).cpu()

    # ------------------------------------------------------------------ one step
    def accumulate_gradients(self, micro_batches: list[dict], step_fn: StepFn,
                             normalizer_fn: Callable[[dict], float | None] | None = None) -> tuple[float, dict]:
        """Forward and backward over one optimizer step's micro-batches; gradients are left in
        ``.grad``. Returns (the step's loss, averaged metrics). Every process must pass the same
        number of micro-batches (DDP and FSDP synchronise per backward / forward)."""
        acc = self.accelerator
        local = [normalizer_fn(b) for b in micro_batches] if normalizer_fn else [None]
        if local[0] is None:
            scale = float(self.world)
        else:
            total = self.all_reduce_sum([sum(local)])[0]
            if total <= 0:
                raise TrainingError("a training step has nothing to train on (normalizer 0): every row was masked")
            scale = self.world / total
        # Loss and metrics stay on the device until the last micro-batch: one host transfer (and one
        # all-reduce) per step instead of one per micro-batch and metric, so the host never waits
        # for the device in the middle of the step.
        loss_sum = torch.zeros((), dtype=torch.float32, device=acc.device)   # fp32: MPS has no float64
        sums: dict[str, torch.Tensor] = {}
        weight_sum = 0.0
        models = [t.model for t in self.trainables] or [self.model]
        for j, batch in enumerate(micro_batches):
            batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            last = j == len(micro_batches) - 1
            with contextlib.ExitStack() as stack:
                if not last and self.world > 1:   # gradients are all-reduced once, in the last backward
                    for model in models:
                        stack.enter_context(acc.no_sync(model))
                stack.enter_context(acc.autocast())
                numerator, step_metrics = step_fn(self.model, batch)
                loss = numerator * scale
                acc.backward(loss)
            loss_sum += loss.detach().float()
            # A step_fn may weight its metrics (``metric_weight``: e.g. the micro-batch's tokens, so
            # token means stay token means however the rows are split; 0 for padding micro-batches).
            weight = float(step_metrics.pop("metric_weight", 1.0))
            weight_sum += weight
            for k, v in step_metrics.items():
                v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
                sums[k] = sums.get(k, 0.0) + v.to(acc.device) * weight
        names = list(sums)
        values = torch.stack([loss_sum / self.world, torch.tensor(weight_sum, device=acc.device)]
                             + [sums[k] for k in names])
        if self.world > 1:
            values = acc.reduce(values, reduction="sum")
        loss_value, total_weight, *metric_sums = values.tolist()
        return loss_value, {k: v / max(total_weight, 1e-12) for k, v in zip(names, metric_sums)}

    def update(self, micro_batches: list[dict], step_fn: StepFn,
               normalizer_fn: Callable[[dict], float | None] | None = None) -> dict:
        """One optimizer update of every trainable from ``micro_batches``: accumulate gradients,
        stop before the update on a non-finite loss, clip each model's gradient norm, step the
        optimizers and schedules. Returns ``loss``, ``lr`` (before the step), ``grad_norm`` (the
        first model's; ``grad_norm/<name>`` for the others) and the step's metrics."""
        acc, o = self.accelerator, self.options
        loss, metrics = self.accumulate_gradients(micro_batches, step_fn, normalizer_fn)
        if not math.isfinite(loss):
            for t in self.trainables:
                t.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"the loss became {loss} at step {self.state.step + 1}; training stopped before the update. "
                f"Last good checkpoint: {self.latest_checkpoint() or 'none yet'}. Lower learning_rate, check "
                f"the data or the reward, or use a wider dtype.")
        record = {"loss": loss, "lr": self.trainables[0].scheduler.get_last_lr()[0], **metrics}
        if self.sharpness is not None:   # SAM / TRAM: .grad becomes ∇L at θ + ε̂ (train/sam.py)
            record.update(self.sharpness.perturbed_gradients(self, micro_batches, step_fn, normalizer_fn))
        for i, t in enumerate(self.trainables):
            if o.max_grad_norm > 0:
                norm = float(acc.clip_grad_norm_(t.model.parameters(), o.max_grad_norm))
                record["grad_norm" if i == 0 else f"grad_norm/{t.name}"] = norm
            t.optimizer.step()
            t.scheduler.step()
            t.optimizer.zero_grad(set_to_none=True)
        return record

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        from posttrain.train.run_folder import newest_sound_checkpoint

        return newest_sound_checkpoint(self.checkpoint_dir(), warn=self.is_main)  # skips a truncated one

    def save_checkpoint(self, extra_state=None) -> Path:
        """Write model (HF format), every trainable's optimizer and schedule, the extra state of
        the trainer, RNG and data position into a temp folder, then rename it into place: a crash
        never leaves a half checkpoint. Every process calls it (sharded weights are gathered)."""
        from posttrain.models import save_model

        acc = self.accelerator
        acc.wait_for_everyone()
        root = self.checkpoint_dir()
        final = root / f"step-{self.state.step:06d}"
        tmp = root / f".tmp-step-{self.state.step:06d}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng-{self.rank}.pt")
        if self.sharded:  # each process's optimizer shard, as accelerate saves and reloads them
            acc.save_state(str(tmp / SHARDED_STATE))
        weights = self.full_state_dict()
        extras = [(t.name, self.full_state_dict(t.model) or self.unwrapped(t.model).state_dict())
                  for t in self.trainables[1:]]
        if self.is_main:
            save_model(self.unwrapped(), self.tokenizer, tmp, merge_lora=False, state_dict=weights)
            torch.save({"optimizers": [None if self.sharded else t.optimizer.state_dict() for t in self.trainables],
                        "schedulers": [t.scheduler.state_dict() for t in self.trainables],
                        "models": dict(extras), "extra": extra_state.state_dict() if extra_state else None,
                        "state": vars(self.state), "world": self.world,
                        "sharpness": self.sharpness.state_dict() if self.sharpness else None}, tmp / "trainer_state.pt")
            from posttrain.train.run_folder import write_manifest

            write_manifest(tmp)  # file sizes, checked on resume (a truncated checkpoint is skipped)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            kept = sorted((p for p in root.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
            for old in kept[: max(0, len(kept) - self.options.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def full_state_dict(self, model: torch.nn.Module | None = None) -> dict | None:
        """Under FSDP / DeepSpeed, the whole state dict gathered from the shards as accelerate
        documents (``Accelerator.get_state_dict``; every process must call it); ``None`` when
        the bare model already holds every weight (one process, DDP)."""
        if not self.sharded:
            return None
        return self.accelerator.get_state_dict(self.model if model is None else model)

    def load_checkpoint(self, path: Path, extra_state=None):
        from safetensors.torch import load_file

        model = self.unwrapped()
        if (path / "adapter_model.safetensors").exists():
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        elif (path / "attempt_model.safetensors").exists():   # ATTEMPT (models/adapters.py): the mixture only
            model.mixture.load_state_dict(load_file(path / "attempt_model.safetensors"))
        else:
            state = {}
            for shard in sorted(path.glob("*.safetensors")):
                state.update(load_file(shard))
            missing, unexpected = model.load_state_dict(state, strict=False)
            # tied weights are saved once (the LM head; an encoder-decoder's encoder and decoder embeddings)
            tied = getattr(model, "all_tied_weights_keys", None) or {}
            missing = [k for k in missing if "lm_head" not in k and k not in tied]
            if missing or unexpected:
                raise TrainingError(f"checkpoint {path} does not match the model (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]}): start a new run folder")
            if hasattr(model, "tie_weights"):
                model.tie_weights()
        blob = torch.load(path / "trainer_state.pt", weights_only=False)
        if "optimizers" not in blob:
            raise TrainingError(f"checkpoint {path} was written by an earlier posttrain release (one optimizer "
                                f"state, no extra models); start a new run folder")
        if blob["world"] != self.world:
            raise TrainingError(f"checkpoint {path} was written by {blob['world']} processes; resume with the same number")
        if len(blob["optimizers"]) != len(self.trainables):
            raise TrainingError(f"checkpoint {path} holds {len(blob['optimizers'])} optimizers for "
                                f"{len(self.trainables)} models: start a new run folder")
        if self.sharded:
            self.accelerator.load_state(str(path / SHARDED_STATE))
        for t, opt_state, sched_state in zip(self.trainables, blob["optimizers"], blob["schedulers"]):
            if opt_state is not None:
                t.optimizer.load_state_dict(opt_state)
            t.scheduler.load_state_dict(sched_state)
            if t.name in blob["models"]:
                self.unwrapped(t.model).load_state_dict(blob["models"][t.name])
        if self.sharpness is not None:
            self.sharpness.load_state_dict(blob.get("sharpness"))
        if extra_state is not None:
            extra_state.load_state_dict(blob["extra"])
        self.state = TrainState(**blob["state"])
        rng_file = path / f"rng-{self.rank}.pt"
        if rng_file.exists():
            _set_rng_state(torch.load(rng_file, weights_only=False))

    # ------------------------------------------------------------------ logging
    def log(self, record: dict):
        """Append ``record`` (with its ``step``) to ``metrics.jsonl`` and the trackers (main process)."""
        if not self.is_main:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.options.report_to != "none":
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    # ------------------------------------------------------------------ the loop
    def build_optimizer(self, model: torch.nn.Module, total_steps: int, learning_rate: float | None = None):
        from transformers import get_scheduler

        o = self.options
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = torch.cuda.is_available()
        optimizer = torch.optim.AdamW(groups, lr=learning_rate or o.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                      fused=fused or None)
        scheduler = get_scheduler(o.lr_schedule, optimizer, num_warmup_steps=math.ceil(o.warmup_ratio * total_steps),
                                  num_training_steps=total_steps)
        return optimizer, scheduler

    def setup(self, total_updates: int, extra_models: dict[str, tuple[torch.nn.Module, float | None]] | None = None):
        """Optimizers and schedules over ``total_updates`` optimizer updates for the model and
        each ``extra_models[name] = (model, learning_rate or None)``, all through
        ``accelerate.prepare`` (so every model's gradients are averaged over processes). Returns
        the prepared extra models by name."""
        acc = self.accelerator
        models = {"model": (self.model, None), **(extra_models or {})}
        _prepare_deepspeed_batch(acc, self.options.batch_size)
        prepared = {}
        for name, (model, lr) in models.items():
            optimizer, scheduler = self.build_optimizer(model, total_updates, lr)
            model, optimizer = acc.prepare(model, optimizer)
            self.trainables.append(Trainable(model, optimizer, scheduler, name))
            prepared[name] = model
        self.model = self.trainables[0].model
        if getattr(self.options, "optimizer", "adamw") != "adamw":
            from posttrain.train.sam import SharpnessAware

            if self.sharded:
                raise TrainingError(f"optimizer={self.options.optimizer} perturbs whole parameters between two "
                                    f"passes; with FSDP / DeepSpeed each process holds only a shard: use DDP")
            self.sharpness = SharpnessAware(self.options)
            self.sharpness.start(self)
        return {k: v for k, v in prepared.items() if k != "model"}

    def total_steps(self, num_units: int) -> int:
        per_epoch = self.steps_per_epoch(num_units)
        if per_epoch == 0:
            raise TrainingError(f"only {num_units} training rows for a step of {self._units_per_step()} "
                                f"(batch_size × gradient_accumulation_steps × processes): add data or lower the batch")
        if self.options.max_steps > 0:
            return self.options.max_steps
        return max(1, int(per_epoch * self.options.num_epochs))

    def loop(self, total: int, train_step: Callable[[], dict], eval_fn: Callable[[torch.nn.Module], dict] | None = None,
             description: str = "train", extra_state=None, eval_at_start: bool = False) -> dict:
        """Run ``train_step()`` until ``total`` steps, after ``setup``. Each call trains one step
        and returns its record; the engine counts the step, logs every ``logging_steps`` (adding
        step, epoch, elapsed time and, from a ``tokens`` entry, tokens/s over the logging
        interval), evaluates every ``eval_steps``, checkpoints every ``save_steps`` and at the
        end, and resumes from the newest checkpoint. ``extra_state`` (``state_dict`` /
        ``load_state_dict``) is what the trainer needs beyond models, optimizers, RNG and data
        position; it is saved inside each checkpoint. Returns the last logged record."""
        o, acc = self.options, self.accelerator
        if o.report_to != "none" and self.is_main:
            acc.init_trackers(self.run_dir.name, config={k: v for k, v in vars(o).items()
                                                          if isinstance(v, (int, float, str, bool))})
        checkpoint = self.latest_checkpoint() if o.resume else None
        if checkpoint is not None:
            from posttrain.train.run_folder import rewind_step_logs

            self.load_checkpoint(checkpoint, extra_state)
            if self.is_main:  # what the interrupted run logged after its checkpoint, and torn lines
                rewind_step_logs(self.run_dir, self.state.step)
                print(f"resuming from {checkpoint} (step {self.state.step} of {total})")
        elif self.is_main:
            from posttrain.train.run_folder import STEP_LOGS

            for name in STEP_LOGS:
                (self.run_dir / name).unlink(missing_ok=True)
        acc.wait_for_everyone()

        if eval_fn is not None and eval_at_start and self.state.step == 0:
            self.evaluate(eval_fn)  # the starting model, logged at step 0
        last_record: dict = {}
        progress = _Progress(total, description, enabled=o.progress and self.is_main)
        progress.advance_to(self.state.step)
        tokens_since, time_since = 0, time.perf_counter()
        started = time.perf_counter()
        with progress:
            while self.state.step < total:
                record = train_step()
                self.state.step += 1
                tokens_since += record.pop("tokens", 0)
                if self.state.step % o.logging_steps == 0 or self.state.step == total:
                    elapsed = time.perf_counter() - time_since
                    record = {"step": self.state.step, "epoch": self.state.epoch, **record,
                              "elapsed_s": time.perf_counter() - started}
                    if "tokens_per_s" not in record:
                        record["tokens_per_s"] = tokens_since / max(elapsed, 1e-9)
                    tokens_since, time_since = 0, time.perf_counter()
                    self.log(record)
                    last_record = record
                    progress.update(self.state.step, record)
                else:
                    progress.update(self.state.step, None)
                if eval_fn is not None and o.eval_steps > 0 and self.state.step % o.eval_steps == 0 \
                        and self.state.step != total:
                    self.evaluate(eval_fn)
                if o.save_steps > 0 and self.state.step % o.save_steps == 0 and self.state.step != total:
                    self.save_checkpoint(extra_state)
        if eval_fn is not None:
            last_record.update(self.evaluate(eval_fn))
        self.save_checkpoint(extra_state)
        if o.report_to != "none":
            acc.end_training()
        return last_record

    def fit(self, num_units: int, collate: Callable[[list[int]], dict], step_fn: StepFn,
            normalizer_fn: Callable[[dict], float | None] | None = None,
            eval_fn: Callable[[torch.nn.Module], dict] | None = None, description: str = "train",
            lengths: list[int] | None = None,
            prepare_step: Callable[[torch.nn.Module, list[dict]], list[dict]] | None = None) -> dict:
        """Train until ``max_steps`` / ``num_epochs``, one optimizer update per step; returns the
        last logged record. ``lengths`` (tokens per unit) lets ``group_by_length`` batch units of
        similar length together. ``prepare_step(model, micro_batches) -> micro_batches`` runs on
        this process's micro-batches of each step before any gradient is taken, on every process
        (so it may gather across them): what a step's loss needs from the whole step, e.g. KTO's
        KL reference point, estimated over the step's global batch so that it, like the loss, does
        not depend on how the step is split into micro-batches and processes."""
        if lengths is not None and len(lengths) != num_units:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_units} units")
        self._lengths = lengths
        seed_everything(self.options.seed)
        total = self.total_steps(num_units)
        self.setup(total)

        def train_step() -> dict:
            micro = [collate(idx) for idx in self._step_indices(num_units)]
            if prepare_step is not None:
                micro = prepare_step(self.model, micro)
            record = self.update(micro, step_fn, normalizer_fn)
            record["tokens"] = sum(_count_tokens(b) for b in micro) * self.world
            return record

        self.model.train()
        return self.loop(total, train_step, eval_fn, description)

    def evaluate(self, eval_fn) -> dict:
        """``eval_fn(model)`` in eval mode without gradients, logged as ``eval_*`` at this step."""
        self.model.eval()
        with torch.no_grad():
            result = {f"eval_{k}": v for k, v in eval_fn(self.model).items()}
        self.model.train()
        self.log({"step": self.state.step, **result})
        if self.is_main and self.options.progress:
            print("  eval @ step %d: %s" % (self.state.step, ", ".join(f"{k}={v:.4f}" for k, v in result.items())))
        return result

    def save_final(self, out: Path | None = None) -> Path:
        """The final model in HF format under ``<run>/model`` (LoRA merged). Every process calls it."""
        from posttrain.models import save_model

        out = out or self.run_dir / "model"
        weights = self.full_state_dict()
        if self.is_main:
            tmp = out.with_name(".tmp-" + out.name)
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(self.unwrapped(), self.tokenizer, tmp, state_dict=weights)
            shutil.rmtree(out, ignore_errors=True)
            os.rename(tmp, out)
        self.accelerator.wait_for_everyone()
        return out


def _prepare_deepspeed_batch(accelerator, batch_size: int):
    """DeepSpeed's ``auto`` micro-batch size is read from a prepared dataloader, and our data
    never goes through one: give it the micro-batch size we use (per process)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


def _count_tokens(batch: dict) -> int:
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel()) if "input_ids" in batch else 0


class _Progress:
    """A rich progress bar with loss, lr, tokens/s and ETA (silent when disabled)."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), refresh_per_second=4)
        self.task = self.bar.add_task(description, total=total, info="")

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def advance_to(self, step: int):
        if self.enabled:
            self.bar.update(self.task, completed=step)

    def update(self, step: int, record: dict | None):
        if not self.enabled:
            return
        if record is None:
            self.bar.update(self.task, completed=step)
            return
        info = f"loss {record['loss']:.4f} lr {record['lr']:.2e} {record['tokens_per_s']:.0f} tok/s"
        self.bar.update(self.task, completed=step, info=info)
        if not self.bar.console.is_terminal:  # keep a readable log when piped (CI, make demo | tee)
            self.bar.console.print(f"step {step}: {info}")
