"""Raters: one spec string names whatever scores a response to a row's prompt, for the commands that
rate rows (``posttrain data select --rate-with``, ``posttrain data ai-feedback --judge``).

- ``verifier`` / ``verifier:NAME``: a programmatic verifier against the row's ``ground_truth``
  (the row's ``verifier`` column, else its ``dataset`` column, or NAME for every row);
- an LM judge spec (``local:MODEL``, ``http://HOST/v1@MODEL``): its rubric score
  (:mod:`posttrain.judges.spec`);
- anything else: a reward-model folder or model spec (the score of prompt + response).

Every row is checked when the rater is built, before any model loads; a bad row is a
:class:`~posttrain.data.formats.DataError` naming file, line and field.
"""

from __future__ import annotations

from typing import Callable

from posttrain.data.formats import DataError, row_location
from posttrain.judges.base import JudgeScore
from posttrain.judges.spec import is_judge_spec, load_judge

__all__ = ["build_rater", "is_verifier_spec"]

# rate(row_indices, prompts, responses) -> one JudgeScore per response (score NaN: none given)
Rate = Callable[[list[int], list[list[dict]], list[str]], list[JudgeScore]]


def is_verifier_spec(spec: str) -> bool:
    return spec == "verifier" or spec.startswith("verifier:")


def _verifier_names(spec: str, rows: list[dict], source: str) -> list[str]:
    from posttrain.rewards import get_verifier

    fixed = spec.partition(":")[2] or None
    names = []
    for i, row in enumerate(rows):
        where = row_location(row, source, i)
        name = fixed or row.get("verifier") or row.get("dataset")
        if not name:
            raise DataError(f"{where}, field 'verifier': missing; name the verifier per row or rate with "
                            f"verifier:NAME")
        if "ground_truth" not in row:
            raise DataError(f"{where}, field 'ground_truth': missing; a verifier rates a response against it")
        try:
            get_verifier(name).check_ground_truth(row["ground_truth"])
        except (KeyError, ValueError) as e:
            raise DataError(f"{where}, field 'ground_truth': {e}") from None
        names.append(name)
    return names


def build_rater(spec: str, rows: list[dict], source: str, *, loaded_models: dict | None = None,
                judge_options: dict | None = None, judge=None) -> Rate:
    """The rater ``spec`` names, over ``rows`` (``source`` names them in errors). ``judge``: an
    already built LM judge to use for an LM judge spec; ``judge_options`` go to
    :func:`~posttrain.judges.spec.load_judge`."""
    if is_verifier_spec(spec):
        from posttrain.rewards import get_verifier

        names = _verifier_names(spec, rows, source)
        return lambda indices, prompts, responses: [
            JudgeScore(float(get_verifier(names[i])(r, rows[i]["ground_truth"]).score), "")
            for i, r in zip(indices, responses)]
    if is_judge_spec(spec):
        judge = judge or load_judge(spec, loaded_models=loaded_models, **(judge_options or {}))
        return lambda indices, prompts, responses: judge.score_many(prompts, responses)
    from posttrain.rewards.reward_model import RewardModelScorer

    scorer = RewardModelScorer(spec)
    return lambda indices, prompts, responses: [JudgeScore(float(s), "") for s in scorer.score(prompts, responses)]
