"""GSM8K verifier: the final number of a grade-school word problem.

Example (one GSM8K row; the reference solution ends in ``#### N``)::

    question:     "Natalia sold clips to 48 of her friends in April, and then she sold half as many
                   clips in May. How many clips did Natalia sell altogether in April and May?"
    ground_truth: "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n... #### 72"   (or 72, or "72")
    prediction:   "She sold 48 + 24 = 72 clips. The answer is 72."                  -> score 1.0

Official answer normalisation: ``extract_answer`` in
https://github.com/openai/grade-school-math/blob/master/grade_school_math/dataset.py
(the number after ``#### ``, commas removed). open-instruct's ``GSM8KVerifier`` takes the last
number of the output instead; we do both, in the order below.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from posttrain.rewards.base import VerificationResult, Verifier, register

__all__ = ["GSM8KVerifier", "extract_number", "parse_number"]

# One number: an optional unary minus (not a binary minus as in "3-5" or "x-2"), an optional "$",
# then either digits in strict thousands groups ("1,234,567") or plain digits, then an optional
# decimal part. A trailing sentence period ("is 42.") is not a decimal part: "\.\d+" needs a digit.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}])(?P<sign>-)\s?)?"
    r"\$?\s?"
    r"(?<![\d.])(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?"
)
_MARKER_RE = re.compile(r"####\s*(?P<answer>[^\n]*)")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{(?P<answer>[^{}]*)\}")


def parse_number(text: Any) -> Decimal | None:
    """The value of ``text`` if it is exactly one number ("1,234", "$-5", "18.0", "42."), else None."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float, Decimal)):
        return Decimal(str(text))
    s = str(text).strip().replace("\u2212", "-").rstrip(".").strip()
    match = _NUMBER_RE.fullmatch(s)
    if match is None:
        return None
    return _value(match)


def _value(match: re.Match) -> Decimal | None:
    digits = match.group("digits").replace(",", "") + (match.group("frac") or "")
    try:
        value = Decimal(digits)
    except InvalidOperation:  # pragma: no cover  (the regex only admits digits)
        return None
    return -value if match.group("sign") else value


def extract_number(text: str) -> tuple[Decimal | None, str | None]:
    """The answer number of a GSM8K-style text and the step that found it.

    Extraction order:
      1. the number after the last ``#### `` marker (the GSM8K reference format);
      2. the content of the last ``\\boxed{...}`` if it holds a number;
      3. the last number anywhere in the text.
    Returns ``(value, step)``; ``(None, None)`` when the text holds no number.
    """
    text = text.replace("\u2212", "-")
    markers = list(_MARKER_RE.finditer(text))
    if markers:
        first = _NUMBER_RE.search(markers[-1].group("answer"))
        if first is not None:
            return _value(first), "####"
    boxes = list(_BOXED_RE.finditer(text))
    if boxes:
        value = parse_number(boxes[-1].group("answer"))
        if value is not None:
            return value, "boxed"
    numbers = list(_NUMBER_RE.finditer(text))
    if numbers:
        return _value(numbers[-1]), "last_number"
    return None, None


def _gold_number(ground_truth: Any) -> Decimal | None:
    """A number, a string number, or a full GSM8K solution ending in ``#### N``."""
    value = parse_number(ground_truth)
    if value is None and isinstance(ground_truth, str):
        value, _ = extract_number(ground_truth)
    return value


@register("gsm8k")
class GSM8KVerifier(Verifier):
    """Score 1.0 when the prediction's answer number equals the ground truth's, else 0.0.

    The prediction's number is read by :func:`extract_number` (``#### N``, then the last
    ``\\boxed{N}``, then the last number). Numbers compare by value, so ``18.0`` equals ``18``,
    ``$1,234.`` equals ``1234``, and ``-5`` keeps its sign. ``extracted`` is the value as a
    string (None when the prediction holds no number).
    """

    measures = "the answer number read off the completion equals the reference number"
    partial_credit = False

    def check_ground_truth(self, ground_truth: Any) -> None:
        if _gold_number(ground_truth) is None:
            raise ValueError(f"gsm8k ground truth holds no number: {ground_truth!r:.200} (give the answer, e.g. "
                             f"\"72\", or a solution ending in \"#### 72\")")

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:
        gold = _gold_number(ground_truth)
        if gold is None:
            raise ValueError(f"gsm8k ground truth holds no number: {ground_truth!r}")
        value, step = extract_number(prediction or "")
        if value is None:
            return VerificationResult(0.0, None, {"gold": _fmt(gold), "step": None})
        score = 1.0 if value == gold else 0.0
        return VerificationResult(score, _fmt(value), {"gold": _fmt(gold), "step": step})


def _fmt(value: Decimal) -> str:
    """Canonical text: ``Decimal("18.0")`` -> ``"18"``, ``Decimal("0.50")`` -> ``"0.5"``."""
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text
