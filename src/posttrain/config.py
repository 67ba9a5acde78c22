"""Typed configs: one flat dataclass per command, filled from YAML files and ``key=value``
overrides, validated with messages a user can act on.

Every field's help text lives in ``field(metadata={"help": ...})`` so ``posttrain <cmd> --help``
documents every option from the one place it is defined.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "opt", "load_config", "config_help", "to_dict", "save_config"]


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says how."""


def opt(default: Any = dataclasses.MISSING, help: str = "", group: str = "General", **kw):
    """A dataclass field with help text and a help group (Model, Data, Optimization, …)."""
    metadata = {"help": help, "group": group}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, tp: Any, source: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {name}={value!r} is not a valid {tp}")
    if tp is Any:
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = yaml.safe_load(text)
            else:
                value = [v for v in text.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {name} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(name, v, inner, source) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {name} must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
        try:
            number = float(value) if tp is float else value
            if tp is int:
                if isinstance(value, str):
                    number = float(value)
                if float(number) != int(float(number)):
                    raise ValueError
                number = int(float(number))
            return number
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {name} must be {tp.__name__}, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
        return str(value)
    return value


def load_config(cls, files: list[str | Path] = (), overrides: list[str] = (), base: dict | None = None):
    """Build ``cls`` from defaults ← ``base`` ← YAML ``files`` ← ``key=value`` ``overrides``.

    Unknown keys are errors that list the known ones; every value is coerced to its annotated type.
    """
    ftypes = _field_types(cls)
    values: dict[str, Any] = {}

    def merge(mapping: dict, source: str):
        for key, value in mapping.items():
            key = key.replace("-", "_")
            if key not in ftypes:
                raise ConfigError(
                    f"{source}: unknown option {key!r} for {cls.__name__}. "
                    f"Known options: {', '.join(sorted(ftypes))}"
                )
            values[key] = _coerce(key, value, ftypes[key], source)

    if base:
        merge(base, "recipe")
    for path in files:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
        merge(data, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        merge({key.strip(): value}, "command line")
    try:
        config = cls(**values)
    except TypeError as e:
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in values]
        raise ConfigError(f"{cls.__name__}: missing required option(s): {', '.join(missing) or e}") from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def save_config(config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def config_help(cls) -> str:
    """Option documentation grouped by purpose, for ``--help``."""
    groups: dict[str, list[str]] = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        help_text = f.metadata.get("help", "")
        line = f"  {f.name} = {json.dumps(default) if not isinstance(default, str) else default}\n      {help_text}"
        groups.setdefault(f.metadata.get("group", "General"), []).append(line)
    out = ["Options (set in a YAML file given with --config, or as key=value):"]
    for group, lines in groups.items():
        out.append(f"\n{group}:")
        out.extend(lines)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Command configs. Shared groups come first; each command adds its own fields.
# ---------------------------------------------------------------------------------------------

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")


@dataclasses.dataclass
class TrainingOptions:
    """Options every trainer shares: run folder, optimisation, batching, checkpoints, logging."""

    # Run
    out: str = opt("runs/run", "run folder: config, metrics.jsonl, checkpoints, final model, report", "Run")
    seed: int = opt(0, "seed for data order, initialisation and sampling", "Run")
    resume: bool = opt(True, "continue from the newest checkpoint in the run folder if there is one (the "
                       "config must match the folder's config.yaml, except max_steps and logging options)", "Run")
    overwrite: bool = opt(False, "start over in a used run folder: delete its checkpoints, metrics and samples "
                          "first (needed to rerun a folder with a changed config)", "Run")
    # Model
    model: str = opt("smollm2-135m-instruct", "hub id, local folder, .gguf file, or smollm2-135m-instruct", "Model")
    dtype: str = opt("float32", "weights dtype: float32, bfloat16, float16, auto", "Model")
    template: str = opt("tokenizer", "chat template: tokenizer (its own), tulu, chatml", "Model")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory", "Model")
    attn_implementation: str = opt("auto", "attention kernels: auto (flash_attention_2 when flash-attn is "
                                   "installed and a CUDA GPU is present: variable-length kernels for packed "
                                   "rows; else sdpa), sdpa, eager, flash_attention_2, flash_attention_3", "Model")
    lora_rank: int = opt(0, "LoRA rank; 0 trains all weights", "Model")
    lora_alpha: int = opt(32, "LoRA alpha", "Model")
    lora_dropout: float = opt(0.05, "LoRA dropout", "Model")
    lora_target_modules: list[str] = opt(["all-linear"], "LoRA target modules (peft names)", "Model")
    # Optimization
    learning_rate: float = opt(2e-5, "peak learning rate (AdamW)", "Optimization")
    weight_decay: float = opt(0.0, "AdamW weight decay", "Optimization")
    lr_schedule: str = opt("linear", f"one of {', '.join(SCHEDULES)}", "Optimization")
    warmup_ratio: float = opt(0.03, "share of steps spent warming the learning rate up from 0", "Optimization")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0 = no clipping)", "Optimization")
    num_epochs: float = opt(1.0, "passes over the data (ignored when max_steps > 0)", "Optimization")
    max_steps: int = opt(0, "optimizer steps to take; 0 = from num_epochs", "Optimization")
    mixed_precision: str = opt("auto", "auto (bf16 on GPUs that have it, else off), bf16, fp16, no", "Optimization")
    # Batch
    batch_size: int = opt(4, "rows per micro-batch per process", "Batch")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step", "Batch")
    group_by_length: bool = opt(False, "put rows of similar length in the same step (less padding, same "
                                "data per epoch; steps still come in random order). Trainers that pad: "
                                "dpo, reward", "Batch")
    # Checkpoints and logging
    save_steps: int = opt(0, "checkpoint every N steps (0 = only at the end)", "Logging")
    keep_checkpoints: int = opt(2, "keep the newest K checkpoints", "Logging")
    logging_steps: int = opt(1, "write metrics every N steps", "Logging")
    eval_steps: int = opt(0, "evaluate on the held-out set every N steps (0 = only at the end)", "Logging")
    report_to: str = opt("none", "none, tensorboard or wandb (when installed)", "Logging")
    progress: bool = opt(True, "show a progress bar", "Logging")

    def validate(self):
        import math

        if not str(self.out).strip():
            raise ConfigError("out: give a run folder, e.g. out=runs/my-run")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate}: must be a number > 0 (e.g. 2e-5)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("weight_decay and max_grad_norm must be >= 0 (max_grad_norm=0 turns clipping off)")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps={self.max_steps}: must be >= 0 (0 = from num_epochs)")
        if self.max_steps == 0 and not self.num_epochs > 0:
            raise ConfigError(f"num_epochs={self.num_epochs}: must be > 0 (or set max_steps > 0)")
        for name in ("save_steps", "eval_steps", "lora_rank"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 0 (0 turns it off)")
        if self.logging_steps < 1 or self.keep_checkpoints < 1:
            raise ConfigError("logging_steps and keep_checkpoints must be >= 1")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"lr_schedule={self.lr_schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("batch_size and gradient_accumulation_steps must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio}: must lie in [0, 1)")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ConfigError(f"report_to={self.report_to!r}: choose none, tensorboard or wandb")
        if self.attn_implementation not in ATTENTION_CHOICES:
            raise ConfigError(f"attn_implementation={self.attn_implementation!r}: choose one of "
                              f"{', '.join(ATTENTION_CHOICES)}")
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}: choose auto, bf16, fp16 or no")


SFT_REDUCTIONS = ("sum", "token_mean", "sequence_mean")


@dataclasses.dataclass
class SFTConfig(TrainingOptions):
    """``posttrain sft``: supervised finetuning on ``messages`` rows, assistant tokens only."""

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
        if not self.data:
            raise ConfigError("data: give at least one training source")
        if self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length}: must be >= 2 tokens")
