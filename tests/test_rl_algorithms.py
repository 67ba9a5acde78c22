"""The RL algorithm registry and the algorithms added through it (GSPO, CISPO, REINFORCE++):
every spec resolves and is what the command line, config checks and recipes read; each new
loss / advantage estimator against a hand-worked 2 sequences × 3 tokens example (value and
gradient); each new command run as a user would start it, on the tiny test model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading

import pytest
import torch

from posttrain.config import ConfigError, load_config
from posttrain.train.rl.algorithms import ALGORITHMS, algorithm_spec

# float64 hand cases of a few operations each: 1e-12 covers the rounding.
ATOL = 1e-12

# Two completions of 3 token slots; the second has 2 sampled tokens (its last slot is padding).
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64), rtol=0, atol=atol)


def log_ratios(*rows):
    """log π_θ as a leaf (π_old = 0 in log space, so these are the log-ratios)."""
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


# --------------------------------------------------------------------------------------------
# The registry


def test_every_spec_resolves_and_its_config_runs_that_algorithm():
    for name, spec in ALGORITHMS.items():
        config = load_config(spec.config, overrides=[])
        assert config.algorithm == name and spec.name == name
        assert callable(spec.advantages) and callable(spec.policy_loss)
        if spec.group_based:
            with pytest.raises(ConfigError, match="group_size >= 2"):
                load_config(spec.config, overrides=["group_size=1"])
    with pytest.raises(ValueError, match="unknown RL algorithm 'a2c'; known: grpo, rloo, ppo, nlpo"):
        algorithm_spec("a2c")


def test_command_line_and_recipes_read_the_registry_without_importing_torch():
    code = ("import json, sys, posttrain.cli as cli, posttrain.train.rl.config as c; print(json.dumps({"
            "'rl': sorted(set(cli.TRAINING_COMMANDS) - {'sft', 'dpo', 'kto', 'orpo', 'reward', 'online-dpo', 'distill'}), "
            "'torch': 'torch' in sys.modules, "
            "'gspo_config': c.GSPOConfig.__module__}))")
    seen = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert seen["rl"] == sorted(ALGORITHMS) and not seen["torch"]   # `posttrain --help` stays torch-free
    assert seen["gspo_config"] == "posttrain.train.rl.algorithms.gspo"   # the old import path still works
    from posttrain.recipes.runner import RL_COMMANDS

    assert RL_COMMANDS == tuple(ALGORITHMS)


def test_aggregation_normalizer_counts_what_each_aggregation_divides_by():
    from posttrain.losses.policy import aggregate, aggregation_normalizer

    assert aggregation_normalizer("grpo", MASK) == 2.0                       # rows
    assert aggregation_normalizer("dapo", MASK) == 5.0                       # sampled tokens
    assert aggregation_normalizer("dr_grpo", MASK, max_completion_length=8) == 16.0   # rows × L
    assert aggregation_normalizer("dr_grpo", MASK) == 6.0                    # rows × padded T
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]], dtype=torch.float64)
    # token sum 15 over 5 tokens; dr_grpo's 15 / 6; grpo (2 + 4.5) / 2
    close(aggregate(loss, MASK, "dapo"), 3.0)
    close(aggregate(loss, MASK, "dr_grpo"), 2.5)
    close(aggregate(loss, MASK, "grpo"), 3.25)


# --------------------------------------------------------------------------------------------
# GSPO


def test_gspo_loss_and_gradient_by_hand():
    """Log-ratios (1: 0.1, -0.1, 0.3) and (2: 0.2, -0.4, pad 5.0): the sequence ratios are the
    exponentiated means, s_1 = e^{0.3/3} = e^{0.1} = 1.105171, s_2 = e^{-0.2/2} = e^{-0.1} =
    0.904837 (the padded 5.0 is ignored). Advantages (+1, -1), ε = 0.2: both inside [0.8, 1.2].

    ℓ_{1,t} = -s_1 · 1 = -1.105171,  ℓ_{2,t} = -s_2 · (-1) = 0.904837; ``grpo`` aggregation
    (1/2)(mean_t ℓ_1 + mean_t ℓ_2) = (1/2)(-1.105171 + 0.904837) = -0.100167.
    Gradient (GSPO-token: ∂ℓ_{i,t}/∂log π_{i,t} = -s_i A_i) over B = 2 and |y_i|:
    -s_1/(2·3) = -0.184195 on each token of 1, +s_2/(2·2) = 0.226209 on each of 2, 0 on padding
    — the sequence-level gradient s_i A_i (1/|y_i|) Σ_t ∇log π of GSPO §4.2. The token ratios
    (e^{0.3} = 1.35 on the third token of 1) never enter: GRPO would clip that token alone."""
    from posttrain.train.rl.algorithms.gspo import gspo_policy_loss

    logps = log_ratios([0.1, -0.1, 0.3], [0.2, -0.4, 5.0])
    s1, s2 = math.exp(0.1), math.exp(-0.1)
    loss, diag = gspo_policy_loss(logps, torch.zeros_like(logps), torch.tensor([1.0, -1.0], dtype=torch.float64),
                                  MASK, clip_low=0.2, clip_high=0.2)
    loss.backward()
    close(loss, 0.5 * (-s1 + s2))
    close(logps.grad, [[-s1 / 6] * 3, [s2 / 4, s2 / 4, 0.0]])
    close(diag["clip_fraction"], 0.0)
    close(diag["ratio_mean"], (3 * s1 + 2 * s2) / 5)   # s_i, token-weighted


def test_gspo_clips_whole_sequences():
    """Same batch with ε = 0.05: s_1 = 1.105 > 1.05 with A > 0 and s_2 = 0.905 < 0.95 with A < 0,
    so both sequences take the clipped term: ℓ_1 = -1.05, ℓ_2 = -min(-0.905, -0.95) = 0.95,
    loss (1/2)(-1.05 + 0.95) = -0.05, no gradient anywhere, every token counted as clipped."""
    from posttrain.train.rl.algorithms.gspo import gspo_policy_loss

    logps = log_ratios([0.1, -0.1, 0.3], [0.2, -0.4, 5.0])
    loss, diag = gspo_policy_loss(logps, torch.zeros_like(logps), torch.tensor([1.0, -1.0], dtype=torch.float64),
                                  MASK, clip_low=0.05, clip_high=0.05)
    loss.backward()
    close(loss, -0.05)
    close(logps.grad, torch.zeros(2, 3))
    close(diag["clip_fraction_high"], 3 / 5)
    close(diag["clip_fraction_low"], 2 / 5)


# --------------------------------------------------------------------------------------------
# CISPO


def test_cispo_loss_and_gradient_by_hand():
    """Ratios (1: 2, 1, 0.5) and (2: 1.1, 1.5, pad), advantages (+1, -1), ε_low = 1 (no lower
    bound), ε_high = 0.28: the weights sg(clip(r)) are (1.28, 1, 0.5) and (1.1, 1.28).

    ℓ = -w·A·log π:  1: -1.28·ln 2 = -0.887228, 0, -0.5·ln 0.5 = 0.346574;
                     2: 1.1·ln 1.1 = 0.104841, 1.28·ln 1.5 = 0.518995.
    ``dapo``: Σ / 5 tokens = 0.083182 / 5 = 0.016636. Gradient -w·A/5: (-0.256, -0.2, -0.1) and
    (0.22, 0.256, 0) — the clipped tokens (ratio 2 and 1.5) keep a gradient, where PPO's
    min(ρA, clip(ρ)A) gives the first token of 1 none (ρ = 2 > 1.28 with A > 0)."""
    from posttrain.losses.policy import clipped_policy_loss
    from posttrain.train.rl.algorithms.cispo import cispo_policy_loss

    ln = math.log
    logps = log_ratios([ln(2.0), 0.0, ln(0.5)], [ln(1.1), ln(1.5), 0.0])
    advantages = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, diag = cispo_policy_loss(logps, torch.zeros_like(logps), advantages, MASK, clip_low=1.0, clip_high=0.28)
    loss.backward()
    expected = (-1.28 * ln(2.0) - 0.5 * ln(0.5) + 1.1 * ln(1.1) + 1.28 * ln(1.5)) / 5
    close(loss, expected)
    assert float(loss.detach()) == pytest.approx(0.016636, abs=1e-6)
    close(logps.grad, [[-1.28 / 5, -1.0 / 5, -0.5 / 5], [1.1 / 5, 1.28 / 5, 0.0]])
    close(diag["clip_fraction"], 2 / 5)

    ppo_logps = logps.detach().clone().requires_grad_(True)
    clipped_policy_loss(ppo_logps, torch.zeros_like(ppo_logps), advantages, MASK, 1.0, 0.28,
                        aggregation="dapo")[0].backward()
    assert float(ppo_logps.grad[0, 0]) == 0.0


# --------------------------------------------------------------------------------------------
# REINFORCE++


def reinforce_pp_batch():
    """KL_t = log π_old - log π_ref of (0.2, 0, 0.4) and (0.2, 0.2, pad); scores (1, 0)."""
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.5, 0.0]], dtype=torch.float64)
    ref = old - torch.tensor([[0.2, 0.0, 0.4], [0.2, 0.2, 0.0]], dtype=torch.float64)
    return torch.tensor([1.0, 0.0], dtype=torch.float64), {"old_logps": old, "ref_logps": ref, "mask": MASK}


def test_reinforce_pp_advantages_by_hand():
    """β = 0.5, k1 KL in the reward. Token rewards -β·KL_t, the score on the last token:
    1: (-0.1, 0, -0.2 + 1 = 0.8), 2: (-0.1, -0.1 + 0, pad). Returns-to-go: 1: (0.7, 0.8, 0.8),
    2: (-0.2, -0.1). Whitened over the 5 tokens of the batch: mean 2.0/5 = 0.4, deviations
    (0.3, 0.4, 0.4, -0.6, -0.5), unbiased variance 1.02/4 = 0.255, so A = deviation / √0.255
    = (0.594089, 0.792118, 0.792118, -1.188177, -0.990148). (The 1e-8 guard in the root moves
    them by < 1e-7.)"""
    from posttrain.train.rl.algorithms.reinforce_pp import ReinforcePPConfig, reinforce_pp_advantages

    scores, batch = reinforce_pp_batch()
    config = load_config(ReinforcePPConfig, overrides=["beta=0.5"])
    adv = reinforce_pp_advantages(scores, batch, config)
    std = math.sqrt(0.255)
    close(adv.advantages, [[0.3 / std, 0.4 / std, 0.4 / std], [-0.6 / std, -0.5 / std, 0.0]], atol=1e-7)
    assert adv.keep.tolist() == [True, True]


def test_reinforce_pp_normalises_over_the_global_batch():
    """Each row on its own "process" (two threads whose ``reduce_sum`` adds both lists, as
    ``Engine.all_reduce_sum`` does): the same advantages as the whole batch in one."""
    from posttrain.train.rl.algorithms.reinforce_pp import ReinforcePPConfig, reinforce_pp_advantages

    scores, batch = reinforce_pp_batch()
    config = load_config(ReinforcePPConfig, overrides=["beta=0.5"])
    whole = reinforce_pp_advantages(scores, batch, config).advantages
    barrier, posted, results = threading.Barrier(2), [None, None], [None, None]

    def run(rank):
        def reduce_sum(values):
            posted[rank] = values
            barrier.wait()
            total = [a + b for a, b in zip(*posted)]
            barrier.wait()   # both have read before either posts again
            return total

        part = {key: value[rank:rank + 1] for key, value in batch.items()}
        results[rank] = reinforce_pp_advantages(scores[rank:rank + 1], part, config, reduce_sum=reduce_sum).advantages

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    close(torch.cat(results), whole)


# --------------------------------------------------------------------------------------------
# Each new command as a user starts it, on the tiny model


@pytest.mark.parametrize("command,extra", [
    ("gspo", {}),
    ("cispo", {"num_minibatches": 2}),          # off-policy second update: the IS weight moves
    ("reinforce_pp", {}),
])
def test_new_commands_train_the_tiny_model(command, extra, tiny_model_dir, tmp_path):
    from posttrain.cli import main
    from posttrain.models import load_model

    out = tmp_path / command
    options = {"model": tiny_model_dir, "out": str(out), "max_steps": 1, "prompts_per_step": 2, "group_size": 4,
               "max_new_tokens": 8, "progress": False, "learning_rate": 1e-3, "batch_size": 8, "temperature": 2.0,
               "data": [{"source": "builtin:arithmetic_rlvr", "n": 8}], "eval_data": [],
               "reward": [{"function": "test_rl:length_reward"}], "save_samples": 0, **extra}
    argv = [command] + [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in options.items()]
    assert main(argv) == 0
    before = load_model(tiny_model_dir).state_dict()
    after = load_model(str(out / "model")).state_dict()
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 0
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "reward_mean" in line][0]
    assert math.isfinite(record["loss"]) and 0.0 <= record["clip_fraction"] <= 1.0
    if command == "reinforce_pp":   # β = 0.01 by default: a reference model and the KL are there
        assert record["kl"] == pytest.approx(0.0, abs=1e-6) and record["beta"] == 0.01


@pytest.mark.slow
@pytest.mark.parametrize("command", ["reinforce_pp"])
def test_new_commands_on_the_embedded_model(command, tmp_path):
    """Two steps of a new command on SmolLM2-135M-Instruct, started as a user starts it.
    ``reinforce_pp`` takes the widest path (a reference model, KL in the reward); gspo and cispo
    run the same steps on the tiny model in the fast tier above (each embedded run costs minutes)."""
    out = tmp_path / command
    argv = [sys.executable, "-m", "posttrain.cli", command, f"out={out}", "max_steps=2", "prompts_per_step=2",
            "group_size=4", "max_new_tokens=32", "learning_rate=1e-5", "eval_size=16", "save_samples=0"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2] and all(math.isfinite(r["loss"]) for r in train)
    assert len([r for r in records if "eval_accuracy" in r]) == 2   # step 0 and the end
