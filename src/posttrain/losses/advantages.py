"""Advantage estimators: group-relative (GRPO, Dr. GRPO), leave-one-out (RLOO), GAE, whitening,
and the KL-penalised rewards they start from (``sequence_rewards``, ``token_rewards``).

Layout convention for the group estimators: rows are group-contiguous, i.e. for ``group_size = k``
rows ``0..k-1`` are prompt 0's k completions, rows ``k..2k-1`` prompt 1's, and so on, so
``rewards_B.view(-1, k)`` is ``rewards_GK`` (G groups × K completions).

Reductions are stated per function; nothing here averages over the batch.
"""

from __future__ import annotations

from typing import Callable

import torch

from posttrain.losses.kl import kl_estimate

__all__ = [
    "GROUP_NORMALIZERS",
    "gae",
    "group_advantages",
    "rloo_advantages",
    "sequence_rewards",
    "token_rewards",
    "whiten",
]


def sequence_rewards(scores_B: torch.Tensor, old_logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor | None,
                     mask_BT: torch.Tensor, beta: float, kl_in: str, kl_estimator: str) -> torch.Tensor:
    """One reward per sequence (B,): the score, minus β·Σ_t KL_t over its sampled tokens when
    the KL goes into the reward (``kl_in="reward"``, β > 0, a reference exists); else the score.
    KL_t is ``kl_estimate(old_logps_BT, ref_logps_BT, kl_estimator)``."""
    if kl_in != "reward" or beta == 0 or ref_logps_BT is None:
        return scores_B
    kl_B = (kl_estimate(old_logps_BT, ref_logps_BT, kl_estimator) * mask_BT).sum(-1)
    return scores_B - beta * kl_B


def token_rewards(scores_B: torch.Tensor, old_logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor | None,
                  mask_BT: torch.Tensor, beta: float, kl_in: str, kl_estimator: str) -> torch.Tensor:
    """Per-token rewards (B, T): -β·KL_t on each sampled token (when ``kl_in="reward"``) plus the
    sequence score on the last sampled token (Ziegler et al. 2019; TRL's PPOTrainer; the
    "token-level KL penalty" of REINFORCE++, Hu 2025). Zero on padding."""
    rewards_BT = torch.zeros_like(mask_BT)
    if kl_in == "reward" and beta > 0 and ref_logps_BT is not None:
        rewards_BT = -beta * kl_estimate(old_logps_BT, ref_logps_BT, kl_estimator) * mask_BT
    last_B = (mask_BT.sum(-1) - 1).clamp(min=0).long()
    rewards_BT[torch.arange(mask_BT.shape[0]), last_B] += scores_B
    return rewards_BT


def _as_groups(rewards_B: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards_B.dim() != 1:
        raise ValueError(f"rewards_B must be 1-D, got shape {tuple(rewards_B.shape)}")
    if group_size < 1 or rewards_B.numel() % group_size:
        raise ValueError(f"{rewards_B.numel()} rewards are not a whole number of groups of {group_size}")
    return rewards_B.view(-1, group_size)  # (G, K)


def _normalize_std(centered_GK: torch.Tensor, std_G1: torch.Tensor, eps: float) -> torch.Tensor:
    return centered_GK / (std_G1 + eps)


def _normalize_center(centered_GK: torch.Tensor, std_G1: torch.Tensor, eps: float) -> torch.Tensor:
    return centered_GK


GROUP_NORMALIZERS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "std": _normalize_std,  # GRPO (Shao et al. 2024)
    "center": _normalize_center,  # Dr. GRPO (Liu et al. 2025): no division by the std
}


