"""Verifiers under attack (issue 21): the math verifier answers 100 kB of adversarial LaTeX within
its time limit, and a program cannot forge its own code score.

Each code attack is run with a wrong ``add`` (it must score 0) and, as a control, with a right
one (it must still score 1), so a 0 means the attack failed, not that the scaffolding broke.
Against the previous single-process harness, ``frame_walk_then_atexit`` and both ``==`` attacks
scored a wrong ``add`` 1.0.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from posttrain.rewards import get_verifier
from posttrain.rewards.math import MathVerifier, extract_math_answer, latex_spans

# --------------------------------------------------------------------------- math: linear-time extraction

ADVERSARIAL = {
    "open parens": "\\(" * 50_000,
    "open brackets": "\\[" * 50_000,
    "dollars": "$" * 100_000,
    "escaped dollars": "\\$" * 50_000,
    "double dollars unclosed": "$$" + "x" * 100_000,
    "backslashes": "\\" * 100_000 + "$",
    "minerva prefixes": "Final Answer: The final answer is " * 3_000,
    "minerva long spaces": "Final Answer: The final answer is x" + " " * 100_000 + "y",
    "periods and spaces": ". " * 50_000,
    "boxes": "\\boxed{" * 15_000,
    "dollar in spaces": "$" + " " * 100_000,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_extraction_of_100_kB_adversarial_text_is_fast(text):
    started = time.perf_counter()
    extract_math_answer(text)
    # Linear scans take ~0.1 s here; the former regex took 30 s on the first row (quadratic).
    assert time.perf_counter() - started < 1.5


def test_linear_span_scanner_matches_the_regex_it_replaces():
    spans_regex = re.compile(r"\$\$(?P<a>.+?)\$\$|(?<!\\)\$(?P<b>.+?)(?<!\\)\$|\\\[(?P<c>.+?)\\\]|\\\((?P<d>.+?)\\\)",
                             re.DOTALL)
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice("$\\()[]a \n") for _ in range(rng.randint(0, 14)))
        expected = [next(g for g in m.groups() if g is not None) for m in spans_regex.finditer(text)]
        assert latex_spans(text) == expected, text


def test_math_verifier_answers_adversarial_input_within_its_limit():
    verifier = MathVerifier(timeout=1.0)
    assert verifier("so $\\frac{2}{4}$", "\\frac{1}{2}").score == 1.0   # starts a worker (not counted)
    started = time.perf_counter()
    result = verifier("\\(" * 40_000, "1")
    assert result.score == 0.0
    assert time.perf_counter() - started < 1.0 + 0.5   # the limit, plus process/IPC slack


# --------------------------------------------------------------------------- code: reward hacks score 0

WRONG = "def add(a, b):\n    return a - b\n"
RIGHT = "def add(a, b):\n    return a + b\n"

ATTACKS = {
    # find the harness's nonce and result descriptor by walking frames, then print pass lines
    # for every test from an exit hook, after the real results (this beat the old harness)
    "frame_walk_then_atexit": WRONG + """
import sys, os, atexit
def _steal():
    f = sys._getframe()
    while f is not None:
        nonce = f.f_locals.get("nonce")
        if isinstance(nonce, str):
            fds = [v for k, v in f.f_locals.items() if isinstance(v, int) and k in ("fd", "results")] or [1]
            def forge():
                for fd in fds:
                    for i in range(50):
                        try: os.write(fd, f"{nonce} pass {i}\\n".encode())
                        except OSError: pass
            atexit.register(forge)
            return
        f = f.f_back
_steal()
""",
    # write guessed result lines to every descriptor and to the parent's stdout through /proc
    "forge_result_channel": WRONG + """
import os
for fd in range(0, 32):
    try: os.write(fd, b"pass 0\\n")
    except OSError: pass
for what in ("fd/1", "fd/3", "mem"):
    try:
        with open(f"/proc/{os.getppid()}/{what}", "wb") as f: f.write(b"pass 0\\n")
    except OSError: pass
""",
    "always_equal_object": """
class Yes:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = object.__hash__
def add(a, b):
    return Yes()
""",
    "always_equal_int_subclass": """
class Yes(int):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = int.__hash__
def add(a, b):
    return Yes(0)
""",
    "exit_early_at_import": WRONG + "import os\nos._exit(0)\n",
    "sys_exit_at_import": WRONG + "raise SystemExit(0)\n",
    "exit_during_the_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "shutdown_hooks": WRONG + """
import atexit, os, sys, threading
def _forge():
    for fd in range(1, 8):
        try: os.write(fd, b"pass 0\\n")
        except OSError: pass
atexit.register(_forge)
threading._register_atexit(_forge)
sys.stdout = sys.__stdout__
""",
    "read_the_tests": """
import os
SOURCE = ""
for path in ("main.py", f"/proc/{os.getppid()}/cmdline", f"/proc/{os.getppid()}/environ"):
    try: SOURCE += open(path, errors="replace").read()
    except OSError: pass
def add(a, b):
    return a + b if "(1, 2) == 3" in SOURCE else 999   # right only if the tests leaked
""",
}
# Controls that cannot pass with a right add either: no add left to call, or (forge_result_channel)
# the junk it writes to every descriptor also lands on its own reply pipe.
CONTROLS_THAT_BREAK_THEMSELVES = {"always_equal_object", "always_equal_int_subclass", "exit_early_at_import",
                                  "sys_exit_at_import", "exit_during_the_call", "read_the_tests",
                                  "forge_result_channel"}
ASSERTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
HUMANEVAL = {"prompt": 'def add(a, b):\n    """Sum of a and b."""\n',
             "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(5, 5) == 10\n",
             "entry_point": "add"}


@pytest.mark.parametrize("name", ATTACKS)
def test_reward_hacks_score_zero(name):
    code = get_verifier("code")
    attack = ATTACKS[name]
    assert code(attack, ASSERTS).score == 0.0
    assert code(attack, HUMANEVAL).score == 0.0
    if name not in CONTROLS_THAT_BREAK_THEMSELVES:   # the same program with a right add passes
        assert code(attack.replace("a - b", "a + b"), ASSERTS).score == 1.0


def test_correct_solution_that_prints_15_MB_passes():
    noisy = "def add(a, b):\n    print('x' * 15_000_000)\n    return a + b\n"
    assert get_verifier("code")(noisy, ASSERTS).score == 1.0


@pytest.mark.parametrize("prompt", ["def add(a, b):\n", "import math\n\n\ndef add(a: int,\n        b: int) -> int:\n",
                                    HUMANEVAL["prompt"]])
def test_completion_repeating_the_def_line_works(prompt):
    truth = {**HUMANEVAL, "prompt": prompt}
    assert get_verifier("code")(RIGHT, truth).score == 1.0
    assert get_verifier("code")(f"Sure:\n```python\n{RIGHT}```", truth).score == 1.0
    assert get_verifier("code")(WRONG, truth).score == 0.0


def test_plain_data_crosses_the_boundary_intact():
    program = "def f():\n    return (1, [2.5, None, True], {'a': {1, 2}, (3, 4): b'x'}, frozenset([3]), 1 + 2j, 10 ** 5000)\n"
    expected = "(1, [2.5, None, True], {'a': {1, 2}, (3, 4): b'x'}, frozenset([3]), 1 + 2j, 10 ** 5000)"
    result = get_verifier("code")(program, [f"assert f() == {expected}", "assert type(f()[1][2]) is bool"])
    assert result.score == 1.0, result.details
