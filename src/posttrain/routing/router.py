"""Hybrid human / LM preference routing.

Miranda et al. 2024, "Hybrid Preferences: Learning to Route Instances for Human vs. AI Feedback"
(https://arxiv.org/abs/2410.19133; reference code https://github.com/allenai/hybrid-preferences).
Given a pool of preference instances that all carry an LM-judge label, choose which ``budget``
instances to send to human annotators so that a reward model trained on the mixture is best.

Pipeline (one function per step, run top to bottom by ``route``):

1. Features. Each instance maps to one bucket per registered feature (``FEATURES``; add one with
   ``@register_feature("name")``): prompt length bucket, domain tag, safety keyword flag,
   complexity (numbers / code in the prompt), LM-judge confidence bucket.
2. Performance prediction model (PPM). Sample ``--n-mixtures`` candidate mixtures (which
   instances take the human label, which the LM label), train a small reward model per mixture
   (linear Bradley–Terry on frozen embeddings: P(a ≻ b) = σ(w·(e(x, a) − e(x, b))); all mixtures
   are fitted at once as one batched problem), measure its accuracy on a dev split with human labels,
   and fit a ridge regression from mixture features to that accuracy.
   Mixture features: for every bucket b, the fraction of b's instances that are human-labelled,
   and its square (so the regression can express diminishing returns).
3. Routing. Under a budget N, add human labels one instance at a time, each time taking an
   instance from the bucket signature (tuple of buckets) whose addition raises the predicted
   accuracy most.

Departures from the paper: the paper's mixture features count human-labelled instances
satisfying each feature *and* feature combinations, and its PPM is a quadratic regression fitted on
MultiPref with full reward-model training per mixture; here the features are per-bucket fractions
(+ squares), the proxy RM is linear on frozen sentence embeddings, and the dev/test evaluation
uses held-out human labels of the same synthetic distribution.

Run::

    posttrain route --data builtin:routing --budget 200 --out runs/route
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

import torch

from posttrain.losses.preference import bradley_terry_loss
from posttrain.models.embeddings import embed_texts

# ---------------------------------------------------------------------------
# 1. Feature registry: instance dict → bucket name

FEATURES: dict[str, Callable[[dict], str]] = {}


def register_feature(name: str):
    def wrap(fn: Callable[[dict], str]):
        if name in FEATURES:
            raise ValueError(f"feature {name!r} already registered")
        FEATURES[name] = fn
        return fn

    return wrap


SAFETY_KEYWORDS = ("weapon", "poison", "hack", "steal", "explosive", "bypass", "kill", "drug")


@register_feature("prompt_length")
def _prompt_length(row: dict) -> str:
    n = len(row["prompt"].split())
    return "short" if n < 12 else "medium" if n < 25 else "long"


@register_feature("domain")
def _domain(row: dict) -> str:
    return str(row.get("domain", "unknown"))


@register_feature("safety_flag")
def _safety(row: dict) -> str:
    text = row["prompt"].lower()
    return "flagged" if any(k in text for k in SAFETY_KEYWORDS) else "clear"


@register_feature("complexity")
def _complexity(row: dict) -> str:
    p = row["prompt"]
    if "```" in p or re.search(r"\b(def|function|class|code)\b", p, re.I):
        return "code"
    return "numbers" if re.search(r"\d", p) else "plain"


@register_feature("lm_confidence")
def _lm_confidence(row: dict) -> str:
    c = float(row.get("lm_confidence", 0.5))
    return "low" if c < 0.7 else "mid" if c < 0.85 else "high"


def bucket_vocabulary(rows: list[dict], features: list[str]) -> tuple[list[str], list[tuple[str, ...]]]:
    """→ (sorted bucket names "feature=value", per-row signature tuple)."""
    signatures = [tuple(f"{f}={FEATURES[f](r)}" for f in features) for r in rows]
    vocab = sorted({b for sig in signatures for b in sig})
    return vocab, signatures


# ---------------------------------------------------------------------------
# Proxy reward model: batched linear Bradley–Terry on embedding differences


def train_linear_bt(diff_ND: torch.Tensor, y_MN: torch.Tensor, steps: int = 150, lr: float = 0.05, l2: float = 1e-3) -> torch.Tensor:
    """Fit M linear BT models at once. diff_ND = e(x, a) − e(x, b); y_MN = 1 if a ≻ b. → W (M, D).

    No bias: σ(w·(e_a − e_b)) is symmetric in swapping a and b. Full-batch Adam, mean Bradley–Terry loss + l2‖w‖².
    """
    W_MD = torch.zeros(y_MN.shape[0], diff_ND.shape[1], requires_grad=True)
    opt = torch.optim.Adam([W_MD], lr=lr)
    for _ in range(steps):
        logits_MN = W_MD @ diff_ND.T
        # y = 1: a ≻ b, the Bradley–Terry loss of logit l; y = 0: of −l (the same as BCE with logits)
        signed_MN = torch.where(y_MN > 0, logits_MN, -logits_MN)
        loss = bradley_terry_loss(signed_MN, torch.zeros_like(signed_MN))[0].mean(1).sum() + l2 * W_MD.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return W_MD.detach()


def accuracy(W_MD: torch.Tensor, diff_ND: torch.Tensor, y_N: torch.Tensor) -> torch.Tensor:
    """Held-out accuracy of each model → (M,)."""
    return (((W_MD @ diff_ND.T) > 0).float() == y_N[None]).float().mean(1)


# ---------------------------------------------------------------------------
# 2. Performance prediction model


def mixture_features(human_MN: torch.Tensor, member_NB: torch.Tensor) -> torch.Tensor:
    """Fraction of each bucket's instances that are human-labelled, and its square → (M, 2B)."""
    frac_MB = (human_MN.float() @ member_NB) / member_NB.sum(0).clamp(min=1)
    return torch.cat([frac_MB, frac_MB.pow(2)], 1)


