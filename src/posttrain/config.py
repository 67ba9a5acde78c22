"""The options machinery every command shares: typed option dataclasses filled from YAML files
and the command line, validated with messages a user can act on.

Each training command's dataclass lives beside its runner (``train/sft.py``: ``SFTConfig`` and
``run_sft``, …); this module holds what they share: ``opt`` (a field with help text and a help
group), ``load_config`` (defaults ← YAML files ← ``key=value`` overrides), ``config_help`` (the
``--help`` text), ``parse_command_line`` (``key=value``, ``--key value``, ``--key=value``,
``--flag`` / ``--no-flag`` for booleans, ``--config FILE``), ``argparse_argv`` (the same
``key=value`` spelling for the argparse tool commands), and the shared bases ``RunOptions`` (run
folder, seed, training sources; every trainer) and ``TrainingOptions`` (what the engine's trainers
add). Checks every trainer needs are written once, in those bases' ``validate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "CommandLine", "RunOptions", "TrainingOptions", "argparse_argv", "config_help",
           "load_config", "opt", "parse_command_line", "save_config", "to_dict"]


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


def unknown_option(key: str, known, owner: str) -> ConfigError:
    """The error for an option ``owner`` does not have, naming the closest one it does."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"unknown option {key!r} for {owner}{hint} (--help lists every option)")


def read_option_files(files: list[str | Path]) -> list[tuple[str, dict]]:
    """``(file name, {option: value})`` for each YAML file, in order."""
    mappings = []
    for path in map(Path, files):
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
        mappings.append((str(path), data))
    return mappings


def load_config(cls, files: list[str | Path] = (), overrides: list[str] = (), base: dict | None = None):
    """Build ``cls`` from defaults ← ``base`` ← YAML ``files`` ← ``key=value`` ``overrides``.

    Unknown keys are errors naming the closest known one; every value is coerced to its annotated
    type; then ``validate()`` runs (the shared bases' checks first).
    """
    ftypes = _field_types(cls)
    values: dict[str, Any] = {}
    sources = [("recipe", base)] if base else []
    sources += read_option_files(files)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        sources.append(("command line", {key.strip(): value}))
    for source, mapping in sources:
        for key, value in mapping.items():
            key = key.replace("-", "_")
            if key not in ftypes:
                raise ConfigError(f"{source}: {unknown_option(key, ftypes, cls.__name__)}")
            values[key] = _coerce(key, value, ftypes[key], source)
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
    out = ["Options (in a YAML file given with --config FILE, or as key=value, --key value or --key=value;\n"
           "a true/false option also as --key (true) or --no-key (false)):"]
    for group, lines in groups.items():
        out.append(f"\n{group}:")
        out.extend(lines)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The command line: one parser for every training command, one rewrite for every tool command

KEY_VALUE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)=(.*)", re.S)   # key=value (the key an identifier)


@dataclasses.dataclass
class CommandLine:
    """A training command's arguments, read without knowing its options yet.

    ``options``: ``(key, value, spelling)`` in the order given; ``key`` with hyphens made
    underscores, ``value`` None for a bare ``--flag``, ``spelling`` as typed (``--max-steps``,
    ``max_steps``) for notes and errors."""

    files: list[str]
    options: list[tuple[str, str | None, str]]
    wants_help: bool = False

    def value(self, key: str) -> Any:
        """The value given for ``key``: the last one on the command line, else the last config file's."""
        given = [value for k, value, _ in self.options if k == key]
        if given:
            return given[-1]
        in_files = [m[k] for _, m in read_option_files(self.files) for k in m if k.replace("-", "_") == key]
        return in_files[-1] if in_files else None

    def overrides(self, cls) -> list[str]:
        """``key=value`` overrides for ``load_config(cls, …)``: a bare ``--flag`` is true and
        ``--no-flag`` false where ``flag`` is a bool option of ``cls``."""
        ftypes = _field_types(cls)
        items = []
        for key, value, spelling in self.options:
            if value is None:
                if ftypes.get(key) is bool:
                    value = "true"
                elif key.startswith("no_") and ftypes.get(key[3:]) is bool:
                    key, value = key[3:], "false"
                elif key in ftypes:
                    raise ConfigError(f"{spelling}: give a value ({spelling} VALUE or {key}=VALUE)")
                else:
                    raise unknown_option(key, ftypes, cls.__name__)
            items.append(f"{key}={value}")
        return items


def _is_option_value(token: str) -> bool:
    return not token.startswith("--") and token != "-h" and not KEY_VALUE.fullmatch(token)


