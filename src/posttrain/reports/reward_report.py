"""Reward Reports for RL runs (Gilbert, Dean, Lambert, Zhang, Zick, "Reward Reports for
Reinforcement Learning", 2023), written from what the run actually did: what was optimised and
why, the reward components and weights, KL control, data provenance, the metrics tracked, and the
failure modes observed.

Two automatic checks:
- **objective mismatch** (Lambert & Calandra, "The Alignment Ceiling", 2023): the optimised
  reward rises across the run while a held-out evaluation falls;
  Within the run the held-out series is the optimised task's own split; across a recipe stage
  every evaluation task is compared before and after (`tasks_fallen`), because a reward can lift
  its own task while an unseen one collapses;
- **reward hacking signs**: response length blowing up, or the share of truncated completions
  rising.
Each check is a pure function of the logged series, so tests can feed it hand-made runs, and the
report claims a check only when the logs hold what it needs (no held-out evaluation: no mismatch
verdict). What the reward *is* comes from each component's own description
(``posttrain.rewards.describe``: verifier, reward model, user function, LM judge, …), so the text
is true for each kind; the report never assumes a verifiable reward.

``posttrain.train.rl.trainer`` writes the report at the end of every RL run; a recipe writes it
again with its before/after evaluation of every task (the same function, more evidence).
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.evaluation.metrics import wilson_interval
from posttrain.reports import atomic_write_text
from posttrain.reports.training import read_metrics


def thirds_delta(values: list[float]) -> float | None:
    """Mean of the last third minus mean of the first third (None with fewer than 2 points)."""
    values = [v for v in values if v is not None and v == v]
    if len(values) < 2:
        return None
    k = max(1, len(values) // 3)
    return sum(values[-k:]) / k - sum(values[:k]) / k


REWARD_RISE = 0.02  # last third − first third of the reward that counts as rising


def objective_mismatch(rewards: list[float], heldout: list[float], reward_tol: float = REWARD_RISE,
                       heldout_tol: float = 0.02, heldout_n: int | None = None) -> dict:
    """Flag when the optimised reward rises by more than ``reward_tol`` while the held-out score
    falls (first vs last held-out evaluation). With the held-out size ``heldout_n`` known, the fall
    counts only when the last score is below the lower end of the first one's 95% Wilson interval
    — the test a recipe applies to every task (``tasks_fallen``): 3 of 30 items is noise, not a
    mismatch. Without it, any fall of more than ``heldout_tol``."""
    reward_delta = thirds_delta(rewards)
    heldout_delta = heldout[-1] - heldout[0] if len(heldout) >= 2 else None
    floor = None
    if heldout_delta is not None and heldout_n:
        floor = wilson_interval(round(heldout[0] * heldout_n), heldout_n)[0]
        fell = heldout[-1] < floor
    else:
        fell = heldout_delta is not None and heldout_delta < -heldout_tol
    flagged = reward_delta is not None and reward_delta > reward_tol and fell
    return {"flag": bool(flagged), "reward_delta": reward_delta, "heldout_delta": heldout_delta,
            "heldout_floor": floor}


def _primary_rows(before: dict, after: dict):
    """(before row, after row) of each task's primary metric — the task's first row before the run
    and the same metric after it; tasks missing after the run are left out."""
    seen = set()
    for b in before.get("rows", []):
        if b["task"] in seen:
            continue
        seen.add(b["task"])
        a = next((r for r in after.get("rows", []) if r["task"] == b["task"] and r["metric"] == b["metric"]), None)
        if a is not None:
            yield b, a


def tasks_fallen(before: dict | None, after: dict | None) -> list[dict]:
    """Each evaluation task whose primary metric (its first row) ends *below the lower end of its
    95% interval before the run* — a fall beyond sampling noise, not a one-item wobble. ``before``
    and ``after`` are evaluation summaries (``{"rows": [{"task", "metric", "value", "low", ...}]}``)."""
    if not before or not after:
        return []
    return [{"task": b["task"], "metric": b["metric"], "before": b["value"], "before_low": b["low"],
             "after": a["value"], "n": a.get("n")}
            for b, a in _primary_rows(before, after) if b.get("low") is not None and a["value"] < b["low"]]


def hacking_signs(lengths: list[float], truncated: list[float], length_ratio: float = 1.5,
                  truncation_rise: float = 0.1, similarity: bool = False, shrink_ratio: float = 0.7) -> dict:
    """Length blow-up: the last third's mean length over the first third's exceeds
    ``length_ratio``. Truncation: the truncated share rises by more than ``truncation_rise``.
    Length collapse, only under a graded similarity reward (``similarity``): that ratio falls below
    ``shrink_ratio`` — an F1-style overlap such as ROUGE-L can be raised by dropping everything but
    a short span that matches the reference (RL4LMs, Ramamurthy et al. 2023, §5; our GRUE-style run
    in docs/results/grue-ppo-2026-12-05 shrank to the lead sentence). Under a pass/fail check,
    shorter answers are often just the format being learnt, so they are not flagged there."""
    signs = []
    ratio = None
    if len(lengths) >= 2:
        k = max(1, len(lengths) // 3)
        first, last = sum(lengths[:k]) / k, sum(lengths[-k:]) / k
        ratio = last / first if first > 0 else None
        if ratio is not None and ratio > length_ratio:
            signs.append(f"response length grew {ratio:.2f}x (first third {first:.1f} → last third {last:.1f} tokens)")
        if ratio is not None and similarity and ratio < shrink_ratio:
            signs.append(f"response length shrank to {ratio:.2f}x (first third {first:.1f} → last third {last:.1f} "
                         "tokens) under a similarity reward: read samples.jsonl for a short copied span in place "
                         "of the whole answer")
    rise = thirds_delta(truncated)
    if rise is not None and rise > truncation_rise:
        signs.append(f"truncated share rose by {rise:+.2f}")
    return {"signs": signs, "length_ratio": ratio, "truncation_rise": rise}


def _heldout_series(inputs: dict, before: dict | None, after: dict | None) -> list[tuple[str, float]]:
    series = [(f"step {h['step']}", h["accuracy"]) for h in inputs.get("heldout", [])]
    if not series and before and after:
        for label, result in (("before", before), ("after", after)):
            first = next((r for r in result.get("rows", []) if r.get("metric") in ("accuracy", "prompt_level_strict")), None)
            if first:
                series.append((f"{label}: {first['task']}", first["value"]))
    return series


def _cell(row: dict) -> str:
    if row.get("low") is None:
        return f"{row['value']:.3f}"
    return f"{row['value']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"


# What each logged key means, for "Metrics tracked": only keys the run actually logged are listed.
TRACKED = {"reward_mean": "reward mean", "reward_std": "reward std", "kl": "KL to the reference",
           "entropy": "entropy", "response_length": "response length", "truncated_share": "truncated share",
           "clip_fraction": "clip fraction", "value_loss": "value loss", "zero_variance_share": "zero-variance groups",
           "generation_tokens_per_s": "generation tokens/s", "training_tokens_per_s": "training tokens/s"}


def _intent_lines(comps: list[dict], no_eos_penalty: float) -> list[str]:
    if not comps:
        return ["The run recorded no reward components."]
    lines = []
    for c in comps:
        intent = c.get("intent") or f"A `{c.get('kind', '?')}` component (the run recorded no description of it)."
        lines += [f"- **{c['name']}** ({c.get('kind', '?')}, weight {c.get('weight')}): {intent}"]
    total = " + ".join(f"{c.get('weight')} × {c['name']}" for c in comps)
    lines += ["", f"The policy maximises the total reward = {total}"
              + (f" − {no_eos_penalty} for a completion cut off before its end-of-sequence token." if no_eos_penalty
                 else ".")]
    if len(comps) > 1:
        lines.append("A component with a wider range of values or a larger weight dominates that sum.")
    return lines


def _episode_lines(episodes: dict, comps: list[dict]) -> list[str]:
    """Multi-turn runs: which part of the reward reads the final answer and which the episode."""
    if not episodes:
        return []
    setup = (f"environment `{episodes['environment']}`" if episodes.get("environment") else
             "tools " + ", ".join(f"`{t}`" for t in episodes.get("tools", [])))
    answer = [c["name"] for c in comps if c.get("kind") != "environment"]
    env = next((c for c in comps if c.get("kind") == "environment"), None)
    lines = ["", f"Each rollout is a multi-turn episode ({setup}; up to {episodes.get('max_turns')} model turns, "
             f"{episodes.get('max_new_tokens')} tokens a turn, {episodes.get('max_episode_tokens')} in all)."]
    if answer:
        lines.append("From the final answer: " + ", ".join(f"`{n}`" for n in answer) + " score(s) only the episode's "
                     "last model turn; earlier turns, tool calls and tool results are not scored.")
    if env is not None and env.get("step_rewards") is False:
        lines.append("From the environment: nothing (a tool environment returns step reward 0; "
                     "`reward/environment` is 0 at every step).")
    elif env is not None:
        lines.append("From the environment: the sum of its step rewards over the episode, weight 1 "
                     "(`reward/environment`, its per-step mean below beside the other components').")
    return lines


def _kl_lines(kl: dict) -> list[str]:
    if not kl:
        return ["- Not recorded."]
    if not kl.get("beta") and not kl.get("adaptive_target"):
        return ["- No KL penalty (β = 0): no reference model; only the learning rate and the number of steps keep "
                "the policy near its starting point."]
    return [f"- β = {kl.get('beta')} (final {kl.get('final_beta')}), estimator {kl.get('estimator')}, applied in "
            f"the {kl.get('in')}; adaptive target: {kl.get('adaptive_target') or 'none (fixed β)'}."]


def _component_line(name: str, series: list[float]) -> str:
    values = [v for v in series if v == v]
    if not values:
        return f"- `{name}`: no defined value logged (it applied to no completion)."
    return (f"- `{name}` (unweighted, mean per step): first {values[0]:.3f}, last {values[-1]:.3f}, "
            f"range [{min(values):.3f}, {max(values):.3f}] over {len(values)} steps.")


def write_reward_report(run_dir: str | Path, before: dict | None = None, after: dict | None = None) -> Path:
    """Write ``<run>/reward_report.md`` (and ``reward_report.json``) from
    ``reward_report_inputs.json`` and ``metrics.jsonl``; ``before`` / ``after`` (evaluation
    summaries of a recipe stage) add the every-task comparison."""
    run_dir = Path(run_dir)
    inputs_path = run_dir / "reward_report_inputs.json"
    inputs = json.loads(inputs_path.read_text()) if inputs_path.exists() else {}
    records = [r for r in read_metrics(run_dir) if "reward_mean" in r]
    rewards = [r["reward_mean"] for r in records]
    lengths = [r["response_length"] for r in records if "response_length" in r]
    truncated = [r["truncated_share"] for r in records if "truncated_share" in r]
    heldout = _heldout_series(inputs, before, after)
    trainer_heldout = inputs.get("heldout", [])   # the trainer's own series carries its size
    heldout_n = trainer_heldout[0].get("n") if trainer_heldout and len(trainer_heldout) == len(heldout) else None
    mismatch = objective_mismatch(rewards, [v for _, v in heldout], heldout_n=heldout_n)
    # a fall elsewhere only counts as mismatch when the optimised reward rose (same test as above)
    fallen = tasks_fallen(before, after) if (mismatch["reward_delta"] or 0.0) > REWARD_RISE else []
    comps = inputs.get("reward_components", [])
    similarity = any(c.get("similarity") for c in comps)   # a graded similarity among the components
    hacking = hacking_signs(lengths, truncated, similarity=similarity)

    lines = [f"# Reward Report: {run_dir.name}", "",
             "After Gilbert et al., *Reward Reports for Reinforcement Learning* (2023). Written from the run's "
             "own logs (`metrics.jsonl`, `reward_report_inputs.json`).", "",
             "## System details", "",
             f"- Algorithm: `{inputs.get('algorithm', '?')}`; policy initialised from `{inputs.get('model', '?')}`.",
             f"- Training prompts: `{json.dumps(inputs.get('data'))}`; held-out: `{json.dumps(inputs.get('eval_data'))}`.",
             f"- Sampling: `{json.dumps(inputs.get('sampling', {}))}`.", "",
             "## Optimisation intent", ""]
    lines += _intent_lines(comps, inputs.get("no_eos_penalty", 0.0))
    lines += _episode_lines(inputs.get("episodes", {}), comps)
    lines += ["", "## Reward components", "", "| component | kind | target | weight | values | measures |",
              "|---|---|---|---|---|---|"]
    for c in comps:
        values = c.get("values") or (f"up to {c['correct_value']}" if c.get("correct_value") is not None else "?")
        lines.append(f"| {c['name']} | {c.get('kind', '?')} | `{c.get('target', '?')}` | {c.get('weight')} | {values} | "
                     f"{c.get('measures') or '?'} |")
    lines += ["", f"No-EOS penalty: {inputs.get('no_eos_penalty', 0.0)}.", "", "## KL control", ""]
    lines += _kl_lines(inputs.get("kl", {}))
    logged = [label for key, label in TRACKED.items() if any(key in r for r in records)]
    lines += ["", "## Metrics tracked", "",
              "Per rollout step (`metrics.jsonl`): " + (", ".join(logged) if logged else "nothing logged")
              + (", and each component's mean (`reward/<name>`)." if comps else ".")]
    if inputs.get("heldout"):
        lines.append(f"Held-out greedy accuracy, scored by each held-out row's verifier, at steps "
                     f"{', '.join(str(h['step']) for h in inputs['heldout'])}.")
    if before and after:
        lines.append("Every evaluation task of the recipe, before and after this stage.")
    if not heldout:
        lines.append("No held-out evaluation ran (no `eval_data`): nothing in this report measures the policy "
                     "outside the reward it was trained on.")
    lines += ["", "## Observed behaviour", ""]
    if rewards:
        lines.append(f"- Total reward: first step {rewards[0]:.3f}, last step {rewards[-1]:.3f}, "
                     f"last third − first third = {thirds_delta(rewards) if len(rewards) > 1 else 0:+.3f} "
                     f"over {len(rewards)} steps.")
        lines += [_component_line(c["name"], [r.get(f"reward/{c['name']}", float("nan")) for r in records])
                  for c in comps]
    else:
        lines.append("- No rollout step was logged.")
    for label, value in heldout:
        lines.append(f"- Held-out ({label}): {value:.3f}")
    if before and after:
        lines += ["", "Every evaluation task, before → after this stage (95% intervals):", "",
                  "| task | metric | n | before | after |", "|---|---|---|---|---|"]
        lines += [f"| {b['task']} | {b['metric']} | {a.get('n')} | {_cell(b)} | {_cell(a)} |"
                  for b, a in _primary_rows(before, after)]
    lines += ["", "## Failure modes", ""]
    if len(heldout) < 2:
        lines.append("- Objective mismatch: not checked: no held-out evaluation series to compare the reward with "
                     "(give `eval_data` to evaluate before, during and after the run).")
    elif mismatch["flag"]:
        lines.append(f"- **Objective mismatch**: the optimised reward rose ({mismatch['reward_delta']:+.3f}) while "
                     f"held-out accuracy fell ({mismatch['heldout_delta']:+.3f}"
                     + (f", below the lower end {mismatch['heldout_floor']:.3f} of its starting 95% interval"
                        if mismatch["heldout_floor"] is not None else "")
                     + "). The reward no longer tracks the goal; stop earlier, add held-out checks, or revisit "
                     "the reward.")
    elif mismatch["heldout_floor"] is not None and mismatch["heldout_delta"] < 0:
        lines.append(f"- Objective mismatch: not flagged on the held-out split: its accuracy moved "
                     f"{mismatch['heldout_delta']:+.3f}, within its starting 95% interval (lower end "
                     f"{mismatch['heldout_floor']:.3f}, n = {heldout_n}).")
    else:
        lines.append("- Objective mismatch: not flagged on the held-out split (the reward did not rise while its "
                     "accuracy fell).")
    for f in fallen:
        lines.append(f"- **Objective mismatch on `{f['task']}`**: the reward rose while {f['metric']} fell from "
                     f"{f['before']:.3f} to {f['after']:.3f} (n = {f['n']}), below the lower end of its interval "
                     f"before this stage ({f['before_low']:.3f}). The policy gained on what it was rewarded for and "
                     "lost elsewhere; mix that task's prompts into the RL data or stop earlier.")
    if before and after and not fallen:
        lines.append("- No evaluation task fell below its interval from before this stage.")
    if len(lengths) < 2:
        lines.append("- Reward hacking signs: not checked (fewer than two logged steps).")
    elif hacking["signs"]:
        lines += [f"- **Reward hacking sign**: {s}." for s in hacking["signs"]]
    else:
        collapse = ", no length collapse" if similarity else ""
        lines.append(f"- Reward hacking signs: none (no length blow-up{collapse}, truncated share not rising).")
    risks = list(dict.fromkeys(r for c in comps for r in c.get("risks", [])))
    if risks:
        lines += ["", "Known risks of these kinds of reward (what to watch for, not observations of this run):", ""]
        lines += [f"- {r}" for r in risks]
    if (run_dir / "curves.png").exists():
        lines += ["", "![training curves](curves.png)"]
    path = run_dir / "reward_report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_text(run_dir / "reward_report.json", json.dumps(
        {"components": comps, "objective_mismatch": {**mismatch, "checked": len(heldout) >= 2},
         "hacking": {**hacking, "checked": len(lengths) >= 2}, "heldout": heldout, "tasks_fallen": fallen},
        indent=1))
    return path
