"""Pluralistic reward models: variational preference learning (VPL).

Poddar et al. 2024, "Personalizing Reinforcement Learning from Human Feedback with Variational
Preference Learning" (https://arxiv.org/abs/2408.10075; reference code
https://github.com/WEIRDLabUW/vpl_llm). One reward model serves many users whose preferences
disagree: a latent ``z`` summarises a user, inferred from a handful of that user's labelled
comparisons.

Objective (per user u with context comparisons C_u and target comparisons T_u, C_u ∩ T_u = ∅)::

    q(z | C_u)  = N(μ, diag σ²)           encoder over the set of the user's labelled comparisons
    r(x, y, z)  = g(ê) + z · f(ê)         ê = standardised frozen embedding of prompt + response
    ELBO_u      = E_{z~q}[ (1/|T_u|) Σ_{(y+, y-) ∈ T_u} log σ(r(x, y+, z) − r(x, y-, z)) ]
                  − β_t · KL(q(z | C_u) ‖ N(0, I))

The expectation uses one reparameterised sample per user per step; the loss is −ELBO averaged over
the users of a batch (16 by default). Note the 1/|T_u|: the log-likelihood is a per-comparison mean,
so β also absorbs the target-set size (β = 0.01 with 16–23 targets ≈ β_paper 0.16–0.23). β_t is
annealed linearly from 0 to β over the first 30% of epochs (``kl_warmup``), so the encoder learns to
use z before the KL pulls it towards the prior. The latent has 4 dimensions by default. Context sets
have a random size in 1..``max_context`` (8) every step, as in the paper.

Context sets are a user's own labelled comparisons. By default they are drawn *stratified over pair
kinds* (``stratified_context``: round-robin over the kinds present, contested kinds first), at
training time and for held-out users; ``--context-sampler random`` draws uniformly. The kind of a
pair (agreed, or contested on length / on formality) says which axis its two responses differ on,
which whoever chooses the questions knows; it says nothing about the user's answer or group. A
uniform draw of 8 from a pool of 24 sometimes holds zero or one comparison on an axis, and then
nothing can be inferred about that axis.

Encoder choice (``VPLRewardModel.posterior``): comparison i casts a vote
``v_i = normalise(h(d_i) − h(−d_i))`` with ``d_i = ê(chosen) − ê(rejected)`` and ``h`` an MLP; the
votes are summed, ``log(1 + |C|)`` is appended, and an MLP head outputs (μ, log σ²). An empty
context returns the prior N(0, I) exactly. Why each part (measured on ``builtin:pluralistic`` with
MiniLM, held-out users, 8 context comparisons):

- Antisymmetric votes (swapping a label negates the vote exactly) and unit norm (every comparison
  weighs the same): with a plain ``h(d_i)`` and a mean, 5–15% of held-out user × context draws
  stayed below 85% accuracy, most of them with a mislabelled comparison in the context that the
  model followed instead of the clean majority on that axis (a whole axis wrong).
- Sum, not mean: a sum of per-comparison votes is the form of a naive-Bayes log-odds, so two
  agreeing comparisons and one flipped one leave one net vote, as strong as a single clean one.
  With both changes 96.7–97.5% of held-out user × context draws reach 85% (3 training seeds); each
  of the 10 below had a mislabelled comparison in its context, 4 of them a majority of flipped
  labels on an axis, which no model can undo (``majority_flipped``).
- ``log(1 + |C|)``: without the set size the posterior variance could not shrink as evidence
  accumulates. ``--pooling mean`` and ``--pooling attention`` (the paper's: one self-attention
  layer over the votes, then the mean) are kept for comparison.

Embeddings are standardised per dimension with training statistics, so small style directions are
not drowned by topic content.

Reward head: ``bilinear`` (default) is ``r = g(ê) + z · f(ê)`` with ``[f, g]`` one MLP with Z + 1
outputs: a score shared by all users plus one learned style score per latent dimension, weighed by
the user's z. ``concat`` is the paper's ``MLP([ê, z])`` and ``interact`` is
``MLP([ê, z, ê ⊙ P z])`` (P a learned map from z to embedding space). With the earlier encoder
(mean pooling, an earlier version of the data, β = 0.01), ``interact`` left one of the two axes
users disagree on out of z in 3 of 6 training seeds, ``concat`` in the one seed tried,
``bilinear`` in none of 4. Dropout 0.5 on ``ê`` inside the reward head keeps it from memorising
the topic words of training prompts.

Restarts: even so, the ELBO has poor local optima that leave one axis out of z (1 of 8 seeds in the
fast-test configuration, hashed features): its training loss stays clearly higher (0.43 against
0.30–0.33 there). ``train_vpl`` trains ``restarts`` (3) runs from different seeds and keeps the one
with the lowest final training loss; selection sees only training users.

Reward scaling (the paper's expected-likelihood scaling, used by its VPL-SPO variant): a
Bradley–Terry reward is defined only up to a shift and its scale differs between latents, so raw
rewards of two users are not comparable. ``expected_likelihood_reward`` returns
``r̃(x, y, z) = E_{y' ∈ ref}[σ(r(x, y, z) − r(x', y', z))]`` ∈ [0, 1]: the probability that the
response beats a reference set (here, the responses being scored, or any set passed in). The
report shows the per-user spread of raw and scaled rewards.

Uncertainty and active learning: under q(z | answered), each candidate comparison has a distribution
of preference probabilities p_s = σ(r(a, z_s) − r(b, z_s)). ``bald`` (default) picks the candidate
with the largest mutual information H(E p) − E H(p) (expected information about z from the user's
answer); ``variance`` picks the largest Var_s p_s. Both prefer contested comparisons on an axis not
yet asked about, since agreed comparisons carry no information about z (held-out users, MiniLM: the
first two queries cover both axes for 67% / 70% of users against 28% for random picks, and 16% of
the first four queries are agreed pairs against 32%). Querying stops when no remaining candidate's
BALD score exceeds ``--stop-info`` (0.01 nats) or at ``--max-queries``. (An earlier rule, mean
predictive entropy of the pool below 0.2 nats, never fired: it counts label noise too, and a model
calibrated to 5% noise never predicts below H(0.05) ≈ 0.2 nats.)

Departures from the paper: frozen sentence embeddings and MLP heads instead of an LLM backbone
(the paper's LLM variant also embeds pairs with a frozen model); the bilinear head and the
vote-sum encoder above (the paper's ``concat`` head and attention pooling are options); best of
``restarts`` runs; by default extra embedding columns holding log(1 + words of the response)
(``--no-length-feature`` drops them; see ``embed_rows``); the stratified context sampler above; no
RL stage here — the trained model is a per-user reward for the preference-tuning trainers.

Run::

    posttrain reward --model-type vpl --data builtin:pluralistic --out runs/vpl --encoder minilm
    python -c "import sys, posttrain.pluralistic as p; sys.exit(p.main(sys.argv[1:]))" --help
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from posttrain.embeddings import embed_texts

# ---------------------------------------------------------------------------
# Math (pure functions)


def gaussian_kl_to_standard(mu_BZ: torch.Tensor, logvar_BZ: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per row = ½ Σ_z (μ² + σ² − 1 − log σ²). Shape (B,)."""
    return 0.5 * (mu_BZ.pow(2) + logvar_BZ.exp() - 1.0 - logvar_BZ).sum(-1)


