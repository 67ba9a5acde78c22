"""Reward composition for RL: verifiers, custom functions and reward models summed with weights.

Every reward component follows TRL's reward-function contract
(https://huggingface.co/docs/trl/grpo_trainer#using-a-custom-reward-function)::

    fn(prompts: list, completions: list, **columns) -> list[float | None]

``completions`` are strings or, for conversational data, message lists (the last message's
``content`` is scored); ``columns`` are the dataset's other columns for the batch, one value per
completion (``ground_truth``, ``verifier`` / ``dataset``, ...). ``None`` marks a row the component
does not apply to: it adds nothing to that row's total and is logged as NaN.

Example (TÜLU 3 RLVR: "10 if verifiably correct, else 0", a 0.1-weighted custom length term, and
a penalty of 1 on completions cut off before EOS)::

    reward = build_reward(
        [{"verifier": "auto", "correct_value": 10.0},
         {"function": "mypkg.rewards:len_penalty", "weight": 0.1}],
        no_eos_penalty=1.0,
    )
    totals, parts = reward(prompts, completions, finished=finished,
                           ground_truth=gts, verifier=names)

A reward model is just another component with the same signature; its multiplier is the weight.
So is an LM judge (``{"judge": "local:MODEL"}`` or ``{"judge": "http://HOST:PORT/v1@MODEL"}``): its
rubric rating scaled to [0, 1], an unreadable reply adding nothing (``rewards/judge.py``). So is a
sequence classifier (``{"classifier": MODEL, "label": "POSITIVE"}``): the softmax probability of that
label (RL4LMs' sentiment reward, ``rewards/classifier.py``).
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

from posttrain.rewards.base import Verifier, get_verifier
from posttrain.rewards.describe import RewardDescription, describe_component, verifier_description

__all__ = ["load_callable", "VerifierReward", "RewardComposer", "build_reward", "check_reward_spec",
           "completion_text"]

RewardFn = Callable[..., Sequence[float | None]]


def load_callable(spec: str) -> Callable:
    """Import ``"package.module:function"`` (or ``"package.module.function"``) and return it.

    Raises ImportError when the module cannot be imported, AttributeError when it has no such
    attribute, TypeError when the attribute is not callable; each message names ``spec``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward function spec must be 'module:function', got {spec!r}")
    spec = spec.strip()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(
            f"reward function spec must be 'module:function' or 'module.function', got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ImportError(
                f"cannot load reward function {spec!r}: no module named {missing!r} "
                "(is the package installed or on PYTHONPATH?)"
            ) from e
        raise  # the module exists but one of its own imports is missing: show that error as is
    fn = module
    for part in attr.split("."):  # "module:Class.method" works too
        if not hasattr(fn, part):
            raise AttributeError(
                f"cannot load reward function {spec!r}: {module_name!r} has no attribute {attr!r}"
            )
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"reward function {spec!r} is a {type(fn).__name__}, not a callable")
    return fn


