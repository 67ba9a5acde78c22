"""Fast tests for posttrain.pluralistic and its built-in data (hashed bag-of-words features)."""

import math

import pytest
import torch

from posttrain.data.builtin_pluralistic import make_pluralistic_dataset
from posttrain.losses.kl import gaussian_kl_to_standard
from posttrain.models.embeddings import embed_texts, hashed_bow_embeddings
from posttrain.pluralistic import (
    TrainConfig, VPLRewardModel, active_learning_curve, evaluate_heldout, embed_rows,
    group_users, majority_flipped, queries_to_reach, select_query, stratified_context, train_bt, train_vpl,
)

torch.set_num_threads(1)


def test_kl_hand_value():
    # KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1 − ln σ²); μ = 1, σ = 2 → ½(1 + 4 − 1 − ln 4) = 2 − ln 2.
    mu = torch.tensor([[1.0]])
    logvar = torch.tensor([[math.log(4.0)]])
    assert gaussian_kl_to_standard(mu, logvar).item() == pytest.approx(2 - math.log(2), abs=1e-6)
    # Two independent dims add; the prior itself has KL 0.
    assert gaussian_kl_to_standard(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0


def test_hashed_bow_is_deterministic_and_unit_norm():
    a = hashed_bow_embeddings(["Just do it, easy!", "To proceed, first consult."], dim=64)
    b = embed_texts(["Just do it, easy!", "To proceed, first consult."], model="hash:64")
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2))


def test_dataset_determinism_and_disjoint_users():
    d1, d2 = make_pluralistic_dataset(seed=3), make_pluralistic_dataset(seed=3)
    assert d1.train == d2.train and d1.heldout == d2.heldout
    assert make_pluralistic_dataset(seed=4).train != d1.train
    train_users = {r["user_id"] for r in d1.train}
    heldout_users = {r["user_id"] for r in d1.heldout}
    assert train_users and heldout_users and not (train_users & heldout_users)
    assert {r["prompt"] for r in d1.train}.isdisjoint({r["prompt"] for r in d1.heldout})
    kinds = {r["kind"] for r in d1.train}
    assert kinds == {"agreed", "contested_length", "contested_formality"}
    # Every user's labelled comparisons cover both contested axes (exact per-user quotas).
    for rows in (d1.train, [r for r in d1.heldout if r["role"] == "context"]):
        per_user: dict[str, list[str]] = {}
        for r in rows:
            per_user.setdefault(r["user_id"], []).append(r["kind"])
        for ks in per_user.values():
            assert ks.count("contested_length") >= 7 and ks.count("contested_formality") >= 7


def test_agreed_pairs_carry_no_style_signal():
    # Unhelpful responses come in the four styles too, drawn independently of the helpful one, so
    # "helpful vs unhelpful" says nothing about length or formality (no population-wide style cue).
    d = make_pluralistic_dataset(seed=0)
    agreed = [r for r in d.train if r["kind"] == "agreed" and not r["noisy_flip"]]
    words = lambda t: len(t.split())  # noqa: E731
    longer = sum(words(r["chosen"]) > words(r["rejected"]) for r in agreed) / len(agreed)
    assert 0.4 < longer < 0.6  # chosen is the longer one about half the time
    formal = lambda t: "Certainly" in t or "In brief" in t  # noqa: E731 (every formal template opens so)
    assert 0.4 < sum(formal(r["rejected"]) for r in agreed) / len(agreed) < 0.6


def test_majority_flipped_table():
    # kinds: 0 = agreed, 1 / 2 = contested axes; a context is unrecoverable when, on some contested
    # axis, at least half of its comparisons carry a flipped label.
    kind = torch.tensor([1, 1, 1, 2, 2, 2, 0, 0])
    contested = kind > 0
    rows = [
        ([], False),            # clean
        ([0], False),           # 1 of 3 flipped on axis 1: the majority still holds
        ([0, 3], False),        # 1 of 3 on each axis
        ([6, 7], False),        # flipped agreed pairs do not count
        ([0, 1], True),         # 2 of 3 on axis 1
        ([3, 4, 5], True),      # all of axis 2
    ]
    for flipped_idx, expected in rows:
        flipped = torch.zeros(8, dtype=torch.bool)
        flipped[flipped_idx] = True
        assert majority_flipped(kind, contested, flipped) is expected, flipped_idx
    # A tie (1 of 2) cannot be resolved either.
    assert majority_flipped(torch.tensor([1, 1]), torch.tensor([True, True]), torch.tensor([True, False]))


