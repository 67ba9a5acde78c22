"""VPL math helpers and models: the ELBO terms, acquisition scores, the Bradley–Terry baseline,
the latent-conditioned reward model with its posterior encoder, and query selection.

See the package docstring (``posttrain.pluralistic``) for the objective and design choices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------
# Math (pure functions)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def bald_score(p_SN: torch.Tensor) -> torch.Tensor:
    """Mutual information between the answer and z: H(E_s p) − E_s H(p_s). Shape (N,)."""
    return binary_entropy(p_SN.mean(0)) - binary_entropy(p_SN).mean(0)


def variance_score(p_SN: torch.Tensor) -> torch.Tensor:
    """Variance over latent samples of the predicted preference probability. Shape (N,)."""
    return p_SN.var(0, unbiased=False)


ACQUISITIONS = {"bald": bald_score, "variance": variance_score}
POOLINGS = ("sum", "mean", "attention")
REWARD_HEADS = ("bilinear", "interact", "concat")


# ---------------------------------------------------------------------------
# Models


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class BTRewardModel(nn.Module):
    """Population Bradley–Terry baseline: r(x, y) = MLP(e(x, y)); no user latent."""

    def __init__(self, embed_dim: int, hidden: int = 128):
        super().__init__()
        self.net = mlp(embed_dim, hidden, 1)

    def reward(self, e_ND: torch.Tensor) -> torch.Tensor:
        return self.net(e_ND).squeeze(-1)


class VPLRewardModel(nn.Module):
    """Latent-conditioned reward r(x, y, z) with an amortised posterior q(z | context).

    Posterior encoder (``posterior``): comparison i enters as the ordered difference of
    standardised embeddings ``d_i = ê(chosen) − ê(rejected)`` and casts one *vote*
    ``v_i = normalise(h(d_i) − h(−d_i))``, with ``h`` an MLP. The vote is antisymmetric (swapping
    the label of a comparison negates its vote exactly) and has unit norm (no single comparison
    outweighs several others). Votes are pooled and ``log(1 + |C|)`` is appended before the head
    that outputs (μ, log σ²). Pooling (``pooling``):

    - ``"sum"`` (default): Σ_i v_i, the form of a naive-Bayes posterior (log-odds add up over
      independent comparisons), so two agreeing votes and one mislabelled vote on an axis leave one
      net vote, the same as a single clean comparison.
    - ``"mean"``: the masked mean of the votes.
    - ``"attention"``: the paper's choice, one self-attention layer over the votes, then the mean
      (the attention layer breaks the exact antisymmetry).

    Reward heads (``reward_head``):

    - ``"bilinear"`` (default): ``r = g(ê) + z · f(ê)`` with ``[f, g] = MLP(ê)`` (one trunk, Z + 1
      outputs): a shared score g plus one learned style score f_k per latent dimension, weighed by
      the user's z_k.
    - ``"interact"``: ``r = MLP([ê, z, ê ⊙ P z])`` with ``P`` a learned linear map from the
      latent to embedding space.
    - ``"concat"``: the paper's ``MLP([ê, z])``.

    ``dropout`` is applied to the standardised response embedding ``ê`` entering the reward head
    (training only), so the head cannot memorise the topic words of training prompts.
    """

    def __init__(self, embed_dim: int, latent_dim: int = 4, hidden: int = 128, pooling: str = "sum",
                 reward_head: str = "bilinear", dropout: float = 0.5):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if reward_head not in REWARD_HEADS:
            raise ValueError(f"reward_head must be one of {REWARD_HEADS}, got {reward_head!r}")
        self.latent_dim, self.pooling, self.reward_head, self.dropout = latent_dim, pooling, reward_head, dropout
        self.pair = mlp(embed_dim, hidden, hidden)
        # Per-dimension standardisation of the frozen embeddings (set from training data).
        self.register_buffer("shift", torch.zeros(embed_dim))
        self.register_buffer("scale", torch.ones(embed_dim))
        self.attn = nn.MultiheadAttention(hidden, num_heads=4, batch_first=True) if pooling == "attention" else None
        self.head = mlp(hidden + 1, hidden, 2 * latent_dim)
        if reward_head == "concat":
            self.reward_net = mlp(embed_dim + latent_dim, hidden, 1)
        elif reward_head == "interact":
            self.proj = nn.Linear(latent_dim, embed_dim, bias=False)
            self.reward_net = mlp(2 * embed_dim + latent_dim, hidden, 1)
        else:
            self.reward_net = mlp(embed_dim, hidden, latent_dim + 1)

    def votes(self, chosen_BKD: torch.Tensor, rejected_BKD: torch.Tensor) -> torch.Tensor:
        """Unit-norm antisymmetric vote of each comparison → (B, K, H)."""
        d_BKD = (chosen_BKD - rejected_BKD) / self.scale
        return F.normalize(self.pair(d_BKD) - self.pair(-d_BKD), dim=-1)

    def posterior(self, chosen_BKD: torch.Tensor, rejected_BKD: torch.Tensor, mask_BK: torch.Tensor):
        """→ (μ, log σ²), each (B, Z). Rows with an empty context get the prior (0, 0)."""
        B = chosen_BKD.shape[0]
        if chosen_BKD.shape[1] == 0:
            zeros = chosen_BKD.new_zeros(B, self.latent_dim)
            return zeros, zeros.clone()
        v_BKH = self.votes(chosen_BKD, rejected_BKD)
        n_B = mask_BK.sum(1)
        empty_B = n_B == 0
        if self.attn is not None:
            pad_BK = ~mask_BK.clone()
            pad_BK[empty_B] = False  # avoid all-masked softmax rows; overwritten by the prior below
            v_BKH = v_BKH + self.attn(v_BKH, v_BKH, v_BKH, key_padding_mask=pad_BK, need_weights=False)[0]
        m_BK1 = mask_BK.unsqueeze(-1).to(v_BKH.dtype)
        pooled_BH = (v_BKH * m_BK1).sum(1)
        if self.pooling != "sum":
            pooled_BH = pooled_BH / n_B.clamp(min=1).unsqueeze(-1).to(v_BKH.dtype)
        out = self.head(torch.cat([pooled_BH, torch.log1p(n_B.to(v_BKH.dtype)).unsqueeze(-1)], -1))
        mu_BZ, logvar_BZ = out.chunk(2, dim=-1)
        logvar_BZ = logvar_BZ.clamp(-8.0, 4.0)
        keep_B1 = (~empty_B).unsqueeze(-1).to(v_BKH.dtype)
        return mu_BZ * keep_B1, logvar_BZ * keep_B1

    def reward(self, e_ND: torch.Tensor, z_NZ: torch.Tensor) -> torch.Tensor:
        """r(x, y, z); ``e`` and ``z`` broadcast over leading dims. Returns e's leading shape."""
        shape = torch.broadcast_shapes(e_ND.shape[:-1], z_NZ.shape[:-1])
        e_ND = (e_ND - self.shift) / self.scale
        e_ND = F.dropout(e_ND, self.dropout, self.training)
        if self.reward_head == "bilinear":
            f = self.reward_net(e_ND)  # (..., Z + 1): per-response loadings on z, then a z-free term
            return ((f[..., :-1] * z_NZ).sum(-1) + f[..., -1]).expand(shape)
        e = e_ND.expand(*shape, e_ND.shape[-1])
        z = z_NZ.expand(*shape, z_NZ.shape[-1])
        if self.reward_head == "interact":
            return self.reward_net(torch.cat([e, z, e * self.proj(z)], -1)).squeeze(-1)
        return self.reward_net(torch.cat([e, z], -1)).squeeze(-1)


