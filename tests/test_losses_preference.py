"""Preference losses against values worked by hand.

All tensors are float64, so the only error is rounding of a handful of operations
(~1e-16 each); tolerances are 1e-12 unless stated.
"""

import math

import pytest
import torch

from posttrain.losses.preference import (
    LOSS_ALIASES,
    LOSS_SPECS,
    LossSpec,
    bradley_terry_loss,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    log_odds,
    loss_spec,
    orpo_loss,
    wpo_weights,
)

ATOL = 1e-12


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def softplus(x):
    """softplus(x) = log(1 + e^x), with math (so -log σ(x) = softplus(-x))."""
    return math.log1p(math.exp(x))


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64), rtol=0, atol=atol)


# --------------------------------------------------------------------------------------------
# DPO


def test_dpo_at_init_is_ln2():
    """policy == reference ⇒ h = 0 ⇒ loss = -log σ(0) = ln 2, for any β; rewards are 0."""
    logps = t(-12.5, -3.0, -40.0)
    for beta in (0.1, 5.0):
        losses, chosen_rewards, rejected_rewards = dpo_loss(logps, logps - 1.0, logps, logps - 1.0, beta=beta)
        assert torch.equal(losses, torch.full_like(losses, math.log(2)))
        assert torch.equal(chosen_rewards, torch.zeros(3, dtype=torch.float64))
        assert torch.equal(rejected_rewards, torch.zeros(3, dtype=torch.float64))


def test_dpo_hand_values():
    """β = 0.1; reference log-probs all -10 (they cancel); the policy moves chosen up by d and
    rejected down by d, d = 0, 5, 10, so h = 2d = 0, 10, 20 and βh = 0, 1, 2:

        loss = -log σ(βh) = log(1 + e^{-βh}) = ln 2 = 0.693147…, log(1 + e^{-1}) = 0.313262…,
                                               log(1 + e^{-2}) = 0.126928…
        chosen_rewards   = β(π_c - ref_c) = 0.1 · (0, 5, 10)  = (0, 0.5, 1)
        rejected_rewards = β(π_r - ref_r) = 0.1 · (0, -5, -10) = (0, -0.5, -1)
    """
    ref = t(-10.0, -10.0, -10.0)
    d = t(0.0, 5.0, 10.0)
    losses, chosen_rewards, rejected_rewards = dpo_loss(ref + d, ref - d, ref, ref, beta=0.1)
    close(losses, [math.log(2), softplus(-1.0), softplus(-2.0)])
    close(losses, [0.6931471805599453, 0.31326168751822286, 0.12692801104297263], atol=1e-15)
    close(chosen_rewards, [0.0, 0.5, 1.0])
    close(rejected_rewards, [0.0, -0.5, -1.0])
    assert not chosen_rewards.requires_grad


def test_dpo_rewards_are_detached_and_loss_has_grad():
    pc = t(-1.0, -2.0).requires_grad_()
    losses, chosen_rewards, _ = dpo_loss(pc, t(-3.0, -1.0), t(-1.5, -2.0), t(-2.0, -2.0))
    assert losses.requires_grad and not chosen_rewards.requires_grad
    losses.sum().backward()
    # d/dπ_c of -log σ(βh) = -β σ(-βh) < 0: raising the chosen log-prob lowers the loss.
    assert (pc.grad < 0).all()


