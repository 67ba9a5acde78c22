"""The one training engine every trainer uses.

A trainer hands ``Engine.fit`` the number of training *units* (packed rows, pairs, …), a
``collate`` that turns unit indices into a batch, and a ``step_fn(model, batch) -> (numerator,
metrics)``. The engine owns everything else: accelerate (DDP / FSDP / DeepSpeed, gloo on CPU),
AdamW and the schedule, gradient accumulation, clipping, mixed precision, seeded data order,
checkpoints (HF model + optimizer + scheduler + RNG + data position, written atomically, newest K
kept), exact resume, ``metrics.jsonl``, a rich progress bar, tensorboard/W&B, and a NaN guard.

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
    # cpu=True lets accelerate pick MULTI_CPU (gloo) when launched with several processes on CPU.
    return Accelerator(mixed_precision=precision, log_with=log_with, project_dir=options.out,
                       cpu=not torch.cuda.is_available())


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


class Engine:
    def __init__(self, options: TrainingOptions, model: torch.nn.Module, tokenizer=None, accelerator=None):
        self.options = options
        self.run_dir = Path(options.out)
        self.tokenizer = tokenizer
        self.accelerator = accelerator or make_accelerator(options)
        self.model = model
        self.state = TrainState()
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._lengths: list[int] | None = None   # per-unit lengths for group_by_length (set by fit)

    # ------------------------------------------------------------------ data order
    def _epoch_order(self, num_units: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.options.seed * 100_003 + epoch)
        order = torch.randperm(num_units, generator=g).tolist()
        if self.options.group_by_length and self._lengths is not None:
            order = group_by_length(order, self._lengths, self._units_per_step(), g)
        return order

    def _units_per_step(self) -> int:
        return self.options.batch_size * self.options.gradient_accumulation_steps * self.world

    def steps_per_epoch(self, num_units: int) -> int:
        return num_units // self._units_per_step()

    def _step_indices(self, num_units: int) -> list[list[int]]:
        """This process's micro-batches (lists of unit indices) for the next optimizer step.
        A step takes ``batch × accumulation × world`` consecutive units of the epoch order;
        micro-batch ``j`` of process ``p`` is the ``(j·world + p)``-th slice, so the global set
        of units per step does not depend on how it is split."""
        o = self.options
        per_step = self._units_per_step()
        if self.state.position + per_step > num_units:
            self.state.epoch += 1
            self.state.position = 0
        order = self._epoch_order(num_units, self.state.epoch)
        chunk = order[self.state.position:self.state.position + per_step]
        self.state.position += per_step
        slices = [chunk[i * o.batch_size:(i + 1) * o.batch_size] for i in range(len(chunk) // o.batch_size)]
        return [slices[j * self.world + self.rank] for j in range(o.gradient_accumulation_steps)]

    # ------------------------------------------------------------------ one step
    def _all_reduce_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="sum").item())

    def accumulate_gradients(self, micro_batches: list[dict], step_fn: StepFn,
                             normalizer_fn: Callable[[dict], float | None] | None = None) -> tuple[float, dict]:
        """Forward and backward over one optimizer step's micro-batches; gradients are left in
        ``.grad``. Returns (the step's loss, averaged metrics)."""
        acc = self.accelerator
        local = [normalizer_fn(b) for b in micro_batches] if normalizer_fn else [None]
        if local[0] is None:
            scale = float(self.world)
        else:
            total = self._all_reduce_sum(sum(local))
            if total <= 0:
                raise TrainingError("a training step has nothing to train on (normalizer 0): every row was masked")
            scale = self.world / total
        # Loss and metrics stay on the device until the last micro-batch: one host transfer (and one
        # all-reduce) per step instead of one per micro-batch and metric, so the host never waits
        # for the device in the middle of the step.
        loss_sum = torch.zeros((), dtype=torch.float32, device=acc.device)   # fp32: MPS has no float64
        sums: dict[str, torch.Tensor] = {}
        for j, batch in enumerate(micro_batches):
            batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            last = j == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else acc.no_sync(self.model)
            with sync, acc.autocast():
                numerator, step_metrics = step_fn(self.model, batch)
                loss = numerator * scale
                acc.backward(loss)
            loss_sum += loss.detach().float()
            for k, v in step_metrics.items():
                v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
                sums[k] = sums.get(k, 0.0) + v.to(acc.device)
        names = list(sums)
        values = torch.stack([loss_sum / self.world] + [sums[k] / len(micro_batches) for k in names])
        if self.world > 1:
            values = acc.reduce(values, reduction="sum")
            values[1:] /= self.world
        loss_value, *metric_values = values.tolist()
        return loss_value, dict(zip(names, metric_values))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        root = self.checkpoint_dir()
        if not root.exists():
            return None
        done = sorted((p for p in root.glob("step-*") if (p / "trainer_state.pt").exists()),
                      key=lambda p: int(p.name.split("-")[1]))
        return done[-1] if done else None

    def save_checkpoint(self, optimizer, scheduler):
        """Write model (HF format), optimizer, scheduler, RNG and data position into a temp
        folder, then rename it into place: a crash never leaves a half checkpoint."""
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
        model = acc.unwrap_model(self.model)
        if self.is_main:
            save_model(model, self.tokenizer, tmp, merge_lora=False)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "state": vars(self.state), "world": self.world}, tmp / "trainer_state.pt")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            kept = sorted((p for p in root.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
            for old in kept[: max(0, len(kept) - self.options.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path, optimizer, scheduler):
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(self.model)
        if (path / "adapter_model.safetensors").exists():
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        else:
            state = {}
            for shard in sorted(path.glob("*.safetensors")):
                state.update(load_file(shard))
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if "lm_head" not in k]  # tied embeddings are not saved twice
            if missing or unexpected:
                raise TrainingError(f"checkpoint {path} does not match the model (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]}): start a new run folder")
            if hasattr(model, "tie_weights"):
                model.tie_weights()
        blob = torch.load(path / "trainer_state.pt", weights_only=False)
        if blob["world"] != self.world:
            raise TrainingError(f"checkpoint {path} was written by {blob['world']} processes; resume with the same number")
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        self.state = TrainState(**blob["state"])
        rng_file = path / f"rng-{self.rank}.pt"
        if rng_file.exists():
            _set_rng_state(torch.load(rng_file, weights_only=False))

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict):
        if not self.is_main:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.options.report_to != "none":
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def _truncate_metrics(self, step: int):
        """On resume, drop metrics an interrupted run logged after its last checkpoint."""
        if not self.is_main or not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    # ------------------------------------------------------------------ the loop
    def build_optimizer(self, total_steps: int):
        from transformers import get_scheduler

        o = self.options
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = torch.cuda.is_available()
        optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)
        scheduler = get_scheduler(o.lr_schedule, optimizer, num_warmup_steps=math.ceil(o.warmup_ratio * total_steps),
                                  num_training_steps=total_steps)
        return optimizer, scheduler

    def total_steps(self, num_units: int) -> int:
        per_epoch = self.steps_per_epoch(num_units)
        if per_epoch == 0:
            raise TrainingError(f"only {num_units} training rows for a step of {self._units_per_step()} "
                                f"(batch_size × gradient_accumulation_steps × processes): add data or lower the batch")
        if self.options.max_steps > 0:
            return self.options.max_steps
        return max(1, int(per_epoch * self.options.num_epochs))

    def fit(self, num_units: int, collate: Callable[[list[int]], dict], step_fn: StepFn,
            normalizer_fn: Callable[[dict], float | None] | None = None,
            eval_fn: Callable[[torch.nn.Module], dict] | None = None, description: str = "train",
            lengths: list[int] | None = None) -> dict:
        """Train until ``max_steps`` / ``num_epochs``; returns the last logged record. ``lengths``
        (tokens per unit) lets ``group_by_length`` batch units of similar length together."""
        o = self.options
        if lengths is not None and len(lengths) != num_units:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_units} units")
        self._lengths = lengths
        acc = self.accelerator
        seed_everything(o.seed)
        total = self.total_steps(num_units)
        optimizer, scheduler = self.build_optimizer(total)
        self.model, optimizer = acc.prepare(self.model, optimizer)
        if o.report_to != "none" and self.is_main:
            acc.init_trackers(self.run_dir.name, config={k: v for k, v in vars(o).items()
                                                          if isinstance(v, (int, float, str, bool))})
        checkpoint = self.latest_checkpoint() if o.resume else None
        if checkpoint is not None:
            self.load_checkpoint(checkpoint, optimizer, scheduler)
            self._truncate_metrics(self.state.step)
            if self.is_main:
                print(f"resuming from {checkpoint} (step {self.state.step} of {total})")
        elif self.is_main and self.metrics_path.exists():
            self.metrics_path.unlink()

        last_record: dict = {}
        progress = _Progress(total, description, enabled=o.progress and self.is_main)
        progress.advance_to(self.state.step)
        tokens_since, time_since = 0, time.perf_counter()
        started = time.perf_counter()
        self.model.train()
        with progress:
            while self.state.step < total:
                micro = [collate(idx) for idx in self._step_indices(num_units)]
                loss, metrics = self.accumulate_gradients(micro, step_fn, normalizer_fn)
                if not math.isfinite(loss):
                    optimizer.zero_grad(set_to_none=True)
                    good = self.latest_checkpoint()
                    raise TrainingError(
                        f"the loss became {loss} at step {self.state.step + 1}; training stopped before the "
                        f"update. Last good checkpoint: {good or 'none yet'}. Lower learning_rate, check the "
                        f"data, or use a wider dtype.")
                grad_norm = None
                if o.max_grad_norm > 0:
                    grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), o.max_grad_norm))
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                tokens_since += sum(_count_tokens(b) for b in micro) * self.world
                if self.state.step % o.logging_steps == 0 or self.state.step == total:
                    elapsed = time.perf_counter() - time_since
                    record = {"step": self.state.step, "epoch": self.state.epoch, "loss": loss, "lr": lr,
                              "tokens_per_s": tokens_since / max(elapsed, 1e-9),
                              "elapsed_s": time.perf_counter() - started, **metrics}
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm
                    tokens_since, time_since = 0, time.perf_counter()
                    self._log(record)
                    last_record = record
                    progress.update(self.state.step, record)
                else:
                    progress.update(self.state.step, None)
                if eval_fn is not None and o.eval_steps > 0 and self.state.step % o.eval_steps == 0 \
                        and self.state.step != total:
                    self._evaluate(eval_fn)
                if o.save_steps > 0 and self.state.step % o.save_steps == 0 and self.state.step != total:
                    self.save_checkpoint(optimizer, scheduler)
        if eval_fn is not None:
            last_record.update(self._evaluate(eval_fn))
        self.save_checkpoint(optimizer, scheduler)
        if o.report_to != "none":
            acc.end_training()
        return last_record

    def _evaluate(self, eval_fn) -> dict:
        self.model.eval()
        with torch.no_grad():
            result = {f"eval_{k}": v for k, v in eval_fn(self.model).items()}
        self.model.train()
        self._log({"step": self.state.step, **result})
        if self.is_main and self.options.progress:
            print("  eval @ step %d: %s" % (self.state.step, ", ".join(f"{k}={v:.4f}" for k, v in result.items())))
        return result

    def save_final(self, out: Path | None = None) -> Path:
        """The final model in HF format under ``<run>/model`` (LoRA merged)."""
        from posttrain.models import save_model

        out = out or self.run_dir / "model"
        self.accelerator.wait_for_everyone()
        if self.is_main:
            tmp = out.with_name(".tmp-" + out.name)
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(self.accelerator.unwrap_model(self.model), self.tokenizer, tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.rename(tmp, out)
        self.accelerator.wait_for_everyone()
        return out


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
