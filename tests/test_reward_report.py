"""Reward Reports written by every RL run, their text true for each kind of reward component:
a verifier, a reward model, a user function, and any kind that supplies its own description
(an LM judge). The report claims a check only when the logs support it."""

from __future__ import annotations

import json

import pytest

from posttrain.reports.reward_report import write_reward_report
from posttrain.rewards.compose import VerifierReward, build_reward
from posttrain.rewards.describe import RewardDescription, judge_description
from posttrain.train.rl.algorithms.grpo import GRPOConfig
from test_rl import rl_config

# The claims that belong to one kind only: none of them may appear in another kind's report.
CLAIMS = {
    "verifier": ["Reinforcement learning with verifiable rewards", "verifier accepts the completion",
                 "A verifier pays only for what it checks"],
    "reward_model": ["RLHF with a learned reward model", "over-optimisation", "unbounded real"],
    "function": ["A user-written Python function", "User code may reward surface features"],
    "judge": ["LM judge", "Reinforcement learning from AI feedback"],
}


def vowel_share(prompts, completions, **columns):
    """Share of the completion's characters that are vowels."""
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


def assert_only_claims_of(text: str, kind: str):
    for claim in CLAIMS[kind]:
        assert claim in text, claim
    for other, claims in CLAIMS.items():
        if other != kind:
            for claim in claims:
                assert claim not in text, f"{kind} report claims {other}: {claim!r}"


@pytest.mark.parametrize("kind", ["verifier", "reward_model", "function"])
def test_every_grpo_run_writes_a_reward_report_true_to_its_reward(kind, tiny_model_dir, tiny_rm_dir, tmp_path):
    from posttrain.train.rl.trainer import run_rl

    reward = {"verifier": [{"verifier": "gsm8k"}], "reward_model": [{"reward_model": tiny_rm_dir}],
              "function": [{"function": "test_reward_report:vowel_share"}]}[kind]
    out = tmp_path / kind
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, max_steps=2, reward=reward, temperature=2.0,
                     filter_zero_variance_groups=False))
    text = (out / "reward_report.md").read_text()
    assert_only_claims_of(text, kind)
    blob = json.loads((out / "reward_report.json").read_text())
    assert [c["kind"] for c in blob["components"]] == [kind]
    # eval_data ran at steps 0 and 2: the mismatch check has its series and says so
    assert blob["objective_mismatch"]["checked"] and "Objective mismatch: not checked" not in text
    assert "Held-out greedy accuracy" in text and "- Held-out (step 0):" in text
    name = blob["components"][0]["name"]
    assert f"- `{name}` (unweighted, mean per step): first" in text   # the component's logged values
    if kind == "verifier":
        assert "| gsm8k | verifier | `gsm8k` | 1.0 | 0 or 1 (binary) |" in text
    elif kind == "reward_model":
        assert f"`{tiny_rm_dir}`" in text and "(raw score)" in text
    else:
        assert "\"Share of the completion's characters that are vowels.\"" in text
        assert "`test_reward_report:vowel_share`" in text


def test_a_run_without_held_out_data_claims_no_held_out_check(tiny_model_dir, tmp_path):
    from posttrain.train.rl.trainer import run_rl

    out = tmp_path / "noeval"
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, max_steps=1, eval_data=[],
                     reward=[{"function": "test_reward_report:vowel_share"}]))
    text = (out / "reward_report.md").read_text()
    assert "Objective mismatch: not checked" in text and "Held-out (" not in text
    assert "Held-out greedy accuracy" not in text and "No held-out evaluation ran" in text
    assert "Reward hacking signs: not checked (fewer than two logged steps)" in text   # one step only
    assert "No KL penalty (β = 0)" in text
    assert not json.loads((out / "reward_report.json").read_text())["objective_mismatch"]["checked"]


