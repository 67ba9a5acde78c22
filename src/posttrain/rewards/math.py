"""MATH-style verifiers: ``math`` (boxed → Minerva → LaTeX span → whole text), ``math_strict``.

Example (one MATH row)::

    ground_truth: "\\frac{\\sqrt{2}}{2}"                      (or a full solution holding \\boxed{...})
    prediction:   "... so the ratio is $\\boxed{\\sqrt{2}/2}$."  -> score 1.0

Scoring follows, in spirit, Hendrycks et al.'s ``is_equiv``
(https://github.com/hendrycks/math/blob/main/modeling/math_equivalence.py), the Minerva answer
format (Lewkowycz et al. 2022, appendix D) and open-instruct's ``MathVerifier`` /
``StrictMathVerifier`` (``open_instruct/ground_truth_utils.py``). Equivalence of fractions,
radicals, expressions, sets and intervals is decided by math-verify
(https://github.com/huggingface/Math-Verify): ``verify(parse(gold), parse(pred))``.

Departures from open-instruct: we score the *first* answer found in the extraction order (a
boxed answer beats a Minerva sentence), where open-instruct accepts a match with any candidate;
that closes a hedge where the model writes two different answers.

Time limits: math-verify bounds its own work with ``signal.alarm``, which only works in the main
thread (elsewhere it raises, and the caller gets a silent 0). We call it with its timeouts
disabled (``parsing_timeout=None``, ``timeout_seconds=None``) inside a small pool of persistent
worker subprocesses, and bound each call from the caller's side with ``select`` on the worker's
pipe. That works from any thread; a call that runs past ``timeout`` kills its worker (a fresh one
replaces it on demand) and scores 0 with ``details["error"] == "timeout"``. Cheap cases (equal
strings after light normalisation, plain numbers) never reach the pool. POSIX only.

The answer extraction runs in the caller and is linear in the prediction's length (no regex that
retries from every opener), and its time comes off the worker's share, so a call answers within
``timeout`` even on 100 kB of adversarial LaTeX (``"\\(" * 40000``). Not counted: the one-time
start of a worker (importing sympy, a few seconds) and waiting for a free worker.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from typing import Any

from posttrain.rewards.base import VerificationResult, Verifier, register
from posttrain.rewards.gsm8k import parse_number

__all__ = [
    "MathVerifier",
    "StrictMathVerifier",
    "last_boxed",
    "minerva_answer",
    "extract_math_answer",
    "latex_spans",
    "shutdown_math_workers",
]

DEFAULT_TIMEOUT_S = 5.0  # per-call wall limit on the math-verify path
STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports sympy + math-verify and warms the parser


# --------------------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, else None.

    Escaped braces (``\\{``, ``\\}``) inside the box do not count. An unclosed last box (a
    truncated generation) gives None rather than falling back to an earlier box. The brace-less
    ``\\boxed 5`` form reads up to the next whitespace or ``$``.
    """
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text)]
    if not starts:
        return None
    i = starts[-1]
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        bare = re.match(r"[^\s$]+", text[i:])
        return bare.group(0) if bare else None
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2  # skip the escaped character (\{, \}, \\)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
        j += 1
    return None


# Every extraction step below runs in the caller, outside the worker's time limit, so each one is
# linear in the length of the prediction: a model can write 100 kB of "\(" or "$", and a regex
# such as "\\\((.+?)\\\)" retried from every opener takes time quadratic in that length.

_MINERVA_PREFIX_RE = re.compile(r"Final Answer:[ \t]*The final answer is[ \t]*")
_MINERVA_CLOSE_RE = re.compile(r"\.[ \t]*I hope it is correct")


def minerva_answer(text: str) -> str | None:
    """X of the last "Final Answer: The final answer is X. I hope it is correct.", else None.

    The answer sits on one line: it ends at ". I hope it is correct" or at the end of the line
    (one trailing period dropped)."""
    last = None
    for line in text.splitlines():
        prefixes = list(_MINERVA_PREFIX_RE.finditer(line))
        if not prefixes:
            continue
        rest = line[prefixes[-1].end():]
        close = _MINERVA_CLOSE_RE.search(rest, 1)  # the answer has at least one character
        answer = rest[:close.start()] if close else rest.rstrip()
        if not close and answer.endswith(".") and len(answer) > 1:
            answer = answer[:-1]
        answer = _strip_dollars(answer)
        if answer:
            last = answer
    return last