def parse_command_line(argv: list[str]) -> CommandLine:
    """Read ``key=value``, ``--key=value``, ``--key value`` and bare ``--flag`` options, ``--config
    FILE`` (repeatable) and ``-h``/``--help``. ``--key`` takes the next token as its value unless
    that is another option, so a bare ``--flag`` is followed by an option or nothing."""
    files, options, wants_help = [], [], False
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token in ("-h", "--help"):
            wants_help = True
            continue
        if token.startswith("--"):
            spelling, has_value, value = token.partition("=")
            if not has_value:
                value = None
                if i < len(argv) and _is_option_value(argv[i]):
                    value, i = argv[i], i + 1
        elif match := KEY_VALUE.fullmatch(token):
            spelling, value = match.groups()
        else:
            raise ConfigError(f"{token!r}: give options as key=value or --key value")
        key = spelling.lstrip("-").replace("-", "_")
        if key == "config":
            if value is None:
                raise ConfigError("--config: give a YAML file (--config FILE)")
            files.append(value)
        else:
            options.append((key, value, spelling))
    return CommandLine(files, options, wants_help)


def _parser_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every ``--option`` of ``parser`` and of its subcommands' parsers → its action."""
    actions = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                actions.update(_parser_actions(subparser))
        actions.update({s: action for s in action.option_strings if s.startswith("--")})
    return actions