def test_votes_are_antisymmetric_and_unit_norm():
    torch.manual_seed(0)
    model = VPLRewardModel(16, latent_dim=2, hidden=8)
    a, b = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    v_ab, v_ba = model.votes(a, b), model.votes(b, a)
    assert torch.allclose(v_ab, -v_ba, atol=1e-6)  # swapping the label negates the vote
    assert torch.allclose(v_ab.norm(dim=-1), torch.ones(1, 5), atol=1e-6)
    # Sum pooling: a comparison and its flipped copy cancel, leaving the rest of the context.
    ones = torch.ones(1, 3, dtype=torch.bool)
    ctx_c, ctx_r = torch.cat([a[:, :2], b[:, 1:2]], 1), torch.cat([b[:, :2], a[:, 1:2]], 1)
    assert torch.allclose(model.votes(ctx_c, ctx_r).masked_fill(~ones[..., None], 0).sum(1), v_ab[:, 0], atol=1e-6)


def test_stratified_context_covers_both_axes():
    kind = torch.tensor([0] * 10 + [1] * 3 + [2] * 3)  # 0 = agreed, 1/2 = the contested axes
    contested = kind > 0
    for seed in range(5):
        pick = stratified_context(kind, contested, 8, torch.Generator().manual_seed(seed))
        assert len(pick) == len(set(pick.tolist())) == 8
        assert (kind[pick] == 1).sum() == 3 and (kind[pick] == 2).sum() == 3 and (kind[pick] == 0).sum() == 2


def _trained(epochs=30):
    d = make_pluralistic_dataset(seed=0, users_per_group_train=30, users_per_group_heldout=8)
    ctx = [r for r in d.heldout if r["role"] == "context"]
    ev = [r for r in d.heldout if r["role"] == "eval"]
    c, r = embed_rows(d.train + ctx + ev, "hash:128", length_feature=True)
    n1, n2 = len(d.train), len(d.train) + len(ctx)
    users = group_users(d.train, c[:n1], r[:n1])
    cfg = TrainConfig(epochs=epochs, batch_users=8, lr=2e-3, hidden=128, latent_dim=4, restarts=2, seed=0)
    vpl, _ = train_vpl(users, cfg)
    bt, _ = train_bt(c[:n1], r[:n1], cfg)
    return vpl, bt, group_users(ctx, c[n1:n2], r[n1:n2]), group_users(ev, c[n2:], r[n2:])


@pytest.fixture(scope="module")
def trained():
    return _trained()


def test_restarts_keep_the_lowest_final_loss():
    d = make_pluralistic_dataset(seed=0, users_per_group_train=2, users_per_group_heldout=1)
    c, r = embed_rows(d.train, "hash:32")
    report: dict = {}
    _, history = train_vpl(group_users(d.train, c, r), TrainConfig(epochs=3, hidden=16, restarts=3), report=report)
    finals = report["restart_final_losses"]
    assert len(finals) == 3 and report["restart_chosen"] == finals.index(min(finals))
    assert history[-1] == pytest.approx(min(finals))  # epochs // 10 = 0 → the last epoch's loss


