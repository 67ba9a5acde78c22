"""Tools and environments for multi-turn, tool-using RL (``docs/tools.md``).

- ``spec``: tools as typed, documented Python functions; schemas by ``get_json_schema``;
  built-ins ``calculator``, ``python``, ``retrieval``; one call → result text.
- ``format``: the ``<tool_call>`` format, its parser, rendering through the chat template (its
  own ``tools=`` support or the documented fallback) and the tokens inserted between turns.
- ``environment``: the reset/step interface, the one-tool environments and the bounded,
  time-limited pool that runs them.

A lower layer: it never imports the trainers (``train/``), the CLI or the recipes.
"""

from posttrain.tools.environment import EnvironmentPool, EpisodeEnded, StepResult, ToolEnvironment, \
    environment_factory
from posttrain.tools.format import ToolChat, ToolCall, parse_tool_calls
from posttrain.tools.spec import BUILTIN_TOOLS, Tool, ToolError, ToolJunkError, as_tool, call_tool, resolve_tools

__all__ = ["BUILTIN_TOOLS", "EnvironmentPool", "EpisodeEnded", "StepResult", "Tool", "ToolCall", "ToolChat",
           "ToolEnvironment", "ToolError", "ToolJunkError", "as_tool", "call_tool", "environment_factory",
           "parse_tool_calls", "resolve_tools"]
