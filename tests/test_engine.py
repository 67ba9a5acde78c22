"""The engine: loss scaling invariant to accumulation and process count, exact resume, NaN guard."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _dist_grads import first_step_grads  # noqa: E402
from _launch import accelerate_launch  # noqa: E402

REDUCTIONS = ["sum", "token_mean", "sequence_mean"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_first_step_gradients_invariant_to_accumulation_and_processes(tiny_model_dir, reduction, tmp_path):
    loss_a, grads_a = first_step_grads(tiny_model_dir, reduction, batch_size=8, accum=1)
    loss_b, grads_b = first_step_grads(tiny_model_dir, reduction, batch_size=4, accum=2)
    out = tmp_path / "dist.pt"
    proc = accelerate_launch(Path(__file__).parent / "_dist_grads.py", tiny_model_dir, reduction, 4, 1, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dist = torch.load(out)
    # float32 sums over ~1e3 terms: agreement to 1e-5 relative to the gradient's scale.
    for name, g in grads_a.items():
        scale = g.abs().max().item() + 1e-12
        assert torch.allclose(g, grads_b[name], atol=1e-5 * scale, rtol=0), name
        assert torch.allclose(g, dist["grads"][name], atol=1e-5 * scale, rtol=0), name
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert loss_a == pytest.approx(dist["loss"], rel=1e-5)


def _sft(tiny_model_dir, out, *extra):
    from posttrain.config import load_config
    from posttrain.train.sft import SFTConfig, run_sft

    config = load_config(SFTConfig, overrides=[f"model={tiny_model_dir}", f"out={out}", "batch_size=2",
                                               "max_length=96", "learning_rate=1e-3", "progress=false",
                                               "data=[{source: 'builtin:arithmetic_sft', count: 48}]", *extra])
    return run_sft(config)


def _losses(run_dir, key="loss"):
    return [r[key] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if key in r]


def test_resumed_run_continues_the_same_trajectory(tiny_model_dir, tmp_path, crash_engine):
    _sft(tiny_model_dir, tmp_path / "full", "max_steps=6")
    full = _losses(tmp_path / "full")

    # Interrupt a second run after step 4 (checkpoint at step 3), then resume it.
    with crash_engine("accumulate_gradients", 5):
        _sft(tiny_model_dir, tmp_path / "resumed", "max_steps=6", "save_steps=3")
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-000003"]
    _sft(tiny_model_dir, tmp_path / "resumed", "max_steps=6", "save_steps=3")
    resumed = _losses(tmp_path / "resumed")
    assert len(resumed) == 6
    assert resumed == pytest.approx(full, rel=1e-6)
    nll = _losses(tmp_path / "full", "token_nll")
    assert nll[-1] < nll[0]  # and it learns


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    from posttrain.train import sft as sft_mod
    from posttrain.train.engine import TrainingError

    original = sft_mod.sft_step

    def nan_after_three(reduction, chunked_loss=True):
        step = original(reduction, chunked_loss)
        calls = {"n": 0}

        def wrapped(model, batch):
            calls["n"] += 1
            numerator, metrics = step(model, batch)
            return (numerator * float("nan") if calls["n"] > 3 else numerator), metrics

        return wrapped

    monkeypatch.setattr(sft_mod, "sft_step", nan_after_three)
    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*step-000002"):
        _sft(tiny_model_dir, tmp_path / "nan", "max_steps=6", "save_steps=2")
    assert (tmp_path / "nan" / "checkpoints" / "step-000002" / "trainer_state.pt").exists()


def test_final_model_loads_with_transformers(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _sft(tiny_model_dir, tmp_path / "run", "max_steps=2", "template=tulu")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    assert "<|assistant|>" in tok.chat_template  # the training template travels with the checkpoint
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    assert changed
    assert (tmp_path / "run" / "report.md").exists() and (tmp_path / "run" / "curves.png").exists()


def test_lora_run_saves_merged_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    _sft(tiny_model_dir, tmp_path / "lora", "max_steps=2", "lora_rank=4", "learning_rate=1e-2")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diffs = [n for (n, a), b in zip(merged.state_dict().items(), base.state_dict().values()) if not torch.equal(a, b)]
    assert diffs and all("proj" in n for n in diffs)  # only adapted linear layers moved


def test_group_by_length_keeps_every_unit_once_and_cuts_padding():
    from posttrain.train.engine import group_by_length

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 300, (203,), generator=g).tolist()
    order = torch.randperm(203, generator=g).tolist()
    per_step = 4
    grouped = group_by_length(order, lengths, per_step, torch.Generator().manual_seed(1), steps_per_group=10)
    assert sorted(grouped) == list(range(203))
    assert grouped[-3:] == order[-3:]   # the dropped partial step is the random order's tail

    def padded(o):   # tokens a step of right-padded rows costs: its width × rows
        return sum(max(lengths[i] for i in o[s:s + per_step]) * per_step for s in range(0, 200, per_step))

    assert padded(grouped) < 0.75 * padded(order)
    steps = [grouped[s:s + per_step] for s in range(0, 200, per_step)]
    # steps are contiguous slices of a length-sorted group, and they no longer come longest-first
    assert all(lengths[a] >= lengths[b] for step in steps for a, b in zip(step, step[1:]))
    widths = [max(lengths[i] for i in step) for step in steps]
    assert widths != sorted(widths, reverse=True)


def test_engine_steps_follow_the_length_grouped_order(tmp_path):
    from posttrain.train.sft import SFTConfig
    from posttrain.train.engine import Engine

    model = torch.nn.Linear(2, 2)
    lengths = [5, 100, 6, 99, 7, 98, 8, 97]
    seen = {}
    for grouped in (False, True):
        config = SFTConfig(out=str(tmp_path / str(grouped)), batch_size=2, group_by_length=grouped, seed=3)
        engine = Engine(config, model)
        engine._lengths = lengths
        seen[grouped] = [engine._step_indices(8)[0] for _ in range(4)]
    assert sorted(i for s in seen[True] for i in s) == list(range(8))
    # grouped: each step pairs two short or two long rows
    assert all((lengths[a] > 50) == (lengths[b] > 50) for a, b in seen[True])


def test_report_running_mean_averages_the_last_window_values():
    from posttrain.reports.training import running_mean

    assert running_mean([1.0, 2.0, 3.0, 4.0, 10.0], 2) == [1.0, 1.5, 2.5, 3.5, 7.0]
    assert running_mean([4.0, 0.0, 2.0], 5) == [4.0, 2.0, 2.0]


def test_rl_report_adds_a_reward_vs_kl_panel(tmp_path):
    from PIL import Image

    from posttrain.reports.training import plot_curves

    records = [{"step": s, "reward_mean": 0.1 * s, "kl": 0.01 * s} for s in range(1, 6)]
    assert plot_curves(records, tmp_path / "rl.png") == ["reward_mean", "kl"]
    assert plot_curves([{k: r[k] for k in ("step", "reward_mean")} for r in records], tmp_path / "r.png") == ["reward_mean"]
    # one 4.2-inch panel per metric at 110 dpi, plus the reward-vs-KL panel when both are logged
    assert Image.open(tmp_path / "rl.png").size[0] == round(3 * 4.2 * 110)
    assert Image.open(tmp_path / "r.png").size[0] == round(4.2 * 110)
