"""RL on several processes (gloo, CPU) follows the one-process run: a step's prompts are a global
draw split over processes and each completion is seeded by (seed, step, prompt, sample), so
1 process × 4 prompts and 2 processes × 2 prompts sample the same completions, score the same
rewards, log the same losses and take the same first update (gradients to 1e-5), for GRPO, for
PPO with its value model and for GSPO, CISPO and REINFORCE++; a two-process PPO run resumed from
its checkpoint continues the same trajectory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _dist_rl import run_recorded
from _launch import accelerate_launch
from test_rl import read_metrics
from test_tools import eos_model_dir  # noqa: F401  (fixture)

SCRIPT = Path(__file__).parent / "_dist_rl.py"


def overrides(model_dir, out, **extra) -> dict:
    base = {"model": model_dir, "out": str(out), "max_steps": 2, "prompts_per_step": 4, "group_size": 4,
            "max_new_tokens": 6, "progress": False, "learning_rate": 1e-3, "batch_size": 3, "temperature": 1.5,
            "data": [{"source": "builtin:arithmetic_rlvr", "n": 12}],
            "eval_data": [{"source": "builtin:arithmetic_rlvr:test", "n": 3}], "save_samples": 0,
            "reward": [{"function": "test_rl:length_reward"}]}
    return {**base, **extra}


def launch(cls_name, options, record):
    proc = accelerate_launch(SCRIPT, cls_name, json.dumps(options), record, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def train_records(out):
    return [r for r in read_metrics(Path(out)) if "reward_mean" in r]


def assert_same_run(single_dir, record_dir, out_single, out_dist, steps, loss_atol=1e-6):
    one = torch.load(Path(single_dir) / "rank0.pt")
    parts = [torch.load(Path(record_dir) / f"rank{r}.pt") for r in range(2)]
    for step in range(steps):
        assert one["rollouts"][step] == parts[0]["rollouts"][step] + parts[1]["rollouts"][step], f"step {step + 1}"
        assert one["scores"][step] == pytest.approx(parts[0]["scores"][step] + parts[1]["scores"][step], abs=1e-6)
    a, b = train_records(out_single), train_records(out_dist)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "reward_std", "loss", "response_length", "entropy"):
            atol = loss_atol if key == "loss" else 1e-6
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=atol), (ra["step"], key)
    evals_a = [r["eval_accuracy"] for r in read_metrics(Path(out_single)) if "eval_accuracy" in r]
    evals_b = [r["eval_accuracy"] for r in read_metrics(Path(out_dist)) if "eval_accuracy" in r]
    assert evals_a == evals_b and len(evals_a) == 2   # step 0 and the end, rows split over processes
    return one, parts


def assert_same_gradients(one, parts):
    assert one["grads"] and set(one["grads"]) == set(parts[0]["grads"])
    for name, g in one["grads"].items():
        scale = g.abs().max().item() + 1e-12
        for part in parts:  # after the all-reduce every process holds the same gradient
            assert torch.allclose(g, part["grads"][name], atol=1e-5 * scale, rtol=0), name


def test_grpo_on_two_processes_follows_one_process(tiny_model_dir, tmp_path):
    run_recorded("GRPOConfig", overrides(tiny_model_dir, tmp_path / "one"), str(tmp_path / "rec1"))
    launch("GRPOConfig", overrides(tiny_model_dir, tmp_path / "two"), str(tmp_path / "rec2"))
    one, parts = assert_same_run(tmp_path / "rec1", tmp_path / "rec2", tmp_path / "one", tmp_path / "two", 2)
    assert_same_gradients(one, parts)
    # the final weights agree too (every process steps the same averaged gradients)
    from safetensors.torch import load_file

    w1, w2 = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("one", "two"))
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-5), name


def test_ppo_value_model_and_resume_on_two_processes_follow_one_process(tiny_model_dir, tiny_rm_dir, tmp_path):
    """PPO: the value model is prepared like the policy (its gradients are averaged: equal to the
    one-process gradients), advantages are whitened over all processes' rows, minibatches are
    drawn from all rows. The two-process run stops after step 1 and is resumed to step 2."""
    ppo = {"reward": [{"reward_model": tiny_rm_dir}], "beta": 0.05, "ppo_epochs": 2, "num_minibatches": 2}
    run_recorded("PPOConfig", overrides(tiny_model_dir, tmp_path / "one", **ppo), str(tmp_path / "rec1"))
    launch("PPOConfig", overrides(tiny_model_dir, tmp_path / "two", max_steps=1, **ppo), str(tmp_path / "rec2a"))
    launch("PPOConfig", overrides(tiny_model_dir, tmp_path / "two", **ppo), str(tmp_path / "rec2b"))
    one = torch.load(tmp_path / "rec1" / "rank0.pt")
    first = [torch.load(tmp_path / "rec2a" / f"rank{r}.pt") for r in range(2)]
    resumed = [torch.load(tmp_path / "rec2b" / f"rank{r}.pt") for r in range(2)]
    assert any(name.startswith("value.") for name in one["grads"])
    assert_same_gradients(one, first)
    assert one["rollouts"][0] == first[0]["rollouts"][0] + first[1]["rollouts"][0]
    # the resumed run sampled only step 2, and sampled what the uninterrupted run did
    assert len(resumed[0]["rollouts"]) == 1
    assert one["rollouts"][1] == resumed[0]["rollouts"][0] + resumed[1]["rollouts"][0]
    assert one["scores"][1] == pytest.approx(resumed[0]["scores"][0] + resumed[1]["scores"][0], abs=1e-6)
    a, b = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "loss", "value_loss", "kl"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)


@pytest.mark.parametrize("algorithm,extra", [
    ("gspo", {}),                               # 4 minibatches of rows drawn from both processes
    ("cispo", {"num_minibatches": 2}),          # the second update's IS weights move off 1
    ("reinforce_pp", {}),                       # returns whitened over both processes' tokens
])
def test_added_algorithms_on_two_processes_follow_one_process(algorithm, extra, tiny_model_dir, tmp_path):
    """One step: the same completions, rewards, losses and first-update gradients."""
    from posttrain.train.rl.algorithms import ALGORITHMS

    cls_name = ALGORITHMS[algorithm].config_path.rpartition(":")[2]   # reached through rl.config by name
    options = dict(max_steps=1, **extra)
    run_recorded(cls_name, overrides(tiny_model_dir, tmp_path / "one", **options), str(tmp_path / "rec1"))
    launch(cls_name, overrides(tiny_model_dir, tmp_path / "two", **options), str(tmp_path / "rec2"))
    # REINFORCE++'s first loss is -mean(whitened advantages) = 0: a float32 sum of ~100 unit-size
    # terms, so the two runs agree to about 100 · 6e-8 · max|A| (≈ 3) ≈ 2e-5, not to 1e-6
    loss_atol = 2e-5 if algorithm == "reinforce_pp" else 1e-6
    assert_same_gradients(*assert_same_run(tmp_path / "rec1", tmp_path / "rec2", tmp_path / "one",
                                           tmp_path / "two", 1, loss_atol=loss_atol))


@pytest.mark.parametrize("aggregation", ["grpo", "dapo"])
def test_multi_turn_grpo_on_two_processes_follows_one_process(aggregation, eos_model_dir, tmp_path):
    """Episodes of several turns (an environment answering each turn, its tokens mask 0): each
    turn of each episode is seeded by (prompt seed, sample, turn), so the two processes sample
    the same episodes as one; the loss over policy tokens only (per episode for grpo, per sampled
    token over the step for dapo) gives the same losses and first-update gradients."""
    options = dict(environment="test_tools:NudgeEnvironment", max_new_tokens=8, max_episode_tokens=40,
                   aggregation=aggregation, max_steps=1)
    run_recorded("GRPOConfig", overrides(eos_model_dir, tmp_path / "one", **options), str(tmp_path / "rec1"))
    launch("GRPOConfig", overrides(eos_model_dir, tmp_path / "two", **options), str(tmp_path / "rec2"))
    assert_same_gradients(*assert_same_run(tmp_path / "rec1", tmp_path / "rec2", tmp_path / "one", tmp_path / "two", 1))
    a, b = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert a[0]["episode/turns"] > 1 and a[0]["episode/inserted_tokens"] > 0   # several turns, tool tokens in
    for key in ("episode/turns", "episode/inserted_tokens", "reward/environment", "episode/end_done"):
        assert a[0][key] == pytest.approx(b[0][key], abs=1e-9), key


def test_prompts_per_step_must_split_over_processes(tiny_model_dir, tmp_path, monkeypatch):
    from posttrain.train.engine import TrainingError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match="prompts_per_step=3 is the number per step over all 2 processes"):
        run_recorded("GRPOConfig", overrides(tiny_model_dir, tmp_path / "x", prompts_per_step=3), str(tmp_path / "r"))


def test_sharded_configs_are_refused_without_a_gpu(monkeypatch):
    from posttrain.config import TrainingOptions
    from posttrain.train.engine import TrainingError, make_accelerator

    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without CUDA")
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        monkeypatch.setenv(variable, "true")
        with pytest.raises(TrainingError, match=f"{name} was requested .* no CUDA GPU"):
            make_accelerator(TrainingOptions(out="unused"))
        monkeypatch.delenv(variable)
