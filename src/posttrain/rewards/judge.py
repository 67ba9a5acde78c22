"""An LM judge as a reward component (``{judge: SPEC}`` in ``rewards.compose.build_reward``).

Each completion is rated on its own with the judge's rubric (``Judge.score_many``: a 1-10 rating
by default) and the rating is scaled to [0, 1]: ``(rating - low) / (high - low)``, so a judge
component weighs like a verifier's 0/1 score. A reply with no readable rating is ``None``: the
composer adds nothing for it (the reward counts it as 0) and records it as NaN, which the RL
trainer counts as ``reward/<name>/unscored`` (the share of completions the component could not
score). The judge is loaded once, when the component is built.

    reward = build_reward([{"judge": "local:runs/judge/model", "weight": 1.0}])
    reward = build_reward([{"judge": "http://localhost:8000/v1@Qwen/Qwen2.5-7B-Instruct",
                            "options": {"timeout": 30, "workers": 8}}])

``options`` are :func:`posttrain.judges.spec.load_judge`'s keyword options (``batch_size``,
``max_new_tokens``, ``timeout``, ``max_retries``, ``cache_dir``, ``workers``, ``score_mode``,
``api_key_env``).
"""

from __future__ import annotations

import inspect
import math
from typing import Sequence

__all__ = ["JudgeReward", "judge_option_names"]


def judge_option_names() -> set[str]:
    """The options a judge component may pass to ``load_judge`` (read off its signature)."""
    from posttrain.judges.spec import load_judge

    return {n for n, p in inspect.signature(load_judge).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "loaded_models"}


def as_messages(prompt) -> list[dict]:
    """A prompt as the judge's conversation: message lists as they are, a string as one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


class JudgeReward:
    """``fn(prompts, completions, **columns) -> [rating scaled to [0, 1] or None]`` (module docstring).
    ``judge``: an already built judge to use instead of loading the one ``spec`` names."""

    def __init__(self, spec: str, judge=None, **options):
        from posttrain.judges.spec import load_judge

        self.spec = spec
        self.judge = judge if judge is not None else load_judge(spec, **options)
        self.low = getattr(self.judge, "low", 1)
        self.high = getattr(self.judge, "high", 10)
        self.__name__ = "judge"

    def describe(self):
        """What the Reward Report says of this component (``rewards/describe.py``)."""
        from posttrain.rewards.describe import judge_description

        return judge_description(self.spec, self.low, self.high,
                                 unreadable="a reply with no readable rating adds 0 to that completion's reward "
                                            "and is counted in reward/<name>/unscored")

    def __call__(self, prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
        from posttrain.rewards.compose import completion_text

        judged = self.judge.score_many([as_messages(p) for p in prompts], [completion_text(c) for c in completions])
        span = float(self.high - self.low)
        return [None if math.isnan(j.score) else (j.score - self.low) / span for j in judged]
