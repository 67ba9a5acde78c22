"""Evaluation on held-out users: per-user accuracy given a context, and active query selection curves."""

from __future__ import annotations

import torch

from posttrain.pluralistic.data import UserSet, stratified_context
from posttrain.pluralistic.model import bald_score, preference_probs, sample_z, select_query


def _split_heldout(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    return [r for r in rows if r.get("role") == "context"], [r for r in rows if r.get("role") == "eval"]


@torch.no_grad()
def vpl_user_accuracy(model, ctx_c_KD, ctx_r_KD, eval_c_ND, eval_r_ND, n_samples=64, generator=None) -> torch.Tensor:
    """Per-comparison correctness (N,) of E_z P(chosen ≻ rejected) > ½ given the context."""
    mask = torch.ones(1, len(ctx_c_KD), dtype=torch.bool)
    mu, logvar = model.posterior(ctx_c_KD[None], ctx_r_KD[None], mask)
    p_SN = preference_probs(model, sample_z(mu[0], logvar[0], n_samples, generator), eval_c_ND, eval_r_ND)
    return (p_SN.mean(0) > 0.5).float()


def majority_flipped(kind_K: torch.Tensor, contested_K: torch.Tensor, flipped_K: torch.Tensor) -> bool:
    """True if, for some contested kind, at least half of these comparisons carry a flipped label.

    Then the context says the opposite of the user's preference on that axis (or nothing), and no
    model can recover it from these comparisons alone; the report counts such users separately.
    """
    for q in kind_K[contested_K].unique().tolist():
        m = (kind_K == q) & contested_K
        if 2 * int(flipped_K[m].sum()) >= int(m.sum()):
            return True
    return False


@torch.no_grad()
def evaluate_heldout(vpl, bt, ctx: UserSet, ev: UserSet, n_context: int, seed: int = 0,
                     sampler: str = "stratified", draws: int = 1, target: float = 0.85) -> dict:
    """Per-user accuracy of BT and of VPL given ``n_context`` of the user's own labelled comparisons.

    ``sampler="stratified"`` (default) draws them with ``stratified_context`` (spread over pair
    kinds); ``"random"`` draws uniformly from the user's pool. With ``draws`` > 1 every user is
    evaluated with that many independent context draws, and the summary pools all (user, draw)
    pairs: ``vpl_contested`` is the mean, ``vpl_contested_min_user`` the minimum and
    ``frac_users_vpl_contested_ge_target`` the share at or above ``target``; ``..._per_draw`` lists
    the share of each draw. ``frac_..._recoverable`` leaves out users whose context has a majority of
    flipped labels on an axis (``majority_flipped``; needs the ``noisy_flip`` column).
    """
    g = torch.Generator().manual_seed(seed)
    per_user = []
    for draw in range(draws):
        for u in range(len(ev.user_ids)):
            cc, cr, _ = ctx.user(u)
            ec, er, contested = ev.user(u)
            kind_K, contested_K = ctx.user_kinds(u), ctx.contested_UN[u, : len(cc)]
            if sampler == "stratified":
                pick = stratified_context(kind_K, contested_K, n_context, g)
            else:
                pick = torch.randperm(len(cc), generator=g)[:n_context]
            no_flags = torch.zeros(len(cc), dtype=torch.bool)
            flipped_K = ctx.flipped_UN[u, : len(cc)] if ctx.flipped_UN is not None else no_flags
            vpl_ok = vpl_user_accuracy(vpl, cc[pick], cr[pick], ec, er, generator=g)
            bt_ok = (bt.reward(ec) > bt.reward(er)).float()
            per_user.append({
                "user_id": ev.user_ids[u], "group": ev.groups[u], "draw": draw,
                "vpl_contested": vpl_ok[contested].mean().item(), "vpl_agreed": vpl_ok[~contested].mean().item(),
                "bt_contested": bt_ok[contested].mean().item(), "bt_agreed": bt_ok[~contested].mean().item(),
                "n_contested_eval": int(contested.sum()), "context_flipped": int(flipped_K[pick].sum()),
                "context_majority_flipped": majority_flipped(kind_K[pick], contested_K[pick], flipped_K[pick]),
            })
    mean = lambda k, ps=per_user: sum(p[k] for p in ps) / len(ps)  # noqa: E731
    share = lambda ps: sum(p["vpl_contested"] >= target for p in ps) / max(1, len(ps))  # noqa: E731
    summary = {k: mean(k) for k in ("vpl_contested", "vpl_agreed", "bt_contested", "bt_agreed")}
    summary["vpl_contested_min_user"] = min(p["vpl_contested"] for p in per_user)
    summary["target"] = target
    summary["frac_users_vpl_contested_ge_target"] = share(per_user)
    summary["frac_users_vpl_contested_ge_target_per_draw"] = [
        share([p for p in per_user if p["draw"] == d]) for d in range(draws)]
    recoverable = [p for p in per_user if not p["context_majority_flipped"]]
    summary["n_majority_flipped"] = len(per_user) - len(recoverable)
    summary["frac_users_vpl_contested_ge_target_recoverable"] = share(recoverable)
    summary["vpl_contested_min_user_recoverable"] = min((p["vpl_contested"] for p in recoverable), default=float("nan"))
    summary["n_users"], summary["draws"] = len(ev.user_ids), draws
    summary["n_contested_eval_per_user"] = min(p["n_contested_eval"] for p in per_user)
    summary["n_context"] = n_context
    summary["context_sampler"] = sampler
    return {"summary": summary, "per_user": per_user}


@torch.no_grad()
def active_learning_curve(model, ctx: UserSet, ev: UserSet, strategy: str, max_queries: int = 8,
                          stop_info: float = 0.01, n_samples: int = 64, seed: int = 0,
                          target: float | None = None) -> dict:
    """Accuracy on each held-out user's contested eval comparisons after 0..max_queries answers.

    Candidates are the user's context pool (agreed and contested comparisons alike; the strategy
    is not told which is which); the user's answer is its stored label, noise included. Stopping
    rule: stop once no remaining candidate is expected to tell us anything about z, i.e. the
    largest BALD score (mutual information, nats) over the pool falls below ``stop_info``. (Mean
    predictive entropy, an earlier rule, also counts label noise, which no query removes: at 5%
    noise a calibrated model's entropy never drops below H(0.05) ≈ 0.2 nats.) The rule is evaluated
    whatever the strategy; the curve itself always runs to ``max_queries``.

    Returns the mean curve, per-user curves, the mean stopping point and the mean accuracy at it.
    With ``target``: ``per_user_queries_to_target`` (the first query count at which each user's
    accuracy reaches ``target``; ``max_queries + 1`` for a user who never does), its mean
    ``mean_user_queries_to_target`` and ``frac_users_reaching_target``.
    """
    g = torch.Generator().manual_seed(seed)
    curves, stops = [], []
    for u in range(len(ev.user_ids)):
        pool_c, pool_r, _ = ctx.user(u)
        ec, er, contested = ev.user(u)
        ec, er = ec[contested], er[contested]
        available = torch.ones(len(pool_c), dtype=torch.bool)
        asked: list[int] = []
        curve, stop = [], None
        for q in range(max_queries + 1):
            idx = torch.tensor(asked, dtype=torch.long)
            mu, logvar = model.posterior(pool_c[idx][None], pool_r[idx][None], torch.ones(1, len(idx), dtype=torch.bool))
            z = sample_z(mu[0], logvar[0], n_samples, g)
            curve.append((preference_probs(model, z, ec, er).mean(0) > 0.5).float().mean().item())
            if stop is None and available.any():
                info = bald_score(preference_probs(model, z, pool_c[available], pool_r[available])).max().item()
                if info < stop_info:
                    stop = q
            if q == max_queries or not available.any():
                break
            pick = select_query(model, mu[0], logvar[0], pool_c, pool_r, available, strategy, n_samples, g)
            asked.append(pick)
            available[pick] = False
        curves.append(curve)
        stops.append(len(curve) - 1 if stop is None else stop)
    length = min(len(c) for c in curves)
    mean_curve = [sum(c[q] for c in curves) / len(curves) for q in range(length)]
    out = {"strategy": strategy, "mean_curve": mean_curve, "per_user": curves, "mean_stop": sum(stops) / len(stops),
           "mean_accuracy_at_stop": sum(c[s] for c, s in zip(curves, stops)) / len(curves)}
    if target is not None:
        per_user_q = [queries_to_reach(c, target) for c in curves]
        out["per_user_queries_to_target"] = [max_queries + 1 if q is None else q for q in per_user_q]
        out["mean_user_queries_to_target"] = sum(out["per_user_queries_to_target"]) / len(curves)
        out["frac_users_reaching_target"] = sum(q is not None for q in per_user_q) / len(curves)
    return out


def queries_to_reach(curve: list[float], target: float) -> int | None:
    return next((q for q, acc in enumerate(curve) if acc >= target), None)
