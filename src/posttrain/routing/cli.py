"""``posttrain route``: route preference instances to human or LM labels under a budget, then
write routed.jsonl, ppm.json, metrics.json and a report with plots. The method is
:mod:`posttrain.routing.router`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from posttrain.reports import atomic_write_text
from posttrain.routing.router import FEATURES, RouteResult, route, routed_rows


def _plots(out: Path, mean_acc: dict, res: RouteResult) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = ["all_lm", "random", "routed", "all_human"]
    ax.bar(names, [mean_acc[n] for n in names], color=["#999", "#bbb", "#2a7", "#27a"])
    ax.set_ylim(0.4, 1.0), ax.set_ylabel("held-out RM accuracy (human labels)"), fig.tight_layout()
    fig.savefig(out / "mixture_accuracy.png", dpi=110), plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3.2))
    ax.scatter(*res.ppm_points, s=10)
    ax.set_xlabel("PPM predicted accuracy"), ax.set_ylabel("measured dev accuracy"), fig.tight_layout()
    fig.savefig(out / "ppm_fit.png", dpi=110), plt.close(fig)
    return ["mixture_accuracy.png", "ppm_fit.png"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posttrain route",
        description="Route preference instances to human vs LM annotation under a budget with a performance "
                    "prediction model (Miranda et al. 2024). Writes routed.jsonl (label_source column), "
                    "ppm.json, metrics.json and report.md to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("Data")
    g.add_argument("--data", default="builtin:routing",
                   help="'builtin:routing' or a jsonl with prompt, response_a, response_b, human_label, lm_label "
                        "('a'|'b'), split (train|dev|test), optional domain, lm_confidence")
    g.add_argument("--encoder", default="minilm", help="frozen text encoder: 'minilm', 'hash[:DIM]' or a local folder")
    g.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("Routing")
    g.add_argument("--budget", type=int, default=200, help="number of train instances sent to humans")
    g.add_argument("--features", nargs="+", default=list(FEATURES), choices=list(FEATURES), help="feature functions")
    g.add_argument("--n-mixtures", type=int, default=64, help="candidate mixtures used to fit the PPM")
    g.add_argument("--random-repeats", type=int, default=3, help="random-routing draws averaged per seed")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds (data generation, mixtures, random routing); figures are means; outputs from the first")
    return p


def _load(spec: str, seed: int) -> list[dict]:
    if spec == "builtin:routing":
        from posttrain.data.builtin_pluralistic import make_routing_dataset

        return make_routing_dataset(seed=seed)
    rows = [json.loads(line) for line in Path(spec).read_text().splitlines() if line.strip()]
    need = {"prompt", "response_a", "response_b", "human_label", "lm_label", "split"}
    if not rows or need - set(rows[0]):
        raise SystemExit(f"{spec}: need columns {sorted(need)}; or use --data builtin:routing")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    per_seed, first = [], None
    for seed in args.seeds:
        rows = _load(args.data, seed)
        res = route(rows, args.budget, args.encoder, args.features, args.n_mixtures, args.random_repeats, seed)
        per_seed.append(res.accuracies)
        print(f"seed {seed}: " + "  ".join(f"{k} {v:.3f}" for k, v in res.accuracies.items()) + f"  (PPM R² {res.ppm.r2:.2f})")
        if first is None:
            first, first_rows = res, rows
    mean_acc = {k: sum(a[k] for a in per_seed) / len(per_seed) for k in per_seed[0]}

    train = [r for r in first_rows if r["split"] == "train"]
    routed = routed_rows(train, first.human_mask)
    atomic_write_text(out / "routed.jsonl", "".join(json.dumps(r) + "\n" for r in routed))
    ppm_blob = {"buckets": first.ppm.buckets, "coef": first.ppm.coef.tolist(), "intercept": first.ppm.intercept,
                "features": args.features, "mixture_features": "fraction human per bucket, then its square", "r2": first.ppm.r2}
    atomic_write_text(out / "ppm.json", json.dumps(ppm_blob, indent=2))
    metrics = {"mean_accuracy": mean_acc, "per_seed": per_seed, "budget": args.budget, "bucket_table": first.bucket_table,
               "ppm_r2": first.ppm.r2, "seconds": time.time() - t0, "config": vars(args)}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    figures = _plots(out, mean_acc, first)

    lines = ["# Hybrid human / LM preference routing report", "",
             f"Data `{args.data}`, encoder `{args.encoder}`, budget {args.budget} human labels of {len(train)}, "
             f"seeds {args.seeds}. Reward model: linear Bradley–Terry on frozen embeddings; accuracy on the test "
             "split against human labels.", "",
             "| mixture | mean accuracy | " + " | ".join(f"seed {s}" for s in args.seeds) + " |",
             "|---|---|" + "---|" * len(args.seeds)]
    for k in ("all_lm", "random", "routed", "all_human"):
        lines.append(f"| {k} | {mean_acc[k]:.3f} | " + " | ".join(f"{a[k]:.3f}" for a in per_seed) + " |")
    lines += ["", f"## Where the human labels went (seed {args.seeds[0]}; PPM R² on its mixtures {first.ppm.r2:.2f})", "",
              "| bucket | instances | sent to humans | LM agrees with humans | PPM weight (linear term) |", "|---|---|---|---|---|"]
    for row in sorted(first.bucket_table, key=lambda r: -r["human"]):
        lines.append(f"| {row['bucket']} | {row['instances']} | {row['human']} | {row['lm_agreement']:.0%} | {row['ppm_weight']:+.3f} |")
    lines += [""] + [f"![{f}]({f})" for f in figures]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    print("mean: " + "  ".join(f"{k} {v:.3f}" for k, v in mean_acc.items()) + f"\nwrote {out / 'report.md'} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
