"""SFT on TRL's prompt-completion rows: the label mask covers exactly the completion's tokens (plain
text for string prompts, the chat template for message prompts), bad rows are named by file, line
and field before any model loads, and a tiny run on such rows trains."""

from __future__ import annotations

import json
import math

import pytest

from posttrain.data.formats import DataError, validate_sft_row
from posttrain.data.tokenize import IGNORE_INDEX, encode_prompt_completion


def trained(example: dict) -> list[int]:
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]


def test_plain_text_rows_train_on_the_completion_and_its_eos_only(tokenizer):
    prompt, completion = "Summarize: The cat sat on the mat all day.", " A cat sat."
    example = encode_prompt_completion(tokenizer, prompt, completion)
    full = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    assert example["input_ids"] == full   # no chat template: the text as it is, EOS appended as TRL does
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert example["labels"] == [IGNORE_INDEX] * n_prompt + full[n_prompt:]
    assert tokenizer.decode(trained(example)) == completion + tokenizer.eos_token
    # a completion that already ends in EOS gets no second one
    assert encode_prompt_completion(tokenizer, prompt, completion + tokenizer.eos_token) == example


def test_a_token_merging_across_the_boundary_is_trained_as_in_trl(tokenizer):
    # "Hello wor" + "ld" tokenises as "Hello", " world": the completion starts at the first token that
    # differs from the prompt's own tokens (TRL's common_prefix_length), so " world" is trained
    example = encode_prompt_completion(tokenizer, "Hello wor", "ld")
    prompt_ids = tokenizer("Hello wor")["input_ids"]
    start = next(i for i, (a, b) in enumerate(zip(prompt_ids, example["input_ids"])) if a != b)
    assert example["labels"][:start] == [IGNORE_INDEX] * start
    assert tokenizer.decode(trained(example)) == " world" + tokenizer.eos_token


def test_message_prompts_use_the_chat_template_and_train_only_the_completion(tokenizer):
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
              {"role": "user", "content": "What is 2+3?"}]
    completion = [{"role": "assistant", "content": "2 + 3 = 5."}]
    example = encode_prompt_completion(tokenizer, prompt, completion)
    rendered = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    assert example["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    # training starts right after the prompt rendered with its generation prompt ...
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt   # the prompt's assistant turn too
    # ... and covers exactly the completion's content and its end-of-turn token
    assert tokenizer.decode(trained(example)) == "2 + 3 = 5." + tokenizer.eos_token
    assert example["labels"][n_prompt] != IGNORE_INDEX
    # a string completion is one assistant turn
    assert encode_prompt_completion(tokenizer, prompt, "2 + 3 = 5.") == example


def test_rows_normalise_and_messages_win_over_prompt_columns():
    assert validate_sft_row({"prompt": "a", "completion": "b"}, "f.jsonl, line 1", None) == {"prompt": "a",
                                                                                           "completion": "b"}
    user = [{"role": "user", "content": "q"}]
    # a completion repeating the prompt (some exports do) is stripped to the new turns
    row = validate_sft_row({"prompt": user, "completion": user + [{"role": "assistant", "content": "a"}]}, "f", None)
    assert row == {"prompt": user, "completion": [{"role": "assistant", "content": "a"}]}
    chat = {"messages": user + [{"role": "assistant", "content": "a"}], "prompt": "q"}   # UltraChat's columns
    assert validate_sft_row(chat, "f", None) == {"messages": chat["messages"]}


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "q"}, "field 'completion': missing. SFT rows need a 'messages' list"),
    ({"completion": "a"}, "field 'prompt': missing"),
    ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]},
     "field 'completion': the prompt is a string, so the completion must be one too (got list)"),
    ({"prompt": "q", "completion": "   "}, "field 'completion': empty completion"),
    ({"prompt": "", "completion": "a"}, "field 'prompt': empty prompt"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}]},
     "field 'completion': the completion must start with an assistant turn"),
    ({"prompt": [{"role": "user"}], "completion": "a"}, "field 'prompt'[0]: each message needs 'role' and 'content'"),
])
def test_bad_rows_name_file_line_and_field_before_the_model_loads(tmp_path, capsys, row, expected):
    from posttrain.cli import main as cli_main

    rows = [{"prompt": f"{i} + 1 =", "completion": f" {i + 1}"} for i in range(6)]
    rows[4] = row
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = cli_main(["sft", f"data=[{path}]", "model=./no/such/model", f"out={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"{path}, line 5, {expected}" in err
    with pytest.raises(DataError, match="line 5"):
        validate_sft_row(row, f"{path}, line 5", None)


def test_a_tiny_sft_run_on_prompt_completion_rows_trains(tiny_model_dir, tmp_path):
    import torch

    from posttrain.config import load_config
    from posttrain.models import load_model
    from posttrain.train.sft import SFTConfig, run_sft

    rows = [{"prompt": f"{i} plus 1 is", "completion": f" {i + 1}."} for i in range(6)]
    rows += [{"prompt": [{"role": "user", "content": f"Double {i}."}], "completion": f"{2 * i}"} for i in range(6)]
    rows += [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    run_sft(load_config(SFTConfig, overrides=[f"model={tiny_model_dir}", f"out={out}", f"data=[{path}]",
                                              "batch_size=4", "max_steps=3", "learning_rate=1e-2", "max_length=96",
                                              "progress=false"]))
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    before, after = load_model(tiny_model_dir).state_dict(), load_model(str(out / "model")).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and "model.layers.0.self_attn.q_proj.weight" in changed
