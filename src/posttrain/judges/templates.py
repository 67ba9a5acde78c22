"""What the judge is asked, and how its answer is read.

The rubric template asks for a 1-10 rating on a line ``Rating: N`` (MT-Bench's single-answer
grading, in plain text rather than ``[[N]]`` so that small models copy it); the parser also reads
the other ways judges write a score. The pairwise template asks for one letter, A or B.
"""

from __future__ import annotations

import re

__all__ = ["RUBRIC_TEMPLATE", "PAIRWISE_TEMPLATE", "format_conversation", "rubric_messages", "pairwise_messages",
           "parse_rubric_score", "parse_choice"]

RUBRIC_TEMPLATE = """\
Please act as an impartial judge and rate the quality of the assistant's response to the \
conversation below. Consider helpfulness, correctness, relevance and level of detail. \
Give a short explanation, then end with your rating on its own line in exactly this form: \
"Rating: N", where N is an integer from {low} to {high}.

[Conversation]
{conversation}

[Assistant's response]
{completion}
[End of response]"""

PAIRWISE_TEMPLATE = """\
Please act as an impartial judge and decide which of two assistant responses answers the \
conversation below better. Consider helpfulness, correctness, relevance and level of detail; \
do not let the order, length or names of the responses influence you. \
Answer with a single letter: "A" if response A is better, "B" if response B is better.

[Conversation]
{conversation}

[Response A]
{first}
[End of response A]

[Response B]
{second}
[End of response B]"""


def format_conversation(messages: list[dict]) -> str:
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)


def rubric_messages(prompt_messages: list[dict], completion: str, low: int = 1, high: int = 10) -> list[dict]:
    text = RUBRIC_TEMPLATE.format(low=low, high=high, conversation=format_conversation(prompt_messages),
                                  completion=completion)
    return [{"role": "user", "content": text}]


def pairwise_messages(prompt_messages: list[dict], first: str, second: str) -> list[dict]:
    text = PAIRWISE_TEMPLATE.format(conversation=format_conversation(prompt_messages), first=first, second=second)
    return [{"role": "user", "content": text}]


_NUMBER = r"(\d+(?:\.\d+)?)"
# Most explicit first; within one pattern the last match wins, because judges reason first and
# conclude last ("a 3 would be too harsh ... Rating: 7").
_SCORE_PATTERNS = [
    re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]"),                                   # [[7]]
    re.compile(r"(?:rating|score|grade)\s*(?:is|of)?\s*[:=]?\s*\**\s*" + _NUMBER, re.I),  # Rating: 7, score of 7
    re.compile(_NUMBER + r"\s*(?:/|out of)\s*(\d+)", re.I),                          # 7/10, 7 out of 10
]
_BARE_NUMBER = re.compile(r"^\W*" + _NUMBER + r"\W*$")                                # a reply that is just "7."


def parse_rubric_score(text: str, low: float = 1, high: float = 10) -> float | None:
    """The score a judge wrote in ``text``, or None when there is none in [low, high].
    ``7/10`` is read as 7 only when the denominator is ``high`` (a "2/3 of the steps" is no score)."""
    for pattern in _SCORE_PATTERNS:
        for match in reversed(list(pattern.finditer(text))):
            if match.lastindex == 2 and float(match.group(2)) != high:
                continue
            value = float(match.group(1))
            if low <= value <= high:
                return value
    bare = _BARE_NUMBER.match(text.strip())
    if bare and low <= float(bare.group(1)) <= high:
        return float(bare.group(1))
    return None


_CHOICE_PATTERNS = [
    re.compile(r"\[\[\s*([AB])\s*\]\]"),                                                   # [[A]]
    re.compile(r"^\W*([AB])(?![A-Za-z])"),                                                  # "B", "A."
    re.compile(r"\b(?:response|answer|assistant|output)?\s*([AB])\s+is\s+(?:the\s+)?(?:better|best|superior)",
               re.I),                                                                       # Response A is better
]


def parse_choice(text: str) -> str | None:
    """``"A"`` or ``"B"`` from a pairwise verdict ("B", "[[A]]", "Response B is better"), None when
    the reply names neither, or both in the same way."""
    for pattern in _CHOICE_PATTERNS:
        found = {m.group(1).upper() for m in pattern.finditer(text.strip())}
        if len(found) == 1:
            return found.pop()
        if found:
            return None
    return None
