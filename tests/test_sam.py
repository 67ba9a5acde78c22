"""optimizer=sam|tram (train/sam.py): the two-pass update against one computed by hand, TRAM's
trust-region radius, and the engine's invariances (accumulation, 2 gloo processes, exact resume)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from posttrain.config import ConfigError, TrainingOptions, load_config


def _options(tmp_path, **kw) -> TrainingOptions:
    base = dict(out=str(tmp_path / "run"), data=["unused"], learning_rate=0.1, lr_schedule="constant",
                warmup_ratio=0.0, max_grad_norm=0.0, progress=False, mixed_precision="no")
    return TrainingOptions(**{**base, **kw})


def _engine(options, model):
    from posttrain.train.engine import Engine

    engine = Engine(options, model)
    engine.setup(total_updates=10)
    return engine


# --------------------------------------------------------------------------------------------- SAM

# L(w) = Σ_i (w·x_i − y_i)², one point per micro-batch. At w0 the gradient's first coordinate is
# positive, at w0 + ε̂ negative: SAM's step goes the other way from AdamW's in that coordinate.
W0, X, Y, RHO = [0.6, 0.0], [[1.0, 0.0], [1.0, 2.0]], [0.0, 1.0], 0.5


def _square_loss(model, batch):
    return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum(), {}


def _hand_sam_gradient():
    """∇L at w0 + ρ g/‖g‖ with g = ∇L(w0) = 2 Σ_i r_i x_i, r_i = w·x_i − y_i (written out)."""
    def grad(w):
        g = [0.0, 0.0]
        for x, y in zip(X, Y):
            r = w[0] * x[0] + w[1] * x[1] - y
            g = [g[0] + 2 * r * x[0], g[1] + 2 * r * x[1]]
        return g

    g = grad(W0)
    norm = (g[0] ** 2 + g[1] ** 2) ** 0.5
    return g, grad([W0[0] + RHO * g[0] / norm, W0[1] + RHO * g[1] / norm])


def _linear():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([W0]))
    return model


def _points():
    return [{"x": torch.tensor([x]), "y": torch.tensor([y])} for x, y in zip(X, Y)]


def test_sam_update_equals_the_hand_computed_two_pass_update(tmp_path):
    g, g_sam = _hand_sam_gradient()
    assert g_sam[0] < 0 < g[0]   # the case is discriminating

    engine = _engine(_options(tmp_path, optimizer="sam", sam_rho=RHO), _linear())
    record = engine.update(_points(), _square_loss)
    # AdamW's first step from zero moments: w − lr · ĝ/(|ĝ| + 1e-8), bias corrections cancel.
    expected = [w - 0.1 * gs / (abs(gs) + 1e-8) for w, gs in zip(W0, g_sam)]
    assert engine.unwrapped().weight.detach()[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert record["sam_rho"] == RHO
    assert record["loss"] == pytest.approx(sum((x[0] * W0[0] + x[1] * W0[1] - y) ** 2 for x, y in zip(X, Y)))
    assert record["sam_loss"] > record["loss"]   # the loss at the ascent point

    plain = _engine(_options(tmp_path / "plain"), _linear())
    plain.update(_points(), _square_loss)
    assert plain.unwrapped().weight[0, 0] < W0[0] < engine.unwrapped().weight[0, 0]


def test_sam_leaves_the_perturbed_gradient_and_restores_the_weights(tmp_path):
    from posttrain.train.sam import SharpnessAware

    engine = _engine(_options(tmp_path, optimizer="sam", sam_rho=RHO), _linear())
    engine.accumulate_gradients(_points(), _square_loss)
    SharpnessAware(engine.options).perturbed_gradients(engine, _points(), _square_loss, None)
    _, g_sam = _hand_sam_gradient()
    model = engine.unwrapped()
    assert model.weight.grad[0].tolist() == pytest.approx(g_sam, rel=1e-6)
    assert torch.equal(model.weight.detach(), torch.tensor([W0]))   # exactly θ again


def test_sam_rho_zero_is_adamw(tmp_path):
    sam = _engine(_options(tmp_path, optimizer="sam", sam_rho=0.0), _linear())
    plain = _engine(_options(tmp_path / "plain"), _linear())
    for engine in (sam, plain):
        for _ in range(3):
            engine.update(_points(), _square_loss)
    assert torch.equal(sam.unwrapped().weight, plain.unwrapped().weight)


# -------------------------------------------------------------------------------------------- TRAM

class TinyLM(torch.nn.Module):
    """logits = head(embed(ids)): a next-token model small enough to differentiate by hand."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)

    def forward(self, input_ids, attention_mask=None, use_cache=False, **_):
        return SimpleNamespace(logits=self.head(self.embed(input_ids)))


