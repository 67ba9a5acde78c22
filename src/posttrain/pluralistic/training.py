"""Training of the VPL reward model (ELBO, best of several restarts) and the Bradley–Terry baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.config import opt
from posttrain.pluralistic.data import UserSet
from posttrain.losses.kl import gaussian_kl_to_standard
from posttrain.losses.preference import bradley_terry_loss
from posttrain.pluralistic.model import BTRewardModel, VPLRewardModel


CONTEXT_SAMPLERS = ("stratified", "random")


@dataclass
class TrainConfig:
    """Training options of the VPL model and its Bradley–Terry baseline (``train_vpl``,
    ``train_bt``); ``posttrain reward model_type=vpl`` sets them (``cli.VPLConfig`` adds the data,
    encoder and evaluation options)."""

    epochs: int = opt(50, "passes over train users (context sets resampled every pass); the Bradley–Terry "
                      "baseline takes epochs / 4 passes over the pairs", "Optimization")
    batch_users: int = opt(16, "users per optimizer step", "Optimization")
    lr: float = opt(2e-3, "AdamW learning rate", "Optimization")
    weight_decay: float = opt(1e-4, "AdamW weight decay", "Optimization")
    beta: float = opt(0.01, "KL weight of the ELBO", "Optimization")
    kl_warmup: float = opt(0.3, "share of epochs over which the KL weight rises linearly from 0 to beta", "Optimization")
    max_context: int = opt(8, "training context sets have a random size in 1..max_context", "Optimization")
    train_context_sampler: str = opt("stratified", "how training users' context sets are drawn: stratified "
                                     "(spread over pair kinds, see stratified_context) or random", "Optimization")
    restarts: int = opt(3, "independent VPL runs; the one with the lowest final training loss is kept", "Optimization")
    latent_dim: int = opt(4, "dimensions of the user latent z", "Model")
    hidden: int = opt(128, "hidden width of the encoder and reward MLPs", "Model")
    pooling: str = opt("sum", "pooling of the posterior encoder's per-comparison votes: sum, mean or attention "
                       "(the paper's)", "Model")
    reward_head: str = opt("bilinear", "bilinear: g(e) + z·f(e); interact: MLP([e, z, e⊙Pz]); concat: MLP([e, z]) "
                           "(the paper's)", "Model")
    dropout: float = opt(0.5, "dropout on the response embedding in the reward head", "Model")
    seed: int = opt(0, "seed of initialisation, context sets and restarts (restart r uses seed + 1000·r)", "Run")


def train_vpl(users: UserSet, cfg: TrainConfig, report: dict | None = None) -> tuple[VPLRewardModel, list[float]]:
    """Maximise the ELBO (``posttrain.pluralistic`` docstring); keep the best of ``cfg.restarts`` runs.

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
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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
            if cfg.train_context_sampler == "stratified" and kind_UN is not None:
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
            nll_BN, _ = bradley_terry_loss(model.reward(c_BND, z_BZ[:, None]), model.reward(r_BND, z_BZ[:, None]))
            nll_B = (nll_BN * target_BN).sum(1) / target_BN.sum(1).clamp(min=1)
            loss = (nll_B + beta * gaussian_kl_to_standard(mu_BZ, logvar_BZ)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * B
        history.append(epoch_loss / U)
    return model.eval(), history


def train_bt(chosen_ND: torch.Tensor, rejected_ND: torch.Tensor, cfg: TrainConfig) -> tuple[BTRewardModel, list[float]]:
    """Population Bradley–Terry on the same embeddings, same optimiser, same number of epochs."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = BTRewardModel(chosen_ND.shape[-1], cfg.hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, bs = len(chosen_ND), 256
    history = []
    for _ in range(max(1, cfg.epochs // 4)):  # ~same number of steps as VPL (more rows per epoch)
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for start in range(0, n, bs):
            i = perm[start : start + bs]
            loss = bradley_terry_loss(model.reward(chosen_ND[i]), model.reward(rejected_ND[i]))[0].mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(i)
        history.append(total / n)
    return model.eval(), history
