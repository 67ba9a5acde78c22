"""Multi-turn episodes (``train/rl/multiturn.py``, ``docs/tools.md``): token-in/token-out (the
trained ids are the sampled ids; inserted tokens mask 0, and prompt + episode decode to the
template's rendering), tools and environments that raise, hang or return junk end only their
episode, turn and episode limits, GRPO over episodes, refused options, ``posttrain eval`` on tool
tasks, and (``slow``) the embedded model with the calculator. The scripted policy, the test
tools and environments and the EOS-prone tiny model live in ``test_tools.py``."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.tools import ToolError, environment_factory
from posttrain.train.rl.rollout import HFRollout
from test_tools import CALL, ROW, Scripted, episodes, eos_model_dir, template_tokenizer  # noqa: F401  (fixtures)


def test_episode_tokens_are_the_sampled_ids_and_the_template_rendering(template_tokenizer):
    """Scripted turns: a call, then the answer. The episode's mask-1 ids are exactly the scripted
    (sampled) ids, the rest has mask 0, and prompt + episode decode to the template's rendering
    of the whole conversation (up to what the template puts after the final EOS)."""
    tok = template_tokenizer
    policy = Scripted(tok, [CALL, "The answer is 156."])
    mt, out = episodes(policy, tok, tools=["calculator"])
    assert out.end_reasons == ["done"] and out.turns.tolist() == [2] and out.texts == ["The answer is 156."]
    assert out.counts["tool_calls"] == 1 and bool(out.finished[0])
    ids, mask = out.completion_ids[0], out.completion_mask[0]
    n = int((ids != tok.pad_token_id).sum() + (ids == tok.pad_token_id).sum())   # no padding in a single row
    assert n == ids.shape[0]
    first, second = policy.sampled
    assert ids[mask == 1].tolist() == first + second
    assert mask[:len(first)].eq(1).all() and mask[-len(second):].eq(1).all()
    inserted = ids[len(first):-len(second)]
    assert mask[len(first):-len(second)].eq(0).all() and tok.decode(inserted).count("156") == 1
    assert out.sampling_logps[0][mask == 0].eq(0).all() and out.sampling_logps[0][mask == 1].eq(-0.5).all()
    chat = mt.chat
    history = chat.prompt_messages(ROW["messages"]) + [{"role": "assistant", "content": CALL}] + \
        chat.result_messages([("calculator", "156")]) + [{"role": "assistant", "content": "The answer is 156."}]
    full = chat._render(history, False)
    text = tok.decode(out.prompt_ids[0] + ids.tolist())
    assert full.startswith(text) and full[len(text):].strip() == ""


def test_sampled_episodes_train_on_exactly_the_sampled_ids(eos_model_dir):
    """A real sampler (tiny model, HFRollout) over several turns: what each turn's generate
    returned, concatenated, is the episode's mask-1 ids; its log-probs sit at the same places."""
    from posttrain.models import load_model, load_tokenizer

    model, tok = load_model(eos_model_dir).eval(), load_tokenizer(eos_model_dir)
    backend = HFRollout(model, tok)
    calls = []
    generate = backend.generate

    def recording(*args, **kwargs):
        out = generate(*args, **kwargs)
        calls.append([(ids[m.bool()].tolist(), lp[m.bool()].tolist())
                      for ids, m, lp in zip(out.completion_ids, out.completion_mask, out.sampling_logps)])
        return out

    backend.generate = recording
    _, out = episodes(backend, tok, environment="test_tools:NudgeEnvironment", n=4, max_new_tokens=6,
                      max_episode_tokens=60, seeds=[11])
    assert out.turns.max() == 2 and len(calls) == 2    # a second turn was sampled
    for row in range(4):
        expected_ids, expected_lps = [], []
        for turn, sampled in enumerate(calls):
            # an ended episode leaves the batch: turn k's rows are the episodes still running
            running = [r for r in range(4) if out.turns[r] > turn]
            if row in running:
                ids, lps = sampled[running.index(row)]
                expected_ids += ids
                expected_lps += lps
        mask = out.completion_mask[row].bool()
        assert out.completion_ids[row][mask].tolist() == expected_ids
        assert out.sampling_logps[row][mask].tolist() == pytest.approx(expected_lps)
        # one 0.25 per step, and a turn reaches the environment only when it ended in EOS
        steps = int(out.turns[row]) - (out.end_reasons[row] != "done")
        assert out.env_rewards[row] == pytest.approx(0.25 * steps)