@pytest.mark.parametrize("loss_type", ["dpo", "dpo_norm", "ipo", "hinge", "simpo"])
def test_gradient_matches_finite_differences(loss_type):
    """gradcheck compares autograd with central differences in float64 (its default tolerances,
    atol 1e-5 / rtol 1e-3, are the standard for eps = 1e-6 steps). The inputs keep βh away from
    the hinge's kink at βh = 1."""
    gen = torch.Generator().manual_seed(0)
    inputs = [(-5 * torch.rand(4, generator=gen, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    options = {"gamma": 0.3} if loss_type == "simpo" else {}

    def f(pc, pr, rc, rr):
        return dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type, **options)[0]

    assert torch.autograd.gradcheck(f, inputs)


def test_dpo_norm_is_dpo_on_mean_logps():
    """dpo_norm is the DPO formula on per-token MEAN log-probs (the caller averages).

    Chosen completion of 2 tokens, rejected of 4; sums and means:
        π_c: (-1, -3) → sum -4, mean -2      ref_c: (-2, -2) → sum -4, mean -2
        π_r: (-1,-1,-1,-5) → sum -8, mean -2  ref_r: (-1,-1,-1,-1) → sum -4, mean -1
    mean h = (−2 − −2) − (−2 − −1) = 1, so with β = 5 the loss is log(1 + e^{-5});
    on sums h = 0 − (−4) = 4, a different value, which is the point of normalising.
    """
    pc_T, rc_T = t(-1.0, -3.0), t(-2.0, -2.0)
    pr_T, rr_T = t(-1.0, -1.0, -1.0, -5.0), t(-1.0, -1.0, -1.0, -1.0)
    means = [x.mean().reshape(1) for x in (pc_T, pr_T, rc_T, rr_T)]
    sums = [x.sum().reshape(1) for x in (pc_T, pr_T, rc_T, rr_T)]
    norm_losses, chosen_rewards, rejected_rewards = dpo_loss(*means, beta=5.0, loss_type="dpo_norm")
    close(norm_losses, [softplus(-5.0)])
    close(norm_losses, dpo_loss(*means, beta=5.0, loss_type="dpo")[0])
    close(rejected_rewards, [5.0 * (-2.0 - -1.0)])
    sum_losses = dpo_loss(*sums, beta=5.0, loss_type="dpo")[0]
    close(sum_losses, [softplus(-20.0)])
    assert loss_spec("dpo_norm").length_normalized and not loss_spec("dpo").length_normalized


@pytest.mark.parametrize("alias", sorted(LOSS_ALIASES))
def test_trl_aliases_give_identical_values(alias):
    gen = torch.Generator().manual_seed(1)
    args = [-5 * torch.rand(6, generator=gen, dtype=torch.float64) for _ in range(4)]
    a = dpo_loss(*args, beta=0.3, loss_type=alias, label_smoothing=0.1)
    b = dpo_loss(*args, beta=0.3, loss_type=LOSS_ALIASES[alias], label_smoothing=0.1)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert LOSS_SPECS[alias] == loss_spec(alias) == loss_spec(LOSS_ALIASES[alias])


def test_label_smoothing_hand_value():
    """cDPO with ε = 0.1 at βh = 1:
        0.9·(-log σ(1)) + 0.1·(-log σ(-1)) = 0.9·log(1+e^{-1}) + 0.1·log(1+e)
    and since log(1+e) = 1 + log(1+e^{-1}) this is log(1+e^{-1}) + 0.1 = 0.413262…
    """
    losses, _, _ = dpo_loss(t(0.0), t(-10.0), t(0.0), t(0.0), beta=0.1, label_smoothing=0.1)
    close(losses, [0.9 * softplus(-1.0) + 0.1 * softplus(1.0)])
    close(losses, [softplus(-1.0) + 0.1])


def test_simpo_reference_free_hand_value():
    """SimPO, β = 2, γ = 0.5, mean log-probs π_c = -1.0, π_r = -1.5 (no reference):
        h = -1.0 - (-1.5) = 0.5;  βh - γ = 1 - 0.5 = 0.5;  loss = log(1 + e^{-0.5}) = 0.474077…
        rewards are β·log π: chosen -2, rejected -3.
    """
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        t(-1.0), t(-1.5), None, None, beta=2.0, loss_type="simpo", gamma=0.5
    )
    close(losses, [softplus(-0.5)])
    close(chosen_rewards, [-2.0])
    close(rejected_rewards, [-3.0])
    # Reference log-probs, if passed anyway, do not enter the loss.
    with_ref = dpo_loss(t(-1.0), t(-1.5), t(-9.0), t(0.0), beta=2.0, loss_type="simpo", gamma=0.5)[0]
    assert torch.equal(with_ref, losses)
    # Default γ = 0.5: same value.
    assert torch.equal(dpo_loss(t(-1.0), t(-1.5), None, None, beta=2.0, loss_type="simpo")[0], losses)


def test_ipo_hand_values():
    """IPO, β = 0.1 ⇒ target 1/(2β) = 5; h = 0, 5, 7 ⇒ (h - 5)² = 25, 0, 4."""
    h = t(0.0, 5.0, 7.0)
    zeros = torch.zeros(3, dtype=torch.float64)
    losses, _, _ = dpo_loss(h, zeros, zeros, zeros, beta=0.1, loss_type="ipo")
    close(losses, [25.0, 0.0, 4.0])


def test_hinge_hand_values():
    """Hinge, β = 0.1; h = 0, 5, 20 ⇒ max(0, 1 - βh) = 1, 0.5, 0."""
    h = t(0.0, 5.0, 20.0)
    zeros = torch.zeros(3, dtype=torch.float64)
    losses, _, _ = dpo_loss(h, zeros, zeros, zeros, beta=0.1, loss_type="hinge")
    close(losses, [1.0, 0.5, 0.0])


def test_unknown_type_lists_known_ones():
    x = t(-1.0)
    with pytest.raises(ValueError, match="known") as info:
        dpo_loss(x, x, x, x, loss_type="kto_typo")
    for name in ("dpo", "dpo_norm", "simpo", "ipo", "hinge", "sigmoid"):
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError):
        loss_spec("kto_typo")