class _NextCloser:
    """Positions of a closing delimiter at or after a position that only grows during a scan:
    each ``find`` starts past the last answer, so a whole scan costs one pass over the text."""

    def __init__(self, text: str, closer: str, unescaped: bool = False):
        self.text, self.closer, self.unescaped = text, closer, unescaped
        self.found = -2   # -2: not searched yet; -1: no more occurrences

    def at_or_after(self, position: int) -> int:
        if self.found == -1 or self.found >= position:
            return self.found
        k = self.text.find(self.closer, position)
        while self.unescaped and k > 0 and self.text[k - 1] == "\\":
            k = self.text.find(self.closer, k + 1)
        self.found = k
        return k


_OPENER_RE = re.compile(r"\$|\\[\[(]")


def latex_spans(text: str) -> list[str]:
    """Contents of the ``$$...$$``, ``$...$`` (neither ``$`` escaped), ``\\[...\\]`` and
    ``\\(...\\)`` spans, scanned left to right as a regex would (leftmost span first, ``$$``
    before ``$``, spans do not overlap, each closes at its first closer), in linear time."""
    double, single = _NextCloser(text, "$$"), _NextCloser(text, "$", unescaped=True)
    bracket, paren = _NextCloser(text, "\\]"), _NextCloser(text, "\\)")
    spans, resume = [], 0
    for opener in _OPENER_RE.finditer(text):  # candidate openers, found in C
        i = opener.start()
        if i < resume:
            continue  # inside the span just taken
        if text[i] == "$":
            if text.startswith("$$", i):
                k = double.at_or_after(i + 3)
                if k != -1:
                    spans.append(text[i + 2:k])
                    resume = k + 2
                    continue
            if i == 0 or text[i - 1] != "\\":
                k = single.at_or_after(i + 2)
                if k != -1:
                    spans.append(text[i + 1:k])
                    resume = k + 1
        else:
            k = (bracket if text[i + 1] == "[" else paren).at_or_after(i + 3)
            if k != -1:
                spans.append(text[i + 2:k])
                resume = k + 2
    return spans


def extract_math_answer(text: str) -> tuple[str | None, str | None]:
    """``(answer, source)`` by the ``math`` extraction order.

    1. ``boxed``:   the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces);
    2. ``minerva``: "Final Answer: The final answer is X. I hope it is correct.";
    3. ``latex``:   the last ``$...$`` / ``$$...$$`` / ``\\(...\\)`` / ``\\[...\\]`` span;
    4. ``text``:    the whole output (math-verify then looks for its own anchors in it).
    """
    boxed = last_boxed(text)
    if boxed:
        return boxed, "boxed"
    minerva = minerva_answer(text)
    if minerva:
        return minerva, "minerva"
    spans = [span.strip() for span in latex_spans(text)]
    spans = [span for span in spans if span]
    if spans:
        return spans[-1], "latex"
    stripped = text.strip()
    return (stripped, "text") if stripped else (None, None)


def _strip_dollars(s: str) -> str:
    """Strip surrounding ``$`` pairs and spaces, by index (slicing per pair would copy the
    string once per pair: quadratic on a prediction of 50,000 ``$``)."""
    i, j = 0, len(s)
    while True:
        while i < j and s[i].isspace():
            i += 1
        while j > i and s[j - 1].isspace():
            j -= 1
        if j - i >= 2 and s[i] == "$" and s[j - 1] == "$":
            i, j = i + 1, j - 1
        else:
            return s[i:j]


def _gold_answer(ground_truth: Any) -> str:
    """A bare expression, a number, or a solution holding ``\\boxed{...}`` (its last box)."""
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    text = str(ground_truth)
    boxed = last_boxed(text)
    return _strip_dollars(boxed if boxed is not None else text)


# --------------------------------------------------------------------------- fast path

_SPACING_RE = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;:]|\\ |\s+")


