"""Data selection: pick the pool rows worth training on.

Two modes, each a function here, a ``posttrain data select`` mode and a mixture-entry option:

- **Cross-task nearest neighbours** (Ivison, Smith, Hajishirzi & Dasigi 2022, "Data-Efficient
  Finetuning Using Cross-Task Nearest Neighbors"): embed the pool rows and a few unlabelled
  target rows with a frozen encoder (the embedded all-MiniLM-L6-v2 by default), find each target
  row's nearest pool rows by cosine similarity, and keep the union, merged round by round until
  ``k`` rows (:func:`posttrain.data.neighbours.merge_neighbours` states the exact rule).
  ``search="exact"`` is the chunked matrix product; ``search="approximate"`` an inverted-file
  index (spherical k-means lists, ``nprobe`` probed). Embeddings are cached on disk keyed by a
  SHA-256 of the encoder and the texts (``models.embeddings.cached_embeddings``), so a second
  selection over the same pool embeds nothing.
- **Quality rating** (QuRating-like, Wettig et al. 2024): score every pool row with a judge and
  keep the best ``keep`` rows (a count, or a fraction of the pool). The judge is a reward-model
  folder (score of prompt + response), ``verifier`` / ``verifier:NAME`` (rows with
  ``ground_truth``; the row's ``verifier`` column or NAME), or an LM judge spec
  (``local:MODEL``, ``http://HOST/v1@MODEL``; its rubric score).

What is embedded: the row's prompt: the ``prompt`` column (a string, or the first user turn of a
message list), else the first user turn of ``messages``; ``field=NAME`` picks another column.
What is rated: the prompt and the response (the last assistant turn of ``messages``, or
``prompt`` + ``completion`` / ``response``).

Selected rows are returned (and written) unchanged, in pool order. Example::

    rows = select_neighbours(load_source("pool.jsonl"), load_source("target.jsonl"), k=1000)
    rows = select_by_rating(load_source("pool.jsonl"), "runs/rm/model", keep=0.25)

As a mixture entry: ``{source: pool.jsonl, select: {target: target.jsonl, k: 1000}}`` or
``{source: pool.jsonl, select: {rate_with: runs/rm/model, keep: 0.25}}``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from posttrain.data.formats import DataError, row_location
from posttrain.data.neighbours import IVFIndex, exact_neighbours, merge_neighbours

__all__ = ["Encoder", "encoder_from_spec", "row_text", "neighbour_selection", "select_neighbours",
           "rating_scores", "rating_selection", "select_by_rating", "keep_count", "apply_select_entry",
           "write_selection", "selection_sidecar"]

NEIGHBOUR_OPTIONS = ("target", "k", "search", "field", "target_field", "encoder", "nprobe", "nlist")
RATING_OPTIONS = ("rate_with", "keep", "field")


# ------------------------------------------------------------------------------ texts


def _first_user_turn(messages) -> str | None:
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    return None


def row_text(row: dict, where: str, field: str | None = None) -> str:
    """The text a row is embedded by (see the module docstring); a :class:`DataError` naming
    ``where`` (file, line) and the field when there is none."""
    fields = [field] if field else ["prompt", "messages"]
    for name in fields:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value
        text = _first_user_turn(value)
        if text is not None and text.strip():
            return text
    if field:
        got = "missing" if field not in row else f"not a string or a message list with a user turn ({row[field]!r:.60})"
        raise DataError(f"{where}, field {field!r}: {got}. Columns present: {', '.join(row)}")
    raise DataError(f"{where}, field 'prompt': missing (and no user turn in 'messages'). Columns present: "
                    f"{', '.join(row)}; name the text column with field=NAME (--field NAME)")


def _texts(rows: list[dict], source: str, field: str | None) -> list[str]:
    if not rows:
        raise DataError(f"{source}: no rows")
    return [row_text(r, row_location(r, source, i), field) for i, r in enumerate(rows)]


# ------------------------------------------------------------------------------ encoders


class Encoder:
    """A frozen text encoder: ``encoder(texts) -> (N, D)`` unit-norm float tensor. ``name``
    identifies it in the embedding cache key (same name + same texts = a cache hit)."""

    def __init__(self, name: str, encode: Callable[[list[str]], torch.Tensor]):
        self.name, self.encode = name, encode

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.encode(texts)


def encoder_from_spec(spec: str = "minilm", max_length: int = 256) -> Encoder:
    """``minilm`` (the embedded all-MiniLM-L6-v2), a local encoder folder, or ``hash[:DIM]``."""
    import os

    from posttrain.models.embeddings import embed_texts, resolve_encoder

    resolved = resolve_encoder(spec)
    name = resolved if resolved.startswith("hash") else f"{os.path.abspath(resolved)}|max_length={max_length}"
    return Encoder(name, lambda texts: embed_texts(texts, model=spec, max_length=max_length, use_cache=False))


def _embed(texts: list[str], encoder: Encoder, cache: bool) -> torch.Tensor:
    from posttrain.models.embeddings import cached_embeddings

    return cached_embeddings(f"select|{encoder.name}", texts, encoder, use_cache=cache).float()


# ------------------------------------------------------------------------------ nearest neighbours


def neighbour_selection(pool: list[dict], target: list[dict], k: int, encoder: Encoder | str = "minilm",
                        search: str = "exact", field: str | None = None, target_field: str | None = None,
                        nprobe: int = 8, nlist: int | None = None, cache: bool = True, seed: int = 0,
                        pool_source: str = "pool", target_source: str = "target") -> list[dict]:
    """The chosen pool rows as ``{"index", "score", "target", "rank"}`` (0-based pool and target
    indices, cosine similarity, neighbour rank), in selection order. Inputs are checked (texts,
    ``k``, ``search``) before the encoder runs."""
    if search not in ("exact", "approximate"):
        raise DataError(f"search={search!r}: use exact or approximate")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k={k!r}: give the number of pool rows to select (a whole number >= 1)")
    if k > len(pool):
        raise DataError(f"k={k} but {pool_source} has {len(pool)} rows: choose k <= {len(pool)}")
    pool_texts = _texts(pool, pool_source, field)
    target_texts = _texts(target, target_source, target_field or field)
    encoder = encoder_from_spec(encoder) if isinstance(encoder, str) else encoder
    pool_PD, target_QD = _embed(pool_texts, encoder, cache), _embed(target_texts, encoder, cache)
    index = IVFIndex(pool_PD, nlist=nlist, seed=seed) if search == "approximate" else None
    depth = min(len(pool), 2 * math.ceil(k / len(target)))
    while True:   # deepen each target's neighbour list until the merged union reaches k
        scores, found = index.search(target_QD, depth, nprobe) if index else exact_neighbours(target_QD, pool_PD, depth)
        chosen = merge_neighbours(scores, found, k)
        if len(chosen) == k or depth == len(pool):
            break
        depth = min(len(pool), 2 * depth)
    if len(chosen) < k:   # only approximate search can run out: its probed lists held too few rows
        raise DataError(f"approximate search found {len(chosen)} distinct neighbours for k={k}: raise nprobe "
                        f"(now {nprobe}) or use search=exact")
    return chosen


def select_neighbours(pool: list[dict], target: list[dict], k: int, **options) -> list[dict]:
    """The ``k`` selected pool rows themselves, unchanged, in pool order (:func:`neighbour_selection`)."""
    return [pool[c["index"]] for c in sorted(neighbour_selection(pool, target, k, **options), key=lambda c: c["index"])]


# ------------------------------------------------------------------------------ quality rating


def keep_count(keep, n: int) -> int:
    """``keep``: a whole number of rows (1..n) or a fraction in (0, 1] of ``n`` (at least one row)."""
    if isinstance(keep, str):
        try:
            keep = float(keep) if any(c in keep for c in ".eE") else int(keep)
        except ValueError:
            raise DataError(f"keep={keep!r}: give a number of rows (e.g. 500) or a fraction (e.g. 0.25)") from None
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise DataError(f"keep={keep!r}: give a number of rows (e.g. 500) or a fraction (e.g. 0.25)")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise DataError(f"keep={keep}: a fraction must lie in (0, 1]; for a count write a whole number")
        return max(1, round(keep * n))
    if not 1 <= keep <= n:
        raise DataError(f"keep={keep}: the pool has {n} rows; keep between 1 and {n} (or a fraction)")
    return keep


def _prompt_and_response(row: dict, where: str) -> tuple[list[dict], str]:
    messages = row.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
            and messages[-1].get("role") == "assistant":
        return messages[:-1], str(messages[-1].get("content", ""))
    prompt = row.get("prompt")
    response = next((row[f] for f in ("completion", "response") if f in row), None)
    if prompt is not None and response is not None:
        from posttrain.rewards.compose import completion_text

        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return prompt, completion_text(response)
    raise DataError(f"{where}, field 'messages': a rated row needs a response: 'messages' ending in an assistant "
                    f"turn, or 'prompt' with 'completion' (or 'response'). Columns present: {', '.join(row)}")


def rating_scores(pool: list[dict], rate_with: str, source: str = "pool") -> list[float]:
    """One score per pool row from the judge ``rate_with`` (NaN: the judge gave none)."""
    if not pool:
        raise DataError(f"{source}: no rows")
    pairs = [_prompt_and_response(r, row_location(r, source, i)) for i, r in enumerate(pool)]
    from posttrain.judges.rate import build_rater

    rate = build_rater(rate_with, pool, source)
    return [float(s.score) for s in rate(list(range(len(pool))), [p for p, _ in pairs], [r for _, r in pairs])]


def rating_selection(scores: list[float], keep) -> list[dict]:
    """The best ``keep`` rows by score (ties: pool order; NaN scores last) as ``{"index", "score"}``."""
    n = keep_count(keep, len(scores))
    order = sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), -scores[i] if scores[i] == scores[i]
                                                      else 0.0, i))
    return [{"index": i, "score": scores[i]} for i in order[:n]]


def select_by_rating(pool: list[dict], rate_with: str, keep, source: str = "pool") -> list[dict]:
    """The best-rated pool rows, unchanged, in pool order."""
    keep_count(keep, len(pool))   # a bad keep fails before the judge loads
    chosen = rating_selection(rating_scores(pool, rate_with, source), keep)
    return [pool[c["index"]] for c in sorted(chosen, key=lambda c: c["index"])]


# ------------------------------------------------------------------------------ mixture entries


def apply_select_entry(rows: list[dict], options, where: str, seed: int = 0) -> list[dict]:
    """A mixture entry's ``select:`` mapping applied to its rows (``where`` names the entry)."""
    if not isinstance(options, dict):
        raise DataError(f"{where}: select must be a mapping such as {{target: FILE, k: N}} or "
                        f"{{rate_with: SPEC, keep: N}}, got {options!r}")
    mode = "rate" if "rate_with" in options else "neighbours" if "target" in options else None
    if mode is None:
        raise DataError(f"{where}: select needs 'target' (nearest neighbours) or 'rate_with' (quality rating)")
    allowed = RATING_OPTIONS if mode == "rate" else NEIGHBOUR_OPTIONS
    unknown = [key for key in options if key not in allowed]
    if unknown:
        raise DataError(f"{where}: select has unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")
    if mode == "rate":
        return select_by_rating(rows, options["rate_with"], options.get("keep"), source=where)
    from posttrain.data.sources import load_source

    target = load_source(str(options["target"]))
    settings = {key: options[key] for key in NEIGHBOUR_OPTIONS if key in options and key not in ("target", "k")}
    return select_neighbours(rows, target, options.get("k"), seed=seed, pool_source=where,
                             target_source=str(options["target"]), **settings)