def completion_text(completion: Any) -> str:
    """The text to score: a string as is, or the ``content`` of a message list's last message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return completion_text(completion[-1])
    if isinstance(completion, (list, tuple)):
        return ""
    raise TypeError(
        f"a completion must be a string or a list of messages, got {type(completion).__name__}"
    )


class VerifierReward:
    """A registered verifier as a batch reward: ``weight * correct_value * score`` per completion.

    ``verifier_name`` names the verifier, or is ``"auto"``: each row then names its own verifier
    in the ``verifier`` column (open-instruct calls it ``dataset``; both are accepted,
    ``verifier`` wins when both are given). With a fixed name, a row that carries a verifier name
    still uses its own; the fixed name fills rows whose name is missing or empty. TÜLU 3's
    "verifiable reward 10 or 0" is ``correct_value=10`` with a binary verifier.

    Leave ``weight`` at 1 inside :class:`RewardComposer`, which applies its own weights; it is
    here for use as a stand-alone TRL reward function. ``verifier_options`` go to the constructor
    of the fixed-name verifier (e.g. ``{"timeout": 2.0}`` for ``math``).
    """

    def __init__(
        self,
        verifier_name: str,
        weight: float = 1.0,
        correct_value: float = 1.0,
        verifier_options: dict | None = None,
    ):
        self.verifier_name = verifier_name
        self.weight = float(weight)
        self.correct_value = float(correct_value)
        self._options = dict(verifier_options or {})
        self._verifiers: dict[str, Verifier] = {}
        if verifier_name != "auto":
            self._get(verifier_name)  # unknown names fail here, not mid-training
        elif self._options:
            raise ValueError("verifier_options need a fixed verifier name, not 'auto'")
        self.__name__ = f"verifier_{verifier_name}"  # TRL logs reward functions by __name__

    def _get(self, name: str) -> Verifier:
        if name not in self._verifiers:
            options = self._options if name == self.verifier_name else {}
            self._verifiers[name] = get_verifier(name, **options)
        return self._verifiers[name]

    def _row_names(self, n: int, verifier: Sequence | None, dataset: Sequence | None) -> list[str]:
        column = verifier if verifier is not None else dataset
        if column is None:
            if self.verifier_name == "auto":
                raise ValueError("verifier 'auto' needs a per-row 'verifier' (or 'dataset') column")
            return [self.verifier_name] * n
        if len(column) != n:
            raise ValueError(f"verifier column has {len(column)} rows for {n} completions")
        names = []
        for i, name in enumerate(column):
            if isinstance(name, (list, tuple)) and len(name) == 1:
                name = name[0]
            if not name:
                if self.verifier_name == "auto":
                    raise ValueError(f"row {i} names no verifier and the reward's verifier is 'auto'")
                name = self.verifier_name
            names.append(str(name).lower())
        return names

    def describe(self) -> RewardDescription:
        """Binary or partial credit as declared by the verifiers in use: the fixed one, or with
        ``auto`` the ones the rows named so far (after a run: every verifier that scored)."""
        used = [self._get(n) for n in sorted(self._verifiers)] if self.verifier_name == "auto" else \
            [self._get(self.verifier_name)] + [v for n, v in sorted(self._verifiers.items()) if n != self.verifier_name]
        declared = [v.partial_credit for v in used]
        partial = True if any(declared) else (False if declared and all(d is False for d in declared) else None)
        return verifier_description([v.name for v in used], self.weight * self.correct_value, partial,
                                    [v.measures for v in used], auto=self.verifier_name == "auto",
                                    similar=[v.name for v in used if v.similarity])

    def __call__(
        self,
        prompts: Sequence,
        completions: Sequence,
        ground_truth: Sequence | None = None,
        verifier: Sequence | None = None,
        dataset: Sequence | None = None,
        **columns,
    ) -> list[float]:
        if ground_truth is None:
            raise ValueError(f"{self.__name__} needs a 'ground_truth' column")
        if len(ground_truth) != len(completions):
            raise ValueError(f"{len(ground_truth)} ground truths for {len(completions)} completions")
        names = self._row_names(len(completions), verifier, dataset)
        texts = [completion_text(completion) for completion in completions]
        rows_of: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            rows_of.setdefault(name, []).append(i)
        scores = [0.0] * len(completions)
        for name, rows in rows_of.items():   # one batch per verifier (an encoder embeds them in one pass)
            results = self._get(name).score_batch([texts[i] for i in rows], [ground_truth[i] for i in rows])
            for i, result in zip(rows, results, strict=True):
                scores[i] = result.score
        scale = self.weight * self.correct_value
        return [scale * score for score in scores]


class RewardComposer:
    """``total_i = sum_c weight_c * r_c(i) - no_eos_penalty * [completion i did not end in EOS]``.

    ``components`` are ``(name, fn, weight)`` triples. ``__call__`` returns the totals and, per
    component name, its *unweighted* values (None from a component becomes NaN there and adds 0
    to the total), ready for logging as ``rewards/<name>``.
    """

    def __init__(self, components: Sequence[tuple[str, RewardFn, float]], no_eos_penalty: float = 0.0):
        if not components:
            raise ValueError("a reward needs at least one component")
        names = [name for name, _, _ in components]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"reward component names must be unique; repeated: {duplicates} (set 'name')"
            )
        for name, fn, _ in components:
            if not callable(fn):
                raise TypeError(f"reward component {name!r} is not callable")
        self.components = [(name, fn, float(weight)) for name, fn, weight in components]
        self.no_eos_penalty = float(no_eos_penalty)

    def describe(self) -> list[dict]:
        """Each component's :class:`~posttrain.rewards.describe.RewardDescription` as a dict with
        its name and weight (``describe()`` of the component, or a user-function description)."""
        return [describe_component(fn).as_dict(name, weight) for name, fn, weight in self.components]

    def __call__(
        self,
        prompts: Sequence,
        completions: Sequence,
        finished: Sequence[bool] | None = None,
        **columns,
    ) -> tuple[list[float], dict[str, list[float]]]:
        n = len(completions)
        totals = [0.0] * n
        parts: dict[str, list[float]] = {}
        for name, fn, weight in self.components:
            values = list(fn(prompts, completions, **columns))
            if len(values) != n:
                raise ValueError(
                    f"reward component {name!r} returned {len(values)} values for {n} completions"
                )
            parts[name] = [math.nan if v is None else float(v) for v in values]
            for i, v in enumerate(parts[name]):
                if not math.isnan(v):
                    totals[i] += weight * v
        if finished is not None and self.no_eos_penalty:
            if len(finished) != n:
                raise ValueError(f"'finished' has {len(finished)} flags for {n} completions")
            totals = [t if done else t - self.no_eos_penalty for t, done in zip(totals, finished)]
        return totals, parts


_VERIFIER_KEYS = {"verifier", "weight", "correct_value", "options", "name"}
_FUNCTION_KEYS = {"function", "weight", "name"}
_REWARD_MODEL_KEYS = {"reward_model", "weight", "name", "options"}
_JUDGE_KEYS = {"judge", "weight", "name", "options"}
_CLASSIFIER_KEYS = {"classifier", "label", "weight", "name", "options"}
_KINDS = ("verifier", "function", "reward_model", "judge", "classifier")


def _close(word: str, choices) -> str:
    import difflib

    match = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_reward_spec(spec: Sequence[dict]) -> None:
    """Check reward entries without building anything (no module imported, no model loaded):
    one kind per entry, no unknown key (a misspelled ``wieght`` would silently weigh 1), numeric
    weights and correct values, registered verifier names. ValueError/TypeError name the entry."""
    from posttrain.rewards.base import list_verifiers

    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError("reward: give a list of components, e.g. [{verifier: auto}]")
    for i, entry in enumerate(spec):
        if not isinstance(entry, dict):
            raise TypeError(f"reward entry {i} must be a dict such as {{verifier: gsm8k}}, got {type(entry).__name__}")
        kinds = [k for k in _KINDS if k in entry]
        if len(kinds) != 1:
            hint = "".join(_close(k, _KINDS) for k in entry if k not in _KINDS)[:80]
            raise ValueError(f"reward entry {i} needs exactly one of 'verifier', 'function', 'reward_model', 'judge' "
                             f"or 'classifier'{hint}: {entry}")
        allowed = {"verifier": _VERIFIER_KEYS, "function": _FUNCTION_KEYS, "reward_model": _REWARD_MODEL_KEYS,
                   "judge": _JUDGE_KEYS, "classifier": _CLASSIFIER_KEYS}[kinds[0]]
        unknown = sorted(set(entry) - allowed, key=str)
        if unknown:
            more = f" (and {unknown[1:]})" if unknown[1:] else ""
            raise ValueError(
                f"reward entry {i} has unknown key {unknown[0]!r}{_close(unknown[0], allowed)}{more}; "
                f"allowed keys: {sorted(allowed)}"
            )
        for key in ("weight", "correct_value"):
            value = entry.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"reward entry {i}: {key} must be a number, got {value!r}")
        if entry.get("options") is not None and not isinstance(entry["options"], dict):
            raise ValueError(f"reward entry {i}: options must be a mapping, got {entry['options']!r}")
        if "judge" in entry:
            _check_judge_entry(i, entry)
        if "classifier" in entry:
            _check_classifier_entry(i, entry)
        name = entry.get("verifier")
        if name is not None and name != "auto" and name not in list_verifiers():
            raise ValueError(f"reward entry {i}: unknown verifier {name!r}{_close(name, list_verifiers())}; "
                             f"known verifiers: auto, {', '.join(list_verifiers())}")


def _check_judge_entry(i: int, entry: dict) -> None:
    """The judge spec parses and its options are ``load_judge``'s (nothing is loaded)."""
    from posttrain.config import ConfigError
    from posttrain.judges.spec import check_judge
    from posttrain.rewards.judge import judge_option_names

    options = entry.get("options") or {}
    try:
        check_judge(str(entry["judge"]), options.get("score_mode", "generate"))
    except ConfigError as e:
        raise ValueError(f"reward entry {i}: {e}") from None
    allowed = judge_option_names()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"reward entry {i}: unknown judge option {unknown[0]!r}{_close(unknown[0], allowed)}; "
                         f"judge options: {sorted(allowed)}")


