"""Where rows come from: ``builtin:<name>[:split]``, local ``.jsonl``/``.json``/``.parquet``, or a
hub dataset name; and the mixer that combines several sources by ``fraction`` or ``count``.

A mixture is a literal list, as in a recipe::

    - {source: builtin:arithmetic_sft, count: 2000}
    - {source: data/my_chats.jsonl, fraction: 0.5}
    - {source: allenai/tulu-3-sft-mixture, split: train, fraction: 0.1}
    - {source: data/pool.jsonl, select: {target: data/target.jsonl, k: 1000}}   # data/select.py

``count`` above a source's size upsamples by repetition (every row n times, then a seeded sample
of the rest); everything is seeded and reproducible.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import random
from pathlib import Path

from posttrain.data.formats import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class SourcedRow(dict):
    """A row that remembers where it came from, so an error can name the file and the row's own
    1-based line (jsonl) or row (json, parquet, built-in, hub) after mixing and shuffling.

    ``origin`` is ``(source, unit, number)``, e.g. ``("data/chats.jsonl", "line", 57)``: a tuple
    that shares the source string between rows, not one formatted string per row."""

    __slots__ = ("origin",)

    def __init__(self, row: dict, origin: tuple[str, str, int]):
        super().__init__(row)
        self.origin = origin


def row_origin(row) -> str | None:
    """``"data/chats.jsonl, line 57"`` for a row read by :func:`load_source`, else None."""
    origin = getattr(row, "origin", None)
    return None if origin is None else f"{origin[0]}, {origin[1]} {origin[2]}"


def _sourced(rows: list, source: str, unit: str = "row") -> list:
    """Tag rows with their 1-based position; non-objects pass through for validation to name."""
    return [SourcedRow(r, (source, unit, i)) if isinstance(r, dict) else r for i, r in enumerate(rows, 1)]


def _not_utf8(path: Path, data: bytes, error: UnicodeDecodeError, first_line: int = 1) -> DataError:
    """The error for undecodable bytes in ``data`` (which starts at line ``first_line``)."""
    line_start = data.rfind(b"\n", 0, error.start) + 1
    line_no = first_line + data.count(b"\n", 0, error.start)
    byte = data[error.start:error.start + 1].hex()
    return DataError(f"{path}, line {line_no}: not UTF-8 text (byte 0x{byte} at column "
                     f"{error.start - line_start + 1}). Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open("rb") as f:  # bytes, so a decoding error can name its line
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, raw, e, line_no) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line_no}: not valid JSON ({e.msg}). Each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object with named columns, "
                                f"got {type(row).__name__}")
            rows.append(SourcedRow(row, (str(path), "line", line_no)))
    return rows


def _read_json(path: Path) -> list:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    rows = data.get("data", data.get("rows")) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows (or {{'data': [...]}})")
    return _sourced(rows, str(path))


def _read_parquet(path: Path) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {str(e)[:200]}). "
                        f"Re-export it, or convert it to .jsonl") from None
    return _sourced(table.to_pylist(), str(path))


def _read_local(path: Path) -> list[dict]:
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a .jsonl/.json/.parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif path.suffix == ".json":
        rows = _read_json(path)
    else:
        rows = _read_parquet(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _close_builtin(name: str) -> str:
    """" Did you mean builtin:X?" when ``name`` is a near miss of a built-in set, else ""."""
    from posttrain.data.builtin import BUILTINS

    close = difflib.get_close_matches(name.split(":")[0], list(BUILTINS), n=1, cutoff=0.6)
    return f" Did you mean builtin:{close[0]}?" if close else ""


def _read_hub(name: str, split: str, config: str | None = None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises many types for "offline" and "not found"
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        suggestion = _close_builtin(name)
        if suggestion and "/" not in name:  # a typo of a built-in name, not a hub set
            raise DataError(f"data source {name!r} is not a file, a built-in set or a loadable hub dataset."
                            f"{suggestion}") from None
        why = "offline mode is set (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1)" if offline else f"{type(e).__name__}: {e}"
        raise DataError(
            f"dataset {name!r} (split {split!r}) could not be loaded from the hub: {why}. "
            f"Give a local .jsonl/.json/.parquet file, or a built-in set (builtin:arithmetic_sft, …)"
        ) from None
    return _sourced([dict(r) for r in ds], f"{name} ({split})")


def load_source(spec: str, split: str | None = None, n: int | None = None, seed: int = 0, **options) -> list[dict]:
    """Rows of one source. ``builtin:name[:split]`` takes ``n``/``seed``/generator options.
    Every row remembers its origin (:func:`row_origin`) for error messages."""
    if spec.startswith("builtin:"):
        from posttrain.data.builtin import BUILTINS

        name, _, spec_split = spec[len("builtin:"):].partition(":")
        if name not in BUILTINS:
            raise DataError(f"unknown built-in dataset {name!r}; known: {', '.join(sorted(BUILTINS))}.{_close_builtin(name)}")
        kwargs = dict(options)
        if n is not None:
            kwargs["n"] = n
        split = spec_split or split or "train"
        return _sourced(BUILTINS[name](split=split, seed=seed, **kwargs), f"builtin:{name}:{split}")
    if spec.startswith("grue:"):   # a real GRUE dataset mapped to our rows (data/grue.py)
        from posttrain.data.grue import load_grue

        name, _, spec_split = spec[len("grue:"):].partition(":")
        rows = _sourced(load_grue(name, spec_split or split or "train", options.get("file")), spec)
        return rows[:n] if n is not None else rows
    path = Path(spec).expanduser()
    if path.suffix in LOCAL_SUFFIXES or spec.startswith(("/", "./", "../", "~")):
        if not path.exists():
            raise DataError(f"data file {spec} does not exist")
        if path.suffix not in LOCAL_SUFFIXES:
            raise DataError(f"{spec}: unsupported file type; use .jsonl, .json or .parquet")
        rows = _read_local(path)
    elif path.is_dir() and (path / "dataset_info.json").exists():
        import datasets

        rows = _sourced([dict(r) for r in datasets.load_from_disk(str(path))], str(path))
    else:
        rows = _read_hub(spec, split or "train", options.get("config"))
    return rows[:n] if n is not None else rows


def _take(rows: list[dict], count: int, rng: random.Random) -> list[dict]:
    """``count`` rows: whole copies while count exceeds the size, then a seeded sample."""
    full, rest = divmod(count, len(rows))
    return rows * full + rng.sample(rows, rest)


# Keys a mixture entry may have besides a built-in generator's own options (n, difficulty, …).
_ENTRY_KEYS = ("source", "fraction", "count", "split", "select")
_HUB_KEYS = ("config",)


def _entry_options(spec: str) -> tuple[str, ...]:
    """Extra keys a mixture entry of ``spec`` may carry (a built-in generator's parameters)."""
    if spec.startswith("builtin:"):
        from posttrain.data.builtin import BUILTINS

        generator = BUILTINS.get(spec[len("builtin:"):].partition(":")[0])
        if generator is None:
            return ()
        params = inspect.signature(generator).parameters.values()
        return tuple(p.name for p in params if p.name not in ("split", "seed") and p.kind is not p.VAR_KEYWORD)
    if spec.startswith("grue:"):
        return ("file",)   # a local copy in the dataset's schema
    path = Path(spec)
    if path.suffix in LOCAL_SUFFIXES or spec.startswith(("/", "./", "../", "~")):
        return ()
    return _HUB_KEYS


def _check_entry(i: int, spec: str, entry: dict) -> None:
    """Refuse keys the mixer would otherwise ignore (``fracton: 0.5`` silently used every row)."""
    allowed = _ENTRY_KEYS + _entry_options(spec)
    for key in entry:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"data mixture entry {i + 1} ({spec}): unknown key {key!r}{hint}; "
                            f"allowed keys: {', '.join(allowed)}")
    fraction, count = entry.get("fraction"), entry.get("count")
    if fraction is not None and count is not None:
        raise DataError(f"data mixture entry {i + 1} ({spec}): give 'fraction' or 'count', not both")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or fraction <= 0:
            raise DataError(f"data mixture entry {i + 1} ({spec}): fraction must be a number > 0 "
                            f"(1.0 = every row once, 2.0 = twice), got {fraction!r}")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, (int, float)) or count != int(count) or count < 1:
            raise DataError(f"data mixture entry {i + 1} ({spec}): count must be a whole number >= 1, got {count!r}")


