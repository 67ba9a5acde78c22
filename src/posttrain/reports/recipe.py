"""The run report of a recipe: evaluation table per stage (value, 95% interval, n), paired
comparisons of consecutive stages on the same items (wins, losses, sign test), plots of each
stage's training curves and of the evaluations per stage, and the decontamination summary."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.evaluation.metrics import paired_sign_test
from posttrain.reports.training import plot_curves, read_metrics
from posttrain.train.rl.algorithms import ALGORITHMS

STAGE_CURVES = {
    "sft": [("loss", "training loss"), ("token_nll", "per-token NLL")],
    "dpo": [("loss", "DPO loss"), ("margin", "reward margin"), ("accuracy", "preference accuracy")],
    "online-dpo": [("loss", "DPO loss"), ("margin", "reward margin"), ("pair_share", "prompts giving a pair"),
                   ("eval_preference/logps_accuracy", "held-out pairs: chosen more likely")],
    "rl": [("reward_mean", "reward"), ("kl", "KL to reference"), ("response_length", "response length"),
           ("truncated_share", "truncated share")],
}


def eval_table(evals: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Rows of (task, metric) with one 'value [low, high]' cell per stage, and n."""
    stages = list(evals)
    keys: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], dict] = {}
    for stage, result in evals.items():
        for row in result.get("rows", []):
            key = (row["task"], row["metric"])
            if key not in keys:
                keys.append(key)
            cells[(stage, *key)] = row
    header = ["task", "metric", "n"] + stages
    body = []
    for task, metric in keys:
        n = next((cells[(s, task, metric)].get("n") for s in stages if (s, task, metric) in cells), "")
        line = [task, metric, str(n)]
        for s in stages:
            r = cells.get((s, task, metric))
            line.append(f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" if r and r.get("low") is not None
                        else (f"{r['value']:.3f}" if r else "—"))
        body.append(line)
    return header, body


def _item_scores(task_result: dict, task_name: str) -> tuple[str, dict] | None:
    """(headline metric, {item id: value}) of one task of one stage, read from its samples file."""
    from posttrain.evaluation.runner import item_values
    from posttrain.evaluation.tasks import TASKS

    path = Path(task_result.get("samples_file", ""))
    if task_name not in TASKS or not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return None
    metric, values = next(iter(item_values(TASKS[task_name], records).items()))
    return metric, {r["id"]: v for r, v in zip(records, values)}


def paired_comparisons(evals: dict[str, dict]) -> list[dict]:
    """Each task, each pair of consecutive stages: the same items before and after, compared on
    the task's headline metric — wins, losses, ties and the exact sign test (McNemar's on 0/1
    scores). An interval per stage can overlap while the paired test is clear, and the other way."""
    stages = list(evals)
    rows = []
    for before, after in zip(stages, stages[1:]):
        for task, result in evals[after].get("tasks", {}).items():
            a = _item_scores(evals[before].get("tasks", {}).get(task, {}), task)
            b = _item_scores(result, task)
            if a is None or b is None:
                continue
            rows.append({"task": task, "metric": a[0], "before": before, "after": after,
                         **paired_sign_test(a[1], b[1])})
    return rows


