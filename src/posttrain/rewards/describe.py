"""What each reward component says about itself, for the Reward Report.

A Reward Report (Gilbert et al. 2023) must say what was optimised. The sentences that are true of
a verifier (a programmatic check, bounded, binary or partial credit) are false of a reward model
(a learned, unbounded proxy that can be over-optimised) and unknown for a user's function. So the
report does not guess from a kind name: every component kind supplies a :class:`RewardDescription`
through a ``describe()`` method, and the report renders those generically. A new kind of
component (an LM judge, a classifier) only has to return one::

    class MyReward:
        def __call__(self, prompts, completions, **columns): ...
        def describe(self) -> RewardDescription:
            return RewardDescription(kind="classifier", target="my/model", measures="…", low=0.0,
                                     high=1.0, values="0 to 1", intent="…", risks=["…"])

A plain callable without ``describe()`` is described as user code (:func:`function_description`):
posttrain quotes its docstring and claims nothing about its range.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RewardDescription", "describe_component", "verifier_description", "reward_model_description",
           "function_description", "judge_description", "classifier_description", "environment_description"]


@dataclass
class RewardDescription:
    """One component's self-description; every sentence must be true of *this* component.

    - ``kind``: ``verifier``, ``reward_model``, ``function``, ``judge``, or a new kind's name;
    - ``target``: what scores (verifier names, reward-model folder, ``module:function``, judge spec);
    - ``measures``: one sentence, what a high value means;
    - ``low`` / ``high``: the values it can return before weighting (None: unbounded or unknown);
    - ``values``: the same for a table cell ("0 or 10 (binary)", "unbounded real");
    - ``intent``: the optimisation-intent sentence for a run that optimises this component;
    - ``risks``: the known ways this kind of reward is gamed or misleads (risks, not observations);
    - ``details``: kind-specific facts kept in ``reward_report_inputs.json`` (correct value, scale).
    """

    kind: str
    target: str
    measures: str
    low: float | None
    high: float | None
    values: str
    intent: str
    risks: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, name: str, weight: float) -> dict:
        """The JSON form in ``reward_report_inputs.json``: name and weight first, details flattened."""
        blob = asdict(self)
        return {"name": name, "weight": weight, **{k: v for k, v in blob.items() if k != "details"},
                **blob["details"]}


def _number(x: float) -> str:
    return f"{x:g}"


SIMILARITY_RISK = ("A similarity metric pays for closeness to the reference text (shared words and n-grams, or nearby "
                   "embeddings), not for being right: the policy can learn to copy the reference's phrasing, repeat "
                   "likely words or match its length, while a correct answer in other words scores low (the metric "
                   "gaming RL4LMs, Ramamurthy et al. 2023, warns of).")


def verifier_description(names: list[str], correct_value: float, partial_credit: bool | None,
                         measures: list[str], auto: bool, similar: list[str] = ()) -> RewardDescription:
    """A verifier component: ``correct_value`` × a score in [0, 1] from programmatic checks.
    ``partial_credit``: False when every verifier in use scores 0 or 1, True when one gives
    fractional scores, None when not known (a verifier that does not declare it). ``similar``:
    the verifiers in use that are graded similarities to a reference (``Verifier.similarity``:
    ROUGE, BLEU, embeddings), described as such and never as accepting a completion."""
    value = _number(correct_value)
    if names:
        shown = ("the programmatic verifier " if len(names) == 1 else "the programmatic verifiers ") + \
            ", ".join(f"`{n}`" for n in names)
    else:
        shown = "the programmatic verifier each row names in its `verifier` column"
    what = "; ".join(m for m in measures if m) or "the verifier's own check of the completion"
    details = {"correct_value": float(correct_value), "verifiers": list(names), "per_row": auto,
               "partial_credit": partial_credit, "similarity": list(similar)}
    checks = [n for n in names if n not in similar]
    if similar and not checks:
        metric = ("the similarity metric " if len(similar) == 1 else "the similarity metrics ") + \
            ", ".join(f"`{n}`" for n in similar)
        intent = (f"Reinforcement learning on an automatic text-similarity metric (as in RL4LMs, Ramamurthy et al. "
                  f"2023): this component pays {value} × how close the completion is to the row's reference text, "
                  f"scored by {metric} ({what}). It is a graded similarity to a reference, not a correctness "
                  "check: a completion is never accepted or rejected, only nearer to or farther from the reference.")
        return RewardDescription(kind="verifier", target=", ".join(names), measures=what, low=0.0,
                                 high=float(correct_value), values=f"0 to {value} (graded similarity)",
                                 intent=intent, risks=[SIMILARITY_RISK], details=details)
    if similar:
        values = f"0 to {value}"
        pays = (f"pays {value} × the score in [0, 1] of the verifier each row names: a check of the completion for "
                + ", ".join(f"`{n}`" for n in checks) + ", a graded similarity to the row's reference text for "
                + ", ".join(f"`{n}`" for n in similar))
    elif partial_credit is False:
        values = f"0 or {value} (binary)"
        pays = f"pays {value} when the verifier accepts the completion and 0 otherwise"
    elif partial_credit:
        values = f"0 to {value} (partial credit)"
        pays = (f"pays {value} × the share of the verifier's checks that pass (partial credit: 0 when none "
                f"pass, {value} when all do)")
    else:
        values = f"0 to {value}"
        pays = f"pays {value} × the verifier's score in [0, 1]"
    signal = ("The checks are the tasks' own correctness criteria and the similarities are closeness to a "
              "reference; neither is a learned preference model." if similar else
              "The signal is the task's own correctness criterion, not a learned preference model.")
    intent = (f"Reinforcement learning with verifiable rewards (TÜLU 3 §6): this component {pays}, as judged by "
              f"{shown} ({what}). {signal}")
    risks = ["A verifier pays only for what it checks (above); reasoning, helpfulness and style earn nothing, so a "
             "completion that passes the check by a wrong route is paid in full."]
    if similar:
        risks.append(SIMILARITY_RISK)
    return RewardDescription(
        kind="verifier", target=", ".join(names) if names else "auto", measures=what, low=0.0,
        high=float(correct_value), values=values, intent=intent, risks=risks, details=details)


def reward_model_description(path: str, scale: float = 1.0, offset: float = 0.0) -> RewardDescription:
    """A learned reward model (a one-label sequence classifier): unbounded, possibly rescaled."""
    transform = ""
    if scale != 1.0 or offset != 0.0:
        transform = f", multiplied by {_number(scale)} and shifted by {_number(offset)}"
    sign = "−" if offset < 0 else "+"
    values = "unbounded real" + (f" (× {_number(scale)} {sign} {_number(abs(offset))})" if transform else " (raw score)")
    return RewardDescription(
        kind="reward_model", target=str(path),
        measures=f"the scalar a learned reward model gives the prompt and completion{transform}",
        low=None, high=None, values=values,
        intent=("RLHF with a learned reward model (Ouyang et al. 2022): the policy is pushed towards completions "
                f"that the reward model `{path}` scores highly. That score is a learned proxy for the preferences "
                "it was trained on and is unbounded ("
                + (f"here multiplied by {_number(scale)} and shifted by {_number(offset)}" if transform
                   else "used raw, not normalised") + "): it is not a correctness check."),
        risks=["Reward-model over-optimisation (Gao, Schulman & Hilton 2023): the proxy score can keep rising while "
               "true quality falls, as the policy finds the reward model's blind spots (length, confident tone, "
               "repeated phrases). The KL penalty to the reference and held-out checks are the guards."],
        details={"scale": float(scale), "offset": float(offset)})


def _callable_target(fn) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"


def function_description(fn, target: str | None = None) -> RewardDescription:
    """User code: posttrain knows its name and docstring, not what it measures or its range."""
    target = target or _callable_target(fn)
    doc = inspect.getdoc(fn) if (getattr(fn, "__doc__", None) or "").strip() else None
    first = doc.strip().split("\n\n")[0].replace("\n", " ") if doc else ""
    measures = f"as its docstring says: \"{first}\"" if first else \
        "not stated (the function has no docstring; posttrain cannot tell what it measures)"
    return RewardDescription(
        kind="function", target=target, measures=measures, low=None, high=None,
        values="not declared (user code)",
        intent=(f"A user-written Python function (`{target}`) scores each completion. posttrain runs it as "
                "given and cannot check what it measures or its range: the per-step values logged below are "
                "the evidence of what it paid."),
        risks=["User code may reward surface features (length, keywords, format) that the policy learns to "
               "produce instead of the intended behaviour; read the completions in samples.jsonl."])


def judge_description(spec: str, rubric_low: float = 1.0, rubric_high: float = 10.0,
                      unreadable: str = "a reply with no readable rating adds nothing to that completion's reward"
                      ) -> RewardDescription:
    """An LM judge: a rubric rating from ``rubric_low`` to ``rubric_high`` scaled to [0, 1]."""
    return RewardDescription(
        kind="judge", target=spec,
        measures=(f"an LM judge's rubric rating ({_number(rubric_low)}-{_number(rubric_high)}) of the response, "
                  "scaled to [0, 1]"),
        low=0.0, high=1.0, values="0 to 1 (scaled rubric rating)",
        intent=(f"Reinforcement learning from AI feedback: the LM judge `{spec}` rates each completion against a "
                "rubric, and the rating, scaled to [0, 1], is the reward. It is another model's opinion, not a "
                f"programmatic check; {unreadable}."),
        risks=["LM judges favour longer answers, their own style and confident wording (Zheng et al. 2023, "
               "MT-Bench); the policy can learn to please the judge rather than the user."],
        details={"rubric": [float(rubric_low), float(rubric_high)]})


def classifier_description(spec: str, label: str, index: int, input: str = "response") -> RewardDescription:
    """A sequence classifier's probability of one label (``rewards/classifier.py``)."""
    read = "the completion" if input == "response" else "the prompt followed by the completion"
    return RewardDescription(
        kind="classifier", target=spec,
        measures=f"the probability the classifier gives label {label!r} (index {index}; softmax of its logits) for {read}",
        low=0.0, high=1.0, values="0 to 1 (label probability)",
        intent=(f"A learned classifier scores each completion: the reward is the probability that `{spec}` assigns to "
                f"the label {label!r} when it reads {read} (RL4LMs' sentiment reward, Ramamurthy et al. 2023). It is a "
                "trained model's estimate of one attribute of the text, not a correctness check."),
        risks=["The policy can find text the classifier labels confidently but a person would not (repeated "
               "label-typical words, degenerate phrases): the classifier is a learned proxy with blind spots. The KL "
               "penalty to the reference and reading the completions are the guards."],
        details={"label": label, "label_index": index, "input": input})


