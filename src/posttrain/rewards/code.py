"""``code``: run the model's program against tests in the sandbox; score = share of tests passed.

Prediction: model output holding a fenced code block. Extraction order (:func:`extract_code`):
``<think>…</think>`` spans are dropped; then among the ```` ```python ```` / ```` ```py ```` /
```` ```python3 ```` blocks (or, if there are none, the untagged ```` ``` ```` blocks) the first one
that defines the entry point is taken, else the last one; an unclosed final fence (a truncated
generation) counts as a block; with no usable fence the whole output is taken as bare code.

Ground truth (dict, JSON string of one, or list):

* HumanEval style ``{"test": ..., "entry_point": ..., "prompt": optional}``, e.g.
  ``{"prompt": "def add(a, b):\\n", "test": "def check(f):\\n    assert f(1, 2) == 3\\n",
  "entry_point": "add"}``. Program = prompt + completion + test + ``check(entry_point)``; score
  1 or 0 — the official HumanEval scoring
  (https://github.com/openai/human-eval/blob/master/human_eval/execution.py), minus its
  in-process ``exec``. When the completion defines the entry point itself, the prompt without the
  entry point's stub goes first (:func:`without_stub`), so its imports and helper functions
  (HumanEval/10, /38, /50 …) stay available and a stub with no body cannot break the program. Without
  ``entry_point`` the test is run as it is.
* a list of assert statements, e.g. ``["assert add(1, 2) == 3", "assert add(0, 0) == 0"]``:
  score = passed / total; each assert is run guarded, in one subprocess, outcomes in
  ``details["tests"]``.

Every program runs in :mod:`posttrain.rewards.sandbox`, split over two processes so that the
tested code cannot reach the channel that reports its score:

* the **tester** (the sandbox's main script) holds the tests. It reads a random nonce from stdin,
  deletes its own script file, makes itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``: no
  ``ptrace``, ``/proc/<pid>/mem`` or ``/proc/<pid>/fd`` for processes of the same uid), starts
  the solution process, and then runs the test code, whose calls of the solution's functions go
  over a pipe. Only the tester writes the result lines (nonce, pass/fail, test index) to stdout.
* the **solution** process runs the model's code (prompt + completion). It answers calls with
  plain data only: None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets of
  those. Its stdout goes to /dev/null (a solution may print 15 MB), its stdin is empty.

So a program that exits early (``sys.exit``, ``os._exit``), prints or forges result lines, walks
frames looking for the harness, hooks interpreter shutdown, or returns an object whose ``==`` is
always true scores 0 for the tests it did not pass: its process holds no nonce, no tests and no
handle on the tester's stdout, and what it returns arrives in the tester as plain data compared by
the tester's own ``==``. Limits of the calling convention: the tests see the solution's functions
(as remote calls), plain-data values and standard-library modules it imported; a function that
returns an instance of a class it defines (or a generator) fails that test.
``if __name__ == "__main__":`` blocks in the completion do not run (as in HumanEval).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from posttrain.rewards.base import VerificationResult, Verifier, register
from posttrain.rewards.sandbox import SandboxResult, run_python

__all__ = ["CodeVerifier", "extract_code", "build_harness", "parse_ground_truth", "without_stub"]

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3"}
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def extract_code(prediction: str, entry_point: str | None = None) -> str:
    """The program in ``prediction`` (extraction order in the module docstring)."""
    text = _THINK.sub("", prediction)
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    candidates = [b for t, b in blocks if t in _PY_TAGS] or [b for t, b in blocks if not t]
    if not candidates:
        return text if not blocks else ""
    if entry_point:
        for body in candidates:
            if _defines(body, entry_point):
                return body
    return candidates[-1]


def parse_ground_truth(ground_truth: Any) -> dict | list[str]:
    """HumanEval dict or list of asserts; JSON strings are decoded, a plain string is a test."""
    if isinstance(ground_truth, str):
        try:
            ground_truth = json.loads(ground_truth)
        except json.JSONDecodeError:
            return {"test": ground_truth}
    if isinstance(ground_truth, (list, tuple)):
        if not all(isinstance(t, str) for t in ground_truth):
            raise ValueError("a list ground truth for 'code' must hold assert strings")
        return list(ground_truth)
    if isinstance(ground_truth, dict) and isinstance(ground_truth.get("test"), str):
        return ground_truth
    raise ValueError(
        "ground truth for 'code' must be {'test': ..., 'entry_point': ..., 'prompt': ...} "
        f"(dict or JSON) or a list of asserts, got {type(ground_truth).__name__}"
    )


# --------------------------------------------------------------------------- the two processes

# Plain data both ways, as tagged JSON: lists and JSON scalars as they are; tuples, dicts (any
# hashable keys), sets, bytes, complex numbers and very long ints under a one-key tag. Whatever the
# solution sends, the tester decodes it into builtin types only, so no object of the solution's
# making ever reaches the tester's ``==``.
_CODEC = r'''
def _enc(v, depth=0):
    if depth > 500:
        raise TypeError("value nested too deeply")
    if v is None or type(v) in (bool, str):
        return v
    if isinstance(v, str):
        return str(v)
    if isinstance(v, int):  # beyond ~4300 digits Python refuses int -> decimal text: send hex
        v = int(v)
        return v if v.bit_length() < 14000 else {"$i": format(v, "x")}
    if isinstance(v, float):
        return float(v)
    if isinstance(v, complex):
        return {"$c": [v.real, v.imag]}
    if isinstance(v, (bytes, bytearray)):
        return {"$b": bytes(v).hex()}
    if isinstance(v, list):
        return [_enc(x, depth + 1) for x in v]
    if isinstance(v, tuple):
        return {"$t": [_enc(x, depth + 1) for x in v]}
    if isinstance(v, dict):
        return {"$d": [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in v.items()]}
    if isinstance(v, frozenset):
        return {"$f": [_enc(x, depth + 1) for x in v]}
    if isinstance(v, set):
        return {"$s": [_enc(x, depth + 1) for x in v]}
    raise TypeError(f"a {type(v).__name__} cannot cross the sandbox boundary: return plain data "
                    f"(numbers, strings, lists, tuples, dicts, sets)")


def _dec(v):
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is list:
        return [_dec(x) for x in v]
    if type(v) is dict and len(v) == 1:
        ((tag, body),) = v.items()
        if tag == "$t":
            return tuple(_dec(x) for x in body)
        if tag == "$d":
            return {_dec(k): _dec(x) for k, x in body}
        if tag == "$s":
            return {_dec(x) for x in body}
        if tag == "$f":
            return frozenset(_dec(x) for x in body)
        if tag == "$b":
            return bytes.fromhex(body)
        if tag == "$c":
            return complex(float(body[0]), float(body[1]))
        if tag == "$i":
            return int(body, 16)
    raise ValueError("malformed value from the solution process")
'''

# The solution process: runs the model's program, then answers calls on its pipe pair.
_RUNNER = _CODEC + r'''
import json as _json, os as _os, sys as _sys, traceback as _tb, types as _types


def _serve():
    reader = _os.fdopen(int(_sys.argv[1]), "rb")
    writer = _os.fdopen(int(_sys.argv[2]), "wb")
    dumps, loads = _json.dumps, _json.loads

    def reply(message):
        writer.write(dumps(message).encode() + b"\n")
        writer.flush()

    setup = loads(reader.readline())["setup"]
    namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        exec(compile(setup, "solution.py", "exec"), namespace)
    except BaseException as e:  # SystemExit too: leaving early is failing
        _tb.print_exc()
        reply({"setup_error": f"{type(e).__name__}: {e}"[:300].replace("\n", " ")})
        return
    names = {}
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, _types.ModuleType):
            names[name] = ["module", value.__name__]
        elif callable(value):
            names[name] = ["function"]
        else:
            try:
                names[name] = ["value", _enc(value)]
            except Exception:
                pass
    reply({"names": names})
    for line in reader:
        request = loads(line)
        function = namespace.get(request["call"])
        try:
            if not callable(function):
                raise NameError(f"the solution defines no function {request['call']!r}")
            out = {"value": _enc(function(*_dec(request["args"]), **_dec(request["kwargs"])))}
        except BaseException as e:
            out = {"raise": type(e).__name__, "message": str(e)[:300]}
        reply(out)


_serve()
'''

# The tester: the sandbox's main script. Everything it trusts is set up before the solution
# process exists, and nothing it runs afterwards comes from that process except plain data.
_TESTER = _CODEC + r'''
import builtins as _bi, importlib as _il, json as _json, linecache as _lc, os as _os, subprocess as _sp
import sys as _sys, traceback as _tb

_NOT_IMPORTED = {"antigravity", "this", "webbrowser", "turtle", "turtledemo", "tkinter", "idlelib"}


def _harden():
    """Tests off the disk, and no ptrace or /proc/<pid>/{mem,fd} access for same-uid processes."""
    try:
        _os.unlink(_os.path.abspath(__file__))
    except OSError:
        pass
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
            raise OSError(ctypes.get_errno(), "prctl")
    except Exception as e:
        print(f"warning: tester stays dumpable ({e})", file=_sys.stderr)


class _Solution:
    """The solution process and its pipes; ``call`` is one remote call."""

    def __init__(self):
        to_r, to_w = _os.pipe()
        from_r, from_w = _os.pipe()
        self.proc = _sp.Popen([_sys.executable, "-I", "-B", "-c", RUNNER, str(to_r), str(from_w)],
                              stdin=_sp.DEVNULL, stdout=_sp.DEVNULL, pass_fds=(to_r, from_w))
        _os.close(to_r)
        _os.close(from_w)
        self.to, self.frm = _os.fdopen(to_w, "wb"), _os.fdopen(from_r, "rb")
        self.alive = True

    def request(self, message: dict) -> dict:
        if not self.alive:
            raise RuntimeError("the solution process has ended")
        try:
            self.to.write(_json.dumps(message).encode() + b"\n")
            self.to.flush()
            line = self.frm.readline()
        except (BrokenPipeError, OSError):
            line = b""
        if not line:
            self.alive = False
            raise RuntimeError(f"the solution process ended (exit status {self.proc.poll()})")
        reply = _json.loads(line)
        if type(reply) is not dict:
            raise ValueError("malformed reply from the solution process")
        return reply

    def call(self, name, args, kwargs):
        try:
            message = {"call": name, "args": _enc(list(args)), "kwargs": _enc(dict(kwargs))}
        except TypeError as e:
            raise TypeError(f"cannot pass these arguments to the solution: {e}") from None
        reply = self.request(message)
        if "value" in reply:
            return _dec(reply["value"])
        kind, text = str(reply.get("raise", "RuntimeError")), str(reply.get("message", ""))
        error = getattr(_bi, kind, None)
        if isinstance(error, type) and issubclass(error, Exception):
            try:
                raise error(text)
            except TypeError:  # an exception type with a constructor of its own
                pass
        raise RuntimeError(f"{kind}: {text}")

    def close(self):
        self.proc.kill()
        self.proc.wait()


def _proxy(solution, name):
    def remote(*args, **kwargs):
        return solution.call(name, args, kwargs)

    remote.__name__ = remote.__qualname__ = name
    return remote


def _harness():
    nonce = _sys.stdin.readline().strip()
    results = _os.dup(1)
    _sys.stdout = _sys.stderr  # prints of the test code must not crowd the result lines
    _harden()

    def emit(*words):
        _os.write(results, (" ".join([nonce, *map(str, words)]) + "\n").encode())

    def error(e):
        _tb.print_exc()
        return f"{type(e).__name__}: {e}"[:300].replace("\n", " ")

    def code(source, name):
        _lc.cache[name] = (len(source), None, source.splitlines(True), name)  # for tracebacks
        return compile(source, name, "exec")

    namespace = {"__name__": "__tests__", "__builtins__": _bi}
    if PRELUDE:  # the ground truth's own helpers and imports (HumanEval prompts), trusted
        try:
            exec(code(PRELUDE, "prompt.py"), namespace)
        except BaseException:
            _tb.print_exc()
    solution = _Solution()
    try:
        try:
            reply = solution.request({"setup": SETUP})
            if "setup_error" in reply:
                raise RuntimeError(str(reply["setup_error"]))
            names = reply["names"]
        except BaseException as e:
            emit("setup", f"{e}"[:300].replace("\n", " "))
            return
        for name, info in names.items():
            if name in namespace or type(info) is not list or not info:
                continue  # the ground truth's definitions win
            if info[0] == "function":
                namespace[name] = _proxy(solution, name)
            elif info[0] == "module" and len(info) == 2 and type(info[1]) is str:
                top = info[1].split(".")[0]
                if top in _sys.stdlib_module_names and top not in _NOT_IMPORTED:
                    try:
                        namespace[name] = _il.import_module(info[1])
                    except Exception:
                        pass
            elif info[0] == "value" and len(info) == 2:
                try:
                    namespace[name] = _dec(info[1])
                except Exception:
                    pass
        if ENTRY:
            namespace[ENTRY] = _proxy(solution, ENTRY)
        for i, test in enumerate(TESTS):
            try:
                exec(code(test, f"test_{i}.py"), namespace)
            except BaseException as e:  # SystemExit in a test is a failed test
                emit("fail", i, error(e))
            else:
                emit("pass", i)
    finally:
        solution.close()


_harness()
'''


def build_harness(setup: str, tests: list[str], entry_point: str | None = None, prelude: str = "") -> str:
    """The tester script: runs ``prelude`` (trusted ground-truth code) and each test in its own
    process, calling the functions of ``setup`` (the solution) in a second process."""
    from posttrain.rewards.sandbox import _NETWORK_GUARD, sandbox_capabilities

    runner = _RUNNER
    if sandbox_capabilities()["network"] == "python-guard":  # no network namespace: guard both
        runner = _NETWORK_GUARD + runner
    return (f"SETUP = {setup!r}\nTESTS = {tests!r}\nENTRY = {entry_point!r}\nPRELUDE = {prelude!r}\n"
            f"RUNNER = {runner!r}\n" + _TESTER)


def without_stub(prompt: str, entry_point: str) -> str:
    """``prompt`` minus the entry point's stub (decorators, ``def`` line, docstring, any body), so
    a completion that repeats the whole function follows the prompt's imports and helpers without
    an empty or half ``def`` before it."""
    lines = prompt.splitlines(keepends=True)
    head = re.compile(rf"(\s*)(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(")
    starts = [i for i, line in enumerate(lines) if head.match(line)]
    if not starts:
        return prompt
    start = starts[-1]
    indent = len(head.match(lines[start]).group(1).expandtabs())
    while start > 0 and lines[start - 1].strip().startswith("@"):
        start -= 1
    end, depth = starts[-1], 0
    while end < len(lines):  # the signature, which may span lines
        depth += lines[end].count("(") - lines[end].count(")")
        end += 1
        if depth <= 0:
            break
    while end < len(lines) and (not lines[end].strip()
                                or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    return "".join(lines[:start] + lines[end:])


def _program(code: str, truth: dict) -> tuple[str, list[str], str | None, str]:
    """(solution program, tests, entry point, tester prelude) for a HumanEval-style ground truth."""
    prompt, entry = truth.get("prompt") or "", truth.get("entry_point")
    if prompt and entry and _defines(code, entry):
        # the whole function: the prompt's imports/helpers, then the completion's definition
        setup = without_stub(prompt, entry) + "\n\n" + code
    else:
        setup = prompt + code  # body continuation (or no prompt)
    prelude = without_stub(prompt, entry) if prompt and entry else ""
    test = truth["test"] + (f"\n\ncheck({entry})\n" if entry else "")
    return setup, [test], entry, prelude


def _outcomes(result: SandboxResult, nonce: str, n: int) -> tuple[list[dict], str | None]:
    outcomes = [{"passed": False, "error": "did not run"} for _ in range(n)]
    setup_error = None
    for line in result.stdout.splitlines():
        words = line.split(" ", 3)
        if words[0] != nonce or len(words) < 2:
            continue
        if words[1] == "setup":
            setup_error = line.split(" ", 2)[2] if len(words) > 2 else "error"
        elif words[1] in ("pass", "fail") and len(words) > 2 and words[2].isdigit():
            i = int(words[2])
            if i < n:
                outcomes[i] = {"passed": words[1] == "pass",
                               "error": words[3] if len(words) > 3 else None}
    if result.timed_out:
        for o in outcomes:
            if o["error"] == "did not run":
                o["error"] = "timed out"
    return outcomes, setup_error


@register("code")
class CodeVerifier(Verifier):
    """Sandboxed unit-test verifier; options ``timeout_s`` (wall, per prediction) and
    ``memory_mb`` (address space, per process)."""

    measures = "the share of the reference unit tests the extracted code passes, run in a sandbox"
    partial_credit = True

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 512):
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    def check_ground_truth(self, ground_truth: Any) -> None:
        parse_ground_truth(ground_truth)

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:
        truth = parse_ground_truth(ground_truth)
        entry = truth.get("entry_point") if isinstance(truth, dict) else None
        code = extract_code(prediction or "", entry)
        if not code.strip():
            return VerificationResult(0.0, None, {"error": "no code found in prediction"})
        if isinstance(truth, list):
            setup, tests, entry, prelude = code, truth, None, ""
        else:
            setup, tests, entry, prelude = _program(code, truth)
        if not tests:
            return VerificationResult(0.0, code, {"error": "ground truth holds no tests"})
        nonce = secrets.token_hex(16)
        result = run_python(build_harness(setup, tests, entry, prelude), timeout_s=self.timeout_s,
                            memory_mb=self.memory_mb, stdin=nonce + "\n")
        outcomes, setup_error = _outcomes(result, nonce, len(tests))
        passed = sum(o["passed"] for o in outcomes)
        details = {
            "tests": [{"test": t[:200], **o} for t, o in zip(tests, outcomes)],
            "passed": passed,
            "total": len(tests),
            "setup_error": setup_error,
            "returncode": result.returncode,
            "timed_out": result.timed_out,
            "stderr": result.stderr[-2000:],
            "sandbox": result.protections,
        }
        return VerificationResult(passed / len(tests), code, details)
