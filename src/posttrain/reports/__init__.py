"""Run reports (training curves, Reward Reports, recipe tables) and the atomic writer they share."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a hidden sibling and a rename, so a crash mid-write never
    leaves a half-written file where a finished one was."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
