"""Model specs, configs and the command line: clear errors for bad input."""

import pytest

from posttrain.cli import main
from posttrain.config import ConfigError, load_config
from posttrain.train.sft import SFTConfig
from posttrain.models import ModelError, load_model, resolve_model_path


def test_model_spec_errors_name_the_spec_and_the_fix():
    with pytest.raises(ModelError, match="'./missing-model' does not exist"):
        resolve_model_path("./missing-model")
    with pytest.raises(ModelError, match=r"'nobody/no-such-model'.*HF_HUB_OFFLINE=1.*local Hugging Face folder"):
        load_model("nobody/no-such-model")


def test_local_folder_loads(tiny_model_dir):
    model = load_model(tiny_model_dir)
    assert model.config.hidden_size == 64


def test_auto_attention_picks_flash_attention_only_with_the_package_and_a_gpu(monkeypatch):
    import importlib.util

    import torch

    from posttrain.models.loading import resolve_attention

    assert resolve_attention("eager") == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attention("auto") == "sdpa"                       # this CPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "flash_attn" else real_find_spec(name))
    assert resolve_attention("auto") == "sdpa"                       # a GPU without flash-attn
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else real_find_spec(name))
    assert resolve_attention("auto") == "flash_attention_2"
    with pytest.raises(ConfigError, match="attn_implementation='flash'.*sdpa, eager, flash_attention_2"):
        load_config(SFTConfig, overrides=["attn_implementation=flash"])


def test_packed_rows_give_the_same_loss_with_sdpa_and_eager_attention(tiny_model_dir, tokenizer):
    """The trainers load the policy with the chosen kernels; packed rows (position ids restarting
    per conversation, no attention mask) are masked block-diagonally by both."""
    import torch

    from posttrain.data import collate_packed, encode_conversation, pack_sequences
    from posttrain.train.common import load_policy
    from posttrain.train.sft import sft_step

    convs = [[{"role": "user", "content": f"{a} plus {b}?"}, {"role": "assistant", "content": f"{a + b}"}]
             for a, b in [(1, 2), (30, 4), (7, 70)]]
    examples = [encode_conversation(tokenizer, c, max_length=128) for c in convs]
    packed = collate_packed(examples, pack_sequences(examples, 128), tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] == 1   # all three in one row
    losses = {}
    for kernels in ("sdpa", "eager"):
        model, _ = load_policy(load_config(SFTConfig, overrides=[f"model={tiny_model_dir}",
                                                                 f"attn_implementation={kernels}"]))
        assert model.config._attn_implementation == kernels
        with torch.no_grad():
            losses[kernels] = float(sft_step("sum", chunked_loss=False)(model, packed)[0])
    with torch.no_grad():   # each conversation alone: what the block-diagonal mask must reproduce
        alone = sum(float(sft_step("sum", chunked_loss=False)(model, collate_packed(examples, [[i]], 2))[0])
                    for i in range(3))
    assert losses["sdpa"] == pytest.approx(losses["eager"], rel=1e-5)
    assert losses["eager"] == pytest.approx(alone, rel=1e-5)


def test_config_overrides_types_and_unknown_keys(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("learning_rate: 1e-4\nbatch_size: 2\n")
    config = load_config(SFTConfig, [yaml_file], ["batch_size=3", "packing=false", "data=builtin:a,builtin:b"])
    assert (config.learning_rate, config.batch_size, config.packing) == (1e-4, 3, False)
    assert config.data == ["builtin:a", "builtin:b"]
    with pytest.raises(ConfigError, match="unknown option 'learning_rat' for SFTConfig; did you mean learning_rate"):
        load_config(SFTConfig, overrides=["learning_rat=1"])
    with pytest.raises(ConfigError, match="batch_size must be int"):
        load_config(SFTConfig, overrides=["batch_size=two"])
    with pytest.raises(ConfigError, match="loss_reduction='mean'"):
        load_config(SFTConfig, overrides=["loss_reduction=mean"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, [tmp_path / "nope.yaml"])


def test_help_lists_every_command_and_option(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("sft", "dpo", "reward", "grpo", "ppo", "eval", "decontaminate", "recipe"):
        assert command in out
    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("learning_rate", "loss_reduction", "packing", "lora_rank", "gradient_accumulation_steps"):
        assert option in out


@pytest.mark.parametrize("argv, message", [
    (["sft", "model=./no/such/dir"], "does not exist"),
    (["sft", "template=vicuna", "model={tiny}"], "unknown chat template"),
    (["sft", "data=./missing.jsonl", "model={tiny}"], "data file ./missing.jsonl does not exist"),
    (["sft", "batch_size=x"], "batch_size must be int"),
    (["frobnicate"], "unknown command"),
])
def test_cli_bad_input_is_one_clear_line(argv, message, capsys, tmp_path, tiny_model_dir):
    argv = [a.replace("{tiny}", tiny_model_dir) for a in argv] + [f"out={tmp_path / 'run'}"]
    if argv[0] == "frobnicate":
        argv = argv[:1]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "Traceback" not in err
