"""Environments: what answers the model between its turns.

The interface is small (as OpenEnv's and Gymnasium's, with text in and out)::

    class MyEnvironment:
        tools = [my_lookup]                  # functions shown to the model (may be empty)
        def reset(self, row) -> list[dict]:  # the dataset row → the conversation to start from
            return row["messages"]
        def step(self, turn: str) -> StepResult:  # the model's turn → what comes next
            return StepResult(observation=[{"role": "user", "content": "…"}], reward=0.0, done=False)

One instance per episode (``environment=module:Class`` is called with ``environment_options`` as
keyword arguments, none by default); an environment with a ``close()`` method has it called once
its episode ends, however it ends. An observation is a list of messages (or a string: one
``user`` turn; or tool results as ``(tool name, text)`` pairs, rendered as the template renders
tool results); ``done=True`` ends the episode after this turn, and the rewards of all steps are
summed into the episode's reward beside the verifier's. Each built-in tool is also a one-tool environment
(``environment=calculator``): :class:`ToolEnvironment` runs the calls of each turn and ends the
episode at the first turn without a call (the final answer).

:class:`EnvironmentPool` runs the ``reset``/``step`` calls of a batch's episodes concurrently
(at most ``workers`` at once, the next starting as soon as one ends) with a ``timeout`` per call.
A call that raises, runs past the timeout or returns something that is not a :class:`StepResult`
(junk) ends *its* episode with a logged reason; the run goes on. A timed-out call cannot be killed (it is a Python thread): it
runs on in a daemon thread whose result is dropped, and does not keep the process alive at exit.
Tools that may hang for good belong in a subprocess (the ``python`` tool runs in the sandbox).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from posttrain.tools.format import parse_tool_calls
from posttrain.tools.spec import BUILTIN_TOOLS, Tool, ToolError, ToolJunkError, call_tool, resolve_tools

__all__ = ["Environment", "StepResult", "EpisodeEnded", "ToolEnvironment", "ToolFailure", "EnvironmentPool",
           "environment_factory", "check_step"]

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """``observation``: messages to append before the model's next turn (``None`` when done; a
    string is one ``user`` turn; ``(tool name, text)`` pairs are tool results). ``reward``: added to the episode's reward. ``info``: counts the
    trainer logs (``tool_calls``, ``parse_failures``, ``tool_errors``)."""

    observation: list[dict] | str | None = None
    reward: float = 0.0
    done: bool = False
    info: dict = field(default_factory=dict)


class Environment(Protocol):
    tools: list

    def reset(self, row: dict) -> list[dict]: ...

    def step(self, turn: str) -> StepResult: ...


@dataclass
class EpisodeEnded:
    """A ``reset``/``step`` call that failed: the episode ends with ``reason``."""

    reason: str


class ToolFailure(RuntimeError):
    """A tool raised or returned junk; the message names the tool (the pool ends the episode)."""


class ToolEnvironment:
    """Tool calls in, tool results out (module docstring). A call the model wrote badly (not
    JSON, unknown tool, wrong arguments) is answered with an ``error: …`` result so the model can
    try again; a tool that raises or returns junk raises here, which ends the episode."""

    def __init__(self, tools: list[Tool]):
        self.tools = tools
        self.by_name = {t.name: t for t in tools}

    def reset(self, row: dict) -> list[dict]:
        return list(row["messages"])

    def step(self, turn: str) -> StepResult:
        parsed = parse_tool_calls(turn)
        info = {"tool_calls": len(parsed.calls), "parse_failures": len(parsed.failures), "tool_errors": 0}
        if not parsed.calls and not parsed.failures:
            return StepResult(done=True, info=info)   # no call: this turn is the answer
        results = [("error", f"error: could not read a tool call: {f}") for f in parsed.failures]
        for call in parsed.calls:
            tool = self.by_name.get(call.name)
            if tool is None:
                text = f"error: unknown tool {call.name!r}; available: {', '.join(self.by_name)}"
            else:
                try:
                    text = call_tool(tool, call.arguments)
                except ToolJunkError as e:
                    raise ToolFailure(f"tool {call.name} returned junk: {e}") from e
                except Exception as e:
                    raise ToolFailure(f"tool {call.name} raised {type(e).__name__}: {e}") from e
            info["tool_errors"] += text.startswith("error:")
            results.append((call.name, text))
        return StepResult(observation=results, info=info)


def _tool_environment(tools: list[Tool]) -> Callable[[], ToolEnvironment]:
    return lambda: ToolEnvironment(tools)


def environment_factory(environment: str = "", tools: list | None = None, retrieval_corpus: str = "",
                        options: dict | None = None) -> tuple[Callable[[], Any], list[Tool]]:
    """A zero-argument factory making one environment per episode, and the tools it shows the
    model: ``tools`` alone gives a :class:`ToolEnvironment`; ``environment`` is a built-in tool
    name, ``openenv:URL`` (an OpenEnv server, ``tools/openenv.py``) or ``module:Class`` (whose
    ``tools`` attribute lists functions or built-in names). ``options`` are the keyword arguments
    of the environment's constructor (``module:Class`` and ``openenv:``)."""
    import functools
    import importlib.util

    from posttrain.rewards.compose import load_callable

    options = dict(options or {})
    if environment and tools:
        raise ToolError("give tools or environment, not both (an environment brings its own tools)")
    if environment.startswith("openenv:"):
        if importlib.util.find_spec("openenv") is None:
            raise ToolError(f"environment={environment}: OpenEnv is not installed; `pip install 'posttrain[openenv]'` "
                            "(openenv-core)")
        from posttrain.tools.openenv import PREFIX, OpenEnvEnvironment

        url = environment[len(PREFIX):]
        if not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ToolError(f"environment={environment}: give the server's URL, e.g. openenv:http://localhost:8000")
        unknown = sorted(set(options) - {"action_field", "observation_field"})
        if unknown:
            raise ToolError(f"environment_options: OpenEnv environments take action_field and observation_field, "
                            f"not {', '.join(unknown)}")
        return functools.partial(OpenEnvEnvironment, url, **options), []
    if options and (not environment or environment in BUILTIN_TOOLS):
        raise ToolError("environment_options are for environment=module:Class or openenv:URL")
    if not environment:
        resolved = resolve_tools(tools or [], retrieval_corpus)
        return _tool_environment(resolved), resolved
    if environment in BUILTIN_TOOLS:
        resolved = resolve_tools([environment], retrieval_corpus)
        return _tool_environment(resolved), resolved
    if ":" not in environment and "." not in environment:
        raise ToolError(f"environment={environment!r}: give a built-in tool ({', '.join(BUILTIN_TOOLS)}) or "
                        "'module:Class'")
    try:
        cls = load_callable(environment)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise ToolError(f"environment: {str(e).replace('reward function', 'environment')}") from None
    for method in ("reset", "step"):
        if not callable(getattr(cls, method, None)):
            raise ToolError(f"environment={environment!r} has no {method}() method; an environment has "
                            "reset(row) -> messages and step(turn) -> StepResult")
    resolved = resolve_tools(list(getattr(cls, "tools", []) or []), retrieval_corpus)
    return (functools.partial(cls, **options) if options else cls), resolved


