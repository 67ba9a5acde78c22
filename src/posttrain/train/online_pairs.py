"""Online DPO's pairs: judge the policy's samples, keep (best, worst) per prompt (``posttrain
online-dpo``, ``train/online_dpo.py``).

The judge is one of (``OnlineDPOConfig.judge``):

- a scorer that rates each completion on its own, built as one reward component by
  ``rewards.compose.build_reward``: a verifier (``verifier:NAME``, or ``verifier:auto`` for each
  row's ``verifier`` column, with its ``ground_truth``), a Python function (``function:MODULE:FN``,
  TRL's reward-function signature), a reward-model folder, or an LM judge's rubric rating when
  more than two completions are sampled. A completion it cannot score (an unreadable judge
  reply, a function's None) is unrated: it never enters a pair.
- an LM judge's pairwise verdict when exactly two are sampled (Guo et al. 2024 §3 prompt the
  annotating LLM with both responses): P(first better), asked in both orders
  (``Judge.compare_many``), becomes the scores (P, 1 - P).

Per prompt, chosen = the best-scored completion and rejected = the worst; ties give no pair:
a prompt whose rated completions all score the same (for the pairwise verdict: P = 1/2), or
with fewer than two rated completions, or whose best and worst are the same tokens, is dropped
and counted. (TRL's OnlineDPOTrainer keeps ties, taking the first completion as chosen; a tie
carries no preference, so it is dropped here.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PairCounts", "best_and_worst", "JudgeScorer", "pair_examples"]


@dataclass
class PairCounts:
    """What became of a step's prompts: a pair, or dropped (and why)."""

    pairs: int = 0
    tie: int = 0
    unrated: int = 0
    identical: int = 0

    def as_list(self) -> list[float]:
        return [float(self.pairs), float(self.tie), float(self.unrated), float(self.identical)]


@dataclass
class ScoredPair:
    """Prompt ``prompt`` (index into the step's prompts), its chosen and rejected completions
    (``chosen``, ``rejected``: indices 0..N-1 among the prompt's samples) and their scores."""

    prompt: int
    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float


def best_and_worst(scores_PN: torch.Tensor) -> tuple[list[ScoredPair], PairCounts]:
    """(best, worst) completion of each prompt from its (P, N) scores (NaN = unrated): the first
    of the best-scored as chosen, the last of the worst-scored as rejected. Prompts with fewer than
    two rated completions (``unrated``) or whose rated scores are all equal (``tie``) give none."""
    pairs, counts = [], PairCounts()
    for p, row in enumerate(scores_PN.tolist()):
        rated = [(j, s) for j, s in enumerate(row) if not math.isnan(s)]
        if len(rated) < 2:
            counts.unrated += 1
            continue
        best = max(s for _, s in rated)
        worst = min(s for _, s in rated)
        if best == worst:
            counts.tie += 1
            continue
        chosen = next(j for j, s in rated if s == best)
        rejected = [j for j, s in rated if s == worst][-1]
        pairs.append(ScoredPair(p, chosen, rejected, best, worst))
    counts.pairs = len(pairs)
    return pairs, counts


class JudgeScorer:
    """``scores(rows, rollout) -> (P, N)`` scores of a rollout's completions (NaN = unrated) for
    the judge a reward spec names (``OnlineDPOConfig.judge_reward``). ``pairwise``: the LM judge's
    swap-averaged verdict on the two completions of each prompt instead of a rubric rating. The
    judge (or reward model) is loaded once, here."""

    def __init__(self, reward_spec: list[dict], pairwise: bool):
        self.pairwise = pairwise
        if pairwise:
            from posttrain.judges.spec import load_judge

            entry = reward_spec[0]
            self.judge = load_judge(entry["judge"], **(entry.get("options") or {}))
            self.name = "judge"
        else:
            from posttrain.rewards.compose import build_reward

            self.reward = build_reward(reward_spec)
            self.name = self.reward.components[0][0]

    def scores(self, rows: list[dict], rollout) -> torch.Tensor:
        n = rollout.group_size
        P = len(rollout.prompt_ids) // n
        if self.pairwise:   # n == 2, group-contiguous: rows 2i and 2i+1 answer prompt i
            prefer_first = self.judge.compare_many([r["messages"] for r in rows], rollout.texts[0::2],
                                                   rollout.texts[1::2])
            return torch.tensor([[p, 1.0 - p] for p in prefer_first], dtype=torch.float64)
        picked = [rows[i] for i in rollout.prompt_index.tolist()]
        keys = dict.fromkeys(k for r in picked for k in r if k not in ("messages", "prompt_ids"))
        columns = {key: [r.get(key) for r in picked] for key in keys}
        _, parts = self.reward([r["messages"] for r in picked], rollout.texts, **columns)
        return torch.tensor(parts[self.name], dtype=torch.float64).view(P, n)


def pair_examples(pairs: list[ScoredPair], rollout, counts: PairCounts) -> list[dict]:
    """Tokenised preference pairs (``data.preference.PairBatches``' examples) from the sampled
    tokens themselves, nothing re-tokenised: prompt ids, and each completion's ids up to and
    including its EOS. A pair whose two completions are the same tokens is dropped (``identical``)."""
    n = rollout.group_size
    tokens = lambda row: rollout.completion_ids[row][rollout.completion_mask[row].bool()].tolist()  # noqa: E731
    examples = []
    for pair in pairs:
        chosen, rejected = tokens(pair.prompt * n + pair.chosen), tokens(pair.prompt * n + pair.rejected)
        if chosen == rejected:
            counts.identical += 1
            continue
        examples.append({"prompt_ids": list(rollout.prompt_ids[pair.prompt * n]), "chosen_ids": chosen,
                         "rejected_ids": rejected, "margin": 0.0, "pair": pair})
    counts.pairs = len(examples)
    return examples