def _check_classifier_entry(i: int, entry: dict) -> None:
    """A label is given and the options are the classifier's (its model is checked by preflight)."""
    from posttrain.rewards.classifier import INPUTS, OPTIONS

    if entry.get("label") is None:
        raise ValueError(f"reward entry {i}: a classifier needs the label whose probability is the reward, e.g. "
                         f"{{classifier: {entry['classifier']}, label: POSITIVE}} (a label name or index)")
    options = entry.get("options") or {}
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"reward entry {i}: unknown classifier option {unknown[0]!r}{_close(unknown[0], OPTIONS)}; "
                         f"classifier options: {sorted(OPTIONS)}")
    if options.get("input", "response") not in INPUTS:
        raise ValueError(f"reward entry {i}: classifier input={options['input']!r}; choose one of {', '.join(INPUTS)}")


def build_reward(spec: Sequence[dict], no_eos_penalty: float = 0.0) -> RewardComposer:
    """A :class:`RewardComposer` from config entries, one per component::

        {"verifier": "gsm8k", "weight": 1.0, "correct_value": 10.0, "options": {...}, "name": ...}
        {"verifier": "auto"}                       # each row's `verifier` / `dataset` column
        {"function": "mypkg.rewards:len_penalty", "weight": 0.1, "name": ...}
        {"function": rm_scorer, "weight": 0.5}     # a callable in hand
        {"reward_model": "runs/rm/model", "weight": 1.0, "options": {"scale": 1.0, "batch_size": 8}}
        {"judge": "local:runs/judge/model", "weight": 1.0, "options": {"batch_size": 8}}   # loaded here, once
        {"classifier": "runs/sentiment/model", "label": "POSITIVE", "options": {"input": "response"}}

    Unknown keys are errors that name the key. Default component names: the verifier name, or
    the function's name.
    """
    check_reward_spec(spec)
    components = []
    for i, entry in enumerate(spec):
        weight = float(entry.get("weight", 1.0))
        if "verifier" in entry:
            fn = VerifierReward(
                entry["verifier"],
                correct_value=entry.get("correct_value", 1.0),
                verifier_options=entry.get("options"),
            )
            name = entry.get("name", entry["verifier"])
        elif "reward_model" in entry:
            from posttrain.rewards.reward_model import reward_model

            fn = reward_model(entry["reward_model"], **(entry.get("options") or {}))
            name = entry.get("name", "reward_model")
        elif "judge" in entry:
            from posttrain.rewards.judge import JudgeReward

            fn = JudgeReward(str(entry["judge"]), **(entry.get("options") or {}))
            name = entry.get("name", "judge")
        elif "classifier" in entry:
            from posttrain.rewards.classifier import ClassifierReward

            fn = ClassifierReward(str(entry["classifier"]), entry["label"], **(entry.get("options") or {}))
            name = entry.get("name", "classifier")
        else:
            target = entry["function"]
            fn = load_callable(target) if isinstance(target, str) else target
            if not callable(fn):
                raise TypeError(
                    f"reward entry {i}: 'function' must be a 'module:function' string or a callable"
                )
            name = entry.get("name", getattr(fn, "__name__", None) or type(fn).__name__)
        components.append((name, fn, weight))
    return RewardComposer(components, no_eos_penalty=no_eos_penalty)
