"""Model merging (``posttrain merge``): weight averaging, task arithmetic and interpolation. The
experiments built on them (an α sweep, train-a-skill-then-merge, data-mixture simulation) are
:mod:`posttrain.merging.experiments`.

Every method combines models that share tensor names and shapes, one tensor at a time: the output
tensor ``name`` is computed from the inputs' tensors ``name`` alone. Inputs are read lazily from
their safetensors files, one input at a time, and the output is written shard by shard, so peak
memory is about one output shard (``max_shard_size``, default 5GB) plus a few float32 copies of
the largest tensor, whatever the number of inputs.

| method | output tensor | paper |
|---|---|---|
| linear | θ = Σ_i w_i θ_i, weights w_i >= 0 normalised to Σ_i w_i = 1 | model soups, Wortsman et al. 2022 (arXiv:2203.05482) |
| task arithmetic | θ = θ_base + Σ_i λ_i (θ_i − θ_base), λ_i = scale · w_i, not normalised | Ilharco et al. 2023, "Editing Models with Task Arithmetic" (arXiv:2212.04089) |
| interpolation | θ(α) = (1 − α) θ_pre + α θ_post | PAINT, Ilharco et al. 2022 (arXiv:2208.05592) |

Inputs: a Hugging Face folder (``model.safetensors``, or shards with
``model.safetensors.index.json``), any model spec (hub id, ``smollm2-135m-instruct``), or a peft
LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``). An adapter is merged
into its base as it is read, tensor by tensor — W' = W + (α/r)·B·A, as peft's ``merge_and_unload``
— so it enters every method as the full model it stands for, and the output is always a full model.
Averaging adapters of one base therefore averages their full-rank deltas B_i·A_i (not their A and B
factors: the mean of products is not the product of means).

Numerics: each tensor is computed in float32 (float64 stays float64) and cast back to the dtype of
the first input (the base for task arithmetic). Integer tensors must be equal in every input and
are copied. Models with tied embeddings that store no ``lm_head.weight`` merge as they are; when
every input ties embeddings but only some store ``lm_head.weight``, it is dropped.

Output folder: the weights, ``config.json`` / tokenizer / chat template copied from the first input
(the base for task arithmetic), and ``merge.json`` (method, inputs, coefficients). It loads with
``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch

from posttrain.models.loading import ModelError, resolve_model_path

__all__ = ["MergeError", "normalize_weights", "linear_combination", "task_arithmetic", "interpolate", "lora_delta",
           "spearman", "open_checkpoint", "merge_checkpoints", "merge_linear", "merge_task_arithmetic",
           "merge_interpolate"]


class MergeError(ModelError):
    """Models that cannot be merged as asked; the message names the model folder and the tensor."""


# ---------------------------------------------------------------------------------------------
# The math: pure functions of tensors


def normalize_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Linear-averaging weights: 1/n each when ``weights`` is None, else w_i / Σ_j w_j.
    Weights must be finite, >= 0, one per model, and not all 0."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise MergeError(f"{len(weights)} weights for {n} models: give one weight per model")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise MergeError(f"weights {list(weights)}: linear averaging takes finite weights >= 0 "
                         f"(use task arithmetic for negative coefficients)")
    total = float(sum(weights))
    if total <= 0:
        raise MergeError(f"weights {list(weights)} sum to 0")
    return [w / total for w in weights]


# ``tensors`` may be an iterator that reads each input only when asked: the folds below hold the
# accumulator and one or two inputs at a time, never all N.


def linear_combination(tensors: Iterable[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ_i w_i t_i, accumulated in input order (a soup when the weights sum to 1)."""
    out = None
    for t, w in zip(tensors, weights):
        out = t * w if out is None else out.add_(t, alpha=w)  # out + w·t, one rounding
    return out


def task_arithmetic(base: torch.Tensor, tensors: Iterable[torch.Tensor], lambdas: Sequence[float]) -> torch.Tensor:
    """θ_base + Σ_i λ_i τ_i with task vectors τ_i = θ_i − θ_base (Ilharco et al. 2023)."""
    out = base.clone()
    for t, lam in zip(tensors, lambdas):
        out.add_(t - base, alpha=lam)
    return out