def _normalize(s: str) -> str:
    s = _strip_dollars(s)
    s = _SPACING_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.rstrip(".")


def _fast_equal(gold: str, pred: str) -> bool | None:
    """True/False when the answer is obvious without sympy, None when math-verify must decide."""
    g, p = _normalize(gold), _normalize(pred)
    if g and g == p:
        return True
    gv, pv = parse_number(g), parse_number(p)
    if gv is not None and pv is not None:
        if gv == pv:
            return True
        if gv == gv.to_integral_value() and pv == pv.to_integral_value() and "." not in g + p:
            return False  # two different integers; decimals go to math-verify (it rounds)
    return None


# --------------------------------------------------------------------------- worker pool

# The worker is a separate interpreter that imports math-verify only (not posttrain), so its
# start-up cost does not depend on what else the package imports, and no start method
# (fork / spawn / forkserver) or ``__main__`` guard of the user's script matters. Protocol: one
# JSON line in ({"gold", "pred", "pred_raw", "timeout"}), one JSON line out.
_WORKER_SOURCE = r"""
import json, logging, signal, sys
logging.getLogger("math_verify").setLevel(logging.ERROR)
from math_verify import parse, verify

def check(gold, pred, pred_raw):
    g = parse("$" + gold + "$", parsing_timeout=None)
    p = parse(pred if pred_raw else "$" + pred + "$", parsing_timeout=None)
    equal = bool(g) and bool(p) and verify(g, p, timeout_seconds=None)
    return {"equal": bool(equal), "gold_parsed": str(g[0])[:200] if g else None,
            "pred_parsed": str(p[0])[:200] if p else None}

check("1", "1", False)  # warm up the LaTeX grammar before reporting ready
out, sys.stdout = sys.stdout, sys.stderr  # stray prints must not corrupt the protocol
out.write("ready\n"); out.flush()
for line in sys.stdin:
    req = json.loads(line)
    # Backstop for an orphaned worker (parent killed mid-call): SIGALRM's default action ends us.
    signal.setitimer(signal.ITIMER_REAL, float(req["timeout"]) + 30.0)
    try:
        res = check(req["gold"], req["pred"], req["pred_raw"])
    except Exception as e:
        res = {"equal": False, "error": (type(e).__name__ + ": " + str(e))[:500]}
    signal.setitimer(signal.ITIMER_REAL, 0)
    out.write(json.dumps(res) + "\n"); out.flush()
"""


