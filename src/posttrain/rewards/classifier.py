"""A sequence classifier's probability of one label as a reward (RL4LMs' sentiment reward).

RL4LMs (Ramamurthy et al. 2023) rewards IMDB continuations with the probability a sentiment
classifier gives the "positive" label (``LearnedRewardFunction`` in
https://github.com/allenai/RL4LMs/blob/main/rl4lms/envs/text_generation/reward.py: softmax of the
logits, the chosen label's column). Here any ``AutoModelForSequenceClassification`` with two or
more labels does, from a local folder or a hub id::

    reward = build_reward([{"classifier": "runs/sentiment/model", "label": "POSITIVE"}])
    reward = build_reward([{"classifier": "runs/sentiment/model", "label": 1,
                            "options": {"input": "prompt_response", "batch_size": 32}}])

    r_i = softmax(classifier(text_i))[label]                      in [0, 1]

``label`` is a label name of the model's ``config.id2label`` (exact, else the one name that matches
ignoring case) or its index. ``text_i`` is the completion (``input: response``, the default) or,
as RL4LMs' ``include_prompt_for_eval``, the prompt's text followed by the completion
(``input: prompt_response``; the prompt's text is a string prompt, or the last user turn of a
message list; a space joins the two unless one side already has whitespace there). Texts longer
than ``max_length`` tokens lose their end (``response``) or their start (``prompt_response``, so
the completion is kept). The model loads once, when the component is built; scoring is batched
and without gradients. The label is checked against the model's config (no weights read) by
:func:`check_classifier`, which the trainers' preflight runs before anything loads.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import torch

__all__ = ["ClassifierReward", "check_classifier", "classifier_config", "resolve_label", "INPUTS", "OPTIONS"]

INPUTS = ("response", "prompt_response")


# the options a classifier component accepts (``ClassifierReward``'s keyword arguments)
OPTIONS = frozenset({"input", "batch_size", "max_length", "dtype", "device"})


def resolve_label(label: Any, id2label: dict, source: str) -> tuple[int, str]:
    """(index, name) of ``label`` (a name or an index) among ``id2label``; ValueError naming the
    labels the model has otherwise."""
    names = {int(i): str(n) for i, n in id2label.items()}
    listed = ", ".join(f"{i}={n}" for i, n in sorted(names.items()))
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ValueError(f"classifier {source}: label must be a label name or an index, got {label!r}; "
                         f"the model's labels: {listed}")
    if isinstance(label, int):
        if label not in names:
            raise ValueError(f"classifier {source}: label index {label} is out of range; the model's labels: {listed}")
        return label, names[label]
    exact = [i for i, n in names.items() if n == label]
    folded = [i for i, n in names.items() if n.lower() == label.lower()]
    if exact or len(folded) == 1:
        i = (exact or folded)[0]
        return i, names[i]
    if label.strip().isdigit() and int(label) in names:   # "1" from a command line
        return int(label), names[int(label)]
    close = difflib.get_close_matches(label, list(names.values()), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"classifier {source}: unknown label {label!r}{hint}; the model's labels: {listed}")


def classifier_config(spec: str):
    """The model's config (no weights read); ValueError when it cannot be read."""
    from transformers import AutoConfig

    from posttrain.models import resolve_model_path

    path = resolve_model_path(str(spec))   # ModelError (a ValueError) for a missing folder
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"classifier {spec}: cannot read its config ({type(e).__name__}: {str(e)[:200]}); give a "
                         "local folder saved by save_pretrained, or a hub id while online") from None


def check_classifier(spec: str, label: Any, options: dict | None = None) -> tuple[int, str]:
    """Check a classifier component without loading weights: its options, its config (two or more
    labels) and its label. Returns the label's (index, name); ValueError saying what is wrong."""
    options = dict(options or {})
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"classifier {spec}: unknown option {unknown[0]!r}; options: {sorted(OPTIONS)}")
    if options.get("input", "response") not in INPUTS:
        raise ValueError(f"classifier {spec}: input={options['input']!r}; choose one of {', '.join(INPUTS)}")
    config = classifier_config(spec)
    if len(config.id2label) < 2:
        raise ValueError(f"classifier {spec} has {len(config.id2label)} output: the softmax of one label is always 1. "
                         "A one-output model is a reward model: use {reward_model: " + str(spec) + "}")
    return resolve_label(label, config.id2label, str(spec))


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def _join(prompt: str, response: str) -> str:
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return prompt + " " + response


class ClassifierReward:
    """``fn(prompts, completions, **columns) -> [P(label | text)]`` (module docstring). ``model`` /
    ``tokenizer``: already loaded ones to use instead of loading ``spec``."""

    def __init__(self, spec: str, label: Any, input: str = "response", batch_size: int = 16, max_length: int = 512,
                 dtype: str = "float32", device: str | None = None, model=None, tokenizer=None):
        from posttrain.models import load_model, load_tokenizer

        self.spec, self.input = str(spec), input
        if model is None:
            self.label_index, self.label = check_classifier(self.spec, label, {"input": input})
            tokenizer = load_tokenizer(self.spec)
            num_labels = len(classifier_config(self.spec).id2label)   # keeps the config's label names
            model = load_model(self.spec, dtype=dtype, task="sequence_classification", num_labels=num_labels,
                               device=device)
        else:
            self.label_index, self.label = resolve_label(label, model.config.id2label, self.spec)
        self.model, self.tokenizer = model.eval(), tokenizer
        # keep the completion when a text is too long: its end for a response, its start otherwise
        self.tokenizer.truncation_side = "left" if input == "prompt_response" else "right"
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.__name__ = "classifier"

    def describe(self):
        """What the Reward Report says of this component (``rewards/describe.py``)."""
        from posttrain.rewards.describe import classifier_description

        return classifier_description(self.spec, self.label, self.label_index, self.input)

    def texts(self, prompts: Sequence, completions: Sequence) -> list[str]:
        from posttrain.rewards.compose import completion_text

        responses = [completion_text(c) for c in completions]
        if self.input == "response":
            return responses
        return [_join(_prompt_text(p), r) for p, r in zip(prompts, responses, strict=True)]

    @torch.no_grad()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """(N, L) softmax of the classifier's logits for ``texts``, in batches."""
        from posttrain.rewards.reward_model import sequence_scores

        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            logits_BL = sequence_scores(self.model, enc["input_ids"].to(device), enc["attention_mask"].to(device))
            chunks.append(torch.softmax(logits_BL.float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, len(self.model.config.id2label))

    def __call__(self, prompts: Sequence, completions: Sequence, **columns) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        return self.probabilities(self.texts(prompts, completions))[:, self.label_index].tolist()