def group_advantages(
    rewards_B: torch.Tensor, group_size: int, normalize: str = "std", eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Group-relative advantages, one per completion.

    GRPO with outcome supervision (Shao et al. 2024, DeepSeekMath, §4.1.2):

        Â_i = (r_i - mean(r_group)) / (std(r_group) + eps)        normalize="std"

    Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") drops the std, which
    up-weights questions that are too easy or too hard (low std):

        Â_i = r_i - mean(r_group)                                  normalize="center"

    Departures / choices: the std is the unbiased (Bessel-corrected, ``k - 1``) sample std, as in
    TRL's GRPOTrainer; the paper does not say which. ``eps`` guards groups whose rewards are all
    equal: their advantages are exactly 0 (they carry no learning signal; DAPO's dynamic sampling
    drops them — see ``zero_std_G``). With ``group_size = 1`` every advantage is 0.

    Args:
        rewards_B: (B,) scalar rewards, group-contiguous (see module docstring).
        group_size: completions per prompt, K; B must be a multiple of K.
        normalize: one of ``GROUP_NORMALIZERS``.

    Returns:
        advantages_B: (B,), summing to 0 within each group. No reduction.
        diagnostics (all detached): ``reward_mean_G``, ``reward_std_G`` (G,) per group;
        ``zero_std_G`` (G,) bool, True where every reward in the group is equal;
        ``frac_zero_std`` scalar, fraction of such groups.
    """
    try:
        normalizer = GROUP_NORMALIZERS[normalize]
    except KeyError:
        raise ValueError(f"unknown normalize {normalize!r}; known: {sorted(GROUP_NORMALIZERS)}") from None
    rewards_GK = _as_groups(rewards_B, group_size)
    mean_G1 = rewards_GK.mean(dim=1, keepdim=True)
    if group_size > 1:
        std_G1 = rewards_GK.std(dim=1, keepdim=True)
    else:
        std_G1 = torch.zeros_like(mean_G1)
    advantages_GK = normalizer(rewards_GK - mean_G1, std_G1, eps)
    zero_std_G = (rewards_GK == rewards_GK[:, :1]).all(dim=1)
    diagnostics = {
        "reward_mean_G": mean_G1.squeeze(1).detach(),
        "reward_std_G": std_G1.squeeze(1).detach(),
        "zero_std_G": zero_std_G,
        "frac_zero_std": zero_std_G.to(rewards_B.dtype).mean(),
    }
    return advantages_GK.reshape(-1), diagnostics


def rloo_advantages(rewards_B: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024, "Back to
    Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback"):

        A_i = r_i - 1/(k-1) Σ_{j≠i} r_j  =  k/(k-1) · (r_i - mean(r_group))

    Rows are group-contiguous; ``group_size = k ≥ 2``. Returns (B,), no reduction; the
    advantages of a group sum to 0.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 (a baseline from the other samples), got {group_size}")
    rewards_GK = _as_groups(rewards_B, group_size)
    baseline_GK = (rewards_GK.sum(dim=1, keepdim=True) - rewards_GK) / (group_size - 1)
    return (rewards_GK - baseline_GK).reshape(-1)


def gae(
    rewards_BT: torch.Tensor,
    values_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16), per token.

        δ_t = r_t + γ V_{t+1} - V_t
        Â_t = Σ_{l≥0} (γλ)^l δ_{t+l}   computed backwards as  Â_t = δ_t + γλ Â_{t+1}
        R_t = Â_t + V_t                 (the value target, "returns")

    The episode ends after the last token where ``mask_BT`` is 1: there V_{t+1} = 0 and
    Â_{t+1} = 0 (terminal), so padding never leaks into valid positions. ``mask_BT`` must mark
    one contiguous span per row (right padding, left padding, or none); a hole in the middle
    would be read as an episode end. Rewards and values under the mask are ignored.

    Args:
        rewards_BT: (B, T) per-token rewards (for RLHF: -β·KL per token plus the score on the
            last valid token).
        values_BT: (B, T) value estimates V(s_t).
        mask_BT: (B, T) 1 for valid (generated) tokens, 0 for padding.

    Returns:
        advantages_BT, returns_BT: (B, T), zero where the mask is 0; no reduction. Detached
        (they are targets, not part of the graph).
    """
    mask_BT = mask_BT.to(values_BT.dtype)
    rewards_BT = (rewards_BT * mask_BT).detach()
    values_BT = (values_BT * mask_BT).detach()
    T = rewards_BT.shape[1]
    advantages_BT = torch.zeros_like(values_BT)
    next_advantage_B = torch.zeros_like(values_BT[:, 0])
    for t in reversed(range(T)):
        if t + 1 < T:
            next_mask_B = mask_BT[:, t + 1]
            next_value_B = values_BT[:, t + 1]
        else:
            next_mask_B = torch.zeros_like(next_advantage_B)
            next_value_B = torch.zeros_like(next_advantage_B)
        delta_B = rewards_BT[:, t] + gamma * next_value_B * next_mask_B - values_BT[:, t]
        next_advantage_B = delta_B + gamma * lam * next_mask_B * next_advantage_B
        advantages_BT[:, t] = next_advantage_B
    advantages_BT = advantages_BT * mask_BT
    returns_BT = (advantages_BT + values_BT) * mask_BT
    return advantages_BT, returns_BT


def whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8,
    reduce_sum: Callable[[list[float]], list[float]] | None = None,
) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean unless ``shift_mean=False``) over the
    entries where ``mask`` is 1 (all entries when ``mask`` is None):

        x̂ = (x - μ) / sqrt(σ² + eps)      (+ μ again when shift_mean=False)

    σ² is the unbiased (n - 1) variance over the masked entries, as in TRL's ``masked_whiten``.
    Masked-out entries are returned as 0. Statistics are over the whole tensor; ``reduce_sum``
    (element-wise sums over processes, ``Engine.all_reduce_sum``) makes them those of the global
    batch, so whitening does not depend on how the batch is split across processes.
    """
    if mask is None:
        mask = torch.ones_like(x)
    mask = mask.to(x.dtype)
    n, total = mask.sum(), (x * mask).sum()
    if reduce_sum is not None:
        n, total = (torch.tensor(v, dtype=x.dtype) for v in reduce_sum([float(n), float(total)]))
    mean = total / n
    squares = (((x - mean) ** 2) * mask).sum()
    if reduce_sum is not None:
        squares = torch.tensor(reduce_sum([float(squares)])[0], dtype=x.dtype)
    var = squares / (n - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