def test_missing_reference_and_unknown_option_are_errors():
    x = t(-1.0)
    with pytest.raises(ValueError, match="reference"):
        dpo_loss(x, x, None, None, loss_type="dpo")
    with pytest.raises(TypeError):
        dpo_loss(x, x, x, x, loss_type="ipo", label_smoothing=0.1)  # IPO has no label smoothing
    with pytest.raises(TypeError):
        dpo_loss(x, x, x, x, loss_type="dpo", gamma=0.5)  # gamma belongs to simpo


def test_loss_specs():
    assert LOSS_SPECS["simpo"] == LossSpec(needs_reference=False, length_normalized=True)
    assert LOSS_SPECS["dpo"] == LossSpec(needs_reference=True, length_normalized=False)
    assert LOSS_SPECS["dpo_norm"] == LossSpec(needs_reference=True, length_normalized=True)
    assert all(LOSS_SPECS[name].needs_reference for name in ("ipo", "hinge", "sigmoid", "sigmoid_norm"))


def test_wpo_weights_multiply_losses():
    """Mean log-probs -0.5 (chosen) and -1.0 (rejected) ⇒ w = exp(-1.5) = 0.223130…;
    the weighted loss at init is w · ln 2. The weight is detached."""
    pc = t(-0.5).requires_grad_()
    w = wpo_weights(pc, t(-1.0))
    close(w, [math.exp(-1.5)])
    assert not w.requires_grad
    losses, _, _ = dpo_loss(pc, t(-1.0), pc.detach(), t(-1.0), weights=w)
    close(losses, [math.exp(-1.5) * math.log(2)])
    # Calibrated means can be > 0: clamped at 1 by default, not when max_weight=None.
    close(wpo_weights(t(0.3), t(0.2)), [1.0])
    close(wpo_weights(t(0.3), t(0.2), max_weight=None), [math.exp(0.5)])


# --------------------------------------------------------------------------------------------
# Bradley–Terry


def test_bradley_terry_hand_values():
    """r_c - r_r = 1, 0, -1 ⇒ loss = log(1+e^{-1}), ln 2, log(1+e); accuracy 1, 0 (tie), 0."""
    losses, accuracy = bradley_terry_loss(t(1.0, 0.0, 2.0), t(0.0, 0.0, 3.0))
    close(losses, [softplus(-1.0), math.log(2), softplus(1.0)])
    close(accuracy, [1.0, 0.0, 0.0])


def test_bradley_terry_margin_shifts_the_logit():
    """Llama 2 margin: (r_c, r_r, m) = (2, 0, 1) has logit 2 - 0 - 1 = 1, the same loss as (1, 0)
    without margin; accuracy still compares raw scores (2 > 0)."""
    with_margin, accuracy = bradley_terry_loss(t(2.0), t(0.0), margin_B=t(1.0))
    close(with_margin, [softplus(-1.0)])
    close(accuracy, [1.0])


def test_bradley_terry_centering_term():
    """center_coef = 0.01, r_c = 1, r_r = 2: extra 0.01·(1 + 2)² = 0.09 on top of log(1+e)."""
    losses, _ = bradley_terry_loss(t(1.0), t(2.0), center_coef=0.01)
    close(losses, [softplus(1.0) + 0.09])


# --------------------------------------------------------------------------------------------
# KTO


def test_kto_hand_values():
    """β = 0.5, z_ref = 1, λ_D = 1, λ_U = 2; the log-ratios r put β(r - z_ref) at ±ln 3 or 0, where
    σ(ln 3) = 3/4 and σ(-ln 3) = 1/4:

        desirable,   r = 1 + 2 ln 3:  1 · (1 - σ(ln 3))      = 1/4
        desirable,   r = 1 - 2 ln 3:  1 · (1 - σ(-ln 3))     = 3/4
        undesirable, r = 1 - 2 ln 3:  2 · (1 - σ(β(z - r)))  = 2 · (1 - σ(ln 3)) = 1/2
        undesirable, r = 1:           2 · (1 - σ(0))         = 1
        rewards = β r = 0.5 + ln 3, 0.5 - ln 3, 0.5 - ln 3, 0.5
    """
    ln3 = math.log(3)
    r = t(1 + 2 * ln3, 1 - 2 * ln3, 1 - 2 * ln3, 1.0)
    ref = t(-20.0, -20.0, -20.0, -20.0)
    desirable = torch.tensor([True, True, False, False])
    losses, rewards = kto_loss(ref + r, ref, desirable, t(1.0)[0], beta=0.5, desirable_weight=1.0,
                               undesirable_weight=2.0)
    close(losses, [0.25, 0.75, 0.5, 1.0])
    close(rewards, [0.5 + ln3, 0.5 - ln3, 0.5 - ln3, 0.5])


