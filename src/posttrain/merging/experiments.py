"""Experiments built on model merging (``posttrain merge interpolate --alphas``, ``add-skill``,
``mixtures``): each trains and/or evaluates merged models and writes a folder with a ``report.md``.

- :func:`interpolation_sweep`: θ(α) for each α, evaluated with ``posttrain.evaluation`` tasks
  and/or held-out perplexity; a table and a metric-vs-α plot (PAINT picks α on held-out data).
- :func:`train_skill_and_merge`: "parallel train then merge" (Morrison et al. 2024, "Merge to
  Learn", arXiv:2410.12937): SFT a skill model alone, then merge it into the general model.
- :func:`simulate_mixtures`: data-ablation approximation (Na et al. 2024, "Scalable Data Ablation
  Approximations", arXiv:2410.15661): one model per data partition, each candidate mixture scored
  by the perplexity of the weighted parameter average of its partitions' models;
  :func:`rank_correlation` compares that ranking with true scores.

The merges themselves are :mod:`posttrain.merging.methods`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posttrain.merging.methods import (MergeError, _finite, merge_interpolate, merge_linear, merge_task_arithmetic,
                               normalize_weights, spearman)
from posttrain.train.common import log as _log  # rich print, as every trainer logs

__all__ = ["perplexity", "interpolation_sweep", "train_skill_and_merge", "train_partition_models",
           "simulate_mixtures", "rank_correlation"]


# ---------------------------------------------------------------------------------------------
# Evaluating merged models


def perplexity(model: str | Path, eval_data: Sequence[Any], *, max_length: int = 512, batch_size: int = 4,
               seed: int = 0) -> dict:
    """Held-out perplexity exp(mean NLL per trained token) of ``model`` on SFT-style conversations
    (``eval_data``: source entries as in ``SFTConfig.eval_data``; assistant tokens only, unpacked).
    Returns ``{"nll", "perplexity", "conversations"}``."""
    from posttrain.data import mix_sources
    from posttrain.models import load_model, load_tokenizer
    from posttrain.data.sft import SFTBatches, tokenize_sft
    from posttrain.train.sft import heldout_loss

    tokenizer = load_tokenizer(str(model))
    net = load_model(str(model)).eval()
    examples, _ = tokenize_sft(mix_sources(list(eval_data), seed=seed), tokenizer, max_length, source="eval_data")
    if not examples:
        raise MergeError(f"eval data {list(eval_data)} has no conversation with a trained token")
    nll = heldout_loss(net, SFTBatches(examples, tokenizer.pad_token_id, max_length, packing=False), batch_size)["loss"]
    return {"nll": nll, "perplexity": math.exp(nll), "conversations": len(examples)}


def _plot(rows: list[dict], x: str, columns: list[str], out_png: Path, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.2), squeeze=False)
    for ax, column in zip(axes[0], columns):
        points = [(r[x], r[column]) for r in rows if r.get(column) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=4)
        ax.set_title(column)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows])


def interpolation_sweep(pre: str | Path, post: str | Path, alphas: Sequence[float], out_dir: str | Path, *,
                        tasks: Sequence[str] = (), eval_data: Sequence[Any] = (), limit: int | None = None,
                        max_new_tokens: int | None = None, batch_size: int = 16, max_length: int = 512,
                        keep_models: bool = False, lora_base: str | None = None, progress: bool = True,
                        log: Callable[[str], None] = _log) -> dict:
    """Evaluate θ(α) = (1 − α) θ_pre + α θ_post for each α (PAINT's α sweep, Ilharco et al. 2022).

    Each α gets ``OUT/alpha-<α>/``: the merged ``model/`` (deleted after evaluation unless
    ``keep_models``), ``eval/`` (:func:`posttrain.evaluation.runner.evaluate` on ``tasks``) and
    ``result.json`` (the headline metric of each task, ``perplexity`` on ``eval_data``); an α with a
    ``result.json`` is not redone. Writes ``OUT/sweep.json``, ``OUT/report.md`` and ``OUT/sweep.png``
    (one panel per metric, metric vs α). Returns ``{"rows": [...], "columns": [...]}``.
    """
    from posttrain.evaluation.runner import evaluate

    if not alphas:
        raise MergeError("give at least one alpha")
    _finite(alphas, "alphas")
    if not tasks and not eval_data:
        raise MergeError("the sweep evaluates each α: give evaluation tasks and/or eval data for perplexity")
    if tasks:
        from posttrain.evaluation.tasks import resolve_tasks

        resolve_tasks(list(tasks))  # an unknown task name fails now, not after the first merge
    out_dir = Path(out_dir)
    rows = []
    for alpha in alphas:
        folder = out_dir / f"alpha-{alpha:g}"
        done = folder / "result.json"
        if done.exists():
            rows.append(json.loads(done.read_text()))
            log(f"α={alpha:g}: already evaluated ({done})")
            continue
        model = merge_interpolate(pre, post, alpha, folder / "model", lora_base=lora_base, overwrite=True,
                                  progress=progress)
        row: dict[str, Any] = {"alpha": alpha}
        if tasks:
            result = evaluate(str(model), list(tasks), folder / "eval", limit=limit, batch_size=batch_size,
                              max_new_tokens=max_new_tokens)
            for name, task in result["tasks"].items():
                if task["metrics"]:
                    headline = task["metrics"][0]  # the runner lists each task's headline metric first
                    row[f"{name} {headline['metric']}"] = headline["value"]
        if eval_data:
            row["perplexity"] = perplexity(model, eval_data, max_length=max_length)["perplexity"]
        done.write_text(json.dumps(row, indent=2) + "\n")
        if not keep_models:
            shutil.rmtree(model)
        log(f"α={alpha:g}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "alpha"))
        rows.append(row)
    rows.sort(key=lambda r: r["alpha"])
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "alpha"]
    (out_dir / "sweep.json").write_text(json.dumps({"pre": str(pre), "post": str(post), "rows": rows}, indent=2) + "\n")
    _plot(rows, "alpha", columns, out_dir / "sweep.png", "α (0 = pre, 1 = post)")
    lines = ["# Interpolation sweep", "", f"θ(α) = (1 − α) θ_pre + α θ_post (PAINT, Ilharco et al. 2022), "
             f"pre = `{pre}`, post = `{post}`.", ""] + _markdown_table(rows, ["alpha", *columns])
    for column in columns:
        pick = min if column == "perplexity" else max
        best = pick((r for r in rows if r.get(column) is not None), key=lambda r: r[column])
        lines.append(f"\nBest {column}: α = {best['alpha']:g} ({best[column]:.4g}).")
    lines += ["", "![metric vs α](sweep.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return {"rows": rows, "columns": columns}


# ---------------------------------------------------------------------------------------------
# Training then merging


def _run_sft(model: str | Path, data: list, run_dir: Path, overrides: Sequence[str] = (),
             files: Sequence[str] = (), log: Callable[[str], None] = _log) -> Path:
    """SFT ``model`` on ``data`` into ``run_dir`` (``run_dir/model``); a finished run with the same
    resolved config is reused. ``overrides`` are SFT ``key=value`` options (not model/out/data)."""
    import yaml

    from posttrain.config import ConfigError, load_config, to_dict
    from posttrain.train.sft import SFTConfig, run_sft

    fixed = {"model", "out", "data"}
    if clash := [o for o in overrides if o.split("=", 1)[0].strip().replace("-", "_") in fixed]:
        raise ConfigError(f"SFT options {clash}: model, out and data are set by posttrain merge")
    config = load_config(SFTConfig, list(files), list(overrides),
                         base={"model": str(model), "out": str(run_dir), "data": data})
    config.model, config.out, config.data = str(model), str(run_dir), data  # files cannot move them either
    saved = run_dir / "config.yaml"
    finished = (run_dir / "model" / "config.json").exists() and saved.exists()
    if finished and yaml.safe_load(saved.read_text()) == to_dict(config):
        log(f"reusing the finished SFT run {run_dir}")
        return run_dir / "model"
    run_sft(config, command=f"posttrain merge (sft of {model} into {run_dir})")
    return run_dir / "model"


def train_skill_and_merge(general: str | Path, skill_data: list, out_dir: str | Path, *, weight: float = 0.5,
                          method: str = "task_arithmetic", init: str | Path | None = None,
                          sft_overrides: Sequence[str] = (), sft_files: Sequence[str] = (),
                          max_shard_size: int | str = "5GB", progress: bool = True,
                          log: Callable[[str], None] = _log) -> dict:
    """Parallel train then merge (Morrison et al. 2024, "Merge to Learn"): SFT a skill model on
    ``skill_data`` alone, starting from ``init`` (default: the general model), then merge it into
    the general model with weight ω = ``weight``:

    - ``task_arithmetic``: θ = θ_general + ω (θ_skill − θ_init). With ``init`` the pretrained model
      the general model was tuned from, this is the paper's θ_init + τ_general + ω τ_skill; with
      the default init (the general model itself, a cheaper setting the paper does not test) it
      adds ω times what the skill run changed.
    - ``linear``: θ = (1 − ω) θ_general + ω θ_skill.

    Writes ``OUT/skill/`` (the SFT run) and ``OUT/model/`` (the merge). Returns both paths.
    """
    if method not in ("task_arithmetic", "linear"):
        raise MergeError(f"method {method!r}: choose task_arithmetic or linear")
    _finite([weight], "weight")
    out_dir = Path(out_dir)
    init = init or general
    skill = _run_sft(init, list(skill_data), out_dir / "skill", sft_overrides, sft_files, log)
    write = {"max_shard_size": max_shard_size, "overwrite": True, "progress": progress}
    if method == "linear":
        if not 0 <= weight <= 1:
            raise MergeError(f"weight {weight}: a linear merge takes ω in [0, 1]")
        merged = merge_linear([general, skill], out_dir / "model", [1 - weight, weight], **write)
    elif str(init) == str(general):
        merged = merge_task_arithmetic(general, [skill], out_dir / "model", [weight], **write)
    else:
        merged = merge_task_arithmetic(init, [general, skill], out_dir / "model", [1.0, weight], **write)
    log(f"[green]merged[/] {skill} into {general} ({method}, ω={weight:g}): {merged}")
    return {"skill_model": skill, "model": merged}


def train_partition_models(base: str | Path, partitions: dict[str, Any], out_dir: str | Path, *,
                           sft_overrides: Sequence[str] = (), sft_files: Sequence[str] = (),
                           log: Callable[[str], None] = _log) -> dict[str, Path]:
    """One SFT run per data partition, each from ``base`` with the same options (Na et al. 2024
    train equally sized "base unit" partitions). ``partitions`` maps a name to a source entry or a
    list of them. Runs go to ``OUT/partitions/<name>/``; returns name → model folder."""
    models = {}
    for name, data in partitions.items():
        log(f"[bold]partition {name}[/]: SFT from {base}")
        models[name] = _run_sft(base, data if isinstance(data, list) else [data], Path(out_dir) / "partitions" / name,
                                sft_overrides, sft_files, log)
    return models


def simulate_mixtures(partition_models: dict[str, str | Path], mixtures: dict[str, dict[str, float]],
                      eval_data: Sequence[Any], out_dir: str | Path, *, max_length: int = 512, batch_size: int = 4,
                      keep_models: bool = False, true_scores: dict[str, float] | None = None, progress: bool = True,
                      log: Callable[[str], None] = _log) -> list[dict]:
    """Score candidate data mixtures without training on them (Na et al. 2024): the merged model of a
    mixture is the average of its partitions' models weighted by the mixture's weights (normalised
    to sum to 1), and its score is the perplexity on ``eval_data``. The paper averages uniformly over
    equal-size partitions; weights generalise that to uneven shares.

    Returns the candidates best first (lowest perplexity): ``{"mixture", "weights", "perplexity",
    "nll", "rank"}``. Writes ``OUT/mixtures.json`` and ``OUT/report.md`` (with Spearman's ρ against
    ``true_scores``, lower = better like perplexity, when given).
    """
    out_dir = Path(out_dir)
    if not mixtures:
        raise MergeError("give at least one candidate mixture")
    results = []
    for name, mixture in mixtures.items():
        if unknown := sorted(set(mixture) - set(partition_models)):
            raise MergeError(f"mixture {name!r}: unknown partition(s) {', '.join(unknown)}; "
                             f"partitions: {', '.join(partition_models)}")
        weights = dict(zip(mixture, normalize_weights(list(mixture.values()), len(mixture))))
        active = {p: w for p, w in weights.items() if w > 0}
        if len(active) == 1:  # one partition: its model is the "average"
            model = Path(partition_models[next(iter(active))])
        else:
            model = merge_linear([partition_models[p] for p in active], out_dir / "mixtures" / name / "model",
                                 list(active.values()), overwrite=True, progress=progress)
        score = perplexity(model, eval_data, max_length=max_length, batch_size=batch_size)
        if len(active) > 1 and not keep_models:
            shutil.rmtree(model)
        log(f"mixture {name} {active}: perplexity {score['perplexity']:.4g}")
        results.append({"mixture": name, "weights": weights, "perplexity": score["perplexity"], "nll": score["nll"]})
    results.sort(key=lambda r: r["perplexity"])
    for i, r in enumerate(results, 1):
        r["rank"] = i
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"ranking": results, "true_scores": true_scores}
    (out_dir / "mixtures.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = [{**r, "weights": ", ".join(f"{p} {w:.2f}" for p, w in r["weights"].items()),
              "true score": (true_scores or {}).get(r["mixture"], "")} for r in results]
    columns = ["rank", "mixture", "weights", "perplexity"] + (["true score"] if true_scores else [])
    lines = ["# Data-mixture simulation", "", "Each candidate is scored by the perplexity of the weighted average "
             "of its partitions' models (Na et al. 2024); best first.", ""] + _markdown_table(table, columns)
    if true_scores:
        lines += ["", f"Spearman's ρ against the true scores: {rank_correlation(results, true_scores):.3f}"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return results


def rank_correlation(ranking: Sequence[dict], true_scores: dict[str, float], key: str = "perplexity") -> float:
    """Spearman's ρ between the simulated scores (``key`` of each :func:`simulate_mixtures` row) and
    ``true_scores`` (mixture name → score of a model trained on that mixture, same direction)."""
    if missing := [r["mixture"] for r in ranking if r["mixture"] not in true_scores]:
        raise MergeError(f"no true score for mixture(s) {', '.join(missing)}")
    return spearman([r[key] for r in ranking], [true_scores[r["mixture"]] for r in ranking])
