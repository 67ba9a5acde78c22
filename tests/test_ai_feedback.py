"""``posttrain data ai-feedback`` end to end: a tiny model sampled three ways, an HTTP judge on a
local server with controlled scores, rows checked against those scores, loaded by ``posttrain
dpo`` (one step); input errors before any model loads."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from judge_server import JudgeServer, chat_reply, judged_text
from posttrain.cli import main as cli_main
from posttrain.data.formats import validate_preference_row
from posttrain.data.sources import load_source

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Write one word about the sea.", "Say hello in French.",
           "Count to three.", "What is the capital of Italy?", "TIE: pick a number.", "UNRATED: say anything."]


def controlled_score(text: str) -> float:
    """The judge's rating of a response: fixed by its text, so the test can recompute it."""
    return float(1 + int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10)


def respond(payload, n):
    content = payload["messages"][-1]["content"]
    if "UNRATED:" in content:
        return 200, chat_reply("I cannot rate this."), 0
    if "TIE:" in content:
        return 200, chat_reply("Rating: 5"), 0
    return 200, chat_reply(f"Fine.\nRating: {controlled_score(judged_text(payload)):g}"), 0


@pytest.fixture
def judge_server():
    server = JudgeServer(respond)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _home(isolated_posttrain_home):
    """Every test here gets its own POSTTRAIN_HOME (conftest)."""


