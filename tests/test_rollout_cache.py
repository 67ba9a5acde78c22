"""``rollout_cache=static``: HFRollout's static KV cache samples what the dynamic one samples
(greedy and seeded, left-padded prompts of different lengths), the config checks the choice, and
a GRPO run with it follows the dynamic-cache run. Timings are not tested (no GPU here)."""

from __future__ import annotations

import pytest
import torch

from posttrain.config import ConfigError, load_config
from posttrain.models.kv_cache import CACHE_ARG
from posttrain.train.rl.config import GRPOConfig
from test_rl import read_metrics, rl_config, tiny_policy

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]  # left-padded to 7


def cache_types(model):
    """Record the type of the KV cache each forward of ``model`` receives."""
    seen = set()

    def hook(module, args, kwargs):
        seen.add(type(kwargs.get(CACHE_ARG)).__name__)

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def rollouts(model, tok, cache, share_prompts):
    """Greedy and seeded sampled rollouts of PROMPTS (n=3, in chunks of 4 rows, so the static
    cache is built for two batch sizes), and the cache types the forwards saw."""
    from posttrain.train.rl.rollout import HFRollout

    backend = HFRollout(model, tok, batch_size=4, share_prompts=share_prompts, cache=cache)
    seen, handle = cache_types(model)
    try:
        greedy = backend.generate(PROMPTS, n=3, max_new_tokens=10, greedy=True)
        torch.manual_seed(0)
        sampled = backend.generate(PROMPTS, n=3, max_new_tokens=10, temperature=1.0)
    finally:
        handle.remove()
    return greedy, sampled, seen


@pytest.mark.parametrize("share_prompts", [False, True])
def test_static_cache_samples_the_dynamic_completions(tiny_model_dir, share_prompts):
    """Same greedy ids and masks; with the same seed, the same sampled ids and masks, and the
    same log-probs up to float rounding (the static cache's attention also spans empty slots).
    With share_prompts the static backend skips the shared prefill (generate would refuse it)."""
    model, tok = tiny_policy(tiny_model_dir)
    dyn_greedy, dyn_sampled, dyn_seen = rollouts(model, tok, "dynamic", share_prompts)
    st_greedy, st_sampled, st_seen = rollouts(model, tok, "static", share_prompts)
    assert st_seen == {"StaticCache"} and "StaticCache" not in dyn_seen
    for st, dyn in ((st_greedy, dyn_greedy), (st_sampled, dyn_sampled)):
        assert torch.equal(st.completion_ids, dyn.completion_ids)
        assert torch.equal(st.completion_mask, dyn.completion_mask)
    assert not torch.equal(st_sampled.completion_ids, st_greedy.completion_ids)  # it did sample
    torch.testing.assert_close(st_sampled.sampling_logps, dyn_sampled.sampling_logps, rtol=1e-4, atol=1e-5)


def test_unknown_cache_is_rejected(tokenizer):
    from posttrain.train.rl.rollout import HFRollout

    with pytest.raises(ConfigError, match="rollout_cache='bogus': choose one of dynamic, static"):
        load_config(GRPOConfig, overrides=["rollout_cache=bogus"])
    with pytest.raises(ValueError, match="unknown KV cache 'bogus'"):
        HFRollout(None, tokenizer, cache="bogus")


def test_grpo_with_static_cache_follows_the_dynamic_run(tiny_model_dir, tmp_path, monkeypatch):
    """Two GRPO steps (and the held-out greedy eval) through the trainer with rollout_cache=static:
    the backend gets the option, and the metrics match those of the dynamic-cache run."""
    from posttrain.train.rl import trainer

    make_backend, backends = trainer.make_backend, []

    def recorded(*args, **kwargs):
        backends.append(make_backend(*args, **kwargs))
        return backends[-1]

    monkeypatch.setattr(trainer, "make_backend", recorded)
    common = dict(filter_zero_variance_groups=False, temperature=2.0)
    for cache in ("static", "dynamic"):
        trainer.run_rl(rl_config(GRPOConfig, tiny_model_dir, tmp_path / cache, rollout_cache=cache, **common))
    assert [b.cache for b in backends] == ["static", "dynamic"]
    static, dynamic = (read_metrics(tmp_path / c) for c in ("static", "dynamic"))
    accuracy = [[(r["step"], r["eval_accuracy"]) for r in m if "eval_accuracy" in r] for m in (static, dynamic)]
    assert accuracy[0] and accuracy[0] == accuracy[1]  # the greedy held-out eval goes through the backend
    static, dynamic = ([r for r in m if "reward_mean" in r] for m in (static, dynamic))
    assert [r["step"] for r in static] == [1, 2]
    for a, b in zip(static, dynamic):
        for key in ("loss", "entropy", "reward_mean", "response_length"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