@dataclass
class PPM:
    """Ridge regression accuracy ≈ X·coef + intercept over ``mixture_features``."""

    coef: torch.Tensor
    intercept: float
    buckets: list[str]
    r2: float

    def predict(self, X_MF: torch.Tensor) -> torch.Tensor:
        return X_MF @ self.coef + self.intercept


def fit_ppm(X_MF: torch.Tensor, acc_M: torch.Tensor, buckets: list[str], ridge: float = 1e-2) -> PPM:
    mx, my = X_MF.mean(0), acc_M.mean()
    Xc, yc = X_MF - mx, acc_M - my
    coef = torch.linalg.solve(Xc.T @ Xc + ridge * len(X_MF) * torch.eye(X_MF.shape[1]), Xc.T @ yc)
    resid = yc - Xc @ coef
    r2 = 1 - resid.pow(2).sum().item() / max(yc.pow(2).sum().item(), 1e-12)
    return PPM(coef, float(my - mx @ coef), buckets, r2)


def sample_mixtures(signatures: list[tuple[str, ...]], features: list[str], n: int, rng: random.Random) -> torch.Tensor:
    """Candidate mixtures → (n, N) bool. Half pick a feature and draw a human fraction per bucket
    (so per-bucket counts vary widely), half route a uniform random fraction of all instances."""
    out = torch.zeros(n, len(signatures), dtype=torch.bool)
    for m in range(n):
        if m % 2 == 0:
            f = rng.randrange(len(features))
            frac = {}
            for i, sig in enumerate(signatures):
                p = frac.setdefault(sig[f], rng.random())
                out[m, i] = rng.random() < p
        else:
            p = rng.random()
            out[m] = torch.tensor([rng.random() < p for _ in signatures])
    return out


# ---------------------------------------------------------------------------
# 3. Greedy routing under a budget


def greedy_route(ppm: PPM, signatures: list[tuple[str, ...]], member_NB: torch.Tensor, budget: int, rng: random.Random) -> torch.Tensor:
    """Choose ``budget`` instances for humans, one at a time by predicted accuracy gain → (N,) bool."""
    groups: dict[tuple, list[int]] = {}
    for i, sig in enumerate(signatures):
        groups.setdefault(sig, []).append(i)
    for idx in groups.values():
        rng.shuffle(idx)
    keys = list(groups)
    sig_GB = torch.stack([member_NB[groups[k][0]] for k in keys])
    size_B = member_NB.sum(0).clamp(min=1)
    counts_B = torch.zeros(member_NB.shape[1])
    left_G = torch.tensor([len(groups[k]) for k in keys])
    human = torch.zeros(len(signatures), dtype=torch.bool)
    for _ in range(min(budget, len(signatures))):
        frac_GB = (counts_B[None] + sig_GB) / size_B
        pred_G = ppm.predict(torch.cat([frac_GB, frac_GB.pow(2)], 1))
        pred_G[left_G == 0] = -float("inf")
        g = int(pred_G.argmax())
        human[groups[keys[g]][len(groups[keys[g]]) - int(left_G[g])]] = True
        left_G[g] -= 1
        counts_B += sig_GB[g]
    return human


