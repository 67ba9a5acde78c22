"""The RL trainers on an encoder-decoder policy (a tiny random T5): a GRPO run with a ROUGE reward
(plus a length term, so that a random policy's groups have reward variance) and a PPO run with
its value model on the decoder states both train, score their held-out rows, and save a model that
reloads with AutoModelForSeq2SeqLM."""

from __future__ import annotations

import torch
from test_rl import read_metrics, rl_config

from posttrain.train.rl.algorithms.grpo import GRPOConfig
from posttrain.train.rl.algorithms.ppo import PPOConfig
from posttrain.train.rl.trainer import run_rl

SUMMARY = {"data": [{"source": "builtin:summary_mini_rlvr", "n": 8}],
           "eval_data": [{"source": "builtin:summary_mini_rlvr:test", "n": 2}]}


def changed_weights(start_dir, out) -> list[str]:
    from transformers import AutoModelForSeq2SeqLM

    before = AutoModelForSeq2SeqLM.from_pretrained(start_dir).state_dict()
    after = AutoModelForSeq2SeqLM.from_pretrained(out / "model").state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_grpo_with_a_rouge_reward_trains_a_t5(tiny_t5_dir, tmp_path):
    out = tmp_path / "grpo"
    run_rl(rl_config(GRPOConfig, tiny_t5_dir, out, reward=[{"verifier": "rouge"},
                                                           {"function": "test_rl:length_reward", "weight": 0.1}],
                     temperature=2.0, **SUMMARY))
    records = read_metrics(out)
    steps = [r for r in records if "reward_mean" in r]
    assert len(steps) == 2 and all("reward/rouge" in r for r in steps)
    assert steps[0]["trained_share"] > 0   # groups with reward variance were trained on
    assert [r["eval_n"] for r in records if "eval_accuracy" in r] == [2, 2]   # held-out ROUGE at start and end
    assert "decoder.block.0.layer.0.SelfAttention.q.weight" in changed_weights(tiny_t5_dir, out)


def test_ppo_with_a_value_model_on_the_decoder_trains_a_t5(tiny_t5_dir, tmp_path):
    out = tmp_path / "ppo"
    run_rl(rl_config(PPOConfig, tiny_t5_dir, out, reward=[{"verifier": "rouge"},
                                                          {"function": "test_rl:length_reward", "weight": 0.1}],
                     group_size=2, temperature=2.0,
                     ppo_epochs=1, num_minibatches=1, **SUMMARY))
    steps = [r for r in read_metrics(out) if "reward_mean" in r]
    assert len(steps) == 2 and all("value_loss" in r and "kl" in r for r in steps)
    # the value head starts at zero, so its loss is the returns' own size at step 1, and it learns
    assert steps[0]["value_loss"] > 0 and steps[0]["grad_norm/value"] > 0
    assert max(abs(r["rollout/logprob_abs_diff_max"]) for r in steps) < 1e-4   # sampler = trainer
    assert changed_weights(tiny_t5_dir, out)
