"""A short markdown report for a training run: settings, final metrics, and plotted curves."""

from __future__ import annotations

from pathlib import Path

CURVES = [("loss", "training loss"), ("eval_loss", "held-out loss"), ("token_nll", "per-token NLL"),
          ("accuracy", "preference accuracy"), ("margin", "reward margin"),
          ("reward_mean", "reward"), ("kl", "KL to reference"), ("response_length", "response length")]


def read_metrics(run_dir: Path) -> list[dict]:
    from posttrain.train.run_folder import read_jsonl

    return read_jsonl(Path(run_dir) / "metrics.jsonl")   # skips a line torn by a crash mid-write


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(records: list[dict], out_png: Path, keys: list[tuple[str, str]] = CURVES) -> list[str]:
    """One panel per metric present; returns the metric names plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(k, title) for k, title in keys if any(k in r for r in records)]
    if not present:
        return []
    trade_off = [(r["kl"], r["reward_mean"], r["step"]) for r in records if "kl" in r and "reward_mean" in r]
    panels = len(present) + (1 if len(trade_off) > 1 else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], present):
        points = [(r["step"], r[key]) for r in records if key in r]
        steps, values = [p[0] for p in points], [p[1] for p in points]
        if len(points) < 30:
            ax.plot(steps, values, marker="o", ms=3)
        else:   # per-step values of small batches are noisy: show them faintly under a running mean
            window = max(5, len(points) // 20)
            ax.plot(steps, values, alpha=0.3, lw=0.8)
            ax.plot(steps, running_mean(values, window), color="C0", lw=1.8, label=f"mean of {window} steps")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if len(trade_off) > 1:   # RL: how much reward each step bought for its distance from the reference
        ax = axes[0][-1]
        kls, rewards, steps = zip(*trade_off)
        dots = ax.scatter(kls, rewards, c=steps, cmap="viridis", s=14)
        fig.colorbar(dots, ax=ax, label="step")
        ax.set_title("reward vs. KL")
        ax.set_xlabel("KL to reference (per token)")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return [k for k, _ in present]


def write_training_report(run_dir: Path, title: str, extra: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    plotted = plot_curves(records, run_dir / "curves.png")
    lines = [f"# {title} run: {run_dir.name}", ""]
    if extra:
        lines += [f"- {k}: {v}" for k, v in extra.items()] + [""]
    train = [r for r in records if "loss" in r]
    if train:
        first, last = train[0], train[-1]
        lines += ["| | first step | last step |", "|---|---|---|"]
        for key in ("loss", "token_nll", "accuracy", "margin", "reward_mean", "kl"):
            if key in first and key in last:
                lines.append(f"| {key} | {first[key]:.4f} | {last[key]:.4f} |")
        lines.append("")
    evals = [r for r in records if any(k.startswith("eval_") for k in r)]
    if evals:
        lines += ["Held-out evaluation:", ""]
        for r in evals:
            lines.append(f"- step {r['step']}: " + ", ".join(f"{k} = {v:.4f}" for k, v in r.items()
                                                              if k.startswith("eval_")))
        lines.append("")
    if plotted:
        lines += ["![curves](curves.png)", ""]
    lines += attention_section(train, run_dir)
    lines += ["Config: `config.yaml`; per-step metrics: `metrics.jsonl`; final model: `model/`.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def attention_section(records: list[dict], run_dir: Path) -> list[str]:
    """ATTEMPT runs (``attention/<prompt>`` metrics): the mean attention of the training instances
    on each source prompt and on the target, as a table and a bar chart (``attention.png``) — the
    paper's reading of which source tasks a target draws on. Nothing for other runs."""
    names = sorted({k for r in records for k in r if k.startswith("attention/")},
                   key=lambda k: (k == "attention/target", k))
    if not names:
        return []
    means = {k[len("attention/"):]: sum(r[k] for r in records if k in r) / sum(1 for r in records if k in r)
             for k in names}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(means) + 2, 3))
    ax.bar(list(means), list(means.values()), color="C2")
    ax.set_ylabel("mean attention")
    ax.set_title("ATTEMPT: attention per prompt (mean over training steps)")
    fig.tight_layout()
    fig.savefig(run_dir / "attention.png", dpi=110)
    plt.close(fig)
    return (["ATTEMPT mean attention per prompt (over the training steps' instances):", "",
             "| prompt | mean attention |", "|---|---|"]
            + [f"| {name} | {value:.3f} |" for name, value in means.items()] + ["", "![attention](attention.png)", ""])