# ---------------------------------------------------------------------------
# Pipeline


@dataclass
class RouteResult:
    accuracies: dict[str, float]  # all_lm, random, routed, all_human (test split)
    human_mask: torch.Tensor  # (N_train,) bool, routed
    ppm: PPM
    bucket_table: list[dict]
    ppm_points: tuple[list[float], list[float]]  # (predicted, measured) on the mixtures


def _labels(rows: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([1.0 if r[key] == "a" else 0.0 for r in rows])


def route(rows: list[dict], budget: int, encoder: str = "minilm", features: list[str] | None = None,
          n_mixtures: int = 64, random_repeats: int = 3, seed: int = 0) -> RouteResult:
    """Fit the PPM on train/dev, route ``budget`` train instances, score the four mixtures on test."""
    features = features or list(FEATURES)
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; registered: {sorted(FEATURES)}")
    rng = random.Random(seed)
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "dev", "test")}
    train, dev, test = split["train"], split["dev"], split["test"]

    texts = [f"{r['prompt']}\n{r[k]}" for part in (train, dev, test) for k in ("response_a", "response_b") for r in part]
    e = embed_texts(texts, model=encoder)
    offsets, diffs = 0, {}
    for name, part in (("train", train), ("dev", dev), ("test", test)):
        n = len(part)
        diffs[name] = e[offsets : offsets + n] - e[offsets + n : offsets + 2 * n]
        offsets += 2 * n
    sd = diffs["train"].std(0).clamp(min=1e-4)
    diffs = {k: v / sd for k, v in diffs.items()}  # scale only: a shift would break the a/b symmetry

    y_h, y_lm = _labels(train, "human_label"), _labels(train, "lm_label")
    y_dev, y_test = _labels(dev, "human_label"), _labels(test, "human_label")
    buckets, signatures = bucket_vocabulary(train, features)
    col = {b: j for j, b in enumerate(buckets)}
    member_NB = torch.zeros(len(train), len(buckets))
    for i, sig in enumerate(signatures):
        member_NB[i, [col[b] for b in sig]] = 1.0

    # --- PPM: candidate mixtures → proxy RMs → dev accuracy → regression
    human_MN = sample_mixtures(signatures, features, n_mixtures, rng)
    W = train_linear_bt(diffs["train"], torch.where(human_MN, y_h, y_lm))
    acc_M = accuracy(W, diffs["dev"], y_dev)
    X = mixture_features(human_MN, member_NB)
    ppm = fit_ppm(X, acc_M, buckets)

    # --- Route and compare mixtures on the test split
    routed = greedy_route(ppm, signatures, member_NB, budget, rng)
    randoms = []
    for _ in range(random_repeats):
        m = torch.zeros(len(train), dtype=torch.bool)
        m[torch.tensor(rng.sample(range(len(train)), min(budget, len(train))))] = True
        randoms.append(m)
    masks = torch.stack([torch.zeros(len(train), dtype=torch.bool), routed, torch.ones(len(train), dtype=torch.bool), *randoms])
    acc = accuracy(train_linear_bt(diffs["train"], torch.where(masks, y_h, y_lm)), diffs["test"], y_test)
    accuracies = {"all_lm": acc[0].item(), "routed": acc[1].item(), "all_human": acc[2].item(),
                  "random": acc[3:].mean().item()}

    table = []
    for j, b in enumerate(buckets):
        in_b = member_NB[:, j].bool()
        table.append({"bucket": b, "instances": int(in_b.sum()), "human": int((in_b & routed).sum()),
                      "ppm_weight": ppm.coef[j].item(), "lm_agreement": ((y_h == y_lm) & in_b).sum().item() / max(int(in_b.sum()), 1)})
    return RouteResult(accuracies, routed, ppm, table, (ppm.predict(X).tolist(), acc_M.tolist()))


# ---------------------------------------------------------------------------
# Output


def routed_rows(train: list[dict], human_mask: torch.Tensor) -> list[dict]:
    """Train rows as prompt / chosen / rejected with ``label_source`` ∈ {"human", "lm"}."""
    out = []
    for r, h in zip(train, human_mask.tolist()):
        label = r["human_label"] if h else r["lm_label"]
        a, b = r["response_a"], r["response_b"]
        chosen, rejected = (a, b) if label == "a" else (b, a)
        out.append({"id": r.get("id"), "prompt": r["prompt"], "chosen": chosen, "rejected": rejected,
                    "label_source": "human" if h else "lm",
                    **{f"feature_{f}": fn(r) for f, fn in FEATURES.items()}})
    return out
