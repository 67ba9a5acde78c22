"""LM judges: score and verdict parsing, position swapping, judge specs, the HTTP judge against a
local server (reply, timeout, retry, malformed reply, 4xx, cache, API key), and eval's win rate
with an LM judge."""

from __future__ import annotations

import json
import math
import random

import pytest

from judge_server import JudgeServer, chat_reply
from posttrain.config import ConfigError
from posttrain.judges import JudgeError, load_judge, parse_choice, parse_judge_spec, parse_rubric_score, swap_averaged
from posttrain.judges.feedback import make_policies, pick_pair
from posttrain.judges.remote import HTTPJudge

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def server_factory():
    servers = []

    def start(respond):
        servers.append(JudgeServer(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, want", [
    ("The answer is right and brief.\nRating: 8", 8.0),
    ("**Rating:** 9", 9.0),
    ("I would give this [[6]].", 6.0),
    ("Score: 7/10", 7.0),
    ("A 3 would be too harsh. 7 out of 10.", 7.0),
    ("rating of 4.5", 4.5),
    ("10", 10.0),
    ("Covers 2/3 of the steps. Rating: 5", 5.0),      # 2/3 is no score; the rating is
    ("[[3]] ... Rating: 5", 3.0),                     # the bracketed form is the most explicit
    ("Rating: 11", None),                             # out of range
    ("Rating: 0", None),
    ("It covers 2/3 of the steps.", None),
    ("I cannot judge this.", None),
    ("", None),
])
def test_rubric_score_parsing(text, want):
    assert parse_rubric_score(text) == want


@pytest.mark.parametrize("text, want", [
    ("A", "A"), ("B.", "B"), ("[[B]]", "B"), ("Response A is better.", "A"), ("Output B is the better one", "B"),
    ("Assistant B is better", "B"), ("a response with detail", None), ("Both are fine.", None),
    ("[[A]] or [[B]], hard to say", None), ("", None),
])
def test_pairwise_choice_parsing(text, want):
    assert parse_choice(text) == want


# --------------------------------------------------------------------------- position swapping


def test_swapping_cancels_a_judge_that_always_prefers_position_a():
    always_first = lambda first, second: 1.0   # noqa: E731
    assert swap_averaged(always_first, "good", "bad") == 0.5
    assert swap_averaged(always_first, "bad", "good") == 0.5
    longer = lambda first, second: float(len(first) > len(second))   # noqa: E731
    assert swap_averaged(longer, "a longer answer", "short") == 1.0
    assert swap_averaged(longer, "short", "a longer answer") == 0.0
    # an order-biased judge with a real preference underneath: the bias cancels, the preference stays
    biased = lambda first, second: min(1.0, 0.3 + 0.6 * (len(first) > len(second)))   # noqa: E731
    assert swap_averaged(biased, "a longer answer", "short") == pytest.approx(0.8)
    assert swap_averaged(biased, "short", "a longer answer") == pytest.approx(0.2)


def test_swapping_uses_the_readable_order_and_nan_when_none():
    assert swap_averaged(lambda f, s: None if f == "a" else 0.0, "a", "b") == 1.0
    assert math.isnan(swap_averaged(lambda f, s: None, "a", "b"))


# --------------------------------------------------------------------------- specs


def test_judge_specs():
    assert parse_judge_spec("local:smollm2-135m-instruct") == ("local", {"model": "smollm2-135m-instruct"})
    assert parse_judge_spec("http://localhost:8000/v1@Qwen/Qwen2.5-7B-Instruct") == \
        ("http", {"base_url": "http://localhost:8000/v1", "model": "Qwen/Qwen2.5-7B-Instruct"})
    for bad, message in [("gpt-4", "unknown judge"), ("local:", "name the model"),
                         ("http://localhost:8000/v1", "URL@MODEL"), ("http://@m", "no host")]:
        with pytest.raises(ConfigError, match=message):
            parse_judge_spec(bad)
    judge = load_judge("http://127.0.0.1:9/v1@m", cache_dir="/nonexistent")
    assert isinstance(judge, HTTPJudge) and judge.spec == "http://127.0.0.1:9/v1@m"