BATCH = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "labels": torch.tensor([[-100, 2, 3, -100]])}


def _nll(model, batch):
    logits = model(batch["input_ids"]).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 5), batch["labels"][:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum"), {}


def _hand_tram(params0: dict, params: dict, scale: float):
    """d = mean over the two labelled positions of Σ_v p0 (log p0 − log p); ε = scale·d·g/‖g‖."""
    def logits(p):
        return (p["embed.weight"][BATCH["input_ids"][0, :-1]] @ p["head.weight"].T)[[0, 1]]   # positions of 2, 3

    def loss(p):
        return torch.nn.functional.cross_entropy(logits(p), torch.tensor([2, 3]), reduction="sum")

    logp0, logp = logits(params0).log_softmax(-1), logits(params).log_softmax(-1)
    d = float((logp0.exp() * (logp0 - logp)).sum(-1).mean())
    names = list(params)
    grads = torch.autograd.grad(loss({n: params[n].requires_grad_() for n in names}), [params[n] for n in names])
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    moved = {n: (params[n] + scale * d * g / norm).detach().requires_grad_() for n, g in zip(names, grads)}
    second = torch.autograd.grad(loss(moved), [moved[n] for n in names])
    return d, dict(zip(names, second))


@pytest.mark.parametrize("target", ["pretrained", "previous"])
def test_tram_radius_is_the_kl_to_its_target(tmp_path, target):
    from posttrain.train.sam import SharpnessAware

    engine = _engine(_options(tmp_path, optimizer="tram", tram_target=target, tram_scale=3.0), TinyLM())
    model = engine.unwrapped()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    sharpness = SharpnessAware(engine.options)
    sharpness.start(engine)   # the target: the weights at the start
    with torch.no_grad():     # a model that moved away from them
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    moved = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine.accumulate_gradients([BATCH], _nll)
    record = sharpness.perturbed_gradients(engine, [BATCH], _nll, None)

    d, second = _hand_tram(start, moved, 3.0)
    assert d > 1e-3 and record["tram_divergence"] == pytest.approx(d, rel=1e-5)
    assert record["sam_rho"] == pytest.approx(3.0 * d, rel=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, second[name], rtol=1e-5, atol=1e-7), name
        assert torch.equal(p.detach(), moved[name])   # θ restored
    kept = dict(zip([n for n, _ in model.named_parameters()], sharpness.target))
    reference = moved if target == "previous" else start   # θ_{t−1} advances; θ₀ stays
    assert all(torch.equal(kept[n], reference[n]) for n in kept)


def test_tram_first_update_is_plain_adamw(tmp_path):
    """At step 1 the model is its own target: d = 0, so ρ = 0 and the update is AdamW's."""
    tram = _engine(_options(tmp_path, optimizer="tram"), TinyLM())
    plain = _engine(_options(tmp_path / "plain"), TinyLM())
    record = tram.update([BATCH], _nll)
    plain.update([BATCH], _nll)
    assert record["tram_divergence"] == pytest.approx(0.0, abs=1e-9)
    for a, b in zip(tram.unwrapped().parameters(), plain.unwrapped().parameters()):
        assert torch.allclose(a, b, atol=1e-7)


# ------------------------------------------------------------------------------------ bad settings

@pytest.mark.parametrize("override, message", [
    ("sam_rho=-0.1", "sam_rho=-0.1"), ("optimizer=lion", "optimizer='lion'"),
    ("tram_target=ema", "tram_target='ema'"), ("tram_scale=-1", "tram_scale=-1")])
def test_bad_settings_are_refused_before_any_model_loads(override, message):
    from posttrain.train.sft import SFTConfig

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(SFTConfig, overrides=[override])


def test_tram_is_refused_where_batches_are_not_next_token_rows():
    from posttrain.train.reward import RewardConfig

    with pytest.raises(ConfigError, match="use optimizer=sam"):
        load_config(RewardConfig, overrides=["optimizer=tram"])


# ------------------------------------------------------------------ the engine's invariances, resume

def _sft(model_dir, out, *extra):
    from posttrain.cli import main

    assert main(["sft", f"model={model_dir}", f"out={out}", "max_length=96", "learning_rate=1e-3", "progress=false",
                 "data=[{source: 'builtin:arithmetic_sft', count: 16}]", "warmup_ratio=0", *extra]) == 0


def _metric(run_dir, key):
    return [r[key] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if key in r]


TRAM = ["optimizer=tram", "tram_target=previous", "tram_scale=20"]
SAM = ["optimizer=sam", "sam_rho=0.05"]


@pytest.mark.parametrize("options", [SAM, TRAM], ids=["sam", "tram"])
def test_two_processes_and_accumulation_follow_one_process(options, tiny_model_dir, tmp_path):
    from _launch import accelerate_launch

    _sft(tiny_model_dir, tmp_path / "one", "max_steps=3", "batch_size=4", *options)
    _sft(tiny_model_dir, tmp_path / "accum", "max_steps=3", "batch_size=2", "gradient_accumulation_steps=2", *options)
    proc = accelerate_launch("-m", "posttrain.cli", "sft", f"model={tiny_model_dir}", f"out={tmp_path / 'two'}",
                             "max_length=96", "learning_rate=1e-3", "progress=false", "warmup_ratio=0",
                             "data=[{source: 'builtin:arithmetic_sft', count: 16}]", "max_steps=3", "batch_size=2",
                             *options, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for key in ("loss", "sam_loss", "sam_rho"):
        one = _metric(tmp_path / "one", key)
        assert len(one) == 3
        # float32 sums over ~300 tokens, then a few updates: 1e-4 relative
        assert _metric(tmp_path / "accum", key) == pytest.approx(one, rel=1e-4, abs=1e-7), key
        assert _metric(tmp_path / "two", key) == pytest.approx(one, rel=1e-4, abs=1e-7), key
    if options is TRAM:   # the radius moved off 0 after the first update
        assert _metric(tmp_path / "one", "sam_rho")[0] == 0 and min(_metric(tmp_path / "one", "sam_rho")[1:]) > 0
    plain = tmp_path / "plain"
    _sft(tiny_model_dir, plain, "max_steps=3", "batch_size=4")
    assert _metric(plain, "loss")[2] != pytest.approx(_metric(tmp_path / "one", "loss")[2], rel=1e-6)


def test_resumed_tram_run_continues_the_same_trajectory(tiny_model_dir, tmp_path, crash_engine):
    _sft(tiny_model_dir, tmp_path / "full", "max_steps=5", "batch_size=4", *TRAM)
    with crash_engine("accumulate_gradients", 7):   # two calls a step: dies in step 4, after the step-3 checkpoint
        _sft(tiny_model_dir, tmp_path / "resumed", "max_steps=5", "batch_size=4", "save_steps=3", *TRAM)
    _sft(tiny_model_dir, tmp_path / "resumed", "max_steps=5", "batch_size=4", "save_steps=3", *TRAM)
    for key in ("loss", "sam_loss", "tram_divergence"):
        assert _metric(tmp_path / "resumed", key) == pytest.approx(_metric(tmp_path / "full", key), rel=1e-6), key
