"""One loader for every model spec, plus LoRA and saving.

Spec resolution, in order:
1. ``smollm2-135m-instruct`` → the embedded default (converted once, see ``embedded.py``);
   ``minilm`` → the embedded encoder all-MiniLM-L6-v2 (for reward models and embeddings);
2. an existing local path: a Hugging Face folder, or a ``.gguf`` file (converted once);
3. something that looks like a path (``/``, ``./``, ``~``, ``.gguf``) but does not exist → error;
4. anything else is a hub id, fetched by transformers (fails at once, with a fix, when offline).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from posttrain.models import embedded

EMBEDDED_MODEL = "smollm2-135m-instruct"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class ModelError(ValueError):
    """A model spec that cannot be loaded; the message names it and says what to do."""


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts (a local folder or a hub id)."""
    if spec.lower() in (EMBEDDED_MODEL, *embedded.MINILM_NAMES):
        try:
            if spec.lower() == EMBEDDED_MODEL:
                return str(embedded.embedded_model_dir())
            return str(embedded.minilm_dir())
        except FileNotFoundError as e:
            raise ModelError(str(e)) from None
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return str(embedded.gguf_model_dir(path))
        if path.is_dir():
            if not any((path / name).exists() for name in ("config.json", "adapter_config.json", "attempt_config.json")):
                raise ModelError(f"model folder {path} has no config.json: is it a Hugging Face model folder?")
            return str(path)
        raise ModelError(f"model path {path} is a file but not a .gguf: give a Hugging Face folder or a .gguf file")
    if spec.startswith(("/", "./", "../", "~")) or spec.endswith(".gguf") or spec.count("/") > 1:
        raise ModelError(f"model path {spec!r} does not exist")
    return spec  # a hub id


def _hub_error(spec: str, err: Exception) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set" if offline else "the hub could not be reached or has no such model"
    return ModelError(
        f"cannot load model {spec!r}: {why} ({type(err).__name__}). Use a local Hugging Face folder, "
        f"a .gguf file, or the embedded default {EMBEDDED_MODEL!r}."
    )


def load_tokenizer(spec: str, template: str | None = None):
    """Tokenizer for a model spec, with a pad token, and (if asked) a named chat template set."""
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        if path == spec and not Path(spec).exists():
            raise _hub_error(spec, e) from None
        raise ModelError(f"cannot load the tokenizer of {spec!r}: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if template:
        from posttrain.data.templates import apply_template

        apply_template(tokenizer, template)
    return tokenizer


def resolve_attention(choice: str) -> str:
    """The attention kernels for ``attn_implementation``: ``auto`` is flash-attention 2 when the
    ``flash_attn`` package and a CUDA GPU are there (its variable-length kernels run packed rows
    without a block-diagonal mask), else PyTorch's SDPA (transformers builds the block-diagonal
    mask from the packed ``position_ids``)."""
    if choice != "auto":
        return choice
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(spec: str, dtype: str = "float32", gradient_checkpointing: bool = False,
               task: str = "causal_lm", num_labels: int = 1, device: str | torch.device | None = None,
               attn_implementation: str | None = None):
    """Load a model from a spec. ``task`` is ``causal_lm`` or ``sequence_classification``
    (a reward model: one label, score read at the last non-pad token). ``causal_lm`` loads an
    encoder-decoder (T5, BART: ``config.is_encoder_decoder``) with ``AutoModelForSeq2SeqLM``
    (``models/seq2seq.py``). ``attn_implementation``: see :func:`resolve_attention` (None:
    transformers' default)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from posttrain.models.seq2seq import spec_is_encoder_decoder

    if dtype not in DTYPES and dtype != "auto":
        raise ModelError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    path = resolve_model_path(spec)
    prompt_adapter = _prompt_adapter_kind(path)
    if prompt_adapter is not None:   # a soft prompt / ATTEMPT folder: its base model, then the adapter
        return _load_prompt_adapter(path, prompt_adapter, dtype, device)
    torch_dtype = "auto" if dtype == "auto" else DTYPES[dtype]
    cls = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
    if task == "causal_lm" and spec_is_encoder_decoder(path):
        cls = AutoModelForSeq2SeqLM
    kwargs = {"num_labels": num_labels} if task != "causal_lm" else {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = resolve_attention(attn_implementation)
    try:
        model = cls.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as e:
        if path == spec and not Path(spec).exists():
            raise _hub_error(spec, e) from None
        raise ModelError(f"cannot load model {spec!r}: {e}") from None
    if task != "causal_lm" and model.config.pad_token_id is None:
        tok = load_tokenizer(spec)
        model.config.pad_token_id = tok.pad_token_id
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    if device is not None:
        model.to(device)
    return model


def _prompt_adapter_kind(path: str) -> str | None:
    """``prompt`` / ``attempt`` for a saved soft-prompt or ATTEMPT folder (models/adapters.py), else None."""
    folder = Path(path)
    if (folder / "attempt_config.json").exists():
        return "attempt"
    config = folder / "adapter_config.json"
    if config.exists():
        import json

        if json.loads(config.read_text()).get("peft_type") == "PROMPT_TUNING":
            return "prompt"
    return None


def _load_prompt_adapter(path: str, kind: str, dtype: str, device):
    import json

    from posttrain.models import adapters

    name = "attempt_config.json" if kind == "attempt" else "adapter_config.json"
    base_spec = json.loads((Path(path) / name).read_text()).get("base_model_name_or_path")
    if not base_spec:
        raise ModelError(f"{path}: {name} names no base model (base_model_name_or_path)")
    base = load_model(base_spec, dtype=dtype, device=device)
    model = adapters.load_attempt(path, base) if kind == "attempt" else adapters.load_prompt_adapter(path, base)
    return model.to(device) if device is not None else model


def apply_lora(model, rank: int = 16, alpha: int = 32, dropout: float = 0.05,
               target_modules: list[str] | str = "all-linear", task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with LoRA adapters through peft (Hu et al. 2021)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=target_modules, task_type=task_type)
    return get_peft_model(model, config)


def save_model(model, tokenizer, out_dir: str | Path, merge_lora: bool = True, state_dict: dict | None = None) -> Path:
    """Save in Hugging Face format (safetensors + config + tokenizer + chat template), loadable by
    ``AutoModelForCausalLM.from_pretrained`` and vLLM (an encoder-decoder: ``AutoModelForSeq2SeqLM``). LoRA models are merged into full weights
    unless ``merge_lora`` is False (then the adapter alone is saved). ``state_dict``: the full
    weights when ``model`` holds only a shard of them (FSDP, ZeRO-3; ``Engine.full_state_dict``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    # a peft model's state dict is the adapter's (and merging rebuilds the weights): use the model's own
    if hasattr(model, "peft_config"):
        state_dict = None
    if merge_lora and hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    if state_dict is not None and getattr(model.config, "tie_word_embeddings", False):
        # A tied copy (lm_head.weight = the input embedding) is saved once, under the input
        # embedding's name, as save_pretrained does for the model's own weights; handed both,
        # it may keep the lm_head name, which loaders of tied models (vLLM) skip.
        tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
        state_dict = {k: v for k, v in state_dict.items() if not (isinstance(tied, dict) and k in tied)}
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(out_dir, safe_serialization=True, **extra)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def enable_activation_checkpointing(model) -> None:
    """Recompute each layer's activations in backward (non-reentrant, so frozen inputs work).
    transformers 5.25 renamed ``gradient_checkpointing_enable``; older releases have only that."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