# ---------------------------------------------------------------------------------------------
# Running environment calls concurrently, each bounded in time


def valid_messages(value) -> bool:
    """A list of ``{role, content}`` messages with string values."""
    return isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                           and isinstance(m.get("content"), str) for m in value)


def check_step(value) -> StepResult | EpisodeEnded:
    """A step's return value as a StepResult, or why it is junk (a 3-tuple (observation, reward,
    done) is accepted as Gymnasium-style code returns it; tool results as (name, text) pairs)."""
    if isinstance(value, tuple) and len(value) == 3:
        value = StepResult(*value)
    if not isinstance(value, StepResult):
        return EpisodeEnded(f"step returned junk: a {type(value).__name__}, not a StepResult")
    obs = value.observation
    if isinstance(obs, str):
        obs = [{"role": "user", "content": obs}]
    elif isinstance(obs, list) and obs and all(isinstance(o, tuple) and len(o) == 2 for o in obs):
        if not all(isinstance(a, str) and isinstance(b, str) for a, b in obs):
            return EpisodeEnded("step returned junk: tool results must be (name, text) pairs of strings")
    elif obs is not None and not valid_messages(obs):
        return EpisodeEnded("step returned junk: the observation is not a list of {role, content} messages")
    try:
        reward = float(value.reward)
    except (TypeError, ValueError):
        return EpisodeEnded(f"step returned junk: reward {value.reward!r} is not a number")
    if not math.isfinite(reward):
        return EpisodeEnded(f"step returned junk: reward {reward} is not finite")
    if obs is None and not value.done:
        return EpisodeEnded("step returned junk: no observation and not done")
    return StepResult(obs, reward, bool(value.done), dict(value.info or {}))


class EnvironmentPool:
    """Runs environment calls concurrently, at most ``workers`` at once, each within ``timeout``
    seconds of its own start (module docstring). A call starts as soon as a slot is free (a slow
    call holds one slot, not the batch), and a timed-out call gives its slot back. Results keep
    the input order; a failed call gives :class:`EpisodeEnded` with its reason."""

    def __init__(self, workers: int = 8, timeout: float = 30.0):
        if workers < 1 or timeout <= 0:
            raise ValueError("the environment pool needs workers >= 1 and timeout > 0")
        self.workers, self.timeout = workers, timeout

    def run(self, calls: list[Callable[[], Any]], check: Callable[[Any], Any] = check_step) -> list:
        results: list = [None] * len(calls)
        finished: queue.Queue = queue.Queue()   # indices of calls that returned or raised
        boxes = [{} for _ in calls]
        waiting, running = list(range(len(calls)))[::-1], {}   # running: index → deadline
        while waiting or running:
            while waiting and len(running) < self.workers:
                i = waiting.pop()
                running[i] = time.monotonic() + self.timeout
                threading.Thread(target=self._call, args=(calls[i], boxes[i], finished, i), daemon=True,
                                 name=f"posttrain-env-{i}").start()
            try:
                i = finished.get(timeout=max(0.0, min(running.values()) - time.monotonic()))
            except queue.Empty:   # the earliest deadline passed: every call past its own ends
                now = time.monotonic()
                for i in [i for i, deadline in running.items() if deadline <= now]:
                    del running[i]
                    results[i] = self._ended(f"timed out after {self.timeout:g} s")
                continue
            if i not in running:   # it finished after it had timed out: its result is dropped
                continue
            del running[i]
            box = boxes[i]
            if "error" in box:
                e = box["error"]
                results[i] = self._ended(str(e) if isinstance(e, ToolFailure) else f"raised {type(e).__name__}: {e}")
            else:
                results[i] = check(box["value"])
                if isinstance(results[i], EpisodeEnded):
                    logger.warning("episode ended: %s", results[i].reason)
        return results

    @staticmethod
    def _ended(reason: str) -> EpisodeEnded:
        logger.warning("episode ended: %s", reason)
        return EpisodeEnded(reason)

    @staticmethod
    def _call(fn, box: dict, finished: queue.Queue, index: int):
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 — any failure of user code ends only its episode
            box["error"] = e
        finished.put(index)