@pytest.mark.parametrize("tool,reason", [
    ("test_tools:broken", "tool broken raised RuntimeError: the backend is down"),
    ("test_tools:sleepy", "timed out after 0.5 s"),
    ("test_tools:junk", "tool junk returned junk"),
])
def test_a_tool_that_raises_hangs_or_returns_junk_ends_its_episode_with_a_reason(tool, reason, tokenizer, caplog):
    name = tool.partition(":")[2]
    call = f'<tool_call>{{"name": "{name}", "arguments": {{"x": 1}}}}</tool_call>'
    policy = Scripted(tokenizer, [call, "never reached"])
    with caplog.at_level("WARNING"):
        _, out = episodes(policy, tokenizer, tools=[tool], timeout=0.5)
    assert out.end_reasons == ["env_failure"] and reason in out.failures[0] and out.turns.tolist() == [1]
    assert reason in caplog.text
    assert policy.calls == 1


@pytest.mark.parametrize("environment,reason", [
    ("test_tools:JunkEnvironment", "step returned junk: a int, not a StepResult"),
    ("test_tools:RaisingEnvironment", "raised KeyError: 'no such board'"),
])
def test_an_environment_that_fails_ends_only_its_episodes(environment, reason, tokenizer):
    _, out = episodes(Scripted(tokenizer, ["A move.", "never reached"]), tokenizer, environment=environment,
                      rows=(ROW, ROW))
    assert out.end_reasons == ["env_failure"] * 2 and out.failures == [reason] * 2


def test_a_failed_reset_ends_the_episode_before_any_turn(tokenizer):
    policy = Scripted(tokenizer, ["never sampled"])
    _, out = episodes(policy, tokenizer, environment="test_tools:FailingResetEnvironment")
    assert out.end_reasons == ["env_failure"] and out.failures == ["reset returned junk: a str, not a list of messages"]
    assert policy.calls == 0 and out.turns.tolist() == [0] and out.completion_mask.sum() == 0
    assert out.prompt_ids[0]   # the row's own prompt stands in, so the batch's forwards still have one


def test_a_template_that_is_not_prefix_consistent_is_refused_at_setup(tokenizer):
    import copy

    from posttrain.data.templates import TemplateError

    tok = copy.deepcopy(tokenizer)   # a header that counts the messages changes with every turn
    tok.chat_template = ("{{ messages | length }} messages\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                         "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                         "{% endif %}")
    with pytest.raises(TemplateError, match="prefix"):
        episodes(Scripted(tok, ["x"]), tok, tools=["calculator"])


def test_environment_options_reach_the_constructor(tokenizer):
    _, out = episodes(Scripted(tokenizer, ["a", "b", "c", "d"]), tokenizer, environment="test_tools:NudgeEnvironment",
                      options={"steps": 3})
    assert out.end_reasons == ["done"] and out.turns.tolist() == [3] and out.env_rewards.tolist() == [0.75]
    with pytest.raises(ToolError, match="environment_options are for"):
        environment_factory("calculator", options={"steps": 3})


def test_bad_calls_by_the_model_are_answered_and_the_episode_goes_on(tokenizer):
    policy = Scripted(tokenizer, ['<tool_call>{"name": calc}</tool_call>', '<tool_call>{"name": "abacus", '
                                  '"arguments": {}}</tool_call>', CALL, "The answer is 156."])
    _, out = episodes(policy, tokenizer, tools=["calculator"])
    assert out.end_reasons == ["done"] and out.turns.tolist() == [4]
    assert out.counts == {"tool_calls": 2, "parse_failures": 1, "tool_errors": 1,
                          "inserted_tokens": pytest.approx(out.counts["inserted_tokens"])}
    assert "unknown tool 'abacus'" in out.transcripts[0] and "could not read a tool call" in out.transcripts[0]


