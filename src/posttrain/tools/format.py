"""How tools, calls and results appear in the conversation, and the tokens put between turns.

Calls use the Qwen / Hermes format, one JSON object per call::

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "1234 * 5678"}}
    </tool_call>

Rendering, in order of preference:

1. The chat template's own ``tools=`` support (a template whose text uses the ``tools``
   variable, e.g. Qwen 2.5/3): the schemas go to ``apply_chat_template(tools=…)`` and results are
   ``tool`` messages, rendered however that template renders them.
2. The fallback, for templates without it (SmolLM2's ChatML and TÜLU have none): the schemas are
   written into the system turn in Qwen's words (``TOOLS_SYSTEM_PROMPT``, after any system text
   the row has), and results are ``tool`` messages when the template renders a ``tool`` role
   (SmolLM2's does: ``<|im_start|>tool\\n…<|im_end|>``), else one ``user`` turn holding each
   result in ``<tool_response>…</tool_response>`` (TÜLU's template drops unknown roles; Qwen
   itself renders tool results this way).

Token-in/token-out: the policy's turns are never re-tokenised. After a sampled turn ends in EOS,
:meth:`ToolChat.continuation_ids` gives only the tokens that follow it: what the template puts
after the assistant's EOS, the observation's turn(s) and the next generation prompt, found as
the difference of two renderings. That difference is well defined only if rendering the
conversation after turn k is a prefix of rendering it after turn k+1; it is checked on every
call, and a template without that property is refused with a clear error.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from posttrain.data.templates import TemplateError

__all__ = ["ToolCall", "ParsedTurn", "parse_tool_calls", "ToolChat", "TOOLS_SYSTEM_PROMPT"]

logger = logging.getLogger(__name__)

TOOLS_SYSTEM_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{schemas}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>"
)

# A call block; the closing tag may be missing when the turn ended (EOS) right after the JSON.
CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class ParsedTurn:
    """The calls found in one model turn and, for each block that could not be read, why."""

    calls: list[ToolCall] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def parse_tool_calls(text: str) -> ParsedTurn:
    """Every ``<tool_call>`` block of ``text`` (module docstring). A block that is not a JSON
    object with a string ``name`` and object ``arguments`` (a JSON string holding an object is
    accepted, as OpenAI's API sends them) is a parse failure, logged and returned, never raised."""
    parsed = ParsedTurn()
    for match in CALL.finditer(text):
        body = match.group(1).strip()
        try:
            blob = json.loads(body)
        except json.JSONDecodeError as e:
            parsed.failures.append(f"not JSON ({e.msg})")
            continue
        if not isinstance(blob, dict) or not isinstance(blob.get("name"), str):
            parsed.failures.append("not an object with a string 'name'")
            continue
        arguments = blob.get("arguments", blob.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(arguments, dict):
            parsed.failures.append(f"the arguments of {blob['name']!r} are not an object")
            continue
        parsed.calls.append(ToolCall(blob["name"], arguments))
    for failure in parsed.failures:
        logger.debug("tool call parse failure: %s", failure)
    return parsed


class ToolChat:
    """Renders tool conversations with ``tokenizer``'s chat template (the one the run set on it)
    and gives the token ids to insert between turns (module docstring)."""

    def __init__(self, tokenizer, schemas: list[dict]):
        self.tokenizer, self.schemas = tokenizer, schemas
        template = tokenizer.chat_template or ""
        if not template:
            raise TemplateError("tool use needs a chat template: choose one with template=chatml or template=tulu")
        self.native = bool(schemas) and re.search(r"\btools\b", template) is not None
        probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                 {"role": "tool", "content": "\x00probe\x00"}]
        self.tool_role = "\x00probe\x00" in self._render(probe, False)
        self.eos = tokenizer.eos_token

    # --- rendering

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        extra = {"tools": self.schemas} if self.native else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **extra)

    @staticmethod
    def fallback_system_block(schemas: list[dict]) -> str:
        """The fallback's system text for ``schemas`` (module docstring, item 2)."""
        return TOOLS_SYSTEM_PROMPT.format(schemas="\n".join(json.dumps(s) for s in schemas))

    def prompt_messages(self, messages: list[dict]) -> list[dict]:
        """The conversation to start from: with the fallback, the schemas joined to the system turn."""
        if self.native or not self.schemas:
            return list(messages)
        block = self.fallback_system_block(self.schemas)
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": messages[0]["content"] + "\n\n" + block}] + list(messages[1:])
        return [{"role": "system", "content": block}] + list(messages)

    def result_messages(self, results: list[tuple[str, str]]) -> list[dict]:
        """Messages carrying tool results ``(tool name, text)`` (module docstring, item 2)."""
        if self.native or self.tool_role:
            return [{"role": "tool", "name": name, "content": text} for name, text in results]
        body = "\n".join(f"<tool_response>\n{text}\n</tool_response>" for _, text in results)
        return [{"role": "user", "content": body}]

    def prompt_overhead(self) -> int:
        """Tokens the tools block adds to a prompt (to size a rollout engine's context)."""
        bare = [{"role": "user", "content": "q"}]
        return len(self.encode_prompt(self.prompt_messages(bare))) - len(self.encode_prompt(bare))

    def encode_prompt(self, messages: list[dict]) -> list[int]:
        return self._encode(self._render(messages, True))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def continuation_ids(self, history: list[dict], observation: list[dict]) -> list[int]:
        """Token ids that follow the EOS of the last assistant turn of ``history`` up to and
        including the generation prompt after ``observation`` (messages). Raises TemplateError
        when the template does not render prefix-consistently."""
        if not history or history[-1]["role"] != "assistant":
            raise ValueError("the history must end with the assistant turn the observation answers")
        before = self._render(history, False)
        after = self._render(history + observation, True)
        if not after.startswith(before):
            raise TemplateError("the chat template does not render the conversation after a turn as a prefix of the "
                                "conversation after the next one, so tool results cannot be appended token by token: "
                                "use template=chatml or template=tulu")
        cut = before.rfind(self.eos) if self.eos else -1
        tail = before[cut + len(self.eos):] if cut != -1 else ""
        return self._encode(tail + after[len(before):])
