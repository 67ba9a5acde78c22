"""The ``python`` tool: the model's code runs in the project's sandbox (``rewards/sandbox.py``:
a separate, locked-down process with time, memory, process and network limits), never in the
training process. The tool's result is what the program printed (stdout, then stderr's last
lines when it failed), capped at ``MAX_OUTPUT`` characters.

Example::

    >>> python("print(sum(range(10)))")
    '45'
"""

from __future__ import annotations

from posttrain.rewards.sandbox import run_python

__all__ = ["python", "MAX_OUTPUT"]

MAX_OUTPUT = 2000
TIMEOUT_S = 5.0


def python(code: str) -> str:
    """Run a Python program in a sandbox and return what it printed.

    Args:
        code: A complete Python program; use print() to show results.
    """
    result = run_python(code, timeout_s=TIMEOUT_S, memory_mb=512)
    out = result.stdout.strip()
    if result.timed_out:
        out += f"\nerror: the program ran longer than {TIMEOUT_S:g} s and was stopped"
    elif result.returncode != 0:
        out += "\n" + "\n".join(result.stderr.strip().splitlines()[-3:])
    out = out.strip() or "(no output)"
    return out if len(out) <= MAX_OUTPUT else out[:MAX_OUTPUT] + "\n… (output cut)"