def bradley_terry_nll(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """−log σ(r⁺ − r⁻), elementwise (no reduction)."""
    return -F.logsigmoid(r_chosen - r_rejected)


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


# ---------------------------------------------------------------------------
# Data → per-user tensors


@dataclass
class UserSet:
    """Comparisons grouped by user, padded to N per user.

    chosen_UND / rejected_UND: embeddings of prompt + response (U, N, D); valid_UN: (U, N) bool;
    contested_UN: (U, N) bool (row kind starts with "contested"; False when unknown);
    kind_UN: (U, N) long index into ``kinds`` (the row's ``kind`` column, "" when absent; −1 = padding).
    Kinds describe the *pair* (which axis its two responses differ on), never the user.
    flipped_UN: (U, N) bool, the row's ``noisy_flip`` column (the built-in generator marks labels it
    flipped as noise; False when absent). Used only to explain evaluation failures, never by a model.
    """

    user_ids: list[str]
    groups: list[str]
    chosen_UND: torch.Tensor
    rejected_UND: torch.Tensor
    valid_UN: torch.Tensor
    contested_UN: torch.Tensor
    kind_UN: torch.Tensor | None = None
    kinds: tuple[str, ...] = ()
    flipped_UN: torch.Tensor | None = None

    def user(self, u: int):
        n = int(self.valid_UN[u].sum())
        return self.chosen_UND[u, :n], self.rejected_UND[u, :n], self.contested_UN[u, :n]

    def user_kinds(self, u: int) -> torch.Tensor:
        n = int(self.valid_UN[u].sum())
        if self.kind_UN is None:
            return torch.zeros(n, dtype=torch.long)
        return self.kind_UN[u, :n]


def pair_text(prompt: str, response: str) -> str:
    return f"{prompt}\n{response}"


LENGTH_FEATURE_COPIES = 4


def response_length_feature(responses: list[str], copies: int = LENGTH_FEATURE_COPIES) -> torch.Tensor:
    """log(1 + number of words) of each response, repeated ``copies`` times → (N, copies)."""
    return torch.tensor([[math.log1p(len(t.split()))] * copies for t in responses], dtype=torch.float32)


def embed_rows(rows: list[dict], encoder: str, batch_size: int = 64,
               length_feature: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen embeddings of prompt + chosen and prompt + rejected → two (N, D) tensors.

    ``length_feature`` appends ``response_length_feature``: log(1 + words of the response) as
    ``LENGTH_FEATURE_COPIES`` (4) identical columns. Mean-pooled, L2-normalised sentence embeddings
    (MiniLM) are close to length-invariant. With an earlier encoder and data, VPL on MiniLM alone
    never put response length into its latent (held-out contested 71%); one column among 384 was
    not enough either, four copies (a heavier input weight, and input dropout no longer removes the
    whole signal at once) were. With the current model and data the feature is worth about 2.5
    points: held-out contested 97.2% with it (best of 3 restarts), 94.6% without (1 run); 97.5%
    against 95.8% of held-out user × draws ≥ 85% (seed 0). The columns are a property of the response text, like the embedding
    itself, and say nothing about the user.
    """
    texts = [pair_text(r["prompt"], r["chosen"]) for r in rows] + [pair_text(r["prompt"], r["rejected"]) for r in rows]
    e = embed_texts(texts, model=encoder, batch_size=batch_size)
    if length_feature:
        e = torch.cat([e, response_length_feature([r["chosen"] for r in rows] + [r["rejected"] for r in rows])], 1)
    return e[: len(rows)], e[len(rows):]


def group_users(rows: list[dict], chosen_ND: torch.Tensor, rejected_ND: torch.Tensor) -> UserSet:
    order: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        order.setdefault(r["user_id"], []).append(i)
    U, N, D = len(order), max((len(v) for v in order.values()), default=0), chosen_ND.shape[-1]
    c, rj = torch.zeros(U, N, D), torch.zeros(U, N, D)
    valid, contested = torch.zeros(U, N, dtype=torch.bool), torch.zeros(U, N, dtype=torch.bool)
    kinds = tuple(sorted({str(r.get("kind", "")) for r in rows}))
    kind_index = {k: i for i, k in enumerate(kinds)}
    kind = torch.full((U, N), -1, dtype=torch.long)
    flipped = torch.zeros(U, N, dtype=torch.bool)
    for u, idx in enumerate(order.values()):
        kind[u, : len(idx)] = torch.tensor([kind_index[str(rows[i].get("kind", ""))] for i in idx])
        flipped[u, : len(idx)] = torch.tensor([bool(rows[i].get("noisy_flip", False)) for i in idx])
        t = torch.tensor(idx)
        c[u, : len(idx)], rj[u, : len(idx)] = chosen_ND[t], rejected_ND[t]
        valid[u, : len(idx)] = True
        contested[u, : len(idx)] = torch.tensor([str(rows[i].get("kind", "")).startswith("contested") for i in idx])
    groups = [rows[idx[0]].get("group", "") for idx in order.values()]
    return UserSet(list(order), groups, c, rj, valid, contested, kind, kinds, flipped)


def stratified_context(kind_N: torch.Tensor, contested_N: torch.Tensor, k: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of ``k`` of one user's labelled comparisons, spread over pair kinds.

    Round-robin over the kinds present (contested kinds first, in random order, then the others),
    taking a random unused comparison of each kind in turn. With the built-in data and k = 8 this
    gives 3 + 3 contested comparisons (length, formality) and 2 agreed ones, so the context always
    says something about both axes on which users disagree. It uses only the pair's kind (which
    axis its two responses differ on), which a system asking the questions knows; never the user's
    group. Without a ``kind`` column every row has one kind and this is a plain random draw.
    """
    present = kind_N.unique().tolist()
    contested_kinds = [q for q in present if bool(contested_N[kind_N == q].any())]
    other = [q for q in present if q not in contested_kinds]
    ordered = [contested_kinds[i] for i in torch.randperm(len(contested_kinds), generator=generator)]
    ordered += [other[i] for i in torch.randperm(len(other), generator=generator)]
    queues = [torch.nonzero(kind_N == q).squeeze(-1) for q in ordered]
    queues = [qu[torch.randperm(len(qu), generator=generator)].tolist() for qu in queues]
    picked: list[int] = []
    while len(picked) < min(k, len(kind_N)):
        for qu in queues:
            if qu and len(picked) < k:
                picked.append(qu.pop())
    return torch.tensor(picked, dtype=torch.long)


# ---------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_users: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    beta: float = 0.01
    kl_warmup: float = 0.3  # fraction of epochs over which β rises linearly from 0
    max_context: int = 8
    latent_dim: int = 4
    hidden: int = 128
    pooling: str = "sum"
    reward_head: str = "bilinear"
    dropout: float = 0.5
    context_sampler: str = "stratified"  # train-time contexts: "stratified" (over pair kinds) or "random"
    restarts: int = 3  # independent runs; the lowest final training loss is kept (see train_vpl)
    seed: int = 0


def train_vpl(users: UserSet, cfg: TrainConfig, report: dict | None = None) -> tuple[VPLRewardModel, list[float]]:
    """Maximise the ELBO (module docstring); keep the best of ``cfg.restarts`` runs.

    The ELBO has poor local optima in which z encodes only one of the axes users disagree on (the
    other axis stays at chance for train users too). Restart r trains from seed
    ``cfg.seed + 1000·r``; the run with the lowest training loss (mean −ELBO over its last tenth of
    epochs) is returned with its loss history. Selection sees training users only. ``report``,
    when given, receives ``restart_final_losses`` and ``restart_chosen``.
    """
    runs = [_train_vpl_once(users, cfg, cfg.seed + 1000 * r) for r in range(max(1, cfg.restarts))]
    tail = max(1, cfg.epochs // 10)
    finals = [sum(h[-tail:]) / len(h[-tail:]) for _, h in runs]
    best = min(range(len(runs)), key=finals.__getitem__)
    if report is not None:
        report.update(restart_final_losses=finals, restart_chosen=best)
    return runs[best]


def _train_vpl_once(users: UserSet, cfg: TrainConfig, seed: int) -> tuple[VPLRewardModel, list[float]]:
    """One run of ``train_vpl``: random context sizes 1..max_context, KL annealed from 0 to β."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = VPLRewardModel(users.chosen_UND.shape[-1], cfg.latent_dim, cfg.hidden, cfg.pooling, cfg.reward_head,
                           cfg.dropout)
    flat_MD = torch.cat([users.chosen_UND[users.valid_UN], users.rejected_UND[users.valid_UN]])
    model.shift.copy_(flat_MD.mean(0))
    model.scale.copy_(flat_MD.std(0).clamp(min=1e-3))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    U, N = users.valid_UN.shape
    K = cfg.max_context
    kind_UN, contested_UN = users.kind_UN, users.contested_UN
    history = []
    warm = max(1, round(cfg.kl_warmup * cfg.epochs))
    for epoch in range(cfg.epochs):
        beta = cfg.beta * min(1.0, epoch / warm)  # KL annealing: 0 → β
        perm_users = torch.randperm(U, generator=g)
        epoch_loss = 0.0
        for start in range(0, U, cfg.batch_users):
            b = perm_users[start : start + cfg.batch_users]
            valid_BN = users.valid_UN[b]
            B = len(b)
            # Random order with valid comparisons first; first k are context, the rest targets.
            key_BN = torch.rand(B, N, generator=g)
            if cfg.context_sampler == "stratified" and kind_UN is not None:
                # Round-robin over pair kinds (stratified_context, vectorised): sort by the rank of a
                # comparison within its kind, contested kinds before agreed ones at equal rank.
                kind_BN = kind_UN[b]
                same_BNN = kind_BN[:, :, None] == kind_BN[:, None, :]
                within_BN = (same_BNN & (key_BN[:, None, :] < key_BN[:, :, None]) & valid_BN[:, None, :]).sum(-1)
                key_BN = within_BN + 0.5 * (~contested_UN[b]).float() + 0.1 * key_BN
            order_BN = (key_BN + (~valid_BN).float() * 1e4).argsort(1)
            n_valid_B = valid_BN.sum(1)
            k_B = torch.minimum(torch.randint(1, K + 1, (B,), generator=g), n_valid_B - 1)
            ctx_idx_BK = order_BN[:, :K]
            ctx_mask_BK = torch.arange(K)[None] < k_B[:, None]
            rows_B1 = torch.arange(B)[:, None]
            c_BND, r_BND = users.chosen_UND[b], users.rejected_UND[b]
            mu_BZ, logvar_BZ = model.posterior(c_BND[rows_B1, ctx_idx_BK], r_BND[rows_B1, ctx_idx_BK], ctx_mask_BK)
            z_BZ = mu_BZ + (0.5 * logvar_BZ).exp() * torch.randn(mu_BZ.shape, generator=g)
            rank_BN = order_BN.argsort(1)  # position of each comparison in the random order
            target_BN = valid_BN & (rank_BN >= k_B[:, None])
            nll_BN = bradley_terry_nll(model.reward(c_BND, z_BZ[:, None]), model.reward(r_BND, z_BZ[:, None]))
            nll_B = (nll_BN * target_BN).sum(1) / target_BN.sum(1).clamp(min=1)
            loss = (nll_B + beta * gaussian_kl_to_standard(mu_BZ, logvar_BZ)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_loss += loss.item() * B
        history.append(epoch_loss / U)
    return model.eval(), history


def train_bt(chosen_ND: torch.Tensor, rejected_ND: torch.Tensor, cfg: TrainConfig) -> tuple[BTRewardModel, list[float]]:
    """Population Bradley–Terry on the same embeddings, same optimiser, same number of epochs."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = BTRewardModel(chosen_ND.shape[-1], cfg.hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, bs = len(chosen_ND), 256
    history = []
    for _ in range(max(1, cfg.epochs // 4)):  # ~same number of steps as VPL (more rows per epoch)
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for start in range(0, n, bs):
            i = perm[start : start + bs]
            loss = bradley_terry_nll(model.reward(chosen_ND[i]), model.reward(rejected_ND[i])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(i)
        history.append(total / n)
    return model.eval(), history


# ---------------------------------------------------------------------------
# Evaluation on held-out users


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


# ---------------------------------------------------------------------------
# Saving and report


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model(model: nn.Module, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata={"config": json.dumps(metadata)})
    os.replace(tmp, path)


def load_vpl(path: str | Path) -> VPLRewardModel:
    """Load ``vpl.safetensors`` written by ``main`` (config travels in the file's metadata)."""
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


def _report(out: Path, args, metrics: dict, figures: list[str]) -> str:
    s = metrics["heldout"]
    al = metrics["active_learning"]
    n_q = len(next(iter(al["curves"].values()))["mean_curve"])
    per_draw = ", ".join(f"{x:.0%}" for x in s["frac_users_vpl_contested_ge_target_per_draw"])
    lines = [
        "# Pluralistic reward model (VPL) report", "",
        f"Data `{args.data}`, encoder `{args.encoder}`"
        f"{' + response-length feature' if args.length_feature else ''}, {metrics['n_train_users']} train users, "
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
        f"{metrics['n_heldout_users']} users × {args.al_seeds} seeds per strategy. Target: contested accuracy "
        f"≥ {al['target']:.0%}; a user who never reaches it within {args.max_queries} queries counts "
        f"{args.max_queries + 1}. Stop rule: largest BALD score over the pool < {args.stop_info} nats.", "",
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
        raise SystemExit(f"{spec}: missing columns {sorted(missing)} (need user_id, prompt, chosen, rejected, "
                         "role ∈ train/context/eval); or use --data builtin:pluralistic")
    return [r for r in rows if r["role"] == "train"], [r for r in rows if r["role"] in ("context", "eval")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posttrain reward --model-type vpl",
        description="Train a pluralistic (per-user latent) reward model with variational preference learning "
                    "(Poddar et al. 2024), compare it with a Bradley–Terry baseline on held-out users, and "
                    "measure active query selection. Writes weights, metrics.json and report.md to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("Data")
    g.add_argument("--data", default="builtin:pluralistic",
                   help="'builtin:pluralistic' or a jsonl with user_id, prompt, chosen, rejected, role "
                        "(train | context | eval), optional kind (contested_* | agreed)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the built-in generator")
    g.add_argument("--encoder", default="minilm", help="frozen text encoder: 'minilm', 'hash[:DIM]' or a local folder")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--length-feature", action=argparse.BooleanOptionalAction, default=True,
                   help="append log(1 + words of the response) to the frozen embedding (see embed_rows)")
    g = p.add_argument_group("Model")
    g.add_argument("--latent-dim", type=int, default=4)
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--pooling", choices=list(POOLINGS), default="sum",
                   help="pooling of the posterior encoder's per-comparison votes (attention: the paper's)")
    g.add_argument("--reward-head", choices=list(REWARD_HEADS), default="bilinear",
                   help="bilinear: g(e) + z.f(e); interact: MLP([e, z, e*Pz]); concat: MLP([e, z]) (paper)")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout on the response embedding in the reward head")
    g = p.add_argument_group("Optimization")
    g.add_argument("--epochs", type=int, default=50, help="passes over train users (context resampled every pass)")
    g.add_argument("--batch-users", type=int, default=16)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--beta", type=float, default=0.01, help="KL weight of the ELBO")
    g.add_argument("--kl-warmup", type=float, default=0.3, help="fraction of epochs over which the KL weight rises from 0 to --beta")
    g.add_argument("--max-context", type=int, default=8, help="context sets have a random size in 1..max-context")
    g.add_argument("--restarts", type=int, default=3,
                   help="independent VPL runs; the one with the lowest final training loss is kept")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("Evaluation")
    g.add_argument("--eval-context", type=int, default=8, help="context comparisons per held-out user")
    g.add_argument("--context-sampler", choices=["stratified", "random"], default="stratified",
                   help="how the held-out user's context comparisons are drawn from their labelled pool "
                        "(stratified: spread over pair kinds, see stratified_context)")
    g.add_argument("--eval-draws", type=int, default=3, help="independent context draws per held-out user")
    g.add_argument("--acquisition", choices=sorted(ACQUISITIONS), default="bald",
                   help="headline active query score (every score in the table is measured)")
    g.add_argument("--max-queries", type=int, default=12)
    g.add_argument("--stop-info", type=float, default=0.01,
                   help="stop asking when no candidate's BALD score (expected information about z, nats) exceeds this")
    g.add_argument("--target-accuracy", type=float, default=0.85)
    g.add_argument("--al-seeds", type=int, default=3, help="seeds per query strategy (random and active)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # --- data and frozen embeddings
    train_rows, heldout_rows = _load_rows(args.data, args.data_seed)
    ctx_rows, eval_rows = _split_heldout(heldout_rows)
    all_rows = train_rows + ctx_rows + eval_rows
    chosen_ND, rejected_ND = embed_rows(all_rows, args.encoder, length_feature=args.length_feature)
    n1, n2 = len(train_rows), len(train_rows) + len(ctx_rows)
    train_users = group_users(train_rows, chosen_ND[:n1], rejected_ND[:n1])
    ctx_users = group_users(ctx_rows, chosen_ND[n1:n2], rejected_ND[n1:n2])
    eval_users = group_users(eval_rows, chosen_ND[n2:], rejected_ND[n2:])
    if ctx_users.user_ids != eval_users.user_ids:
        raise SystemExit("every held-out user needs both context and eval rows")
    t_embed = time.time() - t0
    print(f"embedded {2 * len(all_rows)} texts with {args.encoder} in {t_embed:.1f}s")

    # --- train VPL and the Bradley–Terry baseline
    cfg = TrainConfig(epochs=args.epochs, batch_users=args.batch_users, lr=args.lr, beta=args.beta,
                      kl_warmup=args.kl_warmup, max_context=args.max_context, latent_dim=args.latent_dim,
                      hidden=args.hidden, pooling=args.pooling, reward_head=args.reward_head,
                      dropout=args.dropout, restarts=args.restarts, seed=args.seed)
    restarts: dict = {}
    vpl, vpl_hist = train_vpl(train_users, cfg, report=restarts)
    bt, bt_hist = train_bt(chosen_ND[:n1], rejected_ND[:n1], cfg)

    # --- evaluate on held-out users
    ev = evaluate_heldout(vpl, bt, ctx_users, eval_users, args.eval_context, seed=args.seed,
                          sampler=args.context_sampler, draws=args.eval_draws, target=args.target_accuracy)
    strategies = [args.acquisition] + [a for a in sorted(ACQUISITIONS) if a != args.acquisition] + ["random"]
    curves = {}
    for strategy in strategies:
        reps = [active_learning_curve(vpl, ctx_users, eval_users, strategy, args.max_queries, args.stop_info,
                                      seed=args.seed + 1 + i, target=args.target_accuracy) for i in range(args.al_seeds)]
        mean_curve = [sum(c) / len(c) for c in zip(*(r["mean_curve"] for r in reps))]
        curves[strategy] = {
            "strategy": strategy, "seeds": len(reps), "mean_curve": mean_curve,
            "queries_to_target": queries_to_reach(mean_curve, args.target_accuracy),
            "per_user_queries_to_target": [q for r in reps for q in r["per_user_queries_to_target"]],
            **{k: sum(r[k] for r in reps) / len(reps) for k in (
                "mean_user_queries_to_target", "frac_users_reaching_target", "mean_stop", "mean_accuracy_at_stop")},
        }

    # Reward scaling: per-user range of raw vs expected-likelihood rewards over that user's eval responses.
    raw_ranges, scaled_ranges = [], []
    for u in range(len(eval_users.user_ids)):
        cc, cr, _ = ctx_users.user(u)
        ec, er, _ = eval_users.user(u)
        k = min(len(cc), args.eval_context)
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
        "active_learning": {"target": args.target_accuracy, "curves": curves},
        "reward_scale": {"raw_range_mean": sum(raw_ranges) / len(raw_ranges), "raw_range_std": std(raw_ranges),
                         "scaled_range_mean": sum(scaled_ranges) / len(scaled_ranges), "scaled_range_std": std(scaled_ranges)},
        "vpl_restarts": restarts,
        "n_train_users": len(train_users.user_ids), "n_heldout_users": len(eval_users.user_ids),
        "embed_seconds": t_embed, "total_seconds": time.time() - t0, "config": vars(args),
    }

    # --- save weights, metrics, report
    meta = {**asdict(cfg), "embed_dim": int(chosen_ND.shape[-1]), "encoder": args.encoder,
            "length_feature": args.length_feature}
    save_model(vpl, out / "vpl.safetensors", meta)
    save_model(bt, out / "bt.safetensors", meta)
    _atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    figures = _plots(out, vpl_hist, bt_hist, ev, curves, args.target_accuracy, args.max_queries)
    _atomic_write_text(out / "report.md", _report(out, args, metrics, figures))
    s = ev["summary"]
    print(f"held-out contested: BT {s['bt_contested']:.1%}  VPL {s['vpl_contested']:.1%} "
          f"(agreed: BT {s['bt_agreed']:.1%}  VPL {s['vpl_agreed']:.1%}); VPL per user: "
          f"{s['frac_users_vpl_contested_ge_target']:.1%} ≥ {s['target']:.0%}, worst {s['vpl_contested_min_user']:.1%} "
          f"({s['n_majority_flipped']} majority-flipped contexts; others {s['frac_users_vpl_contested_ge_target_recoverable']:.1%})")
    for name, c in curves.items():
        print(f"{name:>8}: " + " ".join(f"{a:.2f}" for a in c["mean_curve"]) +
              f"  → queries to target: {c['mean_user_queries_to_target']:.2f} per user, mean curve q={c['queries_to_target']}")
    print(f"wrote {out / 'report.md'} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