def interpolate(pre: torch.Tensor, post: torch.Tensor, alpha: float) -> torch.Tensor:
    """θ(α) = (1 − α) θ_pre + α θ_post (PAINT). α = 0 and α = 1 return the endpoints exactly."""
    return linear_combination([pre, post], [1.0 - alpha, alpha])


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float, transpose: bool = False) -> torch.Tensor:
    """ΔW = scaling · B A (Hu et al. 2021, eq. 3), with A (r, in) and B (out, r); transposed for
    embeddings and ``fan_in_fan_out`` layers. Same operations, in the same order, as peft's
    ``get_delta_weight``."""
    delta = B @ A
    return (delta.T if transpose else delta) * scaling


def _average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks (ties get their average rank). Without
    ties it equals 1 − 6 Σ d_i² / (n (n² − 1)). NaN when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two sequences of the same length >= 2, got {len(x)} and {len(y)}")
    rx, ry = _average_ranks(list(x)), _average_ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Reading checkpoints lazily

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                      "F8_E5M2": torch.float8_e5m2}
# files never copied into the output: weights, their indexes, adapter files, and model cards
NOT_COPIED = re.compile(r".*\.(safetensors|bin|pt|pth|gguf|h5|msgpack|ckpt)$|.*\.index\.json$|adapter_.*"
                        r"|merge\.json$|README\.md$")


class Checkpoint:
    """One model's tensors, read lazily: names, shapes and dtypes come from the safetensors
    headers; a tensor is read from disk (memory-mapped) only when :meth:`get` asks for it."""

    def __init__(self, folder: Path, files: dict[str, Path]):
        from safetensors import safe_open

        self.folder, self._files = folder, files
        self._handles = {p: safe_open(str(p), framework="pt", backend="pread") for p in sorted(set(files.values()))}
        self.names = list(files)
        config = folder / "config.json"
        self.config = json.loads(config.read_text()) if config.exists() else {}
        self.copy_from = [folder]  # folders whose non-weight files (config, tokenizer, ...) the output gets

    @property
    def label(self) -> str:
        return str(self.folder)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._files[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        code = self._handles[self._files[name]].get_slice(name).get_dtype()
        if code not in SAFETENSORS_DTYPES:
            raise MergeError(f"{self.label}: tensor {name!r} has dtype {code}, which merging does not handle")
        return SAFETENSORS_DTYPES[code]

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self._files[name]].get_tensor(name)


class LoraCheckpoint(Checkpoint):
    """A peft LoRA adapter seen as the full model it stands for: W + (α/r) B A on every adapted
    tensor (returned in float32), the base's tensors elsewhere. ``replaced`` holds base weights the
    adapter stores itself (peft saves ``<module>.base_layer.weight`` of adapted embeddings, which
    replace the base's on load, e.g. after a vocabulary resize)."""

    def __init__(self, folder: Path, base: Checkpoint,
                 factors: dict[str, tuple[torch.Tensor, torch.Tensor, float, bool]], replaced: dict[str, torch.Tensor]):
        self.folder, self.base, self.factors, self.replaced = folder, base, factors, replaced
        self.names, self.config = base.names, base.config
        self.copy_from = [*base.copy_from, folder]  # the adapter's own tokenizer files win

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.replaced[name].shape) if name in self.replaced else self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.replaced[name].dtype if name in self.replaced else self.base.dtype(name)

    def get(self, name: str) -> torch.Tensor:
        weight = self.replaced[name] if name in self.replaced else self.base.get(name)
        if name not in self.factors:
            return weight
        A, B, scaling, transpose = self.factors[name]
        return weight.float() + lora_delta(A.float(), B.float(), scaling, transpose)


def _local_folder(spec: str | Path) -> Path:
    """A local folder for a model spec; hub ids come from the local hub cache (or the hub)."""
    path = Path(resolve_model_path(str(spec)))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(spec), allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt",
                                                                   "*.model"]))
    except Exception as e:  # offline, gated, no such repo: many types
        why = ("HF_HUB_OFFLINE=1 is set and it is not in the local hub cache" if os.environ.get("HF_HUB_OFFLINE") == "1"
               else type(e).__name__)
        raise MergeError(f"cannot fetch model {spec!r} from the hub ({why}); give a local Hugging Face folder") from None


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _open_full(folder: Path) -> Checkpoint:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: folder / file for name, file in weight_map.items()}
        for path in set(files.values()):
            if not path.exists():
                raise MergeError(f"{folder}: {index.name} names the shard {path.name}, which is missing")
        return Checkpoint(folder, files)
    shards = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if not shards:
        raise MergeError(f"{folder}: no safetensors weights (pytorch_model.bin is not read: load the model and "
                         f"save it again with save_pretrained, which writes safetensors)")
    files: dict[str, Path] = {}
    for path in shards:
        for name in _safetensors_keys(path):
            if name in files:
                raise MergeError(f"{folder}: tensor {name!r} is in both {files[name].name} and {path.name}")
            files[name] = path
    return Checkpoint(folder, files)


