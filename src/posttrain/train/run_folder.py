"""The run folder's guards: one run at a time, no silent resume under another config, step logs
that survive a crash mid-write, and checkpoints that are checked before they are trusted.

``runs/<name>/`` holds ``config.yaml``, ``metrics.jsonl`` (and for RL ``samples.jsonl`` and
``eval_samples.jsonl``), ``checkpoints/step-N/`` and ``model/``. What can go wrong there, and the
guard for each:

========================================  ========================================================
two runs write one folder at once         :func:`lock_run_folder`: an ``flock`` on ``.lock``
                                          (released by the kernel when the process dies, so a
                                          ``kill -9`` never leaves a stale lock)
a rerun with another config resumes the   :func:`check_resume_config`: a folder with a checkpoint
old optimizer and schedule                resumes only under the same config (``max_steps`` and
                                          logging options may change); ``overwrite=true`` starts over
the folder is a file, or not writable     :func:`check_out_folder`, before anything is loaded
a crash mid-write tears the last line     :func:`read_jsonl` skips a torn line; :func:`rewind_step_logs`
of ``metrics.jsonl``                      rewrites the logs on resume without it
a resumed run logs steps again            :func:`rewind_step_logs` drops records after the resumed step
                                          from every step log, samples included
a checkpoint's files are truncated        :func:`write_manifest` records each file's size before the
(disk full, a crash before the data hit   checkpoint is renamed into place; :func:`newest_sound_checkpoint`
the disk)                                 skips a checkpoint whose files do not match and resumes
                                          from the previous one
========================================  ========================================================
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import sys
import time
import zipfile
from pathlib import Path

import yaml

from posttrain.config import ConfigError, to_dict

__all__ = ["STEP_LOGS", "RESUMABLE_CHANGES", "check_out_folder", "lock_run_folder", "check_resume_config",
           "reset_run_folder", "read_jsonl", "rewind_step_logs", "write_manifest", "checkpoint_problem",
           "newest_sound_checkpoint", "is_main_process"]

STEP_LOGS = ("metrics.jsonl", "samples.jsonl", "eval_samples.jsonl")
MANIFEST = "manifest.json"

# Options a resumed run may change: how long it runs and how it logs, not what it computes.
# (Extending max_steps re-spaces a decaying schedule over the new length; that is the point.)
RESUMABLE_CHANGES = frozenset({"max_steps", "resume", "overwrite", "progress", "report_to", "logging_steps",
                               "save_steps", "keep_checkpoints", "eval_steps", "save_samples"})


def is_main_process() -> bool:
    """Rank 0 of a launched job (or a plain process). Only it guards the folder: the others
    would see their own rank 0's lock and config as a conflict."""
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------- the folder itself


def check_out_folder(out: str | Path, option: str = "out") -> Path:
    """The output folder as a path, or a ConfigError when it cannot be one: it is a file, or it
    (or the nearest folder above it that exists) is not writable. ``option`` names the setting
    in the message (``out``, ``--out``, ``--write-clean``)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option}={out}: this is a file, not a folder. Choose another folder "
                          f"(e.g. {option}={path}-run)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option}={out}: {existing} is a file, so the folder cannot be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}={out}: {existing} is not writable by this user. Choose a folder you can "
                          f"write (e.g. under your home), or fix its permissions")
    return path


_HELD_LOCKS: dict[Path, int] = {}   # resolved run folder -> open lock file descriptor


def lock_run_folder(run_dir: Path) -> None:
    """Hold an exclusive lock on ``run_dir/.lock`` until this process exits; a ConfigError when
    another process holds it. Taking it again in the same process (a resumed run in a notebook
    or a test) is a no-op."""
    import fcntl

    key = run_dir.resolve()
    if key in _HELD_LOCKS:
        return
    lock_path = run_dir / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(f"out={run_dir}: another run is writing this folder ({holder}). Wait for it to "
                          f"finish, or choose another out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()}, since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:300]}\n").encode(), 0)
    _HELD_LOCKS[key] = fd   # kept open: the kernel drops the lock when the process ends


def _yaml_round_trip(value):
    return yaml.safe_load(yaml.safe_dump(value))


def changed_keys(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) for every option that differs and may not change on resume. Keys the
    old file lacks (options added since) are not compared."""
    new = _yaml_round_trip(new)
    return [(k, old[k], new[k]) for k in new
            if k in old and k not in RESUMABLE_CHANGES and old[k] != new[k]]


