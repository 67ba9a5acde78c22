"""Per-token KL estimators and KL-coefficient controllers.

Estimators follow John Schulman, "Approximating KL divergence" (2020),
http://joschu.net/blog/kl-approx.html. Tokens are sampled from the policy π, so with
``log_r = log π_ref(y_t) - log π(y_t)`` (r = π_ref / π) the estimators of KL[π ‖ π_ref] are:

    k1 = -log r               = log π - log π_ref        unbiased, high variance, can be < 0
    k2 = ½ (log r)²                                       biased, low variance, ≥ 0
    k3 = (r - 1) - log r                                  unbiased, low variance, ≥ 0

All three are exactly 0 where ``logps == ref_logps``. k3 is what DeepSeekMath's GRPO puts in
the loss (Shao et al. 2024, eq. 4); k1 is the per-token penalty in the RLHF reward
R = r - β log(π/π_ref) (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2).

Reduction: none. Every estimator returns one value per token (same shape as its inputs); the
caller masks and aggregates (``posttrain.losses.policy`` does it with the policy loss's own
aggregation).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
]


def kl_k1(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor) -> torch.Tensor:
    """k1 = log π - log π_ref per token (unbiased for KL[π ‖ π_ref] under samples from π)."""
    return logps_BT - ref_logps_BT


def kl_k2(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π_ref - log π)² per token (biased; ≥ 0; its gradient is that of the true KL
    to first order)."""
    return 0.5 * (ref_logps_BT - logps_BT) ** 2


def kl_k3(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r per token with r = π_ref / π (unbiased; ≥ 0 because log r ≤ r - 1).

    No clamping of ``log r``: a very negative π relative to π_ref makes ``exp`` overflow, which
    the caller should see rather than have hidden.
    """
    log_r = ref_logps_BT - logps_BT
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimate(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL[π ‖ π_ref] estimate of ``kind`` (one of ``KL_ESTIMATORS``); no reduction.

    ``logps_BT`` are the sampled tokens' log-probs under the policy (the distribution the tokens
    were drawn from), ``ref_logps_BT`` under the reference. Returns a tensor of the same shape.
    """
    try:
        estimator = KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(f"unknown KL estimator {kind!r}; known: {sorted(KL_ESTIMATORS)}") from None
    return estimator(logps_BT, ref_logps_BT)


class FixedKLController:
    """A constant KL coefficient β; same interface as ``AdaptiveKLController``."""

    def __init__(self, coef: float) -> None:
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Does nothing; returns the (unchanged) coefficient."""
        return self.value


class AdaptiveKLController:
    """Proportional controller that steers the observed KL towards ``target``.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. 2:

        e_t     = clip((KL_t - KL_target) / KL_target, -0.2, 0.2)
        β_{t+1} = β_t (1 + K_β e_t)

    As in the reference code (openai/lm-human-preferences, and TRL's ``AdaptiveKLController``),
    the gain is ``K_β = n_steps / horizon``: ``n_steps`` is how many samples (or steps) the
    observed KL covers, ``horizon`` how many it should take to move β by the full clipped error.
    β goes up when the KL is above target and down when it is below.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Apply one controller step and return the new coefficient."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def gaussian_kl_to_standard(mu_BZ: torch.Tensor, logvar_BZ: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per row = ½ Σ_z (μ² + σ² − 1 − log σ²), shape (B,): the
    prior term of a VAE's ELBO (Kingma & Welling 2014, appendix B), as VPL's latent user model
    uses it (Poddar et al. 2024, eq. 3)."""
    return 0.5 * (mu_BZ.pow(2) + logvar_BZ.exp() - 1.0 - logvar_BZ).sum(-1)