def _pattern_value(patterns: dict, module: str, default):
    """peft's ``rank_pattern`` / ``alpha_pattern`` lookup: the first key matching the module name's tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


SOFT_PROMPT_WHY = ("a soft prompt changes no weight: it is input embeddings placed before every row at run "
                   "time, so there is nothing to fold into the model's weights, and nothing to average with "
                   "full models. Use the folder as it is (posttrain eval --model FOLDER, or "
                   "PeftModel.from_pretrained(base, FOLDER))")


def _open_lora(folder: Path, lora_base: str | None) -> LoraCheckpoint:
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type") == "PROMPT_TUNING":
        raise MergeError(f"{folder}: {SOFT_PROMPT_WHY}")
    if config.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{folder}: a {config['peft_type']} adapter; only LoRA adapters can be merged here")
    unsupported = [key for key in ("use_dora", "modules_to_save", "trainable_token_indices", "lora_bias",
                                   "layer_replication") if config.get(key)]
    if config.get("bias", "none") != "none":
        unsupported.append(f"bias={config['bias']}")
    if unsupported:
        raise MergeError(f"{folder}: adapter uses {', '.join(unsupported)}; merge it with peft's merge_and_unload "
                         f"and save the full model first")
    base_spec = lora_base or config.get("base_model_name_or_path")
    if not base_spec:
        raise MergeError(f"{folder}: adapter_config.json names no base model; give the base with --lora-base")
    base = open_checkpoint(base_spec)
    if isinstance(base, LoraCheckpoint):
        raise MergeError(f"{folder}: the base {base.label} is itself an adapter; give a full model as --lora-base")
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        raise MergeError(f"{folder}: no adapter_model.safetensors (adapter_model.bin is not read)")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    kinds: dict[str, bool] = {}  # module -> is an embedding (factors stored without ".weight")
    replaced: dict[str, torch.Tensor] = {}
    for key, tensor in load_file(str(weights)).items():
        name = key.removeprefix("base_model.model.")
        if stored := re.fullmatch(r"(.+)\.base_layer\.weight", name):
            if stored[1] + ".weight" not in base.names:
                raise MergeError(f"{folder}: the adapter stores {stored[1] + '.weight'!r}, which the base {base.label} "
                                 f"does not have")
            replaced[stored[1] + ".weight"] = tensor
            continue
        match = re.fullmatch(r"(.+)\.lora_(A|B)\.weight", name) or re.fullmatch(r"(.+)\.lora_embedding_(A|B)", name)
        if match is None:
            raise MergeError(f"{folder}: adapter tensor {key!r} is not a LoRA factor (only plain LoRA on linear and "
                             f"embedding layers is merged here)")
        parts.setdefault(match[1], {})[match[2]] = tensor
        kinds[match[1]] = "lora_embedding_" in name
    factors = {}
    for module, ab in parts.items():
        target = module + ".weight"
        if set(ab) != {"A", "B"}:
            raise MergeError(f"{folder}: adapter has only lora_{''.join(ab)} for {module!r}")
        if target not in base.names:
            raise MergeError(f"{folder}: the adapter changes {target!r}, which the base {base.label} does not have")
        A, B = ab["A"], ab["B"]
        transpose = kinds[module] or bool(config.get("fan_in_fan_out"))
        delta_shape = (A.shape[1], B.shape[0]) if transpose else (B.shape[0], A.shape[1])
        base_shape = tuple(replaced[target].shape) if target in replaced else base.shape(target)
        if delta_shape != base_shape:
            raise MergeError(f"{folder}: tensor {target!r}: the adapter's B·A has shape {delta_shape}, but the base "
                             f"{base.label} has {base_shape}")
        r = A.shape[0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        factors[target] = (A, B, scaling, transpose)
    return LoraCheckpoint(folder, base, factors, replaced)


def open_checkpoint(spec: str | Path, lora_base: str | None = None) -> Checkpoint:
    """A lazy view of a model: a full model (any spec) or a LoRA adapter folder (merged into its base,
    ``lora_base`` or the ``base_model_name_or_path`` of its adapter_config.json)."""
    folder = _local_folder(spec)
    if (folder / "attempt_config.json").exists():
        raise MergeError(f"{folder}: an ATTEMPT adapter; {SOFT_PROMPT_WHY}")
    if (folder / "adapter_config.json").exists():
        return _open_lora(folder, lora_base)
    return _open_full(folder)


# ---------------------------------------------------------------------------------------------
# Merging: validate, then compute and write one tensor at a time


def _is_tied(checkpoint: Checkpoint) -> bool:
    config = checkpoint.config
    return bool(config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings", False)))


def check_compatible(checkpoints: Sequence[Checkpoint]) -> list[str]:
    """The tensor names to merge (the first model's order). Every model must have the same names and
    shapes; the error names the model folder and the tensor."""
    first = checkpoints[0]
    drop = set()
    has_head = ["lm_head.weight" in c.names for c in checkpoints]
    if any(has_head) and not all(has_head) and all(_is_tied(c) for c in checkpoints):
        drop.add("lm_head.weight")  # tied to the input embeddings: some savers store the copy, some don't
    names = [n for n in first.names if n not in drop]
    expected = set(names)
    for other in checkpoints[1:]:
        present = set(other.names) - drop
        if missing := sorted(expected - present):
            raise MergeError(f"{other.label}: tensor {missing[0]!r} is missing ({len(missing)} tensors of "
                             f"{first.label} missing in all)")
        if extra := sorted(present - expected):
            raise MergeError(f"{other.label}: tensor {extra[0]!r} is not in {first.label} "
                             f"({len(extra)} extra tensors in all)")
        for name in names:
            if other.shape(name) != first.shape(name):
                raise MergeError(f"{other.label}: tensor {name!r} has shape {other.shape(name)}, but "
                                 f"{first.label} has {first.shape(name)}")
    return names


def parse_size(size: int | str) -> int:
    """Bytes in ``5GB`` / ``500MB`` / ``2GiB`` (transformers' convention) or an int."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        value = convert_file_size_to_int(size)
    except ValueError:
        raise MergeError(f"max shard size {size!r}: use an integer with a unit, e.g. 5GB, 500MB, 2GiB") from None
    if value <= 0:
        raise MergeError(f"max shard size {size!r} must be positive")
    return value


def _plan_shards(names: list[str], nbytes: Callable[[str], int], max_bytes: int) -> list[list[str]]:
    """Names grouped into shards of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        if shards[-1] and size + nbytes(name) > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes(name)
    return shards


def _merge_tensor(name: str, checkpoints: Sequence[Checkpoint], combine: Callable) -> torch.Tensor:
    first = checkpoints[0]
    dtype = first.dtype(name)
    if not dtype.is_floating_point:
        kept = first.get(name)
        for c in checkpoints[1:]:
            if not torch.equal(c.get(name), kept):
                raise MergeError(f"{c.label}: {dtype} tensor {name!r} differs from {first.label}'s; non-float "
                                 f"tensors are copied, so they must be equal")
        return kept.contiguous()
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return combine(c.get(name).to(compute) for c in checkpoints).to(dtype).contiguous()


def _check_out(out_dir: Path, checkpoints: Sequence[Checkpoint], overwrite: bool) -> None:
    out = out_dir.resolve()
    for c in checkpoints:
        for folder in (c.folder, getattr(getattr(c, "base", None), "folder", None)):
            if folder is not None and folder.resolve() == out:
                raise MergeError(f"the output folder {out_dir} is an input model; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MergeError(f"output folder {out_dir} exists and is not empty; choose another --out or pass --overwrite")


def merge_checkpoints(checkpoints: Sequence[Checkpoint], combine: Callable[[Iterator[torch.Tensor]], torch.Tensor],
                      out_dir: str | Path, *, info: dict | None = None, max_shard_size: int | str = "5GB",
                      overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``combine(t_1, ..., t_N)`` for every tensor name to ``out_dir`` (shards of at most
    ``max_shard_size``; one file when it fits), with the first model's config and tokenizer files
    and ``merge.json`` (``info``). ``combine`` gets an iterator that reads the N inputs' float32
    copies of the tensor one at a time. Written to a temporary sibling folder, renamed at the end."""
    from rich.progress import Progress
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    names = check_compatible(checkpoints)
    _check_out(out_dir, checkpoints, overwrite)
    first = checkpoints[0]

    def nbytes(name: str) -> int:
        return math.prod(first.shape(name)) * first.dtype(name).itemsize

    shards = _plan_shards(names, nbytes, parse_size(max_shard_size))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for folder in first.copy_from:  # config.json, generation config, tokenizer, chat template
            for path in sorted(folder.iterdir()):
                if path.is_file() and not NOT_COPIED.fullmatch(path.name):
                    shutil.copy(path, tmp / path.name)
        weight_map: dict[str, str] = {}
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(f"merging into {out_dir.name}", total=len(names))
            for i, shard in enumerate(shards):
                file = ("model.safetensors" if len(shards) == 1
                        else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
                tensors = {}
                for name in shard:
                    tensors[name] = _merge_tensor(name, checkpoints, combine)
                    bar.advance(task)
                save_file(tensors, str(tmp / file), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, file))
                del tensors
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(map(nbytes, names)),
                                  "total_parameters": sum(math.prod(first.shape(n)) for n in names)},
                     "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "merge.json").write_text(json.dumps(info or {}, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _finite(values: Sequence[float], what: str) -> None:
    if any(not math.isfinite(v) for v in values):
        raise MergeError(f"{what} {list(values)} must be finite numbers")


def merge_linear(models: Sequence[str | Path], out_dir: str | Path, weights: Sequence[float] | None = None, *,
                 lora_base: str | None = None, **write) -> Path:
    """θ = Σ_i w_i θ_i with ``weights`` normalised to sum to 1 (uniform when None).
    ``write``: ``max_shard_size``, ``overwrite``, ``progress`` of :func:`merge_checkpoints`."""
    if not models:
        raise MergeError("linear merge: give at least one model")
    w = normalize_weights(weights, len(models))
    checkpoints = [open_checkpoint(m, lora_base) for m in models]
    info = {"method": "linear", "formula": "θ = Σ_i w_i θ_i (weights normalised to sum to 1)",
            "models": [c.label for c in checkpoints], "weights": w}
    return merge_checkpoints(checkpoints, lambda ts: linear_combination(ts, w), out_dir, info=info, **write)


def merge_task_arithmetic(base: str | Path, models: Sequence[str | Path], out_dir: str | Path,
                          weights: Sequence[float] | None = None, scale: float = 1.0, *,
                          lora_base: str | None = None, **write) -> Path:
    """θ = θ_base + Σ_i λ_i (θ_i − θ_base) with λ_i = ``scale`` · w_i (w_i = 1 when ``weights`` is
    None); not normalised, negative values subtract a task (Ilharco et al. 2023, "forgetting via
    negation"). Output dtypes, config and tokenizer are the base's."""
    if not models:
        raise MergeError("task arithmetic: give at least one fine-tuned model")
    weights = [1.0] * len(models) if weights is None else list(weights)
    if len(weights) != len(models):
        raise MergeError(f"{len(weights)} weights for {len(models)} models: give one weight per model")
    lambdas = [scale * w for w in weights]
    _finite(lambdas, "task arithmetic coefficients")
    checkpoints = [open_checkpoint(base, lora_base)] + [open_checkpoint(m, lora_base) for m in models]
    info = {"method": "task_arithmetic", "formula": "θ = θ_base + Σ_i λ_i (θ_i − θ_base)",
            "base": checkpoints[0].label, "models": [c.label for c in checkpoints[1:]], "lambdas": lambdas,
            "scale": scale, "weights": weights}

    def combine(tensors: Iterator[torch.Tensor]) -> torch.Tensor:
        return task_arithmetic(next(tensors), tensors, lambdas)

    return merge_checkpoints(checkpoints, combine, out_dir, info=info, **write)


def merge_interpolate(pre: str | Path, post: str | Path, alpha: float, out_dir: str | Path, *,
                      lora_base: str | None = None, **write) -> Path:
    """θ(α) = (1 − α) θ_pre + α θ_post; α outside [0, 1] extrapolates. Config and tokenizer: pre's."""
    _finite([alpha], "alpha")
    checkpoints = [open_checkpoint(pre, lora_base), open_checkpoint(post, lora_base)]
    info = {"method": "interpolate", "formula": "θ(α) = (1 − α) θ_pre + α θ_post", "pre": checkpoints[0].label,
            "post": checkpoints[1].label, "alpha": alpha}
    return merge_checkpoints(checkpoints, lambda ts: interpolate(next(ts), next(ts), alpha), out_dir, info=info,
                             **write)