def _has_checkpoint(run_dir: Path) -> bool:
    root = run_dir / "checkpoints"
    return root.is_dir() and any((p / "trainer_state.pt").exists() for p in root.glob("step-*"))


def check_resume_config(options, run_dir: Path) -> None:
    """Refuse to resume a run folder under a changed config (naming the changed keys) unless
    ``overwrite`` is set; changing only ``max_steps`` or logging options is allowed."""
    if options.overwrite or not options.resume or not _has_checkpoint(run_dir):
        return
    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # nothing trustworthy to compare with; the checkpoint's own checks still apply
    changes = changed_keys(old, to_dict(options))
    if changes:
        listed = "; ".join(f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}"
                           for k, a, b in changes[:8])
        more = f" (and {len(changes) - 8} more)" if len(changes) > 8 else ""
        raise ConfigError(
            f"out={run_dir} holds a run with another config ({listed}{more}); resuming it would continue its "
            f"optimizer and schedule under the new settings. Pass overwrite=true to start over in this folder, "
            f"choose another out, or rerun with the old values (only max_steps and logging options may change "
            f"on resume)")


def reset_run_folder(run_dir: Path) -> None:
    """``overwrite=true``: remove what a previous run left (checkpoints, final model, step logs)."""
    for name in ("checkpoints", "model"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in STEP_LOGS:
        (run_dir / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- step logs


def read_jsonl(path: Path) -> list[dict]:
    """Records of a jsonl log; lines that do not parse (a write torn by a crash) are skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def rewind_step_logs(run_dir: Path, step: int) -> None:
    """On resume from ``step``: keep only records with ``step <= step`` in every step log, and
    rewrite each without torn lines, so the resumed run appends no duplicate and no glued line."""
    for name in STEP_LOGS:
        path = run_dir / name
        if not path.exists():
            continue
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)


# --------------------------------------------------------------------------- checkpoints


def write_manifest(folder: Path) -> None:
    """Record every file's size in ``folder/manifest.json`` and flush the files to disk; call it
    on the temporary folder just before it is renamed into place. It covers the files the main
    process writes (weights, tokenizer, config, trainer state): what the other processes write
    concurrently (``rng-<rank>.pt``, accelerate's sharded-state folder) has no final size yet
    when this runs, and a size read mid-write would condemn a sound checkpoint."""
    sizes = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("rng-"):
            with path.open("rb") as f:
                os.fsync(f.fileno())
            sizes[str(path.relative_to(folder))] = path.stat().st_size
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"files": sizes}, indent=1))
    with manifest.open("rb") as f:
        os.fsync(f.fileno())


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensor bytes; the
    header's largest offset must reach exactly the end of the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated"
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            return f"{path.name} is truncated"
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path.name} has a corrupt header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return None if 8 + header_len + end == size else f"{path.name} is truncated"


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (a missing or truncated file), or None. Uses the
    manifest when there is one, else checks the formats' own structure (checkpoints written
    before manifests existed)."""
    if not (folder / "trainer_state.pt").exists():
        return "trainer_state.pt is missing"
    manifest = folder / MANIFEST
    if manifest.exists():
        try:
            sizes = json.loads(manifest.read_text())["files"]
        except (json.JSONDecodeError, KeyError, OSError):
            return "manifest.json is corrupt"
        for name, size in sizes.items():
            path = folder / name
            if not path.exists():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        return None
    for path in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            return problem
    for path in sorted(folder.glob("*.pt")):
        if not zipfile.is_zipfile(path):  # torch.save writes a zip whose directory sits at the end
            return f"{path.name} is truncated"
    return None


def newest_sound_checkpoint(root: Path, warn: bool = True) -> Path | None:
    """The newest ``step-N`` folder under ``root`` that :func:`checkpoint_problem` accepts; a
    damaged newer one is reported and skipped (resume then repeats its steps)."""
    if not root.exists():
        return None
    candidates = sorted((p for p in root.glob("step-*") if p.name.split("-")[1].isdigit()),
                        key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if warn and (path / "trainer_state.pt").exists():
            print(f"warning: skipping damaged checkpoint {path} ({problem}); resuming from the one before",
                  file=sys.stderr)
    return None