def environment_description(environment: str, tools: list[str], pays_step_rewards: bool) -> RewardDescription:
    """The environment's share of a multi-turn episode's reward (``train/rl/multiturn.py``): the
    sum of its step rewards, added with weight 1 to the components that score the final answer.
    ``pays_step_rewards`` is False for a tool environment (``tools=[…]`` or a built-in tool
    name), whose steps run the calls and return reward 0, so it contributes nothing."""
    shown = ", ".join(f"`{t}`" for t in tools)
    if not pays_step_rewards:
        return RewardDescription(
            kind="environment", target=environment or f"tools: {', '.join(tools)}",
            measures="nothing: a tool environment's steps return reward 0", low=0.0, high=0.0,
            values="always 0 (no step rewards)",
            intent=(f"The tool environment ({shown}) runs the model's calls and returns their results; every step "
                    "reward is 0, so it adds nothing to the reward: the whole reward comes from the other "
                    "components, which score the episode's last model turn (its final answer)."),
            details={"environment": environment, "tools": list(tools), "step_rewards": False})
    return RewardDescription(
        kind="environment", target=environment,
        measures="the environment's own step rewards, summed over the episode", low=None, high=None,
        values="not declared (the environment's code)",
        intent=(f"The environment `{environment}` rewards each step of the episode (each model turn it is sent); the "
                "step rewards, summed over the episode, are added to the reward with weight 1 "
                "(`reward/environment`). posttrain does not know what they pay for or their range: the per-step "
                "values logged below are the evidence of what it paid."),
        risks=["Step rewards pay for whatever the environment's code rewards on each turn: a policy can collect them "
               "turn after turn (up to max_turns) without reaching the goal the final answer is checked for. Read "
               "the episodes in samples.jsonl."],
        details={"environment": environment, "tools": list(tools), "step_rewards": True})


def describe_component(fn) -> RewardDescription:
    """``fn.describe()`` when the component provides one, else a user-function description."""
    describe = getattr(fn, "describe", None)
    if callable(describe):
        description = describe()
        if not isinstance(description, RewardDescription):
            raise TypeError(f"{_callable_target(fn)}.describe() must return a RewardDescription, "
                            f"got {type(description).__name__}")
        return description
    return function_description(fn)
