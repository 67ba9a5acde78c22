"""Shared fixtures: the real SmolLM2 tokenizer and a tiny random-init Llama built around it, so
the fast tier needs seconds per test. Hub access is switched off so a stray hub call fails at once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    from posttrain.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def build_tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved tiny Llama (hidden 64, 2 layers) with the SmolLM2 tokenizer: a valid model spec."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer):
    """Another tiny Llama (seed 1, its weights scaled ×20 so its next-token distributions are far from
    uniform) with the same tokenizer: a teacher for distillation."""
    import torch

    path = tmp_path_factory.mktemp("tiny-teacher")
    model = build_tiny_model(tokenizer, seed=1)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tokenizer):
    """A saved tiny random-init ``LlamaForSequenceClassification``: a reward-model folder as
    ``posttrain reward`` writes it, for the ``{"reward_model": path}`` reward component."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-rm")
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """accelerate keeps one process-wide state; a test that builds an Accelerator with other
    settings (TRL's trainers use their own) must not leak them into the next test."""
    yield
    import sys

    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where CUDA is not available (``bench/gpu_suite.py`` runs them
    on the lent GPU machine). ``POSTTRAIN_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead, to
    debug the kit without a GPU (slow; the CUDA-only checks inside still skip)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or os.environ.get("POSTTRAIN_GPU_TESTS_ON_CPU") == "1":
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (bench/gpu_suite.py runs these on one)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_cluster():
    """A two-node Ray cluster simulated in this machine (one CPU each), connected: placement across
    nodes is really exercised. Per test module, shut down after it."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()



@pytest.fixture
def crash_engine(monkeypatch):
    """``with crash_engine("accumulate_gradients", 3): run()``: ``run()`` dies of a simulated
    KeyboardInterrupt on that ``Engine`` method's 3rd call (the block fails if it does not), and the
    method is restored afterwards: the crash half of every "a resumed run continues the same
    trajectory" test."""
    from contextlib import contextmanager

    from posttrain.train import engine as engine_mod

    @contextmanager
    def crash(method: str, on_call: int):
        original = getattr(engine_mod.Engine, method)
        calls = {"n": 0}

        def crashing(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == on_call:
                raise KeyboardInterrupt("simulated crash")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(engine_mod.Engine, method, crashing)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(engine_mod.Engine, method, original)

    return crash


@pytest.fixture
def isolated_posttrain_home(tmp_path, monkeypatch):
    """A fresh POSTTRAIN_HOME under tmp_path (caches start empty) that still sees the embedded
    models already converted under the real one (no second conversion)."""
    from posttrain.models import embedded

    real = embedded.posttrain_home()
    home = tmp_path / "home"
    monkeypatch.setenv("POSTTRAIN_HOME", str(home))
    home.mkdir()
    if (real / "models").exists():
        os.symlink(real / "models", home / "models")
    return home


def build_tiny_t5(tokenizer, seed: int = 0):
    """A tiny random-init T5 (d_model 32, 2 + 2 layers) around the SmolLM2 tokenizer: pad = EOS =
    ``<|im_end|>`` as the tokenizer has them, the decoder starting from ``<|im_start|>``."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.bos_token_id)
    return T5ForConditionalGeneration(config)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, tokenizer):
    """A saved tiny T5 (an encoder-decoder) with the SmolLM2 tokenizer: a valid seq2seq model spec."""
    path = tmp_path_factory.mktemp("tiny-t5")
    build_tiny_t5(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