def test_turn_and_episode_limits_end_episodes(tokenizer):
    long_turn = "word " * 50
    _, out = episodes(Scripted(tokenizer, [long_turn]), tokenizer, tools=["calculator"], max_new_tokens=8)
    assert out.end_reasons == ["turn_tokens"] and not out.finished[0] and int(out.completion_mask.sum()) == 8
    _, out = episodes(Scripted(tokenizer, [CALL] * 4), tokenizer, tools=["calculator"], max_turns=2)
    assert out.end_reasons == ["max_turns"] and out.turns.tolist() == [2]
    _, out = episodes(Scripted(tokenizer, [CALL] * 4), tokenizer, tools=["calculator"], max_episode_tokens=70)
    assert out.end_reasons == ["episode_tokens"] and out.completion_ids.shape[1] <= 70


def test_grpo_with_tools_trains_on_episodes_and_changes_parameters(eos_model_dir, tmp_path):
    from safetensors.torch import load_file
    from test_rl import read_metrics, rl_config

    from posttrain.train.rl.algorithms.grpo import GRPOConfig
    from posttrain.train.rl.trainer import run_rl

    config = rl_config(GRPOConfig, eos_model_dir, tmp_path / "run", environment="test_tools:NudgeEnvironment",
                       max_new_tokens=8, max_episode_tokens=40, save_samples=4)
    run_rl(config)
    records = [r for r in read_metrics(tmp_path / "run") if "reward_mean" in r]
    assert len(records) == 2
    first = records[0]   # sampled before any update (lr 1e-3 soon teaches the tiny model to skip EOS)
    assert first["episode/turns"] > 1 and first["episode/inserted_tokens"] > 0
    assert first["reward/environment"] > 0   # NudgeEnvironment pays 0.25 a step
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert any("Go on." in s["episode"] for s in samples)
    report = json.loads((tmp_path / "run" / "reward_report_inputs.json").read_text())
    assert report["reward_components"][-1]["kind"] == "environment" and report["episodes"]["max_turns"] == 4
    assert f"- `environment` (unweighted, mean per step): first {first['reward/environment']:.3f}" in \
        (tmp_path / "run" / "reward_report.md").read_text()
    before, after = load_file(f"{eos_model_dir}/model.safetensors"), load_file(tmp_path / "run" / "model" /
                                                                               "model.safetensors")
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)


@pytest.mark.parametrize("overrides,message", [
    ({"tools": ["calculator"], "environment": "calculator"}, "not both"),
    ({"tools": ["calculator"], "rollout_backend": "vllm-server", "vllm_server_urls": ["http://node2:8000"]},
     "do not support rollout_backend=vllm-server"),
    ({"environment": "calculator", "placement": "ray"}, "do not support placement=ray yet: use placement=local"),
    ({"tools": ["calculator"], "max_episode_tokens": 4}, "max_episode_tokens=4 is below"),
])
def test_unsupported_tool_options_are_refused(overrides, message, tiny_model_dir, tmp_path):
    from test_rl import rl_config

    from posttrain.config import ConfigError
    from posttrain.train.rl.algorithms.grpo import GRPOConfig

    with pytest.raises(ConfigError, match=message):
        rl_config(GRPOConfig, tiny_model_dir, tmp_path / "x", **overrides)


def test_ppo_with_tools_is_refused(tiny_model_dir, tmp_path):
    from test_rl import rl_config

    from posttrain.config import ConfigError
    from posttrain.train.rl.algorithms.ppo import PPOConfig

    with pytest.raises(ConfigError, match=r"ppo \(a value model\)"):
        rl_config(PPOConfig, tiny_model_dir, tmp_path / "x", tools=["calculator"])