def mix_sources(entries: list[dict | str], seed: int = 0) -> list[dict]:
    """Combine sources. Each entry: ``{"source": spec, "fraction": f}`` or ``{"count": n}``
    (plus optional ``split`` and generator options); a bare string takes all rows. Unknown keys
    are errors. Rows keep their origin (:func:`row_origin`), whatever the shuffle does."""
    rng = random.Random(seed)
    mixed: list[dict] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"source": entry}
        if not isinstance(entry, dict):
            raise DataError(f"data mixture entry {i + 1}: expected a source name or {{source: ..., fraction|count: ...}}, "
                            f"got {type(entry).__name__} {entry!r}")
        entry = dict(entry)
        spec = entry.get("source")
        if not isinstance(spec, str) or not spec:
            raise DataError(f"data mixture entry {i + 1}: missing 'source' (got keys {', '.join(map(str, entry))})")
        _check_entry(i, spec, entry)
        del entry["source"]
        fraction, count = entry.pop("fraction", None), entry.pop("count", None)
        split = entry.pop("split", None)
        select = entry.pop("select", None)
        if spec.startswith("builtin:") and count is not None and "n" not in entry and select is None:
            entry["n"] = int(count)  # generators make exactly what is asked
        rows = load_source(spec, split=split, seed=seed, **entry)
        if select is not None:   # data selection first; fraction / count then apply to the selected rows
            from posttrain.data.select import apply_select_entry

            rows = apply_select_entry(rows, select, f"data mixture entry {i + 1} ({spec})", seed=seed)
        if fraction is not None:
            count = round(float(fraction) * len(rows))
        if count is not None:
            rows = _take(rows, int(count), rng)
        mixed.extend(rows)
    rng.shuffle(mixed)
    return mixed
