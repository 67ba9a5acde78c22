"""LM judges: one interface (:class:`Judge`: rubric ``score`` and swap-averaged pairwise
``compare``) over a local model (:class:`LocalJudge`) and an OpenAI-compatible server
(:class:`HTTPJudge`), named by one spec string (:func:`load_judge`). See docs/judges.md."""

from posttrain.judges.base import Judge, JudgeError, JudgeScore, swap_averaged
from posttrain.judges.spec import is_judge_spec, load_judge, parse_judge_spec
from posttrain.judges.templates import parse_choice, parse_rubric_score

__all__ = ["Judge", "JudgeError", "JudgeScore", "is_judge_spec", "load_judge", "parse_choice", "parse_judge_spec",
           "parse_rubric_score", "swap_averaged"]
