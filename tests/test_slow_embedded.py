"""`slow` tier: the real embedded model (SmolLM2-135M-Instruct)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_twenty_step_sft_lowers_heldout_loss(tmp_path):
    from posttrain.config import load_config
    from posttrain.train.sft import SFTConfig, run_sft

    config = load_config(SFTConfig, overrides=[
        f"out={tmp_path / 'sft'}", "max_steps=20", "batch_size=4", "max_length=192", "learning_rate=5e-5",
        "warmup_ratio=0.1", "progress=false", "eval_steps=0",
        "data=[{source: 'builtin:arithmetic_sft', count: 400}]",
        "eval_data=[{source: 'builtin:arithmetic_sft:test', count: 48}]"])
    from posttrain.models import load_model, load_tokenizer
    from posttrain.data.sft import SFTBatches, tokenize_sft
    from posttrain.train.sft import heldout_loss
    from posttrain.data import mix_sources

    tokenizer = load_tokenizer(config.model)
    examples, _ = tokenize_sft(mix_sources(config.eval_data), tokenizer, config.max_length, "eval")
    before = heldout_loss(load_model(config.model), SFTBatches(examples, tokenizer.pad_token_id, 192, True), 4)["loss"]
    last = run_sft(config)
    after = last["eval_loss"]
    print(f"held-out loss before {before:.4f} after {after:.4f}")
    assert after < before * 0.8


def test_concurrent_conversion_of_the_embedded_model_is_safe(tmp_path):
    """Two processes converting into an empty POSTTRAIN_HOME at once both succeed, and the cache loads."""
    env = {**os.environ, "POSTTRAIN_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    code = "from posttrain.models.embedded import embedded_model_dir; print(embedded_model_dir())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    folders = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(folders) == 1
    folder = Path(folders.pop())
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(folder).chat_template
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
