"""One options pattern for every command: both spellings (``key=value`` and ``--key value``) on
training and tool commands, ``--help`` generated from the dataclasses (VPL's included), the
deprecated ``--model-type``, unknown options with a suggestion, and the shared checks."""

import json

import pytest
import yaml

from posttrain.cli import TRAINING_COMMANDS, main
from posttrain.config import ConfigError, load_config, parse_command_line, to_dict
from posttrain.pluralistic.cli import VPLConfig
from posttrain.train.sft import SFTConfig


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


def test_every_training_spelling_gives_the_same_options(tmp_path):
    files = tmp_path / "sft.yaml"
    files.write_text("batch_size: 8\nlearning_rate: 1e-3\n")
    dashed = ["--config", str(files), "--max-steps", "1", "--learning-rate=1e-4", "--batch_size", "2",
              "--gradient-checkpointing", "--no-packing", "--progress", "false", "--data", "builtin:a,builtin:b"]
    plain = [f"--config={files}", "max_steps=1", "learning_rate=1e-4", "batch_size=2", "gradient_checkpointing=true",
             "packing=false", "progress=false", "data=[builtin:a, builtin:b]"]
    configs = []
    for argv in (dashed, plain):
        command_line = parse_command_line(argv)
        configs.append(load_config(SFTConfig, command_line.files, command_line.overrides(SFTConfig)))
    assert configs[0] == configs[1]
    assert (configs[0].max_steps, configs[0].learning_rate, configs[0].batch_size) == (1, 1e-4, 2)
    assert configs[0].gradient_checkpointing and not configs[0].packing and not configs[0].progress
    assert configs[0].data == ["builtin:a", "builtin:b"]


def test_sft_runs_from_dashed_options(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["sft", "--model", tiny_model_dir, "--out", str(out), "--max-steps", "1", "--batch-size=2",
                 "--max-length", "96", "--no-progress", "eval_data=[]",
                 "data=[{source: 'builtin:arithmetic_sft', count: 8}]"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    expected = load_config(SFTConfig, overrides=[f"model={tiny_model_dir}", f"out={out}", "max_steps=1",
                                                 "batch_size=2", "max_length=96", "progress=false", "eval_data=[]",
                                                 "data=[{source: 'builtin:arithmetic_sft', count: 8}]"])
    assert saved == yaml.safe_load(yaml.safe_dump(to_dict(expected)))
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)] == [1]


def test_tool_command_takes_key_value_options(tmp_path):
    """``posttrain data inspect``: its argparse ``--flags`` and the same options as ``key=value``."""
    common = ["data", "inspect", "builtin:arithmetic_sft"]
    assert main(common + ["--limit", "6", "--tokenizer", "whitespace", "--no-contamination",
                          "--out", str(tmp_path / "dashed")]) == 0
    assert main(common + ["limit=6", "tokenizer=whitespace", "no_contamination=true", f"out={tmp_path / 'plain'}"]) == 0
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("dashed", "plain")]
    assert reports[0] == reports[1] and reports[0]["rows"] == 6


def test_tool_key_values_leave_option_values_alone():
    """``--sft learning_rate=1e-5`` is a value of ``--sft`` (an SFT override), not an option of merge."""
    from posttrain.config import argparse_argv
    from posttrain.merging.cli import build_parser

    argv = argparse_argv(build_parser(), ["add-skill", "--sft", "learning_rate=1e-5", "general=m", "skill_data=a,b",
                                          "out=o", "no_progress=true", "overwrite=false"])
    assert argv == ["add-skill", "--sft", "learning_rate=1e-5", "--general", "m", "--skill-data", "a", "b",
                    "--out", "o", "--no-progress"]
    args = build_parser().parse_args(argv)
    assert (args.sft, args.skill_data, args.no_progress) == (["learning_rate=1e-5"], ["a", "b"], True)


def test_tool_key_values_inside_a_list_of_values_stay_values():
    """``--eval humaneval gsm8k=FILE``: ``gsm8k=FILE`` is the third value of ``--eval`` (an eval set
    read from a file), as argparse reads it, not an option; ``threshold=0.5`` after the next flag is."""
    from posttrain.config import argparse_argv
    from posttrain.decontamination.cli import build_parser

    argv = argparse_argv(build_parser(), ["--train", "a.jsonl", "--eval", "humaneval", "ifeval_builtin",
                                          "gsm8k=g.jsonl", "--ngram", "8", "threshold=0.5"])
    assert argv == ["--train", "a.jsonl", "--eval", "humaneval", "ifeval_builtin", "gsm8k=g.jsonl",
                    "--ngram", "8", "--threshold", "0.5"]
    assert build_parser().parse_args(argv).eval == ["humaneval", "ifeval_builtin", "gsm8k=g.jsonl"]


def test_help_lists_the_options_of_every_trainer_a_command_runs(capsys):
    assert main(["reward", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("center_rewards_coefficient", "model_type", "latent_dim", "pooling", "acquisition", "al_seeds"):
        assert f"  {option} = " in out
    assert main(["reward", "model_type=vpl", "--help"]) == 0   # the chosen trainer's options only
    out = capsys.readouterr().out
    assert "  latent_dim = " in out and "center_rewards_coefficient" not in out


def test_old_model_type_flag_still_picks_vpl_with_a_note(capsys):
    assert main(["reward", "--model-type", "vpl", "--help"]) == 0
    assert _error_lines(capsys) == ["posttrain reward: note: --model-type is deprecated; write model_type=vpl"]
    assert main(["reward", "--model-type=vpl", "--latent-dimm", "3"]) == 2   # VPL's options, not the BT trainer's
    assert _error_lines(capsys)[-1].endswith("unknown option 'latent_dimm' for VPLConfig; did you mean latent_dim? "
                                             "(--help lists every option)")


def test_vpl_options_load_and_are_checked():
    config = load_config(VPLConfig, overrides=["model_type=vpl", "latent_dim=2", "length_feature=false"])
    assert (config.latent_dim, config.length_feature, config.pooling) == (2, False, "sum")
    with pytest.raises(ConfigError, match="pooling='max': choose one of sum, mean, attention"):
        load_config(VPLConfig, overrides=["pooling=max"])


@pytest.mark.parametrize("argv, error", [
    (["sft", "--learning-rat", "1e-5"], "unknown option 'learning_rat' for SFTConfig; did you mean learning_rate?"),
    (["dpo", "bta=0.1"], "unknown option 'bta' for DPOConfig; did you mean beta?"),
    (["eval", "modle=x"], "posttrain eval: error: unknown option 'modle' for posttrain eval; did you mean model?"),
    (["eval", "--modle", "x"], "unknown option '--modle' for posttrain eval; did you mean --model?"),
    (["sft", "--max-steps"], "--max-steps: give a value (--max-steps VALUE or max_steps=VALUE)"),
    (["sft", "stray"], "'stray': give options as key=value or --key value"),
])
def test_unknown_or_malformed_options_are_one_line_with_exit_code_2(argv, error, capsys):
    assert main(argv) == 2
    line = _error_lines(capsys)[-1]
    assert line.startswith(f"posttrain {argv[0]}: error: ")
    assert error in line


@pytest.mark.parametrize("argv", [[name] for name in TRAINING_COMMANDS] + [["reward", "model_type=vpl"]])
def test_every_trainer_refuses_no_training_source_with_one_message(argv, capsys):
    assert main(argv + ["data="]) == 2
    assert _error_lines(capsys) == [f"posttrain {argv[0]}: error: data: give at least one training source"]
