"""Every bad input gets one clear line: the file, its own line or row, the field, and the fix; exit
code 2; no traceback; and for training commands, before any model loads.

The cases are the classes of issue 21 (row numbers after shuffling, tracebacks, late failures,
silently accepted input, misleading messages). Where a case must fail before the model loads,
the model is a path that does not exist: had the model loaded first, the message would be about
the model instead.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from posttrain.cli import main as cli_main  # noqa: E402

NO_MODEL = "model=./no/such/model"   # reaching the model load would give another message


def _chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": f"{i + 1}"}]}


def _rl(i: int, **extra) -> dict:
    return {"prompt": f"What is {i} + 1?", "ground_truth": str(i + 1), "verifier": "gsm8k", **extra}


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _run(capsys, argv: list[str]) -> str:
    """Run the CLI; return its one error line after checking exit code 2 and no traceback."""
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- row numbers after shuffling


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("mixture", ["file", "with-builtin", "upsampled"])
def test_bad_row_is_named_by_its_file_line_whatever_the_mix(tmp_path, capsys, seed, mixture):
    rows = [_chat(i) for i in range(80)]
    rows[56] = {"text": "no messages here"}   # line 57 of the file
    path = _jsonl(tmp_path / "chats.jsonl", rows)
    data = {"file": f"[{path}]",
            "with-builtin": f"[{{source: builtin:arithmetic_sft, count: 30}}, {{source: {path}}}]",
            "upsampled": f"[{{source: {path}, count: 200}}]"}[mixture]
    line = _run(capsys, ["sft", f"data={data}", f"seed={seed}", NO_MODEL, f"out={tmp_path / 'run'}"])
    assert f"{path}, line 57, field 'messages': missing" in line
    assert not (tmp_path / "run").exists()   # nothing was written


@pytest.mark.parametrize("suffix, unit", [(".json", "row"), (".parquet", "row")])
def test_json_and_parquet_rows_are_numbered_from_one(tmp_path, capsys, suffix, unit):
    rows = [_chat(i) for i in range(6)]
    rows[4] = {"messages": [{"role": "bot", "content": "hi"}]}   # the 5th row
    path = tmp_path / f"chats{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    line = _run(capsys, ["sft", f"data=[{path}]", NO_MODEL, f"out={tmp_path / 'run'}"])
    assert f"{path}, {unit} 5, field 'messages'[0]: unknown role 'bot'" in line


# --------------------------------------------------------------------------- tracebacks → one line


def _write_bytes(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case", ["non-utf8", "corrupt-parquet", "not-an-object", "negative-lr", "out-is-a-file",
                                  "unknown-reward-verifier", "misspelled-reward-key", "reward-option-typo"])
def test_former_tracebacks_are_clear_errors(tmp_path, capsys, case):
    chats = _jsonl(tmp_path / "ok.jsonl", [_chat(i) for i in range(4)])
    out = f"out={tmp_path / 'run'}"
    if case == "non-utf8":
        good = json.dumps(_chat(0)).encode()
        path = _write_bytes(tmp_path / "latin1.jsonl", good + b"\n" + good + b'\n{"text": "caf\xe9"}\n')
        argv, expected = ["sft", f"data=[{path}]", NO_MODEL, out], f"{path}, line 3: not UTF-8 text (byte 0xe9"
    elif case == "corrupt-parquet":
        path = _write_bytes(tmp_path / "broken.parquet", b"PAR1 this is not parquet")
        argv, expected = ["sft", f"data=[{path}]", NO_MODEL, out], f"{path}: not a readable parquet file"
    elif case == "not-an-object":
        path = _jsonl(tmp_path / "list.jsonl", [_chat(0), "[1, 2]"])
        argv, expected = ["sft", f"data=[{path}]", NO_MODEL, out], f"{path}, line 2: expected a JSON object"
    elif case == "negative-lr":
        argv, expected = ["sft", "learning_rate=-1", f"data=[{chats}]", out], "learning_rate=-1.0: must be a number > 0"
    elif case == "out-is-a-file":
        (tmp_path / "taken").write_text("x")
        argv = ["sft", f"data=[{chats}]", NO_MODEL, f"out={tmp_path / 'taken'}"]
        expected = "this is a file, not a folder"
    elif case == "unknown-reward-verifier":
        argv = ["grpo", "reward=[{verifier: gsm9k}]", NO_MODEL, out]
        expected = "reward: reward entry 0: unknown verifier 'gsm9k' (did you mean 'gsm8k'?)"
    elif case == "misspelled-reward-key":
        argv = ["grpo", "reward=[{verifier: auto, wieght: 2}]", NO_MODEL, out]
        expected = "reward entry 0 has unknown key 'wieght' (did you mean 'weight'?)"
    else:
        argv = ["grpo", "reward=[{verifier: math, options: {timout: 2}}]", NO_MODEL, out]
        expected = "verifier 'math' does not take options {'timout': 2}"
    assert expected in _run(capsys, argv)


def test_out_folder_that_is_not_writable(tmp_path, monkeypatch):
    from posttrain.config import ConfigError
    from posttrain.train.run_folder import check_out_folder

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(ConfigError, match=rf"out={tmp_path}/run: {tmp_path} is not writable by this user"):
        check_out_folder(tmp_path / "run")


def test_eval_data_file_checks_every_row(tmp_path, capsys):
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "#### 4"},
            {"question": "3+3?"}]   # only the third row lacks the answer
    path = _jsonl(tmp_path / "gsm8k.jsonl", rows)
    line = _run(capsys, ["eval", "--model", "./no/such/model", "--tasks", "gsm8k", "--data-file", f"gsm8k={path}",
                         "--out", str(tmp_path / "eval")])
    assert f"{path}, line 3: missing column(s) ['answer']; task gsm8k needs ['question', 'answer']" in line


def test_decontaminate_names_rows_without_text(tmp_path, capsys):
    path = _jsonl(tmp_path / "train.jsonl", [_chat(0), {"label": 1}])
    line = _run(capsys, ["decontaminate", "--train", path, "--eval", "arith_builtin",
                         "--report", str(tmp_path / "r.json")])
    assert f"{path}, line 2: row has no text column" in line


# --------------------------------------------------------------------------- late failures → before the model


@pytest.mark.parametrize("bad, expected", [
    ({"verifier": "gsm9k"}, "field 'verifier': unknown verifier 'gsm9k' (did you mean 'gsm8k'?)"),
    ({"ground_truth": "no number here"}, "field 'ground_truth': the gsm8k verifier cannot use it: gsm8k ground truth "
                                         "holds no number"),
    ({"verifier": "ifeval", "ground_truth": {"instruction_id_list": ["no:such"]}},
     "field 'ground_truth': the ifeval verifier cannot use it: unknown IFEval instruction id 'no:such'"),
    ({"verifier": "code", "ground_truth": 42},
     "field 'ground_truth': the code verifier cannot use it: ground truth for 'code' must be"),
])
def test_every_rl_row_reward_is_checked_before_the_model_loads(tmp_path, capsys, bad, expected):
    rows = [_rl(i) for i in range(40)]
    rows[33] = {**rows[33], **bad}
    path = _jsonl(tmp_path / "rl.jsonl", rows)
    line = _run(capsys, ["grpo", f"data=[{path}]", "eval_data=[]", NO_MODEL, f"out={tmp_path / 'run'}"])
    assert f"{path}, line 34, {expected}" in line


# --------------------------------------------------------------------------- silently accepted → refused


@pytest.mark.parametrize("case", ["mixture-typo", "mixture-builtin-typo", "negative-max-steps", "empty-assistant",
                                  "empty-rl-prompt", "zero-epochs"])
def test_formerly_accepted_input_is_refused(tmp_path, capsys, case):
    chats = _jsonl(tmp_path / "ok.jsonl", [_chat(i) for i in range(100)])
    out = f"out={tmp_path / 'run'}"
    if case == "mixture-typo":
        argv = ["sft", f"data=[{{source: {chats}, fracton: 0.5}}]", NO_MODEL, out]
        expected = f"data mixture entry 1 ({chats}): unknown key 'fracton' (did you mean 'fraction'?)"
    elif case == "mixture-builtin-typo":
        argv = ["sft", "data=[{source: builtin:arithmetic_sft, difficuly: [1]}]", NO_MODEL, out]
        expected = "unknown key 'difficuly' (did you mean 'difficulty'?)"
    elif case == "negative-max-steps":
        argv, expected = ["sft", "max_steps=-5", NO_MODEL, out], "max_steps=-5: must be >= 0"
    elif case == "zero-epochs":
        argv, expected = ["sft", "num_epochs=0", NO_MODEL, out], "num_epochs=0.0: must be > 0"
    elif case == "empty-assistant":
        rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}] * 3
        path = _jsonl(tmp_path / "empty.jsonl", rows)
        argv = ["sft", f"data=[{path}]", NO_MODEL, out]
        expected = f"{path}, line 1, field 'messages': every assistant turn is empty"
    else:
        path = _jsonl(tmp_path / "rl.jsonl", [_rl(0), _rl(1, prompt="   ")])
        argv = ["grpo", f"data=[{path}]", "eval_data=[]", NO_MODEL, out]
        expected = f"{path}, line 2, field 'prompt': the prompt is empty"
    assert expected in _run(capsys, argv)


def test_predictions_with_a_dict_completion_are_refused(tmp_path, capsys):
    path = _jsonl(tmp_path / "preds.jsonl", [{"task": "arith_builtin", "id": "arith-0", "completion": "2"},
                                             {"task": "arith_builtin", "id": "arith-1", "completion": {"text": "3"}}])
    line = _run(capsys, ["eval", "--predictions", path, "--tasks", "arith_builtin", "--limit", "2",
                         "--out", str(tmp_path / "eval")])
    assert f"{path}, line 2: each completion must be a string (the model's text), got dict" in line


# --------------------------------------------------------------------------- misleading → accurate


@pytest.mark.parametrize("argv, expected", [
    (["decontaminate", "--train", "builtin:arithmetic_sft", "--eval", "arith_bultin"],
     "--eval arith_bultin: not a task, a local file or a built-in set. Did you mean 'arith_builtin'?"),
    (["eval", "--model", "./no/such/model", "--tasks", "arith_bultin"],
     "unknown task 'arith_bultin'. Did you mean 'arith_builtin'?"),
    (["sft", "data=[builtin:arithmetic_stf]", NO_MODEL],
     "unknown built-in dataset 'arithmetic_stf'; known: arithmetic_preference, arithmetic_rlvr, arithmetic_sft"),
])
def test_typos_suggest_the_close_name(tmp_path, capsys, argv, expected):
    line = _run(capsys, argv + (["--report", str(tmp_path / "r.json")] if argv[0] == "decontaminate" else
                                ["--out", str(tmp_path / "o")] if argv[0] == "eval" else [f"out={tmp_path / 'o'}"]))
    assert expected in line and "offline" not in line


def test_every_row_too_long_says_so(tmp_path, capsys, tiny_model_dir):
    long_prompt = "word " * 300
    rows = [{"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]}] * 6
    path = _jsonl(tmp_path / "long.jsonl", rows)
    line = _run(capsys, ["sft", f"data=[{path}]", f"model={tiny_model_dir}", "max_length=64", "progress=false",
                         f"out={tmp_path / 'sft'}"])
    assert "every one of the 6 conversations is longer than max_length=64 tokens" in line
    assert "lower the batch" not in line
    rl = _jsonl(tmp_path / "long_rl.jsonl", [_rl(i, prompt=long_prompt) for i in range(6)])
    line = _run(capsys, ["grpo", f"data=[{rl}]", "eval_data=[]", f"model={tiny_model_dir}", "max_prompt_length=32",
                         "reward=[{verifier: auto}]", "progress=false", f"out={tmp_path / 'rl'}"])
    assert "every one of the 6 prompts is longer than max_prompt_length=32 tokens" in line


# --------------------------------------------------------------------------- kto and orpo rows


def _unpaired(i: int, **extra) -> dict:
    return {"prompt": f"What is {i} + 1?", "completion": f"{i + 1}", "label": i % 2 == 0, **extra}


@pytest.mark.parametrize("command, bad, expected", [
    ("kto", {"prompt": "2+2?", "completion": "4"}, "field 'label': missing"),
    ("kto", {"prompt": "2+2?", "label": True}, "field 'completion': missing"),
    ("kto", {"completion": "4", "label": True}, "field 'prompt': missing"),
    ("kto", {"prompt": "2+2?", "completion": "4", "label": "yes"},
     "field 'label': expected true (desirable) or false (undesirable), got 'yes'"),
    ("kto", {"prompt": "2+2?", "completion": "  ", "label": False}, "field 'completion': empty completion"),
    ("kto", {"prompt": "2+2?", "chosen": "4", "rejected": "4"}, "field 'chosen': chosen equals rejected"),
    ("orpo", {"prompt": "2+2?", "chosen": "4"}, "field 'rejected': missing"),
    ("orpo", {"prompt": "2+2?", "completion": "4", "label": True}, "field 'chosen': missing"),
])
def test_kto_and_orpo_rows_are_checked_before_the_model_loads(tmp_path, capsys, command, bad, expected):
    good = _unpaired if command == "kto" else (lambda i: {"prompt": f"{i} + 1?", "chosen": f"{i + 1}",
                                                           "rejected": f"{i + 2}"})
    rows = [good(i) for i in range(30)]
    rows[21] = bad   # line 22
    path = _jsonl(tmp_path / "prefs.jsonl", rows)
    line = _run(capsys, [command, f"data=[{path}]", "eval_data=[]", NO_MODEL, f"out={tmp_path / 'run'}"])
    assert f"{path}, line 22, {expected}" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad, judge, expected", [
    ({"ground_truth": "3", "verifier": "gsm8k"}, "verifier:auto",
     "field 'prompt': missing. RLVR rows need 'prompt' or 'messages'"),
    ({"prompt": "2+2?", "verifier": "gsm8k"}, "verifier:auto", "field 'ground_truth': missing"),
    ({"prompt": "2+2?", "ground_truth": "4", "verifier": "gsm9k"}, "verifier:auto",
     "field 'verifier': unknown verifier 'gsm9k' (did you mean 'gsm8k'?)"),
    ({"prompt": "  "}, "function:test_rl:length_reward", "field 'prompt': the prompt is empty"),
])
def test_online_dpo_rows_are_checked_before_the_model_loads(tmp_path, capsys, bad, judge, expected):
    rows = [_rl(i) for i in range(30)]
    rows[11] = bad   # line 12
    path = _jsonl(tmp_path / "prompts.jsonl", rows)
    line = _run(capsys, ["online-dpo", f"data=[{path}]", "eval_data=[]", f"judge={judge}", NO_MODEL,
                         f"out={tmp_path / 'run'}"])
    assert f"{path}, line 12, {expected}" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("judge, expected", [
    ("lokal:smollm2", "judge='lokal:smollm2': not a judge; give verifier:NAME, verifier:auto, function:MODULE:FN"),
    ("http://localhost:8000/v1", "name the served model after the URL, as URL@MODEL"),
    ("local:./no/such/judge", "reward: reward entry 0: judge 'local:./no/such/judge': model path './no/such/judge' "
                              "does not exist"),
    ("verifier:gsm9k", "unknown verifier 'gsm9k' (did you mean 'gsm8k'?)"),
    ("function:no_such_module:score", "no module named 'no_such_module'"),
])
def test_online_dpo_judge_is_checked_before_the_model_loads(tmp_path, capsys, judge, expected):
    line = _run(capsys, ["online-dpo", f"judge={judge}", "eval_data=[]", NO_MODEL, f"out={tmp_path / 'run'}"])
    assert expected in line
    assert not (tmp_path / "run").exists()
