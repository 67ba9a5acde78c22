"""Length-grouped, trimmed micro-batches in the RL update (``train/rl/trainer.py``: ``row_widths``,
``minibatch_plan``, ``update_step``, ``_score_batch``): minibatches keep their rows, micro-batches
take rows of like width, and a run gives the gradients and parameters of the full-width run while
its forwards see fewer padded positions — single-turn rows of very different lengths, PPO's value
model, and multi-turn episodes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_rl import rl_config
from test_tools import eos_model_dir  # noqa: F401  (fixture: a tiny model that often samples EOS)


class OneProcess:
    rank, world = 0, 1

    @staticmethod
    def all_gather(t):
        return t


def test_row_widths_end_at_the_last_sampled_token():
    from posttrain.train.rl.trainer import row_widths

    mask = torch.tensor([[1, 1, 0, 0, 0],     # single-turn, right-padded
                         [1, 0, 0, 1, 0],     # an episode: inserted tokens (mask 0) between turns
                         [0, 0, 0, 0, 0],     # nothing sampled
                         [1, 1, 1, 1, 1]])
    assert row_widths(mask).tolist() == [2, 4, 0, 5]


def test_grouping_keeps_each_minibatch_and_sorts_its_micro_batches_by_width():
    from posttrain.train.rl.trainer import minibatch_plan

    config = SimpleNamespace(num_minibatches=2, batch_size=3)
    keep = torch.ones(12, dtype=torch.bool)
    keep[5] = False
    widths = torch.tensor([3, 40, 7, 1, 40, 9, 2, 33, 5, 5, 18, 6])
    plain = minibatch_plan(OneProcess, keep, config, seed=7)
    grouped = minibatch_plan(OneProcess, keep, config, seed=7, widths_B=widths)
    assert len(plain) == len(grouped) == 2
    for a, b in zip(plain, grouped):
        rows = torch.cat([m["rows"] for m in b])
        assert sorted(rows.tolist()) == sorted(torch.cat([m["rows"] for m in a]).tolist())   # same optimizer step
        assert len(a) == len(b) and [len(m["rows"]) for m in a] == [len(m["rows"]) for m in b]
        assert widths[rows].tolist() == sorted(widths[rows].tolist(), reverse=True)


CASES = {
    # one update per rollout: π_old from the update's own forward (written back per micro-batch)
    "grpo": dict(batch_size=2),
    # two minibatches: the separate π_old and π_ref passes (_score_batch chunks), ratio off 1
    "grpo-minibatches": dict(batch_size=3, num_minibatches=2, beta=0.1),
    # a value model with per-token returns and advantages (GAE)
    "ppo": dict(batch_size=3, num_minibatches=2),
    # multi-turn episodes: inserted tokens (mask 0) inside rows of several turns
    "episodes": dict(batch_size=2, environment="test_tools:NudgeEnvironment", max_new_tokens=6,
                     max_episode_tokens=40),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trimmed_update_equals_the_full_width_one(case, eos_model_dir, tmp_path, monkeypatch):  # noqa: F811
    from posttrain.models import load_model
    from posttrain.train.rl import trainer
    from posttrain.train.rl.algorithms.grpo import GRPOConfig
    from posttrain.train.rl.algorithms.ppo import PPOConfig

    seen = {}
    token_logps, completion_values = trainer.token_logps, trainer.completion_values

    def counting(name, fn, completion_arg):
        def wrapper(*args, **kwargs):
            completion = args[completion_arg]
            seen[name] = seen.get(name, 0) + completion.numel()   # positions the forward ran on
            return fn(*args, **kwargs)
        return wrapper

    grads = []
    adamw_step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):   # the accumulated gradient each optimizer step applies
        grads.append([p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None])
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    monkeypatch.setattr(trainer, "token_logps", counting("logps", token_logps, 2))
    monkeypatch.setattr(trainer, "completion_values", counting("values", completion_values, 2))
    cls = PPOConfig if case == "ppo" else GRPOConfig
    overrides = {**dict(max_steps=1, eval_data=[], filter_zero_variance_groups=False, prompts_per_step=3,
                     max_new_tokens=16), **CASES[case]}
    runs = {}
    for name in ("trimmed", "full"):
        if name == "full":   # every row as wide as the batch: no grouping, no trimming (the former update)
            monkeypatch.setattr(trainer, "row_widths", lambda mask: torch.full((len(mask),), mask.shape[1]))
        seen.clear(), grads.clear()
        trainer.run_rl(rl_config(cls, eos_model_dir, tmp_path / name, **overrides))
        runs[name] = dict(seen), [list(g) for g in grads], load_model(str(tmp_path / name / "model")).state_dict()
    (seen_t, grads_t, model_t), (seen_f, grads_f, model_f) = runs["trimmed"], runs["full"]
    assert len(grads_t) == len(grads_f) > 0
    for step_t, step_f in zip(grads_t, grads_f):
        for a, b in zip(step_t, step_f):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())   # float rounding
    for key in model_f:
        # Adam divides by |g|: a rounding-level difference in a tiny gradient moves a step by ~lr / 1000
        torch.testing.assert_close(model_t[key], model_f[key], rtol=0, atol=1e-5)
    start = load_model(eos_model_dir).state_dict()
    assert any(not torch.equal(model_f[key], start[key]) for key in model_f)   # the update did move them
    for forward in seen_f:   # the rows are of very different lengths, so the forwards ran on fewer positions
        assert seen_t[forward] < seen_f[forward], (forward, seen_t, seen_f)
    print(f"{case}: positions run, trimmed / full: "
          + ", ".join(f"{k} {seen_t[k]}/{seen_f[k]} = {seen_t[k] / seen_f[k]:.2f}" for k in seen_f))