def write_prompts(path, prompts=PROMPTS):
    rows = [{"prompt": p} if i % 2 else {"messages": [{"role": "user", "content": p}]} for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_ai_feedback_end_to_end_and_dpo_loads_the_rows(tiny_model_dir, judge_server, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "pairs.jsonl"
    spec = f"{judge_server.url}@judge-model"
    def argv(out):
        return ["data", "ai-feedback", "--prompts", prompts, "--models", tiny_model_dir, tiny_model_dir,
                tiny_model_dir, "--temperatures", "1.0", "--judge", spec, "--out", str(out), "--max-new-tokens", "8",
                "--batch-size", "3", "--seed", "1", "--no-progress"]

    assert cli_main(argv(out)) == 0
    report = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    labels = {f"{tiny_model_dir}#{i}" for i in (1, 2, 3)}
    texts = set()
    for row in rows:
        assert set(row["ratings"]) == labels and row["judge"] == spec
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        rated = [r for r in row["ratings"].values() if r is not None]   # None: an empty completion
        assert row["ratings"][row["chosen_model"]] == controlled_score(chosen) == max(rated)
        assert row["ratings"][row["rejected_model"]] == controlled_score(rejected) < controlled_score(chosen)
        assert rated.count(controlled_score(chosen)) == 1   # a unique best
        assert row["prompt"][-1]["role"] == "user" and row["prompt"][-1]["content"] in PROMPTS
        validate_preference_row(row, "pairs.jsonl", 0)
        texts.add(row["prompt"][-1]["content"])
    assert "TIE: pick a number." not in texts and "UNRATED: say anything." not in texts
    assert len(rows) >= 3 and "preference rows from 8 prompts" in report and "1 with < 2 ratings" in report
    empty = sum(r is None for row in rows for r in row["ratings"].values())
    assert empty == 0 and len(judge_server.requests) == 3 * len(PROMPTS)    # one rating per completion

    # a rerun: same samples (seeded), same rows, every rating from the cache
    assert cli_main(argv(tmp_path / "again.jsonl")) == 0
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert len(judge_server.requests) == 3 * len(PROMPTS)

    # posttrain dpo reads the rows as they are
    loaded = load_source(str(out))
    assert len(loaded) == len(rows)
    from posttrain.config import load_config
    from posttrain.train.dpo import DPOConfig, run_dpo

    config = load_config(DPOConfig, overrides=[f"model={tiny_model_dir}", f"data={out}", f"out={tmp_path / 'dpo'}",
                                               "max_steps=1", "batch_size=2", "progress=false", "eval_data=[]",
                                               "max_length=128", "max_prompt_length=64"])
    result = run_dpo(config)
    assert abs(result["loss"] - math.log(2)) < 1e-4


@pytest.mark.parametrize("case, message", [
    ("bad_row", "prompts.jsonl, line 2, field 'prompt': missing"),
    ("bad_json", "prompts.jsonl, line 3: not valid JSON"),
    ("no_file", "data file {tmp}/none.jsonl does not exist"),
    ("bad_judge", "unknown judge 'gpt-4'"),
    ("verifier_no_column", "prompts.jsonl, line 1, field 'verifier': missing"),
    ("one_model", "at least two models"),
    ("no_model", "model path './no/such/model' does not exist"),
    ("expected_http", "implemented for local judges only"),
])
def test_ai_feedback_input_errors_before_any_model_loads(case, message, tmp_path, capsys, monkeypatch):
    import posttrain.models as models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, PROMPTS[:3])
    lines = prompts.read_text().splitlines()
    if case == "bad_row":
        lines[1] = json.dumps({"text": "hi"})
    if case == "bad_json":
        lines[2] = "{not json"
    prompts.write_text("\n".join(lines) + "\n")
    source = str(tmp_path / "none.jsonl") if case == "no_file" else str(prompts)
    model_list = {"one_model": ["x-model"], "no_model": ["./no/such/model", "./no/such/model"]}.get(case, ["a", "b"])
    judge = {"bad_judge": "gpt-4", "verifier_no_column": "verifier"}.get(case, "http://127.0.0.1:9/v1@m")
    rc = cli_main(["data", "ai-feedback", "--prompts", source, "--models", *model_list, "--judge", judge,
                   "--out", str(tmp_path / "pairs.jsonl"), "--no-progress",
                   *(["--judge-score-mode", "expected"] if case == "expected_http" else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("posttrain data: error:"), err
    assert message.replace("{tmp}", str(tmp_path)) in err[-1], err
    assert not (tmp_path / "pairs.jsonl").exists()


def test_ai_feedback_with_a_verifier_or_a_reward_model_as_judge(tiny_model_dir, tiny_rm_dir, tmp_path, capsys):
    """The judge can be any rater: a verifier scores against each prompt row's ground truth (here an
    IFEval word-count constraint that some of the tiny model's samples meet and some miss), a
    reward model scores prompt + response; the rows' ratings are those scores."""
    from posttrain.rewards import get_verifier
    from posttrain.rewards.reward_model import RewardModelScorer

    truth = {"instruction_id_list": ["length_constraints:number_words"],
             "kwargs": [{"num_words": 5, "relation": "at least"}]}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "ground_truth": truth, "verifier": "ifeval"}) + "\n"
                               for p in PROMPTS[:6]))

    def run(judge, out):
        return cli_main(["data", "ai-feedback", "--prompts", str(prompts), "--models", tiny_model_dir, tiny_model_dir,
                         tiny_model_dir, "--temperatures", "1.0", "--judge", judge, "--out", str(out),
                         "--max-new-tokens", "8", "--batch-size", "6", "--seed", "3", "--no-progress"])

    assert run("verifier", tmp_path / "verified.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "verified.jsonl").read_text().splitlines()]
    verify = get_verifier("ifeval")
    assert rows, capsys.readouterr().out
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert row["ratings"][row["chosen_model"]] == verify(chosen, truth).score == 1.0
        assert row["ratings"][row["rejected_model"]] == verify(rejected, truth).score == 0.0
        assert row["judge"] == "verifier"

    assert run(tiny_rm_dir, tmp_path / "rm.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "rm.jsonl").read_text().splitlines()]
    assert len(rows) == 6   # a reward model's real-valued scores never tie
    scorer = RewardModelScorer(tiny_rm_dir)
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        expected = scorer.score([row["prompt"], row["prompt"]], [chosen, rejected])
        assert row["ratings"][row["chosen_model"]] == pytest.approx(float(expected[0]), abs=1e-5)
        assert row["ratings"][row["rejected_model"]] == pytest.approx(float(expected[1]), abs=1e-5)
        assert max(row["ratings"].values()) == row["ratings"][row["chosen_model"]]

    # a prompt row without the ground truth a verifier needs: refused before any model loads
    prompts.write_text(json.dumps({"prompt": "hi", "verifier": "ifeval"}) + "\n" + prompts.read_text())
    assert run("verifier", tmp_path / "bad.jsonl") == 2
    assert "prompts.jsonl, line 1, field 'ground_truth': missing" in capsys.readouterr().err
