"""``posttrain <command> …`` — one entry point for every stage: the command table and the
dispatch, nothing else.

Where command code lives (docs/layout.md):

- A training command (``sft``, ``dpo``, ``kto``, ``orpo``, ``reward``, ``grpo``, …) is an options dataclass and a
  ``run_*(config, command)`` function side by side in the module that trains (``train/sft.py``:
  ``SFTConfig`` and ``run_sft``). The dataclass builds on ``config.TrainingOptions`` (or
  ``config.RunOptions``), whose ``validate`` holds the checks every trainer shares. The generic
  runner here parses the command line once for all of them (``config.parse_command_line``):
  ``key=value``, ``--key value``, ``--key=value``, ``--flag`` / ``--no-flag`` for true/false
  options, ``--config FILE`` (repeatable); ``--help`` lists every option, generated from the
  dataclass. An option can pick another trainer with options of its own (``TRAINER_VARIANTS``:
  ``posttrain reward model_type=vpl``).
- A tool command (``eval``, ``merge``, …) is a package of the toolkit with a ``cli.py`` holding
  ``build_parser()`` and ``main(argv) -> int``; the dispatcher lets its options be written
  ``key=value`` too (``config.argparse_argv``).

A problem the user can fix prints ``posttrain <command>: error: …`` (one line, no traceback) and
exits with 2.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

from posttrain.config import CommandLine, ConfigError, argparse_argv, config_help, load_config, parse_command_line
from posttrain.train.rl.algorithms import rl_commands

# command → (config class path, runner path, one-line help)
TRAINING_COMMANDS = {
    "sft": ("posttrain.train.sft:SFTConfig", "posttrain.train.sft:run_sft",
            "supervised finetuning on messages rows (assistant tokens only)"),
    "dpo": ("posttrain.train.dpo:DPOConfig", "posttrain.train.dpo:run_dpo",
            "direct preference optimisation (dpo, dpo_norm, simpo, ipo, hinge)"),
    "kto": ("posttrain.train.kto:KTOConfig", "posttrain.train.kto:run_kto",
            "Kahneman–Tversky optimisation on completions labelled desirable / undesirable (or unpaired pairs)"),
    "orpo": ("posttrain.train.orpo:ORPOConfig", "posttrain.train.orpo:run_orpo",
             "odds-ratio preference optimisation: SFT + preference in one stage, no reference model"),
    "online-dpo": ("posttrain.train.online_dpo:OnlineDPOConfig", "posttrain.train.online_dpo:run_online_dpo",
                   "online DPO: sample pairs from the policy, rank them with a judge (verifier, reward model, LM)"),
    "reward": ("posttrain.train.reward:RewardConfig", "posttrain.train.reward:run_reward",
               "Bradley–Terry reward model (model_type=vpl: pluralistic, per-user)"),
    "distill": ("posttrain.train.distill:DistillConfig", "posttrain.train.distill:run_distill",
                "on-policy distillation from a teacher with the same tokenizer (reverse KL, forward KL, GKD's JSD)"),
    **rl_commands(),   # grpo, rloo, ppo, nlpo, …: one per posttrain.train.rl.algorithms.ALGORITHMS entry
}

# command → (option, {value: (config class path, runner path)}): values of the option that train
# with another trainer, whose options replace the command's own
TRAINER_VARIANTS = {
    "reward": ("model_type", {"vpl": ("posttrain.pluralistic.cli:VPLConfig", "posttrain.pluralistic.cli:run_vpl")}),
}

# command → option spellings kept from older command lines: they work, with a one-line note
DEPRECATED_SPELLINGS = {
    "reward": ("--model-type",),   # once a switch to a second command line; model_type is an option now
}

# command → (module with build_parser() and main(argv) -> int, one-line help)
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("posttrain.evaluation.cli", "evaluate a model on task suites (dev, unseen) or named tasks"),
    "decontaminate": ("posttrain.decontamination.cli", "find and drop training rows that overlap evaluation sets"),
    "merge": ("posttrain.merging.cli", "merge models: averaging, task arithmetic, interpolation sweeps, mixture simulation"),
    "data": ("posttrain.data.cli", "dataset tools: inspect (sizes, lengths, duplicates, contamination), ai-feedback (LM-judged pairs)"),
    "route": ("posttrain.routing.cli", "route preference instances to human or LM labels under a budget"),
    "recipe": ("posttrain.recipes.cli", "run, list or show multi-stage recipes (tulu3-mini, tulu3-8b)"),
}


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _user_errors():
    from posttrain.data.formats import DataError
    from posttrain.data.templates import TemplateError
    from posttrain.judges.base import JudgeError
    from posttrain.models.loading import ModelError
    from posttrain.train.engine import TrainingError

    return (ConfigError, DataError, JudgeError, ModelError, TemplateError, TrainingError, FileNotFoundError)


def _trainer(name: str, command_line: CommandLine) -> tuple[type, object] | None:
    """(options class, runner) of ``name`` as the command line sets it up, or None for the command's
    own when no variant option is given."""
    option, variants = TRAINER_VARIANTS.get(name, (None, {}))
    chosen = command_line.value(option) if option else None
    if chosen in variants:
        config_path, runner_path = variants[chosen]
        return _resolve(config_path), _resolve(runner_path)
    return None


def _training_help(name: str, chosen: tuple[type, object] | None) -> str:
    config_path, runner_path, summary = TRAINING_COMMANDS[name]
    option, variants = TRAINER_VARIANTS.get(name, (None, {}))
    if chosen is None:
        sections = [(_resolve(config_path), _resolve(runner_path), "")]
        sections += [(_resolve(c), _resolve(r), f"\n\n──── {option}={value}: another trainer, with these options ────")
                     for value, (c, r) in variants.items()]
    else:
        sections = [(*chosen, "")]
    text = f"usage: posttrain {name} [--config FILE …] [key=value | --key value …]\n\n{summary}"
    for cls, runner, heading in sections:
        text += f"{heading}\n\n{inspect.getmodule(runner).__doc__ or ''}\n{config_help(cls)}"
    return text


def run_training_command(name: str, argv: list[str]) -> int:
    """Parse ``argv`` once (``config.parse_command_line``), build the options dataclass with
    ``load_config`` and hand it to the command's runner (or to the variant's that an option picks)."""
    command_line = parse_command_line(argv)
    for key, value, spelling in command_line.options:
        if spelling in DEPRECATED_SPELLINGS.get(name, ()):
            print(f"posttrain {name}: note: {spelling} is deprecated; write {key}={value}", file=sys.stderr)
    chosen = _trainer(name, command_line)
    if command_line.wants_help:
        print(_training_help(name, chosen))
        return 0
    config_path, runner_path, _ = TRAINING_COMMANDS[name]
    cls, runner = chosen or (_resolve(config_path), _resolve(runner_path))
    config = load_config(cls, command_line.files, command_line.overrides(cls))
    runner(config, command=" ".join(["posttrain", name] + argv))
    return 0


def run_tool_command(name: str, argv: list[str]) -> int:
    """The tool's own ``main`` on ``argv``, with ``key=value`` options spelt as its ``--key value``."""
    tool = importlib.import_module(TOOL_COMMANDS[name][0])
    return int(tool.main(argparse_argv(tool.build_parser(), argv)) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commands = {**{k: v[2] for k, v in TRAINING_COMMANDS.items()}, **{k: v[1] for k, v in TOOL_COMMANDS.items()}}
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(map(len, commands))
        print("usage: posttrain <command> [options]\n\nCommands:")
        for name, summary in commands.items():
            print(f"  {name.ljust(width)}  {summary}")
        print("\nRun `posttrain <command> --help` for a command's options; every command takes them as "
              "key=value or --key value.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"posttrain: unknown command {name!r}; commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    errors = _user_errors()
    try:
        if name in TRAINING_COMMANDS:
            return run_training_command(name, rest)
        return run_tool_command(name, rest)
    except errors as e:  # a problem the user can fix: one line, no traceback, exit code 2
        print(f"posttrain {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