def plot_eval_bars(evals: dict[str, dict], out_png: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(evals)
    keys = []
    for result in evals.values():
        for row in result.get("rows", []):
            if (row["task"], row["metric"]) not in keys and row["metric"] in ("accuracy", "prompt_level_strict",
                                                                             "inst_level_strict", "pass@1"):
                keys.append((row["task"], row["metric"]))
    if not keys:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(keys)), 3.6))
    width = 0.8 / len(stages)
    for j, stage in enumerate(stages):
        rows = {(r["task"], r["metric"]): r for r in evals[stage].get("rows", [])}
        values = [rows[k]["value"] if k in rows else 0 for k in keys]
        errs = [[max(0.0, rows[k]["value"] - rows[k]["low"]) if k in rows and rows[k].get("low") is not None else 0
                 for k in keys],
                [max(0.0, rows[k]["high"] - rows[k]["value"]) if k in rows and rows[k].get("high") is not None else 0
                 for k in keys]]
        ax.bar([i + j * width for i in range(len(keys))], values, width, yerr=errs, capsize=2, label=stage)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
    ax.set_xticklabels([f"{t}\n{m}" for t, m in keys], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("evaluation per stage (95% intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return True


# Held-out values a stage's own run logs (metrics.jsonl), shown at its start and its end, by command.
_VERIFIED = ("eval_accuracy", "verifier accuracy (greedy)")
HELDOUT = {
    "dpo": [("eval_accuracy", "preference accuracy (implicit reward)"),
            ("eval_logps_accuracy", "preference accuracy (chosen more likely)"), ("eval_margin", "reward margin")],
    "online-dpo": [("eval_preference/accuracy", "preference accuracy (implicit reward)"),
                   ("eval_preference/logps_accuracy", "preference accuracy (chosen more likely)"),
                   ("eval_preference/margin", "reward margin"), _VERIFIED],
    "rl": [_VERIFIED],
}


def heldout_start_end(records: list[dict], kind: str) -> list[tuple[str, float, float]]:
    """(label, value at the first evaluation, value at the last) of each :data:`HELDOUT` metric of
    the stage's kind logged twice or more (``posttrain dpo`` logs its start as ``start_eval_*``)."""
    rows = []
    for key, label in HELDOUT.get(kind, []):
        values = [r["start_" + key] for r in records if "start_" + key in r][:1] + [r[key] for r in records if key in r]
        if len(values) >= 2:
            rows.append((label, values[0], values[-1]))
    return rows


def time_table(seconds: dict[str, float]) -> list[str]:
    """Markdown lines: each step's wall time and share of the run, so a user resizing a recipe sees
    where the CPU went (evaluation vs. training)."""
    if not seconds:
        return []
    total = sum(seconds.values())
    lines = ["## Time", "", "Wall time of each step this invocation ran (a resumed run counts only what it redid).", "",
             "| step | minutes | share |", "|---|---|---|"]
    lines += [f"| {step} | {s / 60:.1f} | {s / total:.0%} |" for step, s in seconds.items()]
    spent = {kind: sum(s for step, s in seconds.items() if step.startswith(kind)) for kind in ("train", "eval")}
    lines += [f"| **total** | **{total / 60:.1f}** | training {spent['train'] / total:.0%}, "
              f"evaluation {spent['eval'] / total:.0%} |", ""]
    return lines


def write_recipe_report(out: Path, recipe: dict, evals: dict[str, dict], contamination: dict,
                        seconds: dict[str, float] | None = None) -> Path:
    out = Path(out)
    lines = [f"# Recipe `{recipe['name']}`", "", f"Base model: `{recipe['model']}`. Stages: "
             + " → ".join(f"{s['name']} ({s['command']})" for s in recipe["stages"]) + ".", "",
             "## Evaluation per stage", ""]
    header, body = eval_table(evals)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", "Values are means with 95% intervals (Wilson for 0/1 scores); n = samples per task.", ""]
    paired = paired_comparisons(evals)
    if paired:
        lines += ["## Paired comparisons", "", "Each stage against the one before, on the same items: wins (better after), "
                  "losses, ties, and the exact two-sided sign test (McNemar's test on 0/1 scores).", "",
                  "| task | metric | stages | n | wins | losses | ties | p |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['metric']} | {r['before']} → {r['after']} | {r['n']} | {r['wins']} | "
                  f"{r['losses']} | {r['ties']} | {r['p']:.3g}{' *' if r['p'] < 0.05 else ''} |" for r in paired]
        lines += ["", "\\* p < 0.05.", ""]
    if plot_eval_bars(evals, out / "eval_per_stage.png"):
        lines += ["![evaluation per stage](eval_per_stage.png)", ""]
    lines += ["## Training curves", ""]
    for stage in recipe["stages"]:
        kind = "rl" if stage["command"] in ALGORITHMS else stage["command"]
        stage_dir = out / stage["name"]
        png = out / f"curves_{stage['name']}.png"
        if plot_curves(read_metrics(stage_dir), png, STAGE_CURVES.get(kind, [])):
            lines += [f"### {stage['name']} ({stage['command']})", "", f"![{stage['name']}]({png.name})", ""]
        heldout = heldout_start_end(read_metrics(stage_dir), kind)
        if heldout:
            lines += [f"Held out ({stage['name']}): " + "; ".join(f"{label} {a:.3f} → {b:.3f}" for label, a, b in heldout)
                      + ".", ""]
        if (stage_dir / "reward_report.md").exists():
            lines += [f"Reward Report: [{stage['name']}/reward_report.md]({stage['name']}/reward_report.md)", ""]
    lines += time_table(seconds or {})
    lines += ["## Decontamination", "",
              f"n-gram {contamination.get('parameters', {}).get('ngram', '?')}, threshold "
              f"{contamination.get('parameters', {}).get('threshold', '?')}: training rows sharing that share of an "
              "evaluation prompt's n-grams were dropped before training.", "",
              "| training source | eval set | train rows | contaminated rows | eval prompts hit |", "|---|---|---|---|---|"]
    for s in contamination.get("summary", []):
        lines.append(f"| {s['source']} | {s['eval_set']} | {s['train_rows']} | {s['contaminated_rows']} "
                     f"({s['contaminated_rate']:.1%}) | {s['eval_examples_hit']}/{s['eval_examples']} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({**{k: v.get("rows", []) for k, v in evals.items()},
                                                  "paired": paired, "seconds": seconds or {}}, indent=1))
    return path
