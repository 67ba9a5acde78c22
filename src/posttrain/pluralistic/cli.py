"""``posttrain reward model_type=vpl``: train a pluralistic (per-user latent) reward model with
variational preference learning (Poddar et al. 2024), compare it with a Bradley–Terry baseline on
held-out users, and measure active query selection. Writes vpl.safetensors, bt.safetensors,
metrics.json, plots and report.md to ``out``. ``VPLConfig`` holds the options, ``run_vpl`` runs.

    posttrain reward model_type=vpl data=builtin:pluralistic out=runs/vpl encoder=minilm
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from posttrain.pluralistic.data import embed_rows, group_users
from posttrain.pluralistic.evaluation import _split_heldout, active_learning_curve, evaluate_heldout, queries_to_reach
from posttrain.pluralistic.model import ACQUISITIONS, POOLINGS, REWARD_HEADS, VPLRewardModel, expected_likelihood_reward
from posttrain.config import ConfigError, RunOptions, opt, to_dict
from posttrain.data.formats import DataError
from posttrain.pluralistic.training import CONTEXT_SAMPLERS, TrainConfig, train_bt, train_vpl
from posttrain.reports import atomic_write_text


@dataclasses.dataclass
class VPLConfig(TrainConfig, RunOptions):
    """``posttrain reward model_type=vpl``: the run options every trainer has (``RunOptions``), the
    training options of ``train_vpl`` / ``train_bt`` (``TrainConfig``), and this command's data,
    encoder and evaluation options."""

    model_type: str = opt("vpl", "vpl: this trainer (bt: the Bradley–Terry reward model)", "Model")
    out: str = opt("runs/vpl", "output folder: weights, metrics.json, plots, report.md", "Run")
    data: str = opt("builtin:pluralistic", "builtin:pluralistic or a jsonl with user_id, prompt, chosen, rejected, "
                    "role (train | context | eval), optional kind (contested_* | agreed)", "Data")
    data_seed: int = opt(0, "seed of the built-in generator", "Data")
    encoder: str = opt("minilm", "frozen text encoder: minilm, hash[:DIM] or a local folder", "Data")
    length_feature: bool = opt(True, "append log(1 + words of the response) to the frozen embedding (see "
                               "embed_rows)", "Data")
    eval_context: int = opt(8, "context comparisons per held-out user", "Evaluation")
    context_sampler: str = opt("stratified", "how a held-out user's context comparisons are drawn from their "
                               "labelled pool: stratified (spread over pair kinds, see stratified_context) or "
                               "random", "Evaluation")
    eval_draws: int = opt(3, "independent context draws per held-out user", "Evaluation")
    acquisition: str = opt("bald", "headline active query score: bald or variance (every score in the table is "
                           "measured)", "Evaluation")
    max_queries: int = opt(12, "queries per held-out user in the active-learning curves", "Evaluation")
    stop_info: float = opt(0.01, "stop asking when no candidate's BALD score (expected information about z, "
                           "nats) exceeds this", "Evaluation")
    target_accuracy: float = opt(0.85, "contested accuracy a held-out user should reach", "Evaluation")
    al_seeds: int = opt(3, "seeds per query strategy (random and active)", "Evaluation")

    def validate(self):
        super().validate()
        choices = {"model_type": ("vpl",), "pooling": POOLINGS, "reward_head": REWARD_HEADS,
                   "acquisition": tuple(sorted(ACQUISITIONS)), "context_sampler": CONTEXT_SAMPLERS,
                   "train_context_sampler": CONTEXT_SAMPLERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if min(self.epochs, self.batch_users, self.max_context, self.latent_dim, self.hidden, self.eval_draws,
               self.al_seeds) < 1:
            raise ConfigError("epochs, batch_users, max_context, latent_dim, hidden, eval_draws and al_seeds "
                              "must be >= 1")

# ---------------------------------------------------------------------------
# Saving and report


def save_model(model: nn.Module, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata={"config": json.dumps(metadata)})
    os.replace(tmp, path)


def load_vpl(path: str | Path) -> VPLRewardModel:
    """Load ``vpl.safetensors`` written by ``run_vpl`` (config travels in the file's metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    model = VPLRewardModel(meta["embed_dim"], meta["latent_dim"], meta["hidden"], meta["pooling"],
                           meta.get("reward_head", "concat"), meta.get("dropout", 0.0))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _plots(out: Path, vpl_hist, bt_hist, ev: dict, curves: dict, target: float, max_queries: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(vpl_hist, label="VPL (−ELBO)")
    ax.plot(range(0, len(bt_hist) * 4, 4), bt_hist, label="BT (NLL)")
    ax.set_xlabel("epoch"), ax.set_ylabel("train loss"), ax.legend(), fig.tight_layout()
    fig.savefig(out / "training_loss.png", dpi=110), plt.close(fig)
    names.append("training_loss.png")

    s = ev["summary"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    xs = range(2)
    ax.bar([x - 0.2 for x in xs], [s["bt_contested"], s["bt_agreed"]], 0.4, label="Bradley–Terry")
    ax.bar([x + 0.2 for x in xs], [s["vpl_contested"], s["vpl_agreed"]], 0.4, label=f"VPL ({s['n_context']} context)")
    ax.set_xticks(list(xs), ["contested pairs", "agreed pairs"]), ax.set_ylim(0, 1), ax.set_ylabel("held-out accuracy")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--"), ax.legend(loc="lower right")
    ranked = sorted(ev["per_user"], key=lambda p: p["vpl_contested"])
    ys = [p["vpl_contested"] for p in ranked]
    colors = ["grey" if p["context_majority_flipped"] else "C1" for p in ranked]
    ax2.scatter(range(len(ys)), ys, s=8, c=colors)
    ax2.scatter([], [], s=8, c="grey", label="context majority-flipped (noise)")
    ax2.axhline(target, color="k", lw=0.8, ls="--", label=f"target {target:.0%}")
    ax2.set_ylim(0, 1.02), ax2.set_xlabel(f"held-out user × context draw, sorted (n = {len(ys)})")
    ax2.set_ylabel("VPL contested accuracy"), ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "heldout_accuracy.png", dpi=110), plt.close(fig)
    names.append("heldout_accuracy.png")

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, c in curves.items():
        ax.plot(range(len(c["mean_curve"])), c["mean_curve"], marker="o", ms=3, label=name)
        qs = c["per_user_queries_to_target"]
        ax2.step(range(max_queries + 1), [sum(q <= k for q in qs) / len(qs) for k in range(max_queries + 1)],
                 where="post", label=f"{name} (mean {c['mean_user_queries_to_target']:.2f})")
    ax.axhline(target, color="grey", lw=0.8, ls="--", label=f"target {target:.0%}")
    ax.set_xlabel("queries answered"), ax.set_ylabel("contested accuracy (mean over users)"), ax.legend(fontsize=8)
    ax2.set_xlabel("queries answered"), ax2.set_ylabel(f"share of users at ≥ {target:.0%}"), ax2.set_ylim(0, 1.02)
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "active_learning.png", dpi=110), plt.close(fig)
    names.append("active_learning.png")
    return names


