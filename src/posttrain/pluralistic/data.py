"""Per-user data for VPL: frozen embeddings of labelled comparisons, grouped and padded per user,
and the stratified context sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from posttrain.models.embeddings import embed_texts


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