def test_kto_at_init_is_half_the_weight():
    """π = π_ref ⇒ r = 0, and the mismatched log-ratios are 0 too ⇒ z_ref = 0 ⇒ loss = λ_y · (1 - σ(0)) = λ_y / 2."""
    logps = t(-12.5, -3.0, -40.0)
    z = kto_reference_point(logps, logps)
    assert float(z) == 0.0
    losses, rewards = kto_loss(logps, logps, torch.tensor([True, False, False]), z, beta=0.1, desirable_weight=1.5,
                               undesirable_weight=0.5)
    close(losses, [0.75, 0.25, 0.25])
    close(rewards, [0.0, 0.0, 0.0])


def test_kto_reference_point_is_the_clamped_mismatched_mean_without_gradient():
    """Mismatched log-ratios (2, -1, 0): mean 1/3. (0, -3, 0): mean -1, clamped to 0. Inputs that
    require grad give a z_ref that does not, and kto_loss adds no gradient path through z_ref."""
    ref = t(-6.0, -6.0, -6.0)
    policy = t(-4.0, -7.0, -6.0).requires_grad_()
    z = kto_reference_point(policy, ref)
    close(z, 1 / 3)
    assert not z.requires_grad
    close(kto_reference_point(t(-6.0, -9.0, -6.0), ref), 0.0)
    z_with_grad = t(0.25)[0].requires_grad_()
    logps = t(-1.0, -2.0).requires_grad_()
    losses, _ = kto_loss(logps, t(-1.5, -1.5), torch.tensor([True, False]), z_with_grad, beta=1.0)
    losses.sum().backward()
    assert z_with_grad.grad is None and logps.grad is not None


# --------------------------------------------------------------------------------------------
# ORPO


def test_log_odds_hand_values_and_naive_formula_away_from_one():
    """P = 3/4 ⇒ odds 3; P = 1/2 ⇒ odds 1; P = 1/4 ⇒ odds 1/3. Away from P = 1 the stable form
    equals TRL's log ℓ - log1p(-exp ℓ) in float64."""
    means = t(math.log(0.75), math.log(0.5), math.log(0.25), -3.0)
    close(log_odds(means)[:3], [math.log(3), 0.0, -math.log(3)])
    close(log_odds(means), means - torch.log1p(-torch.exp(means)))


def test_log_odds_is_stable_near_p_one():
    """ℓ = -1e-4, -1e-5, -1e-6 in float32: log odds = ℓ - log(-expm1 ℓ) (13.8155… at -1e-6, from
    float64 math) to float32 rounding of a number ~14 (ulp 1e-6): atol 4e-6. The naive float32
    log1p(-exp ℓ) misses by 0.013 at -1e-6. At ℓ = 0 (P = 1: infinite odds) and just below the cap
    the value is the capped one, finite, with a finite gradient."""
    values = [-1e-4, -1e-5, -1e-6]
    means = torch.tensor(values, dtype=torch.float32)
    expected = torch.tensor([v - math.log(-math.expm1(v)) for v in values], dtype=torch.float32)
    torch.testing.assert_close(log_odds(means), expected, rtol=0, atol=4e-6)
    naive = means - torch.log1p(-torch.exp(means))
    assert abs(float(naive[2] - expected[2])) > 1e-2
    near_one = torch.tensor([0.0, -1e-9], dtype=torch.float32, requires_grad=True)
    capped = log_odds(near_one)
    torch.testing.assert_close(capped, torch.full((2,), float(expected[2])), rtol=0, atol=4e-6)
    capped.sum().backward()
    assert torch.isfinite(near_one.grad).all()


def test_orpo_hand_values():
    """λ = 0.1; per-token mean log-probs ℓ(y_w), ℓ(y_l) = (ln 3/4, ln 1/4), (ln 1/2, ln 1/2), (ln 1/4, ln 3/4):

        log odds ratio = ln 3 - ln 1/3 = ln 9,   0,   -ln 9
        L_OR = -log σ(h) = log(1 + e^-h)   = ln(10/9), ln 2, ln 10
        NLL  = -ℓ(y_w)                     = ln(4/3),  ln 2, ln 4
        loss = NLL + 0.1 L_OR
    """
    chosen = t(math.log(0.75), math.log(0.5), math.log(0.25)).requires_grad_()
    rejected = t(math.log(0.25), math.log(0.5), math.log(0.75))
    losses, nll, ratio = orpo_loss(chosen, rejected, orpo_lambda=0.1)
    close(ratio, [math.log(9), 0.0, -math.log(9)])
    close(nll, [math.log(4 / 3), math.log(2), math.log(4)])
    close(losses, [math.log(4 / 3) + 0.1 * math.log(10 / 9), 1.1 * math.log(2), math.log(4) + 0.1 * math.log(10)])
    assert not nll.requires_grad and not ratio.requires_grad and losses.requires_grad