def _report(out: Path, config: VPLConfig, metrics: dict, figures: list[str]) -> str:
    s = metrics["heldout"]
    al = metrics["active_learning"]
    n_q = len(next(iter(al["curves"].values()))["mean_curve"])
    per_draw = ", ".join(f"{x:.0%}" for x in s["frac_users_vpl_contested_ge_target_per_draw"])
    lines = [
        "# Pluralistic reward model (VPL) report", "",
        f"Data `{config.data}`, encoder `{config.encoder}`"
        f"{' + response-length feature' if config.length_feature else ''}, {metrics['n_train_users']} train users, "
        f"{metrics['n_heldout_users']} held-out users (disjoint users and prompt topics). VPL: best of "
        f"{len(metrics['vpl_restarts']['restart_final_losses'])} training runs by final training loss ("
        + ", ".join(f"{x:.3f}" for x in metrics["vpl_restarts"]["restart_final_losses"]) + ").", "",
        "## Held-out users", "",
        "| model | contested pairs | agreed pairs |", "|---|---|---|",
        f"| Bradley–Terry (no latent) | {s['bt_contested']:.1%} | {s['bt_agreed']:.1%} |",
        f"| VPL, {s['n_context']} context comparisons | {s['vpl_contested']:.1%} | {s['vpl_agreed']:.1%} |", "",
        f"Per user: each of the {s['n_users']} held-out users is evaluated with {s['draws']} independent draws of "
        f"{s['n_context']} context comparisons from their own labelled pool ({s['context_sampler']} sampler), on at "
        f"least {s['n_contested_eval_per_user']} contested held-out comparisons with noise-free labels; the table "
        "pools all user × draw pairs.", "",
        f"- VPL contested accuracy ≥ {s['target']:.0%}: **{s['frac_users_vpl_contested_ge_target']:.1%}** of user × draw "
        f"pairs (per draw: {per_draw}); worst {s['vpl_contested_min_user']:.1%}.",
        f"- {s['n_majority_flipped']} user × draw pairs had a context in which at least half of the comparisons on "
        "one axis carry a flipped (noisy) label, so the context states the opposite preference; no model can recover "
        f"those. Among the others: {s['frac_users_vpl_contested_ge_target_recoverable']:.1%} ≥ {s['target']:.0%}, "
        f"worst {s['vpl_contested_min_user_recoverable']:.1%}.", "",
        "## Active query selection", "",
        f"Each held-out user starts with no answers; a strategy picks the next comparison from the user's "
        f"labelled pool (agreed and contested alike, kinds not shown to it) and gets the stored label. "
        f"{metrics['n_heldout_users']} users × {config.al_seeds} seeds per strategy. Target: contested accuracy "
        f"≥ {al['target']:.0%}; a user who never reaches it within {config.max_queries} queries counts "
        f"{config.max_queries + 1}. Stop rule: largest BALD score over the pool < {config.stop_info} nats.", "",
        "| strategy | " + " | ".join(f"q={q}" for q in range(n_q))
        + " | queries to target (mean curve) | **queries to target (mean over users)** | users reaching target "
        "| mean stop | accuracy at stop |",
        "|---|" + "---|" * (n_q + 5),
    ]
    for name, c in al["curves"].items():
        lines.append(f"| {name} | " + " | ".join(f"{a:.2f}" for a in c["mean_curve"]) +
                     f" | {c['queries_to_target']} | **{c['mean_user_queries_to_target']:.2f}** | "
                     f"{c['frac_users_reaching_target']:.0%} | {c['mean_stop']:.1f} | {c['mean_accuracy_at_stop']:.1%} |")
    lines += [
        "", "## Reward scaling", "",
        f"Std over held-out users of each user's raw reward range: {metrics['reward_scale']['raw_range_std']:.3f} "
        f"(mean {metrics['reward_scale']['raw_range_mean']:.3f}); after expected-likelihood scaling: "
        f"{metrics['reward_scale']['scaled_range_std']:.3f} (mean {metrics['reward_scale']['scaled_range_mean']:.3f}).", "",
    ]
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# CLI


