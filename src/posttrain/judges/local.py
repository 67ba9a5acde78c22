"""An LM judge run in-process: any causal LM ``load_model`` accepts.

    judge = LocalJudge("smollm2-135m-instruct")
    judge.score_many(prompts, completions)      # rubric scores, one greedy generation per pair
    judge.compare(prompt, a, b)                 # P(a better), from log-probabilities, both orders

Rubric scores, ``score_mode="generate"`` (default): the reply is generated (greedy, batched through
:class:`~posttrain.evaluation.generation.HFGenerator`) and parsed; a reply without a readable score
is a NaN score, not an error. ``score_mode="expected"`` (G-Eval's probability-weighted score, Liu
et al. 2023): no generation; the judge's probability of answering ``Rating: k`` for each k on the
scale (each followed by a newline, so that "1" and "10" are distinct answers) gives the expected
rating. It always gives a score, and it separates answers a small judge would rate with the same
integer (or not at all); it costs one forward pass per scale point. Pairwise verdicts need
no generation: the judge is shown the pairwise prompt and P(A) is read off its log-probabilities of
answering "A" versus "B" (normalised over the two), which always gives a verdict and costs one
forward pass per order.

A small model is a weak judge: a 135M model's ratings are mostly noise. The local judge is for
testing a pipeline end to end and for judges that fit the machine (a 7B+ instruct model).
"""

from __future__ import annotations

import math

from posttrain.judges.base import JudgeScore
from posttrain.judges.templates import pairwise_messages, parse_rubric_score, rubric_messages

__all__ = ["LocalJudge"]


class LocalJudge:
    """``model``: a model spec, or a loaded ``(model, tokenizer)`` pair (shared with other users
    of the same weights, e.g. ``data ai-feedback`` sampling from the model that judges)."""

    def __init__(self, model, *, batch_size: int = 8, max_new_tokens: int = 128, low: int = 1, high: int = 10,
                 score_mode: str = "generate", spec: str | None = None):
        from posttrain.evaluation.generation import HFGenerator

        if isinstance(model, tuple):
            loaded, tokenizer = model
            name = spec or f"local:{getattr(loaded, 'name_or_path', '') or type(loaded).__name__}"
        else:
            from posttrain.models import load_model, load_tokenizer

            tokenizer, loaded = load_tokenizer(model), load_model(model)
            name = spec or f"local:{model}"
        self.spec = name
        self.generator = HFGenerator(loaded, tokenizer, batch_size=batch_size)
        self.max_new_tokens, self.low, self.high = max_new_tokens, low, high
        if score_mode not in ("generate", "expected"):
            raise ValueError(f"score_mode must be 'generate' or 'expected', got {score_mode!r}")
        self.score_mode = score_mode

    def score(self, prompt_messages: list[dict], completion: str) -> JudgeScore:
        return self.score_many([prompt_messages], [completion])[0]

    def score_many(self, prompts: list[list[dict]], completions: list[str]) -> list[JudgeScore]:
        asks = [rubric_messages(p, c, self.low, self.high) for p, c in zip(prompts, completions)]
        if self.score_mode == "expected":
            return self._expected_scores(asks)
        replies = [r[0] for r in self.generator.generate(asks, max_new_tokens=self.max_new_tokens)]
        out = []
        for raw in replies:
            value = parse_rubric_score(raw, self.low, self.high)
            out.append(JudgeScore(math.nan if value is None else value, raw))
        return out

    def _expected_scores(self, asks: list[list[dict]]) -> list[JudgeScore]:
        """E[k] under the judge's normalised probabilities of replying ``Rating: k``."""
        scale = range(self.low, self.high + 1)
        logps = self.generator.loglikelihood([(ask, f"Rating: {k}\n") for ask in asks for k in scale])
        out = []
        for i in range(len(asks)):
            row = logps[i * len(scale):(i + 1) * len(scale)]
            top = max(row)
            weights = [math.exp(lp - top) for lp in row]
            total = sum(weights)
            expected = sum(k * w for k, w in zip(scale, weights)) / total
            shown = " ".join(f"{k}:{w / total:.2f}" for k, w in zip(scale, weights))
            out.append(JudgeScore(expected, f"expected rating {expected:.3f} (P {shown})"))
        return out

    def prefers_first_many(self, asks: list[tuple[list[dict], str, str]]) -> list[float]:
        """P(first better) for each ``(prompt, first, second)`` in that one order: the softmax of
        log p("A") and log p("B") as the judge's reply (one batched forward pass)."""
        requests = []
        for prompt, first, second in asks:
            ask = pairwise_messages(prompt, first, second)
            requests += [(ask, "A"), (ask, "B")]
        logps = self.generator.loglikelihood(requests)
        return [1.0 / (1.0 + math.exp(min(logp_b - logp_a, 700.0)))
                for logp_a, logp_b in zip(logps[0::2], logps[1::2])]

    def compare(self, prompt_messages: list[dict], a: str, b: str) -> float:
        return self.compare_many([prompt_messages], [a], [b])[0]

    def compare_many(self, prompts: list[list[dict]], a: list[str], b: list[str]) -> list[float]:
        """Both orders of every pair in one batch, averaged as :func:`swap_averaged` does (a
        likelihood verdict is never unreadable, so both orders always count)."""
        forward = self.prefers_first_many(list(zip(prompts, a, b)))
        backward = self.prefers_first_many(list(zip(prompts, b, a)))
        return [(f + 1.0 - g) / 2 for f, g in zip(forward, backward)]