def test_local_judge_on_a_tiny_model(tiny_model_dir):
    judge = load_judge(f"local:{tiny_model_dir}", max_new_tokens=6)
    scores = judge.score_many([PROMPT, PROMPT], ["4", "5"])
    assert [s.ok for s in scores] == [not math.isnan(s.score) for s in scores]  # random weights: mostly unreadable
    assert all(isinstance(s.raw, str) for s in scores)
    p = judge.compare(PROMPT, "4", "It is five.")
    q = judge.compare(PROMPT, "It is five.", "4")
    assert 0.0 < p < 1.0 and p + q == pytest.approx(1.0, abs=1e-6)   # both orders asked: symmetric


def test_local_judge_expected_score_is_the_probability_weighted_rating(tiny_model_dir):
    from posttrain.judges.templates import rubric_messages

    judge = load_judge(f"local:{tiny_model_dir}", score_mode="expected")
    (result,) = judge.score_many([PROMPT], ["4"])
    logps = judge.generator.loglikelihood([(rubric_messages(PROMPT, "4"), f"Rating: {k}\n") for k in range(1, 11)])
    weights = [math.exp(lp) for lp in logps]
    assert result.score == pytest.approx(sum(k * w for k, w in zip(range(1, 11), weights)) / sum(weights))
    assert 1.0 <= result.score <= 10.0 and result.raw.startswith("expected rating")
    with pytest.raises(ConfigError, match="local judges only"):
        load_judge("http://127.0.0.1:9/v1@m", score_mode="expected")


# --------------------------------------------------------------------------- the HTTP judge


def http_judge(server, tmp_path, **kw):
    options = dict(cache_dir=tmp_path / "cache", timeout=5.0, max_retries=2, backoff=0.0)
    return HTTPJudge(server.url, "judge-model", **{**options, **kw})


