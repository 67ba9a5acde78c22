"""Run a script under ``accelerate launch`` on N gloo processes (CPU), from a plain checkout or
an installed package alike: the children see the tests folder and ``src`` first on their path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def child_env(**extra: str) -> dict:
    """The current environment with tests/ and src/ prepended to PYTHONPATH (kept, not replaced:
    a user's own path entries still count) and one thread per process (2 cores here)."""
    path = [str(TESTS), str(SRC)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path), **extra}


def accelerate_launch(script, *args, num_processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu`` of ``script`` with ``args`` (gloo on CPU); a free-ish port
    per test process so parallel pytest runs do not collide."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(29500 + os.getpid() % 1000), str(script), *map(str, args)]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
