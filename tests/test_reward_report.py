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
