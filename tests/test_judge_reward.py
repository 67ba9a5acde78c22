"""An LM judge as an RL reward component (``{judge: SPEC}``): the rubric rating scaled to [0, 1]
by hand, an unreadable reply adding nothing and counted, bad entries refused, and ``posttrain
grpo`` with a judge reward served by a local HTTP judge: the judge loads once, the metrics count
unreadable replies, the Reward Report inputs name the judge component."""

import json
import math

import pytest

from judge_server import chat_reply, judged_text
from posttrain.rewards.compose import build_reward, check_reward_spec
from test_judges import server_factory  # noqa: F401  (fixture)
from test_rl import read_metrics, rl_config

PROMPTS = [[{"role": "user", "content": "Say something."}]] * 3


def rate_by_length(payload, n):
    """Rating = 1 + characters of the response (at most 10); a response with a '?' gets no rating."""
    completion = judged_text(payload)
    if "?" in completion:
        return 200, chat_reply("Hard to say."), 0
    return 200, chat_reply(f"Fine.\nRating: {min(10, 1 + len(completion))}"), 0


def test_rubric_rating_scaled_to_unit_interval_and_unreadable_adds_nothing(server_factory, tmp_path):  # noqa: F811
    server = server_factory(rate_by_length)
    reward = build_reward([{"judge": f"{server.url}@judge-model", "weight": 2.0,
                            "options": {"cache_dir": str(tmp_path / "cache")}},
                           {"function": "test_rewards_compose:constant_reward", "weight": 0.5}])
    totals, parts = reward(PROMPTS, ["abc", "abcdefghijklmnop", "why?"])
    # ratings 4 and 10 (capped); scaled (r - 1) / 9 = 1/3 and 1; the unreadable one NaN
    assert parts["judge"][:2] == pytest.approx([1 / 3, 1.0]) and math.isnan(parts["judge"][2])
    assert totals == pytest.approx([2 / 3 + 0.5, 2.0 + 0.5, 0.0 + 0.5])
    assert len(server.requests) == 3
    # a string prompt is the user's turn
    totals, _ = reward(["Say something."], ["ab"])
    assert totals == pytest.approx([2 * 2 / 9 + 0.5])
    assert "USER: Say something." in server.requests[-1]["messages"][-1]["content"]


@pytest.mark.parametrize("entry, message", [
    ({"judge": "lokal:x"}, "reward entry 0: unknown judge 'lokal:x'"),
    ({"judge": "http://localhost:8000/v1"}, "reward entry 0: judge 'http://localhost:8000/v1': name the served model"),
    ({"judge": "local:m", "options": {"timout": 3}}, "unknown judge option 'timout' (did you mean 'timeout'?)"),
    ({"judge": "http://h:1/v1@m", "options": {"score_mode": "expected"}}, "implemented for local judges only"),
    ({"judge": "local:m", "correct_value": 10}, "unknown key 'correct_value'"),
])
def test_bad_judge_entries_are_refused(entry, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        check_reward_spec([entry])


def test_grpo_with_a_judge_reward(server_factory, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    from posttrain.judges import spec as judge_spec
    from posttrain.train.rl.algorithms.grpo import GRPOConfig
    from posttrain.train.rl.trainer import run_rl

    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    loads = []
    original = judge_spec.load_judge
    monkeypatch.setattr(judge_spec, "load_judge", lambda *a, **k: loads.append(a) or original(*a, **k))
    server = server_factory(rate_by_length)
    spec = f"{server.url}@judge-model"
    out = tmp_path / "grpo"
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, eval_data=[], temperature=2.0,
                     reward=[{"judge": spec, "weight": 2.0}]))
    assert len(loads) == 1                              # built once, used every step
    train = [r for r in read_metrics(out) if "reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert 0 <= r["reward/judge/unscored"] <= 1 and (r["reward/judge/unscored"] == 1 or 0 <= r["reward/judge"] <= 1)
    asked = [judged_text(q) for q in server.requests]
    assert len(asked) == 2 * 2 * 4 or len(set(asked)) < len(asked)   # one request per completion (cache aside)
    report = json.loads((out / "reward_report_inputs.json").read_text())
    (component,) = report["reward_components"]
    assert (component["name"], component["kind"], component["target"], component["weight"]) == ("judge", "judge", spec, 2.0)
    assert (component["low"], component["high"], component["rubric"]) == (0.0, 1.0, [1.0, 10.0])
    written = (out / "reward_report.md").read_text()   # the judge's own description, no verifier claim
    assert spec in written and "LM judge" in written and "verifier accepts" not in written
    assert "reward/judge/unscored" in report["steps"][0]
