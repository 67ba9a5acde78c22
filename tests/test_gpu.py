"""GPU-only checks (marker ``gpu``; skipped without CUDA, see conftest.py): bf16 against fp32 for
the SFT / DPO / GRPO steps, packed rows through SDPA / flex attention / flash-attention, the
compiled static-cache generation, the chunked LM head on CUDA, FSDP2 and DeepSpeed ZeRO-2/3 on one
GPU. ``bench/gpu_suite.py`` runs them on the lent machine and records each outcome.

``POSTTRAIN_GPU_TESTS_ON_CPU=1`` runs them on the CPU (bf16 autocast works there too) to debug the
tests without a GPU; the checks that only mean something on CUDA (compilation, device memory,
FSDP / DeepSpeed over NCCL) skip there.

Tolerances (bf16 has an 8-bit mantissa, relative rounding 2^-8 ≈ 0.4 %; the sums below average
many such errors):
- a step's loss in bf16 autocast is within 1 % (relative) of the fp32 loss, DPO's per-pair loss
  and GRPO's loss within 0.02 absolute, and the bf16 gradient points the same way as the fp32 one
  (cosine ≥ 0.99);
- packed rows equal each conversation alone to 1e-4 in fp32 (SDPA, flex) and to 0.05 in bf16
  (flash-attention, which has no fp32 kernel);
- static-cache (compiled) greedy tokens equal the dynamic cache's exactly in fp32, sampled
  log-probs to 1e-3;
- the chunked head equals plain cross-entropy to 1e-4 (fp32) / 1 % (bf16) in loss and gradients;
- an FSDP2 / ZeRO run's saved model equals a plain single-process run's to 1e-4.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
cuda_only = pytest.mark.skipif(not CUDA, reason="means something on CUDA only")
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Fixtures: a small Llama (hidden 128, 2 layers, real 49 152-word vocabulary) and its tokenizer


@pytest.fixture(scope="module")
def gpu_tokenizer():
    """The SmolLM2 tokenizer: from ``POSTTRAIN_GPU_TOKENIZER`` or the kit folder (the GPU machine
    has no embedded model; ``bench/fetch_gpu_wheels.py`` saves the tokenizer there), else the
    embedded model's."""
    from posttrain.models import load_tokenizer

    kit = ROOT / ".gpu-kit" / "tokenizer"
    spec = os.environ.get("POSTTRAIN_GPU_TOKENIZER") or (str(kit) if kit.is_dir() else "smollm2-135m-instruct")
    return load_tokenizer(spec)


def small_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpu_tokenizer):
    path = tmp_path_factory.mktemp("gpu-small-llama")
    small_model(gpu_tokenizer).save_pretrained(path)
    gpu_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))   # tokenised-data caches stay per test