# ------------------------------------------------------------------------------ files


def selection_sidecar(out) -> "Path":
    """``selected.jsonl`` → ``selected.selection.jsonl``: one record per written row, same order."""
    from pathlib import Path

    out = Path(out)
    return out.with_name(f"{out.stem}.selection.jsonl")


def _origin_number(row, index: int) -> int:
    origin = getattr(row, "origin", None)
    return origin[2] if origin else index + 1


def write_selection(pool: list[dict], chosen: list[dict], out, pool_path: str | None = None,
                    target: list[dict] | None = None) -> dict:
    """Write the chosen pool rows to ``out`` (jsonl) in pool order, and their ids to
    :func:`selection_sidecar`. From a ``.jsonl`` pool each row is its original line, byte for
    byte; otherwise its JSON. Sidecar fields: ``line`` (the row's 1-based line in a jsonl pool, its
    row number otherwise), ``id`` (the row's ``id`` column, or null), ``score``, and for
    neighbour selection ``target`` (the 1-based line of the target row that chose it) and
    ``rank`` (it was that target's rank-th nearest pool row)."""
    import json
    from pathlib import Path

    raw = Path(pool_path).read_bytes().split(b"\n") if pool_path and str(pool_path).endswith(".jsonl") else None
    if raw and raw[0].startswith(b"\xef\xbb\xbf"):
        raw[0] = raw[0][3:]   # a byte-order mark belongs to the file, not to its first row
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chosen = sorted(chosen, key=lambda c: c["index"])
    with out.open("wb") as rows_file, selection_sidecar(out).open("w") as side:
        for c in chosen:
            row = pool[c["index"]]
            line = _origin_number(row, c["index"])
            if raw is not None:
                rows_file.write(raw[line - 1].rstrip(b"\r") + b"\n")
            else:
                rows_file.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            record = {"line": line, "id": row.get("id"), "score": c["score"]}
            if "target" in c and target is not None:
                record.update(target=_origin_number(target[c["target"]], c["target"]), rank=c["rank"])
            side.write(json.dumps(record) + "\n")
    return {"rows": len(chosen), "out": str(out), "sidecar": str(selection_sidecar(out))}
