"""Tools as users already write them: plain Python functions with type hints and a Google-style
docstring (TRL's convention), their JSON schema made by ``transformers.utils.get_json_schema``.

``resolve_tools(["calculator", "mypkg.tools:lookup"])`` gives :class:`Tool` objects; the
built-ins are ``calculator`` (``tools/calculator.py``), ``python`` (the code sandbox,
``tools/python_tool.py``) and ``retrieval`` (BM25 over ``retrieval_corpus``,
``tools/retrieval.py``). :func:`call_tool` runs one call and turns what the function returned
into the text the model reads; arguments that do not fit the schema come back to the model as an
``error: …`` result (the model's mistake), while a function that raises or returns something that
is not text, a number or JSON data raises (the tool's fault: the caller ends the episode).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Tool", "ToolError", "ToolJunkError", "BUILTIN_TOOLS", "as_tool", "resolve_tools", "call_tool"]

BUILTIN_TOOLS = ("calculator", "python", "retrieval")


class ToolError(ValueError):
    """A tool specification that cannot be used (unknown name, not importable, no docstring)."""


class ToolJunkError(TypeError):
    """A tool returned something that is not a result (module docstring)."""


@dataclass(frozen=True)
class Tool:
    """A callable tool: its ``name`` (the function's), the ``function`` and its JSON ``schema``
    (``{"type": "function", "function": {"name", "description", "parameters"}}``)."""

    name: str
    function: Callable[..., Any]
    schema: dict


def as_tool(function: Callable, spec: str | None = None) -> Tool:
    """A :class:`Tool` from a typed, documented function (``spec`` names it in errors)."""
    from transformers.utils import get_json_schema

    try:
        schema = get_json_schema(function)
    except Exception as e:   # transformers raises its own DocstringParsingException / TypeHintParsingException
        where = spec or getattr(function, "__name__", repr(function))
        raise ToolError(f"tool {where!r}: {e}. A tool is a function with type hints on every argument and a "
                        "docstring with an Args: section describing each one") from None
    return Tool(schema["function"]["name"], function, schema)


def _builtin(name: str, retrieval_corpus: str) -> Callable:
    if name == "calculator":
        from posttrain.tools.calculator import calculator

        return calculator
    if name == "python":
        from posttrain.tools.python_tool import python

        return python
    if not retrieval_corpus:
        raise ToolError("the retrieval tool searches a local corpus: set retrieval_corpus=PATH (a .jsonl file with "
                        "a 'text' field per line, or a text file with one passage per line)")
    from posttrain.tools.retrieval import make_retrieval

    return make_retrieval(retrieval_corpus)


def resolve_tools(specs: list, retrieval_corpus: str = "") -> list[Tool]:
    """Tools by built-in name or ``module:function`` (a callable is taken as is)."""
    from posttrain.rewards.compose import load_callable

    tools = []
    for spec in specs:
        if callable(spec):
            function = spec
        elif isinstance(spec, str) and spec in BUILTIN_TOOLS:
            function = _builtin(spec, retrieval_corpus)
        elif isinstance(spec, str) and (":" in spec or "." in spec):
            try:
                function = load_callable(spec)
            except (ImportError, AttributeError, TypeError, ValueError) as e:
                raise ToolError(f"tools: {str(e).replace('reward function', 'tool')}") from None
        else:
            raise ToolError(f"tools: unknown tool {spec!r}; give a built-in ({', '.join(BUILTIN_TOOLS)}) or "
                            "'module:function'")
        tools.append(as_tool(function, spec if isinstance(spec, str) else None))
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolError(f"tools: two tools are named {duplicates[0]!r}; tool names must be unique")
    return tools


def result_text(value: Any) -> str:
    """What the model reads for a tool's return value; raises :class:`ToolJunkError` for anything
    that is not text, a number, a bool, ``None`` or JSON data."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise ToolJunkError(f"returned {type(value).__name__} that is not JSON data ({e})") from None
    raise ToolJunkError(f"returned a {type(value).__name__}, not text, a number or JSON data")


def call_tool(tool: Tool, arguments: Any) -> str:
    """Run one call: the arguments checked against the schema (a mismatch is returned to the
    model as ``error: …``), then the function (its exceptions propagate), then its result as text."""
    parameters = tool.schema["function"].get("parameters", {})
    known = set(parameters.get("properties", {}))
    if not isinstance(arguments, dict):
        return f"error: the arguments of {tool.name} must be a JSON object"
    missing = [name for name in parameters.get("required", []) if name not in arguments]
    unknown = [name for name in arguments if name not in known]
    if missing or unknown:
        problems = ([f"missing argument(s) {', '.join(missing)}"] if missing else []) + \
                   ([f"unknown argument(s) {', '.join(unknown)}"] if unknown else [])
        return f"error: {tool.name} takes {', '.join(sorted(known)) or 'no arguments'}: {'; '.join(problems)}"
    return result_text(tool.function(**arguments))