def argparse_argv(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` for an argparse ``parser`` with ``key=value`` spelt as its ``--key value`` (``some_key``
    → ``--some-key``; a list option's value split at commas; ``flag=true`` for a switch, ``false``
    drops it). Unknown options are errors naming the closest known one. Values of options (``--sft
    lr=1e-5``, every value of a several-valued option: ``--eval humaneval gsm8k=FILE``) and arguments
    after ``--`` are left as they are."""
    actions = _parser_actions(parser)
    rewritten, i = [], 0
    taking_values = False   # after an option of several values (--eval a b gsm8k=FILE): all its own
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            return rewritten + argv[i - 1:]
        if token.startswith("-"):
            taking_values = False
        match = None if taking_values else KEY_VALUE.fullmatch(token)
        if match:
            key, value = match.groups()
            flag = next((f for f in (f"--{key.replace('_', '-')}", f"--{key}") if f in actions), None)
            if flag is None:
                raise unknown_option(key, [f[2:].replace("-", "_") for f in actions], parser.prog)
            action = actions[flag]
            if action.nargs == 0:
                rewritten += [flag] if _coerce(key, value, bool, "command line") else []
            elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
                rewritten += [flag, *(v.strip() for v in value.strip("[]").split(",") if v.strip())]
            else:
                rewritten += [flag, value]
            continue
        rewritten.append(token)
        if token.startswith("--"):
            name = token.partition("=")[0]
            known = [f for f in actions if f.startswith(name)]   # argparse takes unambiguous prefixes
            if not known:
                raise unknown_option(name, list(actions), parser.prog)
            action = actions.get(name) or (actions[known[0]] if len(known) == 1 else None)
            if "=" not in token and action is not None and action.nargs in (None, 1) and i < len(argv):
                rewritten.append(argv[i])   # its value, as typed
                i += 1
            taking_values = "=" not in token and action is not None and (
                action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1))
    return rewritten


# ---------------------------------------------------------------------------------------------
# The shared bases of the trainers' option dataclasses. Each command adds its own fields.
# ---------------------------------------------------------------------------------------------

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw", "sam", "tram")          # train/sam.py
TRAM_TARGETS = ("pretrained", "previous")
ADAPTERS = ("full", "lora", "prompt", "attempt")   # models/adapters.py for prompt and attempt
ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")


@dataclasses.dataclass
class RunOptions:
    """What every trainer has, whatever trains: a run folder, a seed and training sources (each
    command gives ``data`` its type, default and help)."""

    out: str = opt("runs/run", "run folder: config, metrics.jsonl, checkpoints, final model, report", "Run")
    seed: int = opt(0, "seed for data order, initialisation and sampling", "Run")
    data: Any = opt([], "training sources", "Data")

    def validate(self):
        if not str(self.out).strip():
            raise ConfigError("out: give a run folder, e.g. out=runs/my-run")
        if not self.data:
            raise ConfigError("data: give at least one training source")


@dataclasses.dataclass
class TrainingOptions(RunOptions):
    """Options every trainer on the engine shares: model, optimisation, batching, checkpoints, logging."""

    # Run
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
    adapter: str = opt("full", "what trains: full (every weight; LoRA when lora_rank > 0), lora (lora_rank, 16 "
                       "when unset), prompt (a soft prompt of num_virtual_tokens, LM frozen; sft, dpo) or attempt "
                       "(ATTEMPT's attentional mixture of source_prompts; sft). docs/finetune_methods.md", "Model")
    num_virtual_tokens: int = opt(20, "adapter=prompt: soft-prompt length (adapter=attempt: the sources')", "Model")
    source_prompts: list[str] = opt([], "adapter=attempt: model/ folders of runs trained with adapter=prompt on "
                                    "the same model (frozen; mixed per instance)", "Model")
    attempt_hidden: int = opt(100, "adapter=attempt: width r of the attention sub-network (d → r → d)", "Model")
    attempt_temperature: float = opt(0.0, "adapter=attempt: softmax temperature T (0 = d·e, the paper's)", "Model")
    # Optimization
    learning_rate: float = opt(2e-5, "peak learning rate (AdamW)", "Optimization")
    weight_decay: float = opt(0.0, "AdamW weight decay", "Optimization")
    lr_schedule: str = opt("linear", f"one of {', '.join(SCHEDULES)}", "Optimization")
    warmup_ratio: float = opt(0.03, "share of steps spent warming the learning rate up from 0", "Optimization")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0 = no clipping)", "Optimization")
    optimizer: str = opt("adamw", "adamw; sam: sharpness-aware minimisation around AdamW (Foret et al. 2021: the "
                         "gradient at θ + ρ·g/‖g‖, two forward-backward passes a step); tram: SAM whose ρ is the "
                         "trust-region distance KL(p_target ‖ p_θ) (Sherborne et al. 2024). docs/finetune_methods.md",
                         "Optimization")
    sam_rho: float = opt(0.05, "SAM's neighbourhood radius ρ (optimizer=sam)", "Optimization")
    tram_target: str = opt("pretrained", "TRAM's trust-region target: pretrained (TRAM-θ0, the starting weights) or "
                           "previous (TRAM-θt-1, the weights before the last update)", "Optimization")
    tram_scale: float = opt(1.0, "TRAM: ρ_t = tram_scale × the token-mean KL to the target", "Optimization")
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

        super().validate()
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
        self._validate_optimizer()
        self._validate_adapter()
        if self.mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise ConfigError(f"mixed_precision={self.mixed_precision!r}: choose auto, bf16, fp16 or no")

    def _validate_optimizer(self):
        import math

        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not math.isfinite(self.sam_rho) or self.sam_rho < 0:
            raise ConfigError(f"sam_rho={self.sam_rho}: SAM's radius must be a number >= 0 (e.g. 0.05; 0 is plain AdamW)")
        if self.tram_target not in TRAM_TARGETS:
            raise ConfigError(f"tram_target={self.tram_target!r}: choose one of {', '.join(TRAM_TARGETS)}")
        if not math.isfinite(self.tram_scale) or self.tram_scale < 0:
            raise ConfigError(f"tram_scale={self.tram_scale}: must be a number >= 0")
        if self.optimizer == "tram" and not getattr(self, "next_token_batches", False):
            raise ConfigError(f"optimizer=tram measures how far the model's next-token distributions moved, and "
                              f"{type(self).__name__}'s batches are not next-token rows: use optimizer=sam")

    def _validate_adapter(self):
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"adapter={self.adapter!r}: choose one of {', '.join(ADAPTERS)}")
        if self.adapter == "full" and self.lora_rank > 0:
            self.adapter = "lora"          # lora_rank alone has always meant LoRA
        if self.adapter == "lora" and self.lora_rank == 0:
            self.lora_rank = 16            # adapter=lora is another spelling of LoRA
        if self.adapter in ("prompt", "attempt"):
            allowed = getattr(self, "prompt_adapters", ())
            if self.adapter not in allowed:
                raise ConfigError(f"adapter={self.adapter} is not available for {type(self).__name__}"
                                  + (f" (it takes {', '.join(allowed)})" if allowed else "")
                                  + ": use adapter=lora or full")
            if self.lora_rank > 0:
                raise ConfigError(f"adapter={self.adapter} trains a soft prompt with the LM frozen: set lora_rank=0")
            if self.num_virtual_tokens < 1:
                raise ConfigError(f"num_virtual_tokens={self.num_virtual_tokens}: must be >= 1")
        if self.adapter == "attempt":
            if self.attempt_hidden < 1 or self.attempt_temperature < 0:
                raise ConfigError("attempt_hidden must be >= 1 and attempt_temperature >= 0 (0 = d·e)")
            from posttrain.models.adapters import AdapterError, check_source_prompts

            try:   # before any model loads: folders, base model and sizes
                self.num_virtual_tokens = check_source_prompts(self.source_prompts, self.model)
            except AdapterError as e:
                raise ConfigError(f"source_prompts: {e}") from None
        elif self.source_prompts:
            raise ConfigError("source_prompts is for adapter=attempt")