def test_posterior_reacts_to_context(trained):
    vpl, _, ctx, _ = trained
    c, r, contested = ctx.user(0)
    c, r = c[contested][:6], r[contested][:6]
    mask = torch.ones(1, len(c), dtype=torch.bool)
    mu_a, _ = vpl.posterior(c[None], r[None], mask)
    mu_b, _ = vpl.posterior(r[None], c[None], mask)  # the same pairs with opposite labels
    assert (mu_a - mu_b).norm().item() > 0.1
    mu_0, logvar_0 = vpl.posterior(c[None, :0], r[None, :0], mask[:, :0])
    assert torch.equal(mu_0, torch.zeros_like(mu_0)) and torch.equal(logvar_0, torch.zeros_like(logvar_0))


def test_vpl_beats_bt_on_contested_pairs_for_every_user(trained):
    # Held-out users (unseen users and prompt topics), 8 context comparisons from the user's own
    # labelled pool (stratified sampler), 3 context draws per user; eval labels are noise-free and
    # every user has 32 contested eval comparisons, so one error moves a user's accuracy by 3%.
    vpl, bt, ctx, ev = trained
    s = evaluate_heldout(vpl, bt, ctx, ev, n_context=8, draws=3)["summary"]
    assert s["n_contested_eval_per_user"] == 32
    assert 0.40 <= s["bt_contested"] <= 0.60  # a population model can only guess on contested pairs
    assert s["bt_agreed"] > 0.9 and s["vpl_agreed"] > 0.85
    # Per user: every user × draw whose context is not majority-flipped by label noise reaches 85%.
    assert s["frac_users_vpl_contested_ge_target_recoverable"] == 1.0
    assert s["vpl_contested_min_user_recoverable"] >= 0.85
    assert s["vpl_contested"] >= 0.9


def test_active_selection_beats_random(trained):
    # Mean over 32 held-out users × 3 seeds of the first query count at which the user's contested
    # accuracy reaches 85% (never within 8 queries counts 9).
    vpl, _, ctx, ev = trained
    target, max_q = 0.85, 8
    q = {}
    for strategy in ("bald", "variance", "random"):
        runs = [active_learning_curve(vpl, ctx, ev, strategy, max_q, seed=s, target=target) for s in (1, 2, 3)]
        q[strategy] = sum(r["mean_user_queries_to_target"] for r in runs) / len(runs)
        curve = [sum(c) / len(c) for c in zip(*(r["mean_curve"] for r in runs))]
        q[strategy + "_curve"] = queries_to_reach(curve, target)
    assert q["bald"] + 0.5 <= q["random"] and q["variance"] + 0.5 <= q["random"], q
    assert q["bald_curve"] is not None and (q["random_curve"] is None or q["bald_curve"] < q["random_curve"]), q


class _StubModel:
    """r(e, z) = z₀·e₀ + e₁: e₀ is a contested axis (sign depends on z), e₁ an agreed one."""

    def reward(self, e, z):
        return z[..., 0] * e[..., 0] + e[..., 1]


@pytest.mark.parametrize("strategy", ["bald", "variance"])
def test_active_selection_picks_highest_variance_candidate(strategy):
    a = torch.tensor([[0.0, 3.0], [0.2, 0.0], [2.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    pick = select_query(_StubModel(), torch.zeros(2), torch.zeros(2), a, b, torch.ones(4, dtype=torch.bool), strategy, 256, g)
    assert pick == 2  # the largest contested difference; the agreed pair 0 has zero variance
    available = torch.tensor([True, True, False, True])
    assert select_query(_StubModel(), torch.zeros(2), torch.zeros(2), a, b, available, strategy, 256, g) == 3


def test_main_writes_run_folder(tmp_path):
    from posttrain.pluralistic import load_vpl, main

    assert main(["--help"]) == 0   # the options of `posttrain reward model_type=vpl`
    assert main(["--encoder", "hash:64", "--out", str(tmp_path), "--epochs", "2", "--hidden", "32",
                 "--max-queries", "2", "--al-seeds", "1", "--eval-draws", "1", "--restarts", "1"]) == 0
    for name in ("vpl.safetensors", "bt.safetensors", "metrics.json", "report.md", "active_learning.png"):
        assert (tmp_path / name).exists()
    assert isinstance(load_vpl(tmp_path / "vpl.safetensors"), VPLRewardModel)