def perturb(model, scale: float = 0.02, seed: int = 1):
    """Move every weight a little, so the policy differs from its reference (non-zero margins, KL)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g).to(p.device))


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])


def fp32_and_bf16(model, run):
    """``run(model)`` → scalar loss (and extras), once in fp32 and once under bf16 autocast, with the
    parameter gradient of each: [(loss, extras, grad), (loss, extras, grad)]."""
    out = []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            loss, extras = run(model)
        loss.backward()
        out.append((float(loss.detach()), extras, grads(model)))
    return out


def assert_bf16_close(results, rel=None, abs_=None):
    (l32, _, g32), (l16, _, g16) = results
    if rel is not None:
        assert abs(l16 - l32) <= rel * abs(l32), f"bf16 loss {l16} vs fp32 {l32}"
    if abs_ is not None:
        assert abs(l16 - l32) <= abs_, f"bf16 loss {l16} vs fp32 {l32}"
    cosine = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    assert cosine >= 0.99, f"bf16 gradient cosine {cosine:.4f} to fp32"


# ---------------------------------------------------------------------------------------------
# bf16 autocast against fp32: one step of each trainer


def sft_batch(tokenizer, n: int = 24, max_length: int = 256):
    from posttrain.data import collate_packed, encode_conversation, load_source, pack_sequences

    rows = load_source("builtin:arithmetic_sft", n=n, seed=0)
    examples = [encode_conversation(tokenizer, r["messages"], max_length=max_length) for r in rows]
    return collate_packed(examples, pack_sequences(examples, max_length), tokenizer.pad_token_id)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-head", "full-logits"])
def test_bf16_sft_step_matches_fp32(gpu_tokenizer, chunked):
    from posttrain.train.sft import sft_normalizer_fn, sft_step

    model = small_model(gpu_tokenizer).to(DEVICE).train()
    batch = {k: v.to(DEVICE) for k, v in sft_batch(gpu_tokenizer, n=24 if CUDA else 6).items()}
    step, normalizer = sft_step("token_mean", chunked), sft_normalizer_fn("token_mean")
    results = fp32_and_bf16(model, lambda m: (step(m, batch)[0] / normalizer(batch), None))
    assert results[0][0] > 5   # a random model: about ln(49 152) ≈ 10.8 per token
    assert_bf16_close(results, rel=0.01)


@pytest.mark.parametrize("share", [True, False], ids=["shared-prompts", "plain"])
def test_bf16_dpo_step_matches_fp32(gpu_tokenizer, share):
    from posttrain.config import load_config
    from posttrain.data import load_source
    from posttrain.train.dpo import DPOConfig, dpo_step
    from posttrain.train.reference import frozen_copy_reference
    from posttrain.data.preference import PairBatches, tokenize_pairs

    rows = load_source("builtin:arithmetic_preference", n=8, seed=0)
    examples, _ = tokenize_pairs(rows, gpu_tokenizer, 256, 128, "test")
    batches = PairBatches(examples, gpu_tokenizer.pad_token_id, share_prompts=share)
    batch = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batches(list(range(8))).items()}
    model = small_model(gpu_tokenizer).to(DEVICE).train()
    with torch.no_grad():   # logits of std ~2 instead of a random init's near-uniform ones: real margins
        model.get_input_embeddings().weight.mul_(10)
    reference = frozen_copy_reference(model, DEVICE)
    perturb(model, scale=0.2)
    step = dpo_step(load_config(DPOConfig, overrides=["beta=0.1"]), reference)
    results = fp32_and_bf16(model, lambda m: (lambda n, metrics: (n / 8, metrics))(*step(m, batch)))
    (l32, m32, _), (l16, m16, _) = results
    print(f"DPO fp32 loss {l32:.5f} bf16 {l16:.5f}; margin {float(m32['margin']):.4f} / {float(m16['margin']):.4f}; "
          f"logps {float(m32['logps/chosen']):.3f} / {float(m16['logps/chosen']):.3f}")
    assert abs(float(m32["margin"])) > 0.01   # the perturbation moved the policy off its reference
    for key in ("logps/chosen", "logps/rejected"):
        assert abs(float(m16[key]) - float(m32[key])) <= 0.01 * abs(float(m32[key])), key
    assert_bf16_close(results, abs_=0.02)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-head", "full-logits"])
def test_bf16_grpo_loss_matches_fp32(gpu_tokenizer, chunked):
    """The clipped surrogate with the k3 KL term, π_old and π_ref from the unperturbed model in fp32,
    groups of 4 sharing their prompt."""
    from posttrain.losses.advantages import group_advantages
    from posttrain.losses.policy import clipped_policy_loss
    from posttrain.models.layout import completion_token_logps

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1000, 20000, (n,), generator=g).tolist() for n in (30, 17, 45, 24)]
    rows = [p for p in prompts for _ in range(4)]
    completion = torch.randint(1000, 20000, (16, 32), generator=g).to(DEVICE)
    mask = (torch.arange(32) < torch.randint(8, 33, (16, 1), generator=g)).float().to(DEVICE)
    pad = gpu_tokenizer.pad_token_id
    model = small_model(gpu_tokenizer).to(DEVICE).train()
    with torch.no_grad():
        old, _ = completion_token_logps(model, rows, completion, pad, mask, share_prompts=True, chunked=chunked)
    perturb(model)
    advantages, _ = group_advantages(torch.rand(16, generator=g).to(DEVICE), 4)

    def run(m):
        logps, _ = completion_token_logps(m, rows, completion, pad, mask, share_prompts=True, chunked=chunked)
        return clipped_policy_loss(logps, old, advantages, mask, kl_coef=0.05, ref_logps_BT=old)

    assert_bf16_close(fp32_and_bf16(model, run), abs_=0.02)


def test_trainers_run_in_bf16_and_follow_fp32(model_dir, tmp_path):
    """Through the engine (accelerate's autocast): SFT's loss over 3 steps within 1 % of the fp32
    run's, DPO's per-pair loss within 0.02; a GRPO run with the static (compiled on CUDA) rollout
    cache gives finite losses."""
    from posttrain.config import load_config
    from posttrain.train.dpo import DPOConfig, run_dpo
    from posttrain.train.rl.config import GRPOConfig
    from posttrain.train.rl.trainer import run_rl
    from posttrain.train.sft import SFTConfig, run_sft

    from accelerate.state import AcceleratorState

    common = [f"model={model_dir}", "progress=false", "resume=false", "warmup_ratio=0"]
    fresh = lambda: AcceleratorState._reset_state(reset_partial_state=True)  # noqa: E731  (a new precision each run)
    losses = {}
    for precision in ("no", "bf16"):
        fresh()
        run_sft(load_config(SFTConfig, overrides=common + [
            f"out={tmp_path / ('sft-' + precision)}", f"mixed_precision={precision}", "max_steps=3", "batch_size=2",
            "max_length=256", "data=[{source: 'builtin:arithmetic_sft', n: 64}]", "learning_rate=1e-3"]))
        fresh()
        run_dpo(load_config(DPOConfig, overrides=common + [
            f"out={tmp_path / ('dpo-' + precision)}", f"mixed_precision={precision}", "max_steps=2", "batch_size=4",
            "max_length=256", "max_prompt_length=128", "eval_data=[]", "learning_rate=1e-3",
            "data=[{source: 'builtin:arithmetic_preference', count: 16}]"]))
        losses[precision] = {kind: [r["loss"] for r in _metrics(tmp_path / f"{kind}-{precision}") if "loss" in r]
                             for kind in ("sft", "dpo")}
    for a, b in zip(losses["bf16"]["sft"], losses["no"]["sft"]):
        assert a == pytest.approx(b, rel=0.01)
    for a, b in zip(losses["bf16"]["dpo"], losses["no"]["dpo"]):
        assert a == pytest.approx(b, abs=0.02)
    assert len(losses["bf16"]["sft"]) == 3 and len(losses["bf16"]["dpo"]) == 2
    fresh()
    run_rl(load_config(GRPOConfig, overrides=common + [
        f"out={tmp_path / 'grpo'}", "mixed_precision=bf16", "rollout_cache=static", "max_steps=2",
        "prompts_per_step=2", "group_size=4", "max_new_tokens=16", "batch_size=8", "eval_data=[]",
        "data=[{source: 'builtin:arithmetic_rlvr', n: 8}]", "reward=[{function: 'test_gpu:length_reward'}]",
        "filter_zero_variance_groups=false", "save_samples=0"]))
    grpo = [r for r in _metrics(tmp_path / "grpo") if "reward_mean" in r]
    assert len(grpo) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in grpo)


def length_reward(prompts, completions, **columns):
    return [len(c) / 10.0 for c in completions]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Packed rows through each attention kernel


ATTENTION = ["sdpa", "flex_attention", "flash_attention_2"]


@pytest.mark.parametrize("implementation", ATTENTION)
def test_packed_rows_equal_each_conversation_alone(gpu_tokenizer, model_dir, implementation):
    """Several conversations in one row (position ids restarting at 0, no attention mask): each
    one's logits equal those of the conversation run alone through the same kernel; and they do
    not equal the row run as one sequence (the check can fail)."""
    from transformers import AutoModelForCausalLM

    from posttrain.data import collate_packed, encode_conversation, load_source, pack_sequences

    if implementation == "flash_attention_2" and not (CUDA and importlib.util.find_spec("flash_attn")):
        pytest.skip("flash-attn is not importable here (it cannot travel to the lent machine: too large)")
    dtype = torch.bfloat16 if implementation.startswith("flash") else torch.float32
    tolerance = 0.05 if dtype == torch.bfloat16 else 1e-4
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=implementation, dtype=dtype)
    model = model.to(DEVICE).eval()
    assert model.config._attn_implementation == implementation
    rows = load_source("builtin:arithmetic_sft", n=8, seed=2)
    examples = [encode_conversation(gpu_tokenizer, r["messages"]) for r in rows]
    packed_rows = pack_sequences(examples, max_length=512)
    assert any(len(row) > 1 for row in packed_rows)
    batch = collate_packed(examples, packed_rows, gpu_tokenizer.pad_token_id, max_length=512)
    ids, positions = batch["input_ids"].to(DEVICE), batch["position_ids"].to(DEVICE)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
        one_sequence = model(input_ids=ids, position_ids=torch.arange(512, device=DEVICE).expand_as(ids),
                             use_cache=False).logits.float()
        crossed = 0.0
        for b, row in enumerate(packed_rows):
            t = 0
            for i in row:
                n = len(examples[i]["input_ids"])
                alone = model(input_ids=torch.tensor([examples[i]["input_ids"]], device=DEVICE),
                              use_cache=False).logits[0].float()
                torch.testing.assert_close(packed[b, t:t + n], alone, rtol=tolerance, atol=tolerance,
                                           msg=lambda m: f"row {b}, conversation {i}: {m}")
                if t > 0:
                    crossed = max(crossed, float((one_sequence[b, t:t + n] - alone).abs().max()))
                t += n
    assert crossed > 10 * tolerance   # attending across the boundary changes the logits


# ---------------------------------------------------------------------------------------------
# Static-cache (compiled) generation


PROMPTS = [[1000 + i for i in range(n)] for n in (12, 5, 9, 20)]


def _rollouts(model, tokenizer, cache):
    from posttrain.train.rl.rollout import HFRollout

    backend = HFRollout(model, tokenizer, batch_size=8, cache=cache)
    greedy = backend.generate(PROMPTS, n=2, max_new_tokens=24, greedy=True)
    torch.manual_seed(0)
    sampled = backend.generate(PROMPTS, n=2, max_new_tokens=24, temperature=1.0)
    return greedy, sampled


def test_static_cache_generation_equals_dynamic(gpu_tokenizer, model_dir):
    """Left-padded prompts of different lengths, 2 samples each: greedy tokens and masks equal; under
    one seed the sampled tokens equal and their log-probs agree to 1e-3 (fp32 weights)."""
    from posttrain.models import load_model

    model = load_model(model_dir, device=DEVICE).eval()
    dynamic = _rollouts(model, gpu_tokenizer, "dynamic")
    static = _rollouts(model, gpu_tokenizer, "static")
    for st, dyn in zip(static, dynamic):
        assert torch.equal(st.completion_ids, dyn.completion_ids)
        assert torch.equal(st.completion_mask, dyn.completion_mask)
    torch.testing.assert_close(static[1].sampling_logps, dynamic[1].sampling_logps, rtol=1e-3, atol=1e-3)


@cuda_only
def test_static_cache_generation_is_compiled(gpu_tokenizer, model_dir):
    """On CUDA transformers compiles the static-cache decoding step (``get_compiled_call``)."""
    from posttrain.models import load_model

    model = load_model(model_dir, device=DEVICE).eval()
    _rollouts(model, gpu_tokenizer, "static")
    assert getattr(model, "_compiled_call", None) is not None, "generate did not compile the decoding forward"


# ---------------------------------------------------------------------------------------------
# The chunked LM head on the device


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_head_equals_plain_cross_entropy(dtype):
    """``linear_cross_entropy`` and ``linear_log_probs`` against ``F.cross_entropy`` /
    ``log_softmax`` on the full logits: loss and gradients (of hidden states and head weight);
    on CUDA the chunked path's peak memory is below the plain path's."""
    import torch.nn.functional as F

    from posttrain.losses.linear_ce import linear_cross_entropy, linear_log_probs

    n, h, v = (4096, 896, 49152) if CUDA else (512, 128, 49152)
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(DEVICE, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * h ** -0.5).to(DEVICE, dtype).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g).to(DEVICE)
    target[::7] = -100
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.01, atol=1e-3)
    peaks = {}

    def measured(name, fn):
        hidden.grad = weight.grad = None
        if CUDA:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        loss = fn()
        loss.backward()
        if CUDA:
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - base
        return float(loss.detach()), hidden.grad.float().clone(), weight.grad.float().clone()

    plain = measured("plain", lambda: F.cross_entropy((hidden @ weight.t()).float(), target, reduction="sum"))
    chunked = measured("chunked", lambda: linear_cross_entropy(hidden, weight, target)[0])
    assert chunked[0] == pytest.approx(plain[0], rel=tol["rtol"] * 10)
    for a, b in zip(chunked[1:], plain[1:]):
        torch.testing.assert_close(a, b, **tol)
    if CUDA:
        assert peaks["chunked"] < 0.5 * peaks["plain"], peaks
    keep = target != -100
    coef = torch.linspace(0.5, 1.5, int(keep.sum()), device=DEVICE)
    plain_lp = measured("plain_logps", lambda: (torch.log_softmax((hidden[keep] @ weight.t()).float(), -1)
                                                 .gather(1, target[keep, None]).squeeze(1) * coef).sum())
    chunked_lp = measured("chunked_logps", lambda: (linear_log_probs(hidden[keep], weight, target[keep])[0] * coef).sum())
    assert chunked_lp[0] == pytest.approx(plain_lp[0], rel=tol["rtol"] * 10)
    for a, b in zip(chunked_lp[1:], plain_lp[1:]):
        torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------------------------------------
# FSDP2 and DeepSpeed on one GPU: the saved checkpoint reloads equal to a plain run's


def _accelerate_config(tmp_path, name: str) -> Path:
    """The package's accelerate config for ``name`` with one process (and fp32, so the comparison
    with a plain run is tight)."""
    import yaml

    source = ROOT / "src" / "posttrain" / "accelerate_configs" / f"{name}.yaml"
    config = yaml.safe_load(source.read_text())
    config.update(num_processes=1, mixed_precision="no")
    path = tmp_path / f"{name}-1.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _sft_cli(model_dir, out) -> list[str]:
    return ["-m", "posttrain.cli", "sft", f"model={model_dir}", f"out={out}", "max_steps=2", "batch_size=2",
            "max_length=256", "progress=false", "mixed_precision=no", "warmup_ratio=0", "learning_rate=1e-3",
            "save_steps=1", "data=[{source: 'builtin:arithmetic_sft', n: 32}]"]


def _run(cmd: list[str], tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               POSTTRAIN_HOME=str(tmp_path / "home"))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _assert_same_weights(a: Path, b: Path, rtol: float, atol: float):
    from transformers import AutoModelForCausalLM

    left = AutoModelForCausalLM.from_pretrained(a).state_dict()
    right = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")


@pytest.fixture(scope="module")
def plain_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain-sft") / "run"
    _run([sys.executable, *_sft_cli(model_dir, out)], out.parent)
    return out


@cuda_only
@pytest.mark.parametrize("name", ["fsdp2", "zero2", "zero3"])
def test_sharded_run_saves_a_checkpoint_that_reloads_equal(model_dir, plain_run, tmp_path, name):
    """``accelerate launch`` with the package's config (one process): the final model and the last
    checkpoint load with transformers and equal each other, and equal the plain run's weights."""
    if name.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not importable here")
    out = tmp_path / name
    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(_accelerate_config(tmp_path, name)),
          *_sft_cli(model_dir, out)], tmp_path)   # accelerate launch's -m: run a module
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert checkpoints and (out / "model" / "config.json").exists()
    _assert_same_weights(out / "model", checkpoints[-1], rtol=0, atol=0)
    _assert_same_weights(out / "model", plain_run / "model", rtol=1e-4, atol=1e-5)