def test_verifier_description_follows_the_verifiers_in_use():
    # gsm8k and math score 0 or 1; ifeval and code give partial credit
    assert VerifierReward("gsm8k", correct_value=10.0).describe().values == "0 or 10 (binary)"
    code = VerifierReward("code").describe()
    assert code.values == "0 to 1 (partial credit)" and "unit tests" in code.measures
    auto = VerifierReward("auto")
    assert auto.describe().details["verifiers"] == [] and auto.describe().values == "0 to 1"   # nothing scored yet
    auto(["p", "q"], ["The answer is 3.", "hello"], ground_truth=["3", {"instruction_id_list": ["punctuation:no_comma"],
                                                                        "kwargs": [{}]}],
         verifier=["gsm8k", "ifeval"])
    described = auto.describe()
    assert described.details["verifiers"] == ["gsm8k", "ifeval"]
    assert described.details["partial_credit"] is True and "IFEval, strict" in described.measures


class StubJudgeReward:
    """A component kind the composer has never heard of: it supplies its own description."""

    def __call__(self, prompts, completions, **columns):
        return [0.5 for _ in completions]

    def describe(self) -> RewardDescription:
        return judge_description("local:smollm2-135m-instruct")


def _fake_run(run_dir, components: list[dict], rewards: list[float], no_eos_penalty: float = 0.0):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "reward_mean": r, "reward/judge": r, "response_length": 20.0,
                    "truncated_share": 0.0}) + "\n" for i, r in enumerate(rewards)))
    (run_dir / "reward_report_inputs.json").write_text(json.dumps(
        {"algorithm": "grpo", "model": "m", "reward_components": components, "no_eos_penalty": no_eos_penalty,
         "kl": {"beta": 0.05, "final_beta": 0.05,
                                                                               "estimator": "k3", "in": "reward"}}))
    return run_dir


def test_a_new_component_kind_is_reported_from_its_own_description(tmp_path):
    reward = build_reward([{"function": StubJudgeReward(), "name": "judge", "weight": 2.0}])
    components = reward.describe()
    assert components[0]["kind"] == "judge" and (components[0]["low"], components[0]["high"]) == (0.0, 1.0)
    text = write_reward_report(_fake_run(tmp_path / "judge", components, [0.2, 0.4, 0.6])).read_text()
    assert_only_claims_of(text, "judge")
    assert "| judge | judge | `local:smollm2-135m-instruct` | 2.0 | 0 to 1 (scaled rubric rating) |" in text
    assert "The policy maximises the total reward = 2.0 × judge." in text
    assert "β = 0.05 (final 0.05), estimator k3, applied in the reward" in text


def test_describe_must_return_a_description():
    class Bad:
        def __call__(self, prompts, completions, **columns):
            return [0.0] * len(completions)

        def describe(self):
            return "a string"

    with pytest.raises(TypeError, match="must return a RewardDescription"):
        build_reward([{"function": Bad()}]).describe()


def test_mixed_components_are_each_described_with_the_dominance_caveat(tmp_path, tiny_rm_dir):
    reward = build_reward([{"verifier": "gsm8k", "correct_value": 10.0},
                           {"reward_model": tiny_rm_dir, "weight": 0.5, "options": {"scale": 2.0, "offset": -1.0}}],
                          no_eos_penalty=1.0)
    components = reward.describe()
    assert components[1]["values"] == "unbounded real (× 2 − 1)"
    text = write_reward_report(_fake_run(tmp_path / "mixed", components, [0.0, 1.0], no_eos_penalty=1.0)).read_text()
    for claim in CLAIMS["verifier"] + CLAIMS["reward_model"]:
        assert claim in text
    assert "total reward = 1.0 × gsm8k + 0.5 × reward_model − 1.0 for a completion cut off" in text
    assert "dominates that sum" in text


def _episode_run(run_dir, config, env_rewards: list[float]):
    """A fake multi-turn run: the components and episode block the trainer records for ``config``."""
    from posttrain.train.rl.trainer import episode_reward_component

    components = build_reward([{"verifier": "gsm8k"}]).describe() + [episode_reward_component(config)]
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "reward_mean": 0.5 + e, "reward/gsm8k": 0.5, "reward/environment": e}) + "\n"
        for i, e in enumerate(env_rewards)))
    (run_dir / "reward_report_inputs.json").write_text(json.dumps(
        {"algorithm": "grpo", "model": "m", "reward_components": components,
         "episodes": {"environment": config.environment, "tools": config.tools, "max_turns": config.max_turns,
                      "max_new_tokens": config.max_new_tokens, "max_episode_tokens": config.max_episode_tokens}}))
    return components, write_reward_report(run_dir).read_text()