def test_unknown_tools_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    from test_rl import rl_config

    from posttrain.config import ConfigError
    from posttrain.train.rl import trainer
    from posttrain.train.rl.algorithms.grpo import GRPOConfig

    monkeypatch.setattr(trainer, "load_policy", lambda *a: pytest.fail("the model was loaded"))
    config = rl_config(GRPOConfig, str(tmp_path / "no-model"), tmp_path / "x", tools=["calculator", "nowhere:tool"])
    with pytest.raises(ConfigError, match="no module named 'nowhere'"):
        trainer.run_rl(config)


@pytest.mark.slow
def test_embedded_model_trains_two_grpo_steps_with_the_calculator(tmp_path):
    """`posttrain grpo tools=[calculator]` on `builtin:arithmetic_tools`, as a user runs it: two
    steps of episodes of the real SmolLM2-135M-Instruct, the tools block in its system turn, the
    held-out set evaluated over the same episodes before and after."""
    from posttrain.cli import main as cli_main
    from test_rl import read_metrics

    out = tmp_path / "tools"
    assert cli_main(["grpo", f"out={out}", "tools=[calculator]", "max_steps=2", "prompts_per_step=2",
                     "group_size=2", "max_new_tokens=32", "max_turns=2", "max_episode_tokens=96",
                     "learning_rate=1e-6", "progress=false", "save_samples=4",
                     "data=[{source: 'builtin:arithmetic_tools', n: 8}]",
                     "eval_data=[{source: 'builtin:arithmetic_tools:test', n: 2}]"]) == 0
    records = read_metrics(out)
    train = [r for r in records if "reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("episode/turns", "episode/tool_calls", "episode/end_done", "reward/environment",
                "rollout/logprob_abs_diff_mean"):
        assert key in train[0], key
    assert train[0]["episode/turns"] >= 1
    assert len([r for r in records if "eval_accuracy" in r]) == 2
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(s["end"] for s in samples)   # save_samples per step
    assert (out / "model" / "model.safetensors").exists()


class ToolCallingGenerator:
    """An evaluation generator whose episodes call the calculator on the question's expression
    and answer with the tool's result: what a model that learned the tool would do."""

    def episodes(self, prompts, tools, max_turns, max_new_tokens=256, temperature=0.0, top_p=1.0, num_samples=1,
                 seed=0):
        from posttrain.tools.calculator import calculator

        assert tools == ("calculator",) and max_turns == 3
        out = []
        for messages in prompts:
            expression = messages[-1]["content"].split("?")[0].removeprefix("What is ")
            final = f"The answer is {calculator(expression)}."
            out.append([{"final": final, "episode": f"{CALL}…{final}", "end": "done"}] * num_samples)
        return out


def test_eval_scores_tool_tasks_on_the_final_turn(tmp_path):
    from posttrain.evaluation.runner import evaluate

    result = evaluate(None, "arith_tools_builtin", tmp_path, limit=4, generator=ToolCallingGenerator())
    task = result["tasks"]["arith_tools_builtin"]
    assert task["metrics"][0]["metric"] == "accuracy" and task["metrics"][0]["value"] == 1.0
    records = [json.loads(line) for line in open(task["samples_file"])]
    assert len(records) == 4 and all(r["ends"] == ["done"] and "<tool_call>" in r["episodes"][0] for r in records)


def test_eval_episodes_of_a_real_model_are_seeded_per_prompt(eos_model_dir):
    from posttrain.evaluation.generation import HFGenerator
    from posttrain.models import load_model, load_tokenizer

    gen = HFGenerator(load_model(eos_model_dir), load_tokenizer(eos_model_dir), batch_size=4)
    prompts = [[{"role": "user", "content": f"What is {a} * 7?"}] for a in (123, 456)]
    both = gen.episodes(prompts, ("calculator",), max_turns=2, max_new_tokens=6, temperature=1.0, num_samples=2,
                        seed=5)
    alone = gen.episodes(prompts[1:], ("calculator",), max_turns=2, max_new_tokens=6, temperature=1.0, num_samples=2,
                         seed=6)   # prompt 1 of the first call had seed 5 + 1
    assert [len(e) for e in both] == [2, 2] and both[1] == alone[0]
    assert all(e["end"] in ("done", "turn_tokens", "episode_tokens", "max_turns") for e in both[0])