def sample_z(mu_Z: torch.Tensor, logvar_Z: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples from N(μ, σ²) → (n, Z)."""
    eps = torch.randn(n, mu_Z.shape[-1], generator=generator)
    return mu_Z + (0.5 * logvar_Z).exp() * eps


@torch.no_grad()
def preference_probs(model: VPLRewardModel, z_SZ: torch.Tensor, a_ND: torch.Tensor, b_ND: torch.Tensor) -> torch.Tensor:
    """P(a ≻ b | z_s) for every latent sample and pair → (S, N)."""
    z = z_SZ[:, None, :]
    return torch.sigmoid(model.reward(a_ND[None], z) - model.reward(b_ND[None], z))


@torch.no_grad()
def expected_likelihood_reward(model: VPLRewardModel, z_Z: torch.Tensor, e_ND: torch.Tensor, reference_MD: torch.Tensor) -> torch.Tensor:
    """r̃(y, z) = mean_m σ(r(y, z) − r(ref_m, z)) ∈ [0, 1] (VPL-SPO reward scaling). Shape (N,)."""
    r_N = model.reward(e_ND, z_Z[None])
    r_M = model.reward(reference_MD, z_Z[None])
    return torch.sigmoid(r_N[:, None] - r_M[None, :]).mean(1)


def select_query(model, mu_Z, logvar_Z, cand_a_ND, cand_b_ND, available_N, strategy="bald", n_samples=64, generator=None) -> int:
    """Index of the next comparison to ask: argmax of the acquisition over available candidates.

    ``model`` needs only ``.reward(e, z)``; ``strategy`` ∈ ``ACQUISITIONS`` or ``"random"``.
    """
    idx = torch.nonzero(available_N).squeeze(-1)
    if strategy == "random":
        return int(idx[torch.randint(len(idx), (1,), generator=generator)])
    z_SZ = sample_z(mu_Z, logvar_Z, n_samples, generator)
    scores_N = ACQUISITIONS[strategy](preference_probs(model, z_SZ, cand_a_ND[idx], cand_b_ND[idx]))
    return int(idx[scores_N.argmax()])