def _load_rows(spec: str, seed: int) -> tuple[list[dict], list[dict]]:
    if spec == "builtin:pluralistic":
        from posttrain.data.builtin_pluralistic import make_pluralistic_dataset

        data = make_pluralistic_dataset(seed=seed)
        return data.train, data.heldout
    rows = [json.loads(line) for line in Path(spec).read_text().splitlines() if line.strip()]
    missing = {"user_id", "prompt", "chosen", "rejected", "role"} - set(rows[0]) if rows else {"rows"}
    if missing:
        raise DataError(f"{spec}: missing columns {sorted(missing)} (need user_id, prompt, chosen, rejected, "
                        "role ∈ train/context/eval); or use data=builtin:pluralistic")
    return [r for r in rows if r["role"] == "train"], [r for r in rows if r["role"] in ("context", "eval")]


def run_vpl(config: VPLConfig, command: str = "posttrain reward model_type=vpl") -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # --- data and frozen embeddings
    train_rows, heldout_rows = _load_rows(config.data, config.data_seed)
    ctx_rows, eval_rows = _split_heldout(heldout_rows)
    all_rows = train_rows + ctx_rows + eval_rows
    chosen_ND, rejected_ND = embed_rows(all_rows, config.encoder, length_feature=config.length_feature)
    n1, n2 = len(train_rows), len(train_rows) + len(ctx_rows)
    train_users = group_users(train_rows, chosen_ND[:n1], rejected_ND[:n1])
    ctx_users = group_users(ctx_rows, chosen_ND[n1:n2], rejected_ND[n1:n2])
    eval_users = group_users(eval_rows, chosen_ND[n2:], rejected_ND[n2:])
    if ctx_users.user_ids != eval_users.user_ids:
        raise DataError("every held-out user needs both context and eval rows")
    t_embed = time.time() - t0
    print(f"embedded {2 * len(all_rows)} texts with {config.encoder} in {t_embed:.1f}s")

    # --- train VPL and the Bradley–Terry baseline
    cfg = TrainConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)})
    restarts: dict = {}
    vpl, vpl_hist = train_vpl(train_users, cfg, report=restarts)
    bt, bt_hist = train_bt(chosen_ND[:n1], rejected_ND[:n1], cfg)

    # --- evaluate on held-out users
    ev = evaluate_heldout(vpl, bt, ctx_users, eval_users, config.eval_context, seed=config.seed,
                          sampler=config.context_sampler, draws=config.eval_draws, target=config.target_accuracy)
    strategies = [config.acquisition] + [a for a in sorted(ACQUISITIONS) if a != config.acquisition] + ["random"]
    curves = {}
    for strategy in strategies:
        reps = [active_learning_curve(vpl, ctx_users, eval_users, strategy, config.max_queries, config.stop_info,
                                      seed=config.seed + 1 + i, target=config.target_accuracy) for i in range(config.al_seeds)]
        mean_curve = [sum(c) / len(c) for c in zip(*(r["mean_curve"] for r in reps))]
        curves[strategy] = {
            "strategy": strategy, "seeds": len(reps), "mean_curve": mean_curve,
            "queries_to_target": queries_to_reach(mean_curve, config.target_accuracy),
            "per_user_queries_to_target": [q for r in reps for q in r["per_user_queries_to_target"]],
            **{k: sum(r[k] for r in reps) / len(reps) for k in (
                "mean_user_queries_to_target", "frac_users_reaching_target", "mean_stop", "mean_accuracy_at_stop")},
        }

    # Reward scaling: per-user range of raw vs expected-likelihood rewards over that user's eval responses.
    raw_ranges, scaled_ranges = [], []
    for u in range(len(eval_users.user_ids)):
        cc, cr, _ = ctx_users.user(u)
        ec, er, _ = eval_users.user(u)
        k = min(len(cc), config.eval_context)
        mu, _ = vpl.posterior(cc[None, :k], cr[None, :k], torch.ones(1, k, dtype=torch.bool))
        e = torch.cat([ec, er])
        with torch.no_grad():
            raw = vpl.reward(e, mu)
        scaled = expected_likelihood_reward(vpl, mu[0], e, e)
        raw_ranges.append((raw.max() - raw.min()).item())
        scaled_ranges.append((scaled.max() - scaled.min()).item())
    std = lambda xs: (sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs)) ** 0.5  # noqa: E731

    metrics = {
        "heldout": ev["summary"], "per_user": ev["per_user"],
        "active_learning": {"target": config.target_accuracy, "curves": curves},
        "reward_scale": {"raw_range_mean": sum(raw_ranges) / len(raw_ranges), "raw_range_std": std(raw_ranges),
                         "scaled_range_mean": sum(scaled_ranges) / len(scaled_ranges), "scaled_range_std": std(scaled_ranges)},
        "vpl_restarts": restarts,
        "n_train_users": len(train_users.user_ids), "n_heldout_users": len(eval_users.user_ids),
        "embed_seconds": t_embed, "total_seconds": time.time() - t0, "config": to_dict(config), "command": command,
    }

    # --- save weights, metrics, report
    meta = {**asdict(cfg), "embed_dim": int(chosen_ND.shape[-1]), "encoder": config.encoder,
            "length_feature": config.length_feature}
    save_model(vpl, out / "vpl.safetensors", meta)
    save_model(bt, out / "bt.safetensors", meta)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    figures = _plots(out, vpl_hist, bt_hist, ev, curves, config.target_accuracy, config.max_queries)
    atomic_write_text(out / "report.md", _report(out, config, metrics, figures))
    s = ev["summary"]
    print(f"held-out contested: BT {s['bt_contested']:.1%}  VPL {s['vpl_contested']:.1%} "
          f"(agreed: BT {s['bt_agreed']:.1%}  VPL {s['vpl_agreed']:.1%}); VPL per user: "
          f"{s['frac_users_vpl_contested_ge_target']:.1%} ≥ {s['target']:.0%}, worst {s['vpl_contested_min_user']:.1%} "
          f"({s['n_majority_flipped']} majority-flipped contexts; others {s['frac_users_vpl_contested_ge_target_recoverable']:.1%})")
    for name, c in curves.items():
        print(f"{name:>8}: " + " ".join(f"{a:.2f}" for a in c["mean_curve"]) +
              f"  → queries to target: {c['mean_user_queries_to_target']:.2f} per user, mean curve q={c['queries_to_target']}")
    print(f"wrote {out / 'report.md'} ({time.time() - t0:.1f}s)")


def main(argv: list[str] | None = None) -> int:
    """``python -m posttrain.pluralistic …``: the same as ``posttrain reward model_type=vpl …``."""
    from posttrain.cli import main as posttrain_main

    return posttrain_main(["reward", "model_type=vpl", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
