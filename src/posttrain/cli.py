"""``posttrain <command> …`` — one entry point for every stage.

Training commands take ``--config file.yaml`` (repeatable) and ``key=value`` overrides; their
``--help`` lists every option with its default, generated from the config dataclass.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from posttrain.config import ConfigError, config_help, load_config
from posttrain.train.rl.algorithms import rl_commands

# command → (config class path, runner path, one-line help)
TRAINING_COMMANDS = {
    "sft": ("posttrain.config:SFTConfig", "posttrain.train.sft:run_sft",
            "supervised finetuning on messages rows (assistant tokens only)"),
    "dpo": ("posttrain.train.dpo:DPOConfig", "posttrain.train.dpo:run_dpo",
            "direct preference optimisation (dpo, dpo_norm, simpo, ipo, hinge)"),
    "reward": ("posttrain.train.reward:RewardConfig", "posttrain.train.reward:run_reward",
               "Bradley–Terry reward model (--model-type vpl: pluralistic, per-user)"),
    **rl_commands(),   # grpo, rloo, ppo, nlpo, …: one per posttrain.train.rl.algorithms.ALGORITHMS entry
}

# command → (module with main(argv) -> int, one-line help)
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("posttrain.evaluation.cli", "evaluate a model on task suites (dev, unseen) or named tasks"),
    "decontaminate": ("posttrain.decontamination.cli", "find and drop training rows that overlap evaluation sets"),
    "merge": ("posttrain.merging.cli", "merge models: averaging, task arithmetic, interpolation sweeps, mixture simulation"),
    "data": ("posttrain.data.cli", "inspect a dataset: sizes, lengths, duplicates, language, contamination"),
    "route": ("posttrain.routing.cli", "route preference instances to human or LM labels under a budget"),
    "recipe": ("posttrain.recipes.cli", "run, list or show multi-stage recipes (tulu3-mini, tulu3-8b)"),
}


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _user_errors():
    from posttrain.data.formats import DataError
    from posttrain.data.templates import TemplateError
    from posttrain.models.loading import ModelError
    from posttrain.train.engine import TrainingError

    return (ConfigError, DataError, ModelError, TemplateError, TrainingError, FileNotFoundError)


def run_training_command(name: str, argv: list[str]) -> int:
    config_path, runner_path, summary = TRAINING_COMMANDS[name]
    cls = _resolve(config_path)
    parser = argparse.ArgumentParser(
        prog=f"posttrain {name}", description=f"{summary}\n\n{(_resolve(runner_path).__module__ and sys.modules.get(_resolve(runner_path).__module__).__doc__) or ''}",
        epilog=config_help(cls), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[], help="YAML file of options (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, applied after the config files")
    args = parser.parse_args(argv)
    config = load_config(cls, args.config, args.overrides)
    command = " ".join(["posttrain", name] + argv)
    _resolve(runner_path)(config, command=command)
    return 0


def _pop_model_type(argv: list[str]) -> str | None:
    """Remove ``--model-type X`` / ``--model-type=X`` from ``argv`` and return X."""
    for i, arg in enumerate(argv):
        if arg == "--model-type" and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if arg.startswith("--model-type="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commands = {**{k: v[2] for k, v in TRAINING_COMMANDS.items()}, **{k: v[1] for k, v in TOOL_COMMANDS.items()}}
    if not argv or argv[0] in ("-h", "--help", "help"):
        width = max(map(len, commands))
        print("usage: posttrain <command> [options]\n\nCommands:")
        for name, summary in commands.items():
            print(f"  {name.ljust(width)}  {summary}")
        print("\nRun `posttrain <command> --help` for a command's options.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"posttrain: unknown command {name!r}; commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    errors = _user_errors()
    try:
        vpl = _pop_model_type(rest) if name == "reward" else None
        if vpl == "vpl":  # per-user latent reward models have their own trainer and options
            return int(_resolve("posttrain.pluralistic:main")(rest) or 0)
        if vpl not in (None, "bt"):
            raise ConfigError(f"--model-type {vpl!r}: choose bt (Bradley–Terry, the default) or vpl")
        if name in TRAINING_COMMANDS:
            return run_training_command(name, rest)
        return int(_resolve(TOOL_COMMANDS[name][0] + ":main")(rest) or 0)
    except errors as e:  # a problem the user can fix: one line, no traceback, exit code 2
        print(f"posttrain {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