class _Worker:
    """One persistent math-verify subprocess talking JSON lines over pipes."""

    def __init__(self, startup_timeout: float):
        flags = ["-P"] if sys.version_info >= (3, 11) else []  # never import from the cwd
        self.proc = subprocess.Popen(
            [sys.executable, *flags, "-c", _WORKER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._buf = b""
        try:
            ready = self._readline(startup_timeout)
        except EOFError:
            ready = None
        if ready != "ready":
            self.kill()
            raise RuntimeError(
                "the math-verify worker did not start (is `math-verify` installed in "
                f"{sys.executable}?); see its stderr above"
            )

    def _readline(self, timeout: float) -> str | None:
        """The next line, or None after ``timeout`` seconds; EOFError if the worker died."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError("math-verify worker exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def request(self, payload: dict, timeout: float) -> dict | None:
        self.proc.stdin.write((json.dumps(payload) + "\n").encode())
        self.proc.stdin.flush()
        line = self._readline(timeout)
        return None if line is None else json.loads(line)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class _WorkerPool:
    """At most ``max_workers`` workers, started on demand, reused, replaced after a timeout."""

    def __init__(self, max_workers: int):
        self.max_workers = max_workers
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self._idle: list[_Worker] = []

    def run(self, payload: dict, timeout: float) -> dict:
        if os.getpid() != self._pid:
            self._reset()  # forked child: the parent's workers are not ours to use
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = _Worker(STARTUP_TIMEOUT_S)
            try:
                result = worker.request(payload, timeout)
            except (OSError, EOFError, ValueError) as e:
                worker.kill()
                return {"equal": False, "error": f"worker crashed: {e}"}
            if result is None:
                worker.kill()
                # Start its replacement now, in the background: the next call should not pay
                # the interpreter start on top of its own limit (an adversarial batch times out
                # one call after another).
                threading.Thread(target=self._add_spare, daemon=True).start()
                return {"equal": False, "error": "timeout"}
            with self._lock:
                self._idle.append(worker)
            return result

    def _add_spare(self) -> None:
        try:
            worker = _Worker(STARTUP_TIMEOUT_S)
        except (RuntimeError, OSError):
            return  # the next call starts one itself and reports the failure
        with self._lock:
            self._idle.append(worker)

    def shutdown(self) -> None:
        if os.getpid() != self._pid:
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _WorkerPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _WorkerPool(max_workers=min(8, os.cpu_count() or 1))
            atexit.register(_POOL.shutdown)
        return _POOL


def shutdown_math_workers() -> None:
    """Stop the idle math-verify workers (they restart on the next call). Also runs at exit."""
    if _POOL is not None:
        _POOL.shutdown()


def _equivalent(gold: str, pred: str, pred_raw: bool, timeout: float) -> tuple[bool, dict]:
    if not pred_raw:
        fast = _fast_equal(gold, pred)
        if fast is not None:
            return fast, {"path": "fast"}
    result = _pool().run({"gold": gold, "pred": pred, "pred_raw": pred_raw, "timeout": timeout}, timeout)
    details = {"path": "math_verify", **{k: v for k, v in result.items() if k != "equal"}}
    return bool(result["equal"]), details


# --------------------------------------------------------------------------- verifiers


@register("math")
class MathVerifier(Verifier):
    """Score 1.0 when the prediction's answer is mathematically equal to the ground truth.

    Extraction order (:func:`extract_math_answer`): last ``\\boxed{...}``/``\\fbox{...}`` →
    Minerva "Final Answer: The final answer is X. I hope it is correct." → last LaTeX span →
    the whole output. The ground truth may be a bare expression or hold ``\\boxed{...}``.
    ``details``: ``source`` (extraction step), ``gold``, ``path`` (``fast`` or ``math_verify``),
    and ``error`` (``"timeout"`` when the check ran past ``timeout`` seconds).

    Args:
        timeout: wall-clock seconds allowed for one math-verify check (any thread).
    """

    measures = "the final answer is mathematically equivalent to the reference answer"
    partial_credit = False

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)

    def extract(self, prediction: str) -> tuple[str | None, str | None]:
        return extract_math_answer(prediction)

    def check_ground_truth(self, ground_truth: Any) -> None:
        if ground_truth is None or not _gold_answer(ground_truth):
            raise ValueError(f"math ground truth is empty: {ground_truth!r:.200} (give the answer, e.g. "
                             f"\"\\frac{{1}}{{2}}\", or a solution holding \\boxed{{...}})")

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:
        started = time.monotonic()
        gold = _gold_answer(ground_truth)
        answer, source = self.extract(prediction or "")
        if answer is None:
            return VerificationResult(0.0, None, {"source": None, "gold": gold})
        # The limit covers the whole call: extraction (linear, in this process) comes off the
        # worker's share, so even a 100 kB adversarial prediction answers within ``timeout``.
        remaining = max(0.05, self.timeout - (time.monotonic() - started))
        equal, details = _equivalent(gold, answer, pred_raw=source == "text", timeout=remaining)
        if source == "text" and details.get("pred_parsed"):
            answer = details["pred_parsed"]  # what math-verify found in the free text
        details = {"source": source, "gold": gold, **details}
        return VerificationResult(1.0 if equal else 0.0, answer, details)


@register("math_strict")
class StrictMathVerifier(MathVerifier):
    """Like ``math`` but reads only the Minerva sentence
    "Final Answer: The final answer is X. I hope it is correct." (open-instruct's
    ``StrictMathVerifier``); a boxed or free-form answer scores 0 with ``extracted`` None."""

    measures = ("the answer in the Minerva sentence \"Final Answer: The final answer is X\" is mathematically "
                "equivalent to the reference answer")

    def extract(self, prediction: str) -> tuple[str | None, str | None]:
        answer = minerva_answer(prediction)
        return (answer, "minerva") if answer else (None, None)
