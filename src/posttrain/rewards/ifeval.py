"""IFEval verifiers: ``ifeval`` (strict) and ``ifeval_loose``.

Ground truth is IFEval's constraint spec, as a dict or a JSON string::

    {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"num_words": 50, "relation": "less than"}]}

``get_verifier("ifeval")("hello there friend", spec)`` gives ``score`` = the share of instructions
followed (IFEval's instruction-level accuracy for this prompt; 1.0 here), ``extracted`` = the
response that was checked, and ``details``:

- ``instruction_id_list``: the ids, in order;
- ``follow_instruction_list``: one bool per instruction;
- ``prompt_level``: True when every instruction is followed (IFEval's prompt-level accuracy).

Official scoring (Zhou et al. 2023, https://arxiv.org/abs/2311.07911):
https://github.com/google-research/google-research/blob/master/instruction_following_eval/evaluation_lib.py
(``test_instruction_following_strict`` / ``_loose``). The checkers and how they depart from the
official ones are in :mod:`posttrain.rewards.ifeval_instructions`.

Steps, in order:

1. If the prediction holds ``</think>``, only the text after its last occurrence is checked (a
   reasoning trace is not the response; the official code has no such step).
2. Strict: an instruction is followed when the response is not blank and its checker says so.
3. Loose: the instruction is followed when any of 8 variants passes the strict test: the response,
   without its first line, without its last line, without both, and each of those four with every
   ``*`` removed. This forgives "Sure, here it is:" openers, closing remarks and markdown bold.

A spec may also carry IFEval's ``key`` and ``prompt`` fields (a whole IFEval row); other keys,
unknown instruction ids and bad kwargs are errors that name the problem.
"""

from __future__ import annotations

import json
from typing import Any

from posttrain.rewards.base import VerificationResult, Verifier, register
from posttrain.rewards.ifeval_instructions import INSTRUCTIONS, check_instruction

__all__ = ["IFEvalVerifier", "IFEvalLooseVerifier", "parse_spec", "follows_instruction", "loose_variants"]

_SPEC_KEYS = {"instruction_id_list", "kwargs", "key", "prompt"}


def parse_spec(ground_truth: Any) -> tuple[list[str], list[dict]]:
    """``(instruction_ids, kwargs_list)`` from a spec dict or its JSON string. A missing
    ``kwargs`` means no kwargs; a None entry in it means no kwargs for that instruction."""
    spec = json.loads(ground_truth) if isinstance(ground_truth, (str, bytes)) else ground_truth
    if not isinstance(spec, dict) or "instruction_id_list" not in spec:
        raise ValueError(
            'IFEval ground truth must be {"instruction_id_list": [...], "kwargs": [...]} '
            f"(dict or JSON string), got {ground_truth!r:.200}"
        )
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown keys in IFEval ground truth: {unknown}; allowed: {sorted(_SPEC_KEYS)}")
    ids = list(spec["instruction_id_list"])
    if not ids:
        raise ValueError("IFEval ground truth has an empty instruction_id_list")
    kwargs_list = spec.get("kwargs")
    kwargs_list = [{} for _ in ids] if kwargs_list is None else [kw or {} for kw in kwargs_list]
    if len(kwargs_list) != len(ids):
        raise ValueError(
            f"IFEval ground truth has {len(ids)} instruction ids but {len(kwargs_list)} kwargs entries"
        )
    for instruction_id in ids:
        if instruction_id not in INSTRUCTIONS:
            raise ValueError(
                f"unknown IFEval instruction id {instruction_id!r}; known ids: {', '.join(sorted(INSTRUCTIONS))}"
            )
    return ids, kwargs_list


def loose_variants(response: str) -> list[str]:
    """IFEval's 8 loose variants: response, minus first line, minus last line, minus both, and
    each of those with every ``*`` removed (order as in the official code)."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    plain = [response, remove_first, remove_last, remove_both]
    return [response, response.replace("*", ""), remove_first, remove_last, remove_both] + [
        variant.replace("*", "") for variant in plain[1:]
    ]


def follows_instruction(response: str, instruction_id: str, kwargs: dict | None, loose: bool = False) -> bool:
    """Whether ``response`` follows one instruction, in IFEval's strict or loose sense."""
    candidates = loose_variants(response) if loose else [response]
    return any(c.strip() and check_instruction(instruction_id, c, kwargs) for c in candidates)


def _response_text(prediction: str) -> str:
    """The text to check: what follows the last ``</think>`` when there is one, else all of it."""
    if "</think>" in prediction:
        return prediction.rsplit("</think>", 1)[1]
    return prediction


@register("ifeval")
class IFEvalVerifier(Verifier):
    """IFEval, strict: each instruction is checked on the response as written."""

    loose: bool = False
    measures = "the share of the prompt's verifiable format instructions the response follows (IFEval, strict)"
    partial_credit = True

    def check_ground_truth(self, ground_truth: Any) -> None:
        ids, kwargs_list = parse_spec(ground_truth)
        for instruction_id, kwargs in zip(ids, kwargs_list):
            try:  # a checker called with kwargs it does not take fails here, not mid-training
                check_instruction(instruction_id, "probe response.", kwargs)
            except (TypeError, KeyError, AttributeError) as e:
                raise ValueError(f"IFEval instruction {instruction_id!r} cannot use kwargs {kwargs!r:.200} "
                                 f"({type(e).__name__}: {e})") from None

    def __call__(self, prediction: str, ground_truth: Any) -> VerificationResult:
        ids, kwargs_list = parse_spec(ground_truth)
        response = _response_text(prediction or "")
        follows = [follows_instruction(response, i, kw, loose=self.loose) for i, kw in zip(ids, kwargs_list)]
        return VerificationResult(
            score=sum(follows) / len(follows),
            extracted=response,
            details={
                "instruction_id_list": ids,
                "follow_instruction_list": follows,
                "prompt_level": all(follows),
            },
        )


@register("ifeval_loose")
class IFEvalLooseVerifier(IFEvalVerifier):
    """IFEval, loose: an instruction counts as followed if any of the 8 variants of
    :func:`loose_variants` follows it."""

    loose = True
    measures = "the share of the prompt's verifiable format instructions the response follows (IFEval, loose)"