def test_http_judge_normal_reply_and_cache_hit(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret")
    server = server_factory(lambda payload, n: (200, chat_reply("Correct and concise.\nRating: 9"), 0))
    judge = http_judge(server, tmp_path, api_key_env="MY_JUDGE_KEY")
    result = judge.score(PROMPT, "4")
    assert (result.score, result.raw) == (9.0, "Correct and concise.\nRating: 9")
    (payload,) = server.requests
    assert payload["model"] == "judge-model" and payload["temperature"] == 0
    assert "What is 2 + 2?" in payload["messages"][0]["content"]
    assert server.headers[0]["Authorization"] == "Bearer sk-secret"
    again = http_judge(server, tmp_path, api_key_env="MY_JUDGE_KEY").score(PROMPT, "4")   # a rerun
    assert again == result and len(server.requests) == 1      # served from the cache: no request
    judge.score(PROMPT, "5")
    assert len(server.requests) == 2                           # other messages: a new request
    http_judge(server, tmp_path, temperature=0.7).score(PROMPT, "4")
    assert len(server.requests) == 3                           # other sampling settings: a new request


def test_http_judge_timeout_is_retried_then_a_clear_error(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    server = server_factory(lambda payload, n: (200, chat_reply("Rating: 5"), 1.0))
    judge = http_judge(server, tmp_path, timeout=0.2, max_retries=1)
    with pytest.raises(JudgeError, match=r"no reply within 0.2s after 2 tries") as info:
        judge.score(PROMPT, "4")
    assert len(server.requests) == 2 and "sk-secret" not in str(info.value)


def test_http_judge_retries_a_500_then_succeeds(server_factory, tmp_path):
    server = server_factory(lambda payload, n: (500, b'{"error": "overloaded"}', 0) if n == 1
                            else (200, chat_reply("Rating: 6"), 0))
    assert http_judge(server, tmp_path).score(PROMPT, "4").score == 6.0
    assert len(server.requests) == 2


def test_http_judge_does_not_retry_a_4xx(server_factory, tmp_path):
    server = server_factory(lambda payload, n: (404, b'{"error": "model judge-model not found"}', 0))
    with pytest.raises(JudgeError, match="HTTP 404.*not found"):
        http_judge(server, tmp_path).score(PROMPT, "4")
    assert len(server.requests) == 1


@pytest.mark.parametrize("body", [b"<html>502 gateway</html>", b'{"choices": []}', b'{"choices": [{"message": {}}]}'])
def test_http_judge_malformed_reply_is_a_clear_error(server_factory, tmp_path, body):
    server = server_factory(lambda payload, n: (200, body, 0))
    with pytest.raises(JudgeError, match="malformed reply"):
        http_judge(server, tmp_path).score(PROMPT, "4")
    assert len(server.requests) == 1


def test_http_judge_unreachable_server(tmp_path):
    judge = HTTPJudge("http://127.0.0.1:9/v1", "m", cache_dir=tmp_path, max_retries=1, backoff=0.0, timeout=2)
    with pytest.raises(JudgeError, match="cannot connect.*after 2 tries"):
        judge.score(PROMPT, "4")


def test_http_judge_unreadable_score_is_recorded_not_raised(server_factory, tmp_path):
    server = server_factory(lambda payload, n: (200, chat_reply("I refuse to rate."), 0))
    result = http_judge(server, tmp_path).score(PROMPT, "4")
    assert math.isnan(result.score) and not result.ok and result.raw == "I refuse to rate."


def test_http_compare_swaps_positions(server_factory, tmp_path):
    server = server_factory(lambda payload, n: (200, chat_reply("A"), 0))   # always the first position
    judge = http_judge(server, tmp_path)
    assert judge.compare(PROMPT, "4", "5") == 0.5 and len(server.requests) == 2
    first, second = (r["messages"][0]["content"] for r in server.requests)
    assert first.index("[Response A]\n4") >= 0 and second.index("[Response A]\n5") >= 0


# --------------------------------------------------------------------------- ai-feedback pieces


def test_pick_pair_best_against_a_random_worse_one():
    ratings = {"a": 3.0, "b": 9.0, "c": 5.0, "d": math.nan}
    picks = {pick_pair(ratings, random.Random(seed)) for seed in range(40)}
    assert picks == {("b", "a"), ("b", "c")}          # never the unrated one
    assert pick_pair(ratings, random.Random(1)) == pick_pair(ratings, random.Random(1))
    assert pick_pair({"a": 7.0, "b": 7.0, "c": 2.0}, random.Random(0)) == "tie"
    assert pick_pair({"a": 7.0, "b": math.nan}, random.Random(0)) == "unrated"


def test_policies_label_a_repeated_model_by_position():
    policies = make_policies(["m", "m", "other"], [1.0], seed=5)
    assert [(p.label, p.temperature, p.seed) for p in policies] == [("m#1", 1.0, 5), ("m#2", 1.0, 6),
                                                                    ("other", 1.0, 7)]
    assert [p.temperature for p in make_policies(["m"], [0.0, 1.0], 0)] == [0.0, 1.0]
    with pytest.raises(ConfigError, match="at least two models"):
        make_policies(["m"], None, 0)
    with pytest.raises(ConfigError, match="one per model"):
        make_policies(["a", "b", "c"], [0.1, 0.2], 0)


# --------------------------------------------------------------------------- eval's win rate


def test_eval_winrate_with_an_http_lm_judge(server_factory, tmp_path, monkeypatch):
    from posttrain.evaluation.runner import evaluate
    from test_evaluation import HUB_FIXTURES, FakeGenerator

    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))

    def longer_wins(payload, n):   # a fair judge underneath: the longer response wins, whatever its position
        text = payload["messages"][-1]["content"]
        a = text.split("[Response A]\n", 1)[1].split("\n[End of response A]")[0]
        b = text.split("[Response B]\n", 1)[1].split("\n[End of response B]")[0]
        return 200, chat_reply("A" if len(a) > len(b) else "B"), 0

    server = server_factory(longer_wins)
    from posttrain.evaluation.tasks import TaskContext, get_task

    first = get_task("alpacaeval").load(TaskContext(data_files=HUB_FIXTURES))[0]["messages"][-1]["content"]
    gen = FakeGenerator(lambda p: "x" * 5000 if p == first else "ok")   # 1 win, 2 losses
    result = evaluate(None, "alpacaeval", tmp_path / "eval", generator=gen, data_files=HUB_FIXTURES,
                      judge=f"{server.url}@judge-model")
    (row,) = result["rows"]
    records = [json.loads(x) for x in (tmp_path / "eval" / "alpacaeval" / "samples.jsonl").read_text().splitlines()]
    wins = [1.0 if len(r["completion"]) > len(r["reference"]) else 0.0 for r in records]
    assert [r["judge_preference"] for r in records] == wins and 0 < sum(wins) < len(wins)
    assert row["metric"] == "win_rate" and row["value"] == pytest.approx(sum(wins) / len(wins))
    assert len(server.requests) == 2 * len(records)    # both orders of every pair
    with pytest.raises(ConfigError, match="URL@MODEL"):
        evaluate(None, "alpacaeval", tmp_path / "b", generator=gen, data_files=HUB_FIXTURES, judge=server.url)
