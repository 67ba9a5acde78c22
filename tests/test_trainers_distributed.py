"""Every training command runs under ``accelerate launch --multi_gpu --num_processes 2`` (gloo,
CPU) exactly as the README's "Scaling out" shows, and follows the one-process run's loss
trajectory: SFT, DPO, KTO (its KL reference point gathered over both processes), ORPO and the
reward model with the same global batch (half the per-process batch on two processes), RLOO, NLPO and
online DPO with the same global ``prompts_per_step``, and distillation (the same global ``prompts_per_step``; student samples and dataset steps, the
divergence a token mean over both processes' completions). (GRPO and PPO,
with rollouts and gradients, are in test_rl_distributed.py; SFT's first-step gradients in
test_engine.py.)"""

from __future__ import annotations

import math

import pytest

from _launch import accelerate_launch
from test_rl import read_metrics

RL = ["max_new_tokens=6", "group_size=2", "prompts_per_step=4", "batch_size=4", "temperature=1.5",
      "data=[{source: 'builtin:arithmetic_rlvr', n: 8}]", "eval_data=[]", "save_samples=0",
      "reward=[{function: 'test_rl:length_reward'}]"]
PAIRS = "data=[{source: 'builtin:arithmetic_preference', count: 16}]"

# command, options shared by both runs, per-process batch options for 1 and for 2 processes
CASES = {
    "sft": (["data=[{source: 'builtin:arithmetic_sft', count: 16}]", "max_length=96", "eval_data=[]"], "batch_size=4", "batch_size=2"),
    "dpo": ([PAIRS, "max_length=128", "max_prompt_length=64", "beta=0.5", "eval_data=[]"], "batch_size=4", "batch_size=2"),
    # warmup_ratio=0: the first update moves the weights, so the second step's KL reference point is not 0 (1.33)
    "kto": ([PAIRS, "max_length=128", "max_prompt_length=64", "beta=0.5", "eval_data=[]", "warmup_ratio=0"],
            "batch_size=4", "batch_size=2"),
    "orpo": ([PAIRS, "max_length=128", "max_prompt_length=64", "eval_data=[]", "warmup_ratio=0"], "batch_size=4",
             "batch_size=2"),
    "reward": ([PAIRS, "max_length=128", "max_prompt_length=64", "eval_data=[]"], "batch_size=4", "batch_size=2"),
    "rloo": (RL, "", ""),
    # each process samples, judges and pairs its half of the prompts; the loss is over both halves' pairs
    "online-dpo": (["max_new_tokens=6", "num_generations=2", "prompts_per_step=4", "temperature=1.5", "beta=0.5",
                    "warmup_ratio=0", "data=[{source: 'builtin:arithmetic_rlvr', n: 8}]", "eval_data=[]",
                    "save_samples=0", "judge=function:test_rl:length_reward"], "batch_size=2", "batch_size=2"),
    "nlpo": (RL + ["ppo_epochs=1", "num_minibatches=2", "mask_refresh_steps=1"], "", ""),
    # lmbda=0.5, seed 1: step 1 on student samples, step 2 on the dataset's completions
    "distill": (["teacher={teacher}", "data=[{source: 'builtin:arithmetic_sft', n: 8}]", "eval_data=[]",
                 "prompts_per_step=4", "max_new_tokens=6", "lmbda=0.5", "seed=1", "save_samples=0"], "batch_size=4",
                "batch_size=2"),
}


@pytest.mark.parametrize("command", list(CASES))
def test_command_on_two_processes_follows_one_process(command, tiny_model_dir, tiny_teacher_dir, tmp_path):
    from posttrain.cli import main

    shared, batch_one, batch_two = CASES[command]
    shared = [option.replace("{teacher}", tiny_teacher_dir) for option in shared]
    common = [f"model={tiny_model_dir}", "max_steps=2", "learning_rate=1e-3", "progress=false", *shared]
    assert main([command, f"out={tmp_path / 'one'}", *common, *filter(None, [batch_one])]) == 0
    proc = accelerate_launch("-m", "posttrain.cli", command, f"out={tmp_path / 'two'}", *common,
                             *filter(None, [batch_two]), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = [r["loss"] for r in read_metrics(tmp_path / "one") if "loss" in r]
    two = [r["loss"] for r in read_metrics(tmp_path / "two") if "loss" in r]
    assert len(one) == 2 and two == pytest.approx(one, rel=1e-4, abs=1e-6)
    if command == "kto":   # z_ref from both processes' mismatched pairs = the one process's whole batch
        kl_one, kl_two = ([r["kl"] for r in read_metrics(tmp_path / run) if "kl" in r] for run in ("one", "two"))
        # log-ratios of float32 sums of ~-300 (ulp 3e-5), the reference precomputed in other batches: abs 1e-4
        assert kl_one[-1] > 0.1 and kl_two == pytest.approx(kl_one, rel=1e-4, abs=1e-4)
    if command == "online-dpo":   # the same judged pairs, and a second step that moved off ln 2
        pairs_one, pairs_two = ([r["pairs"] for r in read_metrics(tmp_path / run) if "pairs" in r] for run in ("one", "two"))
        assert pairs_two == pairs_one and min(pairs_one) > 0 and abs(one[1] - math.log(2)) > 1e-4
    if command == "distill":   # both kinds of step ran
        assert [r["on_policy"] for r in read_metrics(tmp_path / "two") if "loss" in r] == [1.0, 0.0]
    assert (tmp_path / "two" / "model" / "config.json").exists()
