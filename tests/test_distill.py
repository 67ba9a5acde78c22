"""On-policy distillation: the divergences against values worked out by hand and from their
definitions in NumPy, the chunked path against the full-logits one (value and gradient), the
trainer's step, its rows, λ's mix of student samples and dataset completions, a few tiny-model
steps, resume, and what is refused before any model loads. (Two processes:
test_trainers_distributed.py; the embedded model: the slow test at the end.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.data.formats import validate_distill_row
from posttrain.losses.distill import (DIVERGENCES, chunked_divergence, divergence_fn, forward_kl,
                                      full_logits_divergence, generalized_jsd, reverse_kl)
from posttrain.train.distill import DistillConfig, distill_step, on_policy_step, run_distill

# ---------------------------------------------------------------------------------------------
# The divergences by hand


def _logits(*probabilities):
    return torch.log(torch.tensor([probabilities], dtype=torch.float64))


S, T = _logits(0.5, 0.5), _logits(0.25, 0.75)   # student s = (1/2, 1/2), teacher t = (1/4, 3/4)


def test_divergences_equal_their_hand_worked_values():
    # KL(s‖t) = ½ ln(½ / ¼) + ½ ln(½ / ¾) = ½ ln 2 + ½ ln(2/3) = ½ ln(4/3) ≈ 0.143841
    assert float(reverse_kl(S, T)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # KL(t‖s) = ¼ ln(¼ / ½) + ¾ ln(¾ / ½) = −¼ ln 2 + ¾ ln(3/2) ≈ 0.130812
    assert float(forward_kl(S, T)) == pytest.approx(-0.25 * math.log(2) + 0.75 * math.log(1.5), rel=1e-6)
    # β = ½: m = ½ t + ½ s = (3/8, 5/8)
    # KL(t‖m) = ¼ ln(¼ / ⅜) + ¾ ln(¾ / ⅝) = ¼ ln(2/3) + ¾ ln(6/5) ≈ 0.035375
    # KL(s‖m) = ½ ln(½ / ⅜) + ½ ln(½ / ⅝) = ½ ln(4/3) + ½ ln(4/5) ≈ 0.032269
    kl_t_m = 0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5)
    kl_s_m = 0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)
    assert float(generalized_jsd(S, T, beta=0.5)) == pytest.approx(0.5 * kl_t_m + 0.5 * kl_s_m, rel=1e-6)
    # β = ¼: m = ¼ t + ¾ s = (7/16, 9/16); JSD = ¼ KL(t‖m) + ¾ KL(s‖m)
    kl_t_m = 0.25 * math.log(4 / 7) + 0.75 * math.log(12 / 9)
    kl_s_m = 0.5 * math.log(8 / 7) + 0.5 * math.log(8 / 9)
    assert float(generalized_jsd(S, T, beta=0.25)) == pytest.approx(0.25 * kl_t_m + 0.75 * kl_s_m, rel=1e-6)
    # τ divides the logits: logits 2·log p at τ = 2 are the distribution p again
    assert float(reverse_kl(2 * S, 2 * T, temperature=2.0)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    for fn in (reverse_kl, forward_kl, generalized_jsd):   # D(p‖p) = 0
        assert float(fn(T, T)) == pytest.approx(0.0, abs=1e-12)


def test_jsd_ends_are_forward_and_reverse_kl_as_gkd_states():
    """β = 0 and 1 are forward and reverse KL exactly (TRL's convention); near the ends JSD(β)/β and
    JSD(β)/(1 − β) approach them (GKD: the gradient behaves like forward KL as β → 0, reverse as β → 1),
    with an error of order β: 1e-4 relative to 1e-3."""
    assert float(generalized_jsd(S, T, beta=0.0)) == float(forward_kl(S, T))
    assert float(generalized_jsd(S, T, beta=1.0)) == float(reverse_kl(S, T))
    eps = 1e-4
    assert float(generalized_jsd(S, T, beta=eps)) / eps == pytest.approx(float(forward_kl(S, T)), rel=1e-3)
    assert float(generalized_jsd(S, T, beta=1 - eps)) / eps == pytest.approx(float(reverse_kl(S, T)), rel=1e-3)


def _numpy_divergences(z_s, z_t, beta, tau):
    """The definitions, written out in NumPy."""
    def softmax(z):
        e = np.exp(z / tau - (z / tau).max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    s, t = softmax(z_s), softmax(z_t)
    kl = lambda p, q: (p * (np.log(p) - np.log(q))).sum(-1)   # noqa: E731
    m = beta * t + (1 - beta) * s
    return {"reverse_kl": kl(s, t), "forward_kl": kl(t, s), "jsd": beta * kl(t, m) + (1 - beta) * kl(s, m)}


def test_divergences_match_their_definitions_on_random_logits_and_respect_the_mask():
    g = torch.Generator().manual_seed(0)
    z_s, z_t = (3 * torch.randn(2, 5, 7, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = _numpy_divergences(z_s.numpy(), z_t.numpy(), beta=0.3, tau=1.5)
    got = {"reverse_kl": reverse_kl(z_s, z_t, mask, temperature=1.5), "forward_kl": forward_kl(z_s, z_t, mask, 1.5),
           "jsd": generalized_jsd(z_s, z_t, mask, beta=0.3, temperature=1.5)}
    for name in DIVERGENCES:   # float32 softmax of logits ~±10: 1e-5 relative
        assert got[name].shape == (2, 5) and (got[name][0, 3:] == 0).all()
        np.testing.assert_allclose(got[name].numpy()[mask.bool().numpy()], expected[name][mask.bool().numpy()],
                                   rtol=1e-5, atol=1e-7)
        assert (got[name][mask.bool()] > 0).all()


@pytest.mark.parametrize("name", DIVERGENCES)
def test_chunked_divergence_equals_the_full_logits_one_in_value_and_gradient(name):
    """N = 7 positions in chunks of 3 (a ragged last chunk), float64: equal to 1e-10."""
    g = torch.Generator().manual_seed(1)
    N, H, V = 7, 5, 11
    hidden_s = torch.randn(N, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight_s = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    hidden_t, weight_t = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((N, H), (V, H)))
    target = torch.randint(0, V, (N,), generator=g)
    options = {"name": name, "beta": 0.3, "temperature": 2.0}
    total, parts = chunked_divergence(hidden_s, weight_s, hidden_t, weight_t, target, chunk_size=3, **options)
    grads = torch.autograd.grad(3.0 * total, [hidden_s, weight_s])   # a scale from upstream (the engine's 1/N)
    full_total, full_parts = full_logits_divergence(hidden_s @ weight_s.T, hidden_t @ weight_t.T, target, **options)
    full_grads = torch.autograd.grad(3.0 * full_total, [hidden_s, weight_s])
    assert float(total.detach()) == pytest.approx(float(full_total.detach()), rel=1e-10)
    for a, b in zip(grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for key in ("divergence", "student_logps", "teacher_logps"):
        torch.testing.assert_close(parts[key], full_parts[key], rtol=1e-10, atol=1e-12)
    log_s = torch.log_softmax((hidden_s @ weight_s.T).detach() / 2.0, -1)
    torch.testing.assert_close(parts["student_logps"], log_s.gather(1, target[:, None]).squeeze(1))
    with torch.no_grad():
        direct = divergence_fn(name, 0.3, 2.0)(hidden_s @ weight_s.T, hidden_t @ weight_t.T).sum()
    assert float(total.detach()) == pytest.approx(float(direct), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Rows and the step


def test_distill_rows_give_prompt_and_optional_completion():
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4"}]}
    row = validate_distill_row(chat, "t", 0)
    assert row["messages"] == chat["messages"][:2] and row["completion"] == chat["messages"][2:]
    assert validate_distill_row({"messages": chat["messages"][:2]}, "t", 0)["completion"] is None
    row = validate_distill_row({"prompt": "2+2?", "completion": "4", "ground_truth": "4"}, "t", 0)
    assert row == {"messages": [{"role": "user", "content": "2+2?"}],
                   "completion": [{"role": "assistant", "content": "4"}]}
    assert validate_distill_row({"prompt": "2+2?"}, "t", 0)["completion"] is None


def _config(model_dir, teacher_dir, out="/tmp/unused", **kw):
    overrides = {"model": model_dir, "teacher": teacher_dir, "out": out, **kw}
    return load_config(DistillConfig, overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_step_is_the_same_chunked_and_on_full_logits(divergence, tokenizer, tiny_model_dir, tiny_teacher_dir):
    """The trainer's step on a batch of two completions of different lengths (padding masked): the
    chunked path and the plain one give the same sum and the same student gradients (float32 sums of
    ~10 divergences: 1e-5 relative)."""
    from posttrain.models import load_model

    student, teacher = load_model(tiny_model_dir), load_model(tiny_teacher_dir).eval()
    prompts = [tokenizer("What is 2 + 3?")["input_ids"], tokenizer("Name a colour")["input_ids"]]
    completion = torch.tensor([[20, 30, 40, 50, 60], [70, 80, 90, tokenizer.pad_token_id, tokenizer.pad_token_id]])
    micro = {"prompt_ids": prompts, "completion_ids": completion,
             "mask": torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2])}
    seen = []
    for chunked in (True, False):
        step = distill_step(_config(tiny_model_dir, tiny_teacher_dir, divergence=divergence, chunked_loss=chunked),
                            teacher, tokenizer.pad_token_id, share=False, vocab=len(tokenizer))
        student.zero_grad()
        total, metrics = step(student, micro)
        total.backward()
        seen.append((float(total.detach()), metrics, {n: p.grad.clone() for n, p in student.named_parameters()}))
    (chunked_total, chunked_metrics, chunked_grads), (plain_total, plain_metrics, plain_grads) = seen
    assert chunked_total > 0 and chunked_total == pytest.approx(plain_total, rel=1e-5)
    assert chunked_metrics["metric_weight"] == 8.0
    assert float(chunked_metrics["logprob_gap"]) == pytest.approx(float(plain_metrics["logprob_gap"]), rel=1e-5)
    for name, grad in chunked_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in chunked_grads.values())


def test_heads_padded_past_the_tokenizer_are_compared_on_the_rows_both_have(tokenizer):
    """Qwen-style padded heads: the divergence runs over the rows both heads have; a head with fewer
    rows than the tokenizer has tokens is refused."""
    from transformers import LlamaForCausalLM

    from conftest import build_tiny_model
    from posttrain.config import ConfigError
    from posttrain.train.distill import shared_vocab_size

    student = build_tiny_model(tokenizer)
    def sized(vocab_size):
        return LlamaForCausalLM(type(student.config)(**{**student.config.to_dict(), "vocab_size": vocab_size}))

    assert shared_vocab_size(student, sized(len(tokenizer) + 16), tokenizer) == len(tokenizer)
    assert shared_vocab_size(sized(len(tokenizer) + 64), sized(len(tokenizer) + 16), tokenizer) == len(tokenizer) + 16
    with pytest.raises(ConfigError, match=f"rows for a tokenizer of {len(tokenizer)} tokens"):
        shared_vocab_size(student, sized(len(tokenizer) - 1), tokenizer)


def test_lmbda_picks_steps_by_a_seeded_draw():
    draws = [on_policy_step(0, step, 0.5) for step in range(200)]
    assert draws == [on_policy_step(0, step, 0.5) for step in range(200)]   # the same on resume, on any process
    assert 70 < sum(draws) < 130   # Binomial(200, ½): ±4 standard deviations
    assert all(on_policy_step(0, s, 1.0) for s in range(50)) and not any(on_policy_step(0, s, 0.0) for s in range(50))


# ---------------------------------------------------------------------------------------------
# Tiny-model runs


DATA = "data=[{source: 'builtin:arithmetic_sft', n: 24}]"


def _train(model_dir, teacher_dir, out, *extra):
    overrides = [f"model={model_dir}", f"teacher={teacher_dir}", f"out={out}", "batch_size=2", "prompts_per_step=4",
                 "max_new_tokens=6", "learning_rate=1e-3", "progress=false", "eval_data=[]", DATA, *extra]
    return run_distill(load_config(DistillConfig, overrides=overrides))


def _records(run_dir, key="loss"):
    return [r for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_distill_trains_the_tiny_model(tiny_model_dir, tiny_teacher_dir, tmp_path):
    eval_data = "eval_data=[{source: 'builtin:arithmetic_sft:test', n: 4}]"
    last = _train(tiny_model_dir, tiny_teacher_dir, tmp_path / "run", "max_steps=3", "group_size=2", eval_data)
    records = _records(tmp_path / "run")
    assert len(records) == 3 and all(r["on_policy"] == 1.0 and math.isfinite(r["loss"]) for r in records)
    # the loss is the token mean of the divergence over the step (the metric's token-weighted mean)
    assert all(r["loss"] == pytest.approx(r["divergence"], rel=1e-5) and r["loss"] > 0 for r in records)
    assert all(0 < r["response_length"] <= 6 for r in records)
    evals = _records(tmp_path / "run", "eval_divergence")
    assert [r["step"] for r in evals] == [0, 3] and "eval_divergence" in last
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    assert (tmp_path / "run" / "report.md").exists()
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 2, 2, 3, 3]


def test_dataset_steps_train_on_the_rows_own_completions(tiny_model_dir, tiny_teacher_dir, tokenizer, tmp_path):
    """λ = 0: every step is a dataset step (supervised KD on the rows' completions); λ = ½: the steps
    the seeded draw gives. The samples written are the rows' completions, cut to max_new_tokens."""
    from posttrain.data import load_source

    _train(tiny_model_dir, tiny_teacher_dir, tmp_path / "offline", "max_steps=2", "lmbda=0", "max_new_tokens=200")
    assert [r["on_policy"] for r in _records(tmp_path / "offline")] == [0.0, 0.0]
    answers = {row["messages"][-1]["content"] for row in load_source("builtin:arithmetic_sft", n=24, seed=0)}
    samples = [json.loads(line) for line in (tmp_path / "offline" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["completion"] in answers and not s["on_policy"] for s in samples)
    _train(tiny_model_dir, tiny_teacher_dir, tmp_path / "mixed", "max_steps=6", "lmbda=0.5")
    draws = [float(on_policy_step(0, step, 0.5)) for step in range(6)]
    assert [r["on_policy"] for r in _records(tmp_path / "mixed")] == draws
    assert 0 < sum(r["on_policy"] for r in _records(tmp_path / "mixed")) < 6


def test_resumed_run_continues_the_same_trajectory(tiny_model_dir, tiny_teacher_dir, tmp_path, crash_engine):
    """Stop a run during step 3 (checkpoint at step 2), resume it: the same 4 losses as a run that
    was never stopped (the samples are seeded by step and prompt, λ's draws by step)."""
    extra = ("max_steps=4", "lmbda=0.5")
    _train(tiny_model_dir, tiny_teacher_dir, tmp_path / "full", *extra)
    with crash_engine("update", 3):
        _train(tiny_model_dir, tiny_teacher_dir, tmp_path / "resumed", *extra, "save_steps=2")
    _train(tiny_model_dir, tiny_teacher_dir, tmp_path / "resumed", *extra, "save_steps=2")
    full, resumed = _records(tmp_path / "full"), _records(tmp_path / "resumed")
    assert len(resumed) == 4 and [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full], rel=1e-6)
    assert [r["on_policy"] for r in resumed] == [r["on_policy"] for r in full]


# ---------------------------------------------------------------------------------------------
# Refused before any model loads


NO_MODEL = "model=./no/such/model"   # had a model loaded first, the message would be about it


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("option, expected", [
    ("divergence=kl", "divergence='kl': choose one of reverse_kl, forward_kl, jsd"),
    ("beta=1.5", "beta=1.5: must lie in [0, 1]"),
    ("beta=0.2", "beta=0.2 is the mixing weight of divergence=jsd"),
    ("lmbda=1.2", "lmbda=1.2: must lie in [0, 1]"),
    ("temperature=0", "temperature=0.0: must be > 0"),
    ("gradient_accumulation_steps=2", "gradient_accumulation_steps does not apply to distill"),
    ("teacher=", "teacher: give the teacher model"),
    ("teacher=./no/such/model", "is the student itself"),
    ("teacher_dtype=int8", "teacher_dtype='int8'"),
])
def test_bad_options_are_refused_before_any_model_loads(option, expected, capsys, tmp_path):
    line = _error(capsys, ["distill", NO_MODEL, "teacher=./no/teacher", f"out={tmp_path / 'run'}", option])
    assert line.startswith("posttrain distill: error: ") and expected in line
    assert not (tmp_path / "run").exists()


def test_prompt_only_rows_with_lmbda_below_one_are_refused_naming_the_row(capsys, tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"{i} + 1?", "completion": f"{i + 1}"} for i in range(5)] + [{"prompt": "9 + 1?"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = _error(capsys, ["distill", NO_MODEL, "teacher=./no/teacher", f"out={tmp_path / 'run'}", f"data=[{path}]",
                           "eval_data=[]", "lmbda=0.5"])
    assert f"{path}, line 6, field 'completion': missing, but lmbda=0.5" in line and "set lmbda=1" in line
    assert not (tmp_path / "run").exists()
    # a bad row of any kind: its file, line and field
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + [{"prompt": "3 + 1?", "completion": " "}]))
    line = _error(capsys, ["distill", NO_MODEL, "teacher=./no/teacher", f"out={tmp_path / 'run'}", f"data=[{path}]",
                           "eval_data=[]"])
    assert f"{path}, line 3, field 'completion': empty completion" in line


def test_teacher_with_another_tokenizer_is_refused_before_its_weights_load(tiny_model_dir, tokenizer, tmp_path,
                                                                         capsys, monkeypatch):
    from conftest import build_tiny_model
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    other.add_tokens(["<teacher-only>"])
    teacher_dir = tmp_path / "teacher"
    build_tiny_model(other).save_pretrained(teacher_dir)
    other.save_pretrained(teacher_dir)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the tokenizers were compared")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_weights)
    line = _error(capsys, ["distill", f"model={tiny_model_dir}", f"teacher={teacher_dir}", f"out={tmp_path / 'run'}",
                           "eval_data=[]"])
    assert f"teacher='{teacher_dir}' does not share the tokenizer of model=" in line
    assert f"({len(tokenizer) + 1} vs {len(tokenizer)} tokens; e.g. '<teacher-only>' is id {len(tokenizer)} only in " \
           f"the teacher's)" in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# The embedded model, as a user runs it


@pytest.mark.slow
def test_embedded_model_distilled_from_its_sft_self_moves_toward_the_teacher(tmp_path):
    """``posttrain sft`` makes a teacher of the embedded model (arithmetic, 16 steps), then
    ``posttrain distill`` pulls the untouched embedded model toward it on its own samples: the
    held-out reverse KL (per token, on samples drawn with the same seeds at step 0 and at the end)
    falls. Measured 2026-12-05 (docs/distill.md): 0.630 → 0.370 (× 0.59), training divergence
    0.467 → 0.206; 45 min on a loaded 2-core CPU. The bound, × 0.8, leaves room for the sampling
    noise of 8 held-out prompts."""
    sft = ["sft", f"out={tmp_path / 'teacher'}", "max_steps=16", "batch_size=4", "max_length=192",
           "learning_rate=5e-5", "warmup_ratio=0.1", "progress=false", "eval_data=[]",
           "data=[{source: 'builtin:arithmetic_sft', count: 400}]"]
    assert main(sft) == 0
    distill = ["distill", f"teacher={tmp_path / 'teacher' / 'model'}", f"out={tmp_path / 'student'}", "max_steps=8",
               "prompts_per_step=8", "batch_size=8", "max_new_tokens=32", "learning_rate=5e-5", "progress=false",
               "eval_data=[{source: 'builtin:arithmetic_sft:test', n: 8}]"]
    assert main(distill) == 0
    evals = [r["eval_divergence"] for r in _records(tmp_path / "student", "eval_divergence")]
    steps = _records(tmp_path / "student")
    print(f"held-out reverse KL per token {evals[0]:.4f} -> {evals[-1]:.4f}; training divergence "
          f"{steps[0]['divergence']:.4f} -> {steps[-1]['divergence']:.4f}")
    assert len(evals) == 2 and evals[0] > 0.02
    assert evals[-1] < 0.8 * evals[0]