def test_a_tool_run_reports_its_whole_reward_as_the_final_answers(tiny_model_dir, tmp_path):
    config = rl_config(GRPOConfig, tiny_model_dir, tmp_path / "x", tools=["calculator"], max_turns=3,
                       max_episode_tokens=96)
    components, text = _episode_run(tmp_path / "tools", config, [0.0, 0.0])
    env = components[-1]
    assert (env["kind"], env["weight"], env["low"], env["high"], env["step_rewards"]) == \
        ("environment", 1.0, 0.0, 0.0, False)
    assert "multi-turn episode (tools `calculator`; up to 3 model turns, 8 tokens a turn, 96 in all)" in text
    assert "From the final answer: `gsm8k` score(s) only the episode's last model turn" in text
    assert "From the environment: nothing (a tool environment returns step reward 0" in text
    assert "| environment | environment | `tools: calculator` | 1.0 | always 0 (no step rewards) |" in text
    assert "total reward = 1.0 × gsm8k + 1.0 × environment." in text
    assert "- `environment` (unweighted, mean per step): first 0.000, last 0.000" in text
    # the built-in tool as a one-tool environment is the same tool environment
    config = rl_config(GRPOConfig, tiny_model_dir, tmp_path / "y", environment="calculator", max_episode_tokens=96)
    components, _ = _episode_run(tmp_path / "env-calculator", config, [0.0])
    assert components[-1]["step_rewards"] is False and components[-1]["target"] == "calculator"


def test_an_environment_run_reports_its_step_rewards_apart_from_the_final_answer(tiny_model_dir, tmp_path):
    config = rl_config(GRPOConfig, tiny_model_dir, tmp_path / "x", environment="test_tools:NudgeEnvironment",
                       max_episode_tokens=40)
    components, text = _episode_run(tmp_path / "env", config, [0.25, 0.5])
    env = components[-1]
    assert (env["kind"], env["low"], env["high"], env["step_rewards"]) == ("environment", None, None, True)
    assert "multi-turn episode (environment `test_tools:NudgeEnvironment`; up to 4 model turns" in text
    assert "From the final answer: `gsm8k` score(s) only the episode's last model turn" in text
    assert "From the environment: the sum of its step rewards over the episode, weight 1" in text
    assert "- `environment` (unweighted, mean per step): first 0.250, last 0.500" in text
    assert "- `gsm8k` (unweighted, mean per step): first 0.500, last 0.500" in text
    assert "collect them turn after turn" in text   # the environment's risk, not a verifier's


def test_a_single_turn_run_has_no_environment_component(tiny_model_dir, tmp_path):
    from posttrain.train.rl.trainer import write_reward_report_inputs

    config = rl_config(GRPOConfig, tiny_model_dir, tmp_path / "x")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "metrics.jsonl").write_text("")

    class KL:
        value = 0.0

    inputs = json.loads(write_reward_report_inputs(tmp_path / "x", config, build_reward(config.reward), KL).read_text())
    assert "episodes" not in inputs and all(c["kind"] != "environment" for c in inputs["reward_components"])
    text = write_reward_report(tmp_path / "x").read_text()
    assert "multi-turn episode" not in text and "From the environment" not in text


@pytest.mark.parametrize("last, flagged", [(22, False), (18, True)])
def test_held_out_fall_is_a_mismatch_only_beyond_its_starting_interval(last, flagged, tmp_path):
    # reward rising; held-out 25/30 → last/30: 22 stays within 25/30's Wilson interval (lower end 0.664)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "reward_mean": 0.1 * i}) + "\n"
                                               for i in range(6)))
    (run / "reward_report_inputs.json").write_text(json.dumps(
        {"algorithm": "grpo", "model": "m", "reward_components": build_reward([{"verifier": "gsm8k"}]).describe(),
         "heldout": [{"step": 0, "accuracy": 25 / 30, "n": 30}, {"step": 6, "accuracy": last / 30, "n": 30}]}))
    text = write_reward_report(run).read_text()
    assert ("**Objective mismatch**" in text) is flagged
    if flagged:
        assert "below the lower end 0.664 of its starting 95% interval" in text
    else:
        assert "within its starting 95% interval (lower end 0.664, n = 30)" in text
