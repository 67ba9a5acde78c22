"""AI feedback: preference pairs from several models' completions rated by a judge
(the UltraFeedback recipe that Zephyr trained on; ``posttrain data ai-feedback``).

The judge is any rater spec (:mod:`posttrain.judges.rate`): an LM judge (``local:MODEL``,
``URL@MODEL``) as in UltraFeedback, a reward model, or ``verifier`` / ``verifier:NAME`` for prompt
rows that carry a ``ground_truth`` (pairs of a verified and a rejected answer).

For each prompt, every policy (a model spec at a sampling temperature) writes one completion,
seeded; the judge rates each completion on its own (an LM judge's rubric score, 1-10, or a
verifier's or reward model's score); the best-rated completion
becomes ``chosen`` and one of the strictly worse ones, drawn at random (seeded per prompt),
``rejected``. Prompts whose top rating is shared (a tie), or with fewer than two rated completions
(the judge's reply unreadable, or the completion empty), give no row and are counted; so do the
rare prompts whose chosen and rejected texts are equal.

Each row is a preference row that ``posttrain dpo`` / ``orpo`` / ``reward`` read as it is::

    {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], "rejected": [...],
     "ratings": {"modelA": 8.0, "modelB": 3.0, "modelC": null}, "judge": "local:...",
     "chosen_model": "modelA", "rejected_model": "modelB"}
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.config import ConfigError
from posttrain.data.formats import DataError, validate_preference_row, validate_rl_prompt_row

__all__ = ["Policy", "read_prompt_rows", "make_policies", "pick_pair", "ai_feedback"]


@dataclass(frozen=True)
class Policy:
    """One source of completions: ``label`` names it in the rows' ``ratings``."""

    label: str
    model: str
    temperature: float
    seed: int


def read_prompt_rows(source: str) -> tuple[list[dict], list[list[dict]]]:
    """The rows and the prompt messages of every row (``prompt`` as a string or messages, or
    ``messages`` without a trailing assistant turn); a bad row is a :class:`DataError` naming file,
    line, field."""
    from posttrain.data.sources import load_source

    rows = load_source(source)
    if not rows:
        raise DataError(f"{source}: no prompts")
    from posttrain.data.formats import row_location

    prompts = []
    for i, row in enumerate(rows):
        where = row_location(row, source, i)
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with a 'prompt' or 'messages' field")
        prompts.append(validate_rl_prompt_row(row, where, None)["messages"])
    return rows, prompts


def make_policies(models: list[str], temperatures: list[float] | None, seed: int) -> list[Policy]:
    """One policy per model entry. ``temperatures``: one for all or one per model. A model named
    twice is labelled ``MODEL#2`` etc. by position, so the same weights can be sampled twice
    (two temperatures or two seeds)."""
    if len(models) < 2 and not (models and temperatures and len(temperatures) > 1):
        raise ConfigError("ai-feedback needs at least two models to compare (--models A B ...); the same model "
                          "twice is allowed (different seeds, or --temperatures T1 T2)")
    temperatures = list(temperatures or [0.8])
    if len(models) == 1:
        models = models * len(temperatures)
    if len(temperatures) == 1:
        temperatures = temperatures * len(models)
    if len(temperatures) != len(models):
        raise ConfigError(f"--temperatures: give one value or one per model ({len(models)}), got {len(temperatures)}")
    if any(t < 0 for t in temperatures):
        raise ConfigError("--temperatures must be >= 0")
    repeated = {m for m in models if models.count(m) > 1}
    return [Policy(f"{m}#{i + 1}" if m in repeated else m, m, t, seed + i)
            for i, (m, t) in enumerate(zip(models, temperatures))]


def pick_pair(ratings: dict[str, float], rng: random.Random) -> tuple[str, str] | str:
    """``(chosen, rejected)`` labels, or the reason there is no pair: ``"unrated"`` (fewer than two
    readable ratings) or ``"tie"`` (the best rating is shared)."""
    rated = {label: s for label, s in ratings.items() if not math.isnan(s)}
    if len(rated) < 2:
        return "unrated"
    best = max(rated.values())
    top = [label for label, s in rated.items() if s == best]
    if len(top) > 1:
        return "tie"
    worse = [label for label, s in rated.items() if s < best]
    return top[0], rng.choice(worse)


def _sample(policies, prompts, loaded, *, max_new_tokens, top_p, batch_size, progress) -> dict[str, list[str]]:
    from posttrain.evaluation.generation import HFGenerator
    from posttrain.models import load_model, load_tokenizer

    completions = {}
    for policy in policies:
        if policy.model not in loaded:
            loaded[policy.model] = (load_model(policy.model), load_tokenizer(policy.model))
        generator = HFGenerator(*loaded[policy.model], batch_size=batch_size)
        task = progress.add_task(f"sampling {policy.label}", total=len(prompts))
        out = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            sampled = policy.temperature > 0
            out += [c[0] for c in generator.generate(
                chunk, max_new_tokens=max_new_tokens, temperature=policy.temperature,
                top_p=top_p if sampled else 1.0, seed=policy.seed * 1_000_003 + start)]
            progress.advance(task, len(chunk))
        completions[policy.label] = out
    return completions


def ai_feedback(prompts_source: str, models: list[str], judge_spec: str, out: str | Path, *,
                temperatures: list[float] | None = None, seed: int = 0, max_new_tokens: int = 256,
                top_p: float = 0.95, batch_size: int = 8, judge_options: dict | None = None, judge=None,
                progress: bool = True) -> dict:
    """Write preference rows to ``out`` (jsonl) and return counts and timings (module docstring).
    Every input is checked before a model loads. ``judge``: an already built LM judge to use instead
    of loading the one ``judge_spec`` names (which still labels the rows)."""
    from rich.progress import Progress

    from posttrain.judges.rate import build_rater, is_verifier_spec
    from posttrain.judges.spec import check_judge, is_judge_spec
    from posttrain.models.loading import resolve_model_path

    rows_in, prompts = read_prompt_rows(prompts_source)
    policies = make_policies(models, temperatures, seed)
    judge_options = dict(judge_options or {})
    rate, kind, judge_models = None, "other", set()
    if is_verifier_spec(judge_spec):   # checks every row's verifier and ground truth now; loads nothing
        rate = build_rater(judge_spec, rows_in, prompts_source)
        kind = "verifier"
    elif is_judge_spec(judge_spec):
        kind, parts = check_judge(judge_spec, judge_options.get("score_mode", "generate"))
        judge_models = {parts["model"]} if kind == "local" else set()
    elif str(resolve_model_path(judge_spec)) == judge_spec and "/" not in judge_spec:
        raise ConfigError(f"unknown judge {judge_spec!r}; write local:MODEL or URL@MODEL (an LM judge), verifier or "
                          f"verifier:NAME, or a reward-model folder or hub id")
    else:
        judge_models = {judge_spec}   # a reward model
    for spec in {p.model for p in policies} | judge_models:
        resolve_model_path(spec)   # a missing local model fails here, before anything loads
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a .jsonl file name")
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError("--batch-size and --max-new-tokens must be >= 1")

    stats = {"prompts": len(prompts), "policies": [p.__dict__ for p in policies], "judge": judge_spec}
    loaded: dict = {}
    with Progress(transient=True, disable=not progress) as bar:
        t0 = time.perf_counter()
        completions = _sample(policies, prompts, loaded, max_new_tokens=max_new_tokens, top_p=top_p,
                              batch_size=batch_size, progress=bar)
        stats["seconds_sampling"] = round(time.perf_counter() - t0, 1)
        loaded = {k: v for k, v in loaded.items() if k in judge_models}   # only the weights a local judge reuses
        if rate is None:   # the LM judge's options mean nothing to a reward model
            options = {"batch_size": batch_size, **judge_options} if kind != "other" else None
            rate = build_rater(judge_spec, rows_in, prompts_source, loaded_models=loaded, judge=judge,
                               judge_options=options)
        t0 = time.perf_counter()
        jobs = [(i, p.label) for i in range(len(prompts)) for p in policies if completions[p.label][i].strip()]
        scores: dict[tuple[int, str], float] = {}
        failures = []
        task = bar.add_task("judging", total=len(jobs))
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            judged = rate([i for i, _ in chunk], [prompts[i] for i, _ in chunk],
                          [completions[label][i] for i, label in chunk])
            for job, result in zip(chunk, judged):
                scores[job] = result.score
                if not result.ok:
                    failures.append(result.raw)
            bar.advance(task, len(chunk))
        stats["seconds_judging"] = round(time.perf_counter() - t0, 1)

    rows, skipped = [], {"tie": 0, "unrated": 0, "identical": 0}
    for i, prompt in enumerate(prompts):
        ratings = {p.label: scores.get((i, p.label), math.nan) for p in policies}
        pair = pick_pair(ratings, random.Random(f"{seed}:{i}"))
        if isinstance(pair, str):
            skipped[pair] += 1
            continue
        chosen, rejected = pair
        if completions[chosen][i].strip() == completions[rejected][i].strip():
            skipped["identical"] += 1   # same text rated differently (a sampled judge): no preference
            continue
        row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": completions[chosen][i]}],
               "rejected": [{"role": "assistant", "content": completions[rejected][i]}],
               "ratings": {label: None if math.isnan(s) else s for label, s in ratings.items()},
               "judge": judge_spec, "chosen_model": chosen, "rejected_model": rejected}
        validate_preference_row(row, f"{out}, row {len(rows) + 1}", None)  # what dpo will check, checked here
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, out)
    stats.update(rows=len(rows), skipped_tie=skipped["tie"], skipped_unrated=skipped["unrated"],
                 skipped_identical=skipped["identical"],
                 judged=len(jobs), judge_failures=len(failures),
                 empty_completions=len(prompts) * len(policies) - len(jobs), failure_examples=failures[:3],
                 out=str(out))
    return stats
