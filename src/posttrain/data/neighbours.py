"""Nearest-neighbour search over unit-norm embeddings (cosine = dot product), exact or approximate,
and the cross-task merge rule of Ivison et al. (2022).

- :func:`exact_neighbours`: the matrix product, chunked over queries so the (chunk, pool)
  similarity block stays below ``max_block`` floats.
- :class:`IVFIndex`: an inverted-file index written here (no new dependency): spherical k-means
  (Lloyd iterations on unit vectors, seeded) puts each pool vector in the list of its nearest
  centroid; a query scores only the lists of its ``nprobe`` nearest centroids, exactly. Recall
  grows with ``nprobe`` (all lists probed = exact search); tests pin it against exact search.
- :func:`merge_neighbours`: each target row's neighbours merged round by round until ``k``.

Shapes: ``Q`` queries (target rows), ``P`` pool rows, ``D`` embedding width, ``M`` neighbours per
query. Index −1 marks "no neighbour" (an approximate search that found fewer than ``M``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["exact_neighbours", "IVFIndex", "merge_neighbours"]


def exact_neighbours(queries_QD: torch.Tensor, pool_PD: torch.Tensor, m: int,
                     max_block: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` most similar pool rows of each query → (scores_QM, index_QM), best first."""
    m = min(m, pool_PD.shape[0])
    chunk = max(1, max_block // max(pool_PD.shape[0], 1))
    scores, index = [], []
    for start in range(0, queries_QD.shape[0], chunk):
        sims_CP = queries_QD[start:start + chunk] @ pool_PD.T
        top = sims_CP.topk(m, dim=1)
        scores.append(top.values)
        index.append(top.indices)
    if not scores:
        return torch.zeros(0, m), torch.zeros(0, m, dtype=torch.long)
    return torch.cat(scores), torch.cat(index)


class IVFIndex:
    """Inverted-file index over unit vectors: ``nlist`` spherical k-means lists (default ≈ √P)."""

    def __init__(self, pool_PD: torch.Tensor, nlist: int | None = None, iterations: int = 10, seed: int = 0):
        P = pool_PD.shape[0]
        nlist = max(1, min(P, nlist or round(math.sqrt(P))))
        generator = torch.Generator().manual_seed(seed)
        centroids_LD = pool_PD[torch.randperm(P, generator=generator)[:nlist]].clone()
        for _ in range(iterations):
            assign_P = (pool_PD @ centroids_LD.T).argmax(1)
            sums_LD = torch.zeros_like(centroids_LD).index_add_(0, assign_P, pool_PD)
            counts_L = torch.bincount(assign_P, minlength=nlist)
            # an empty list keeps its old centroid rather than collapsing to the zero vector
            moved = counts_L > 0
            centroids_LD[moved] = torch.nn.functional.normalize(sums_LD[moved], dim=-1)
        self.pool_PD, self.centroids_LD = pool_PD, centroids_LD
        assign_P = (pool_PD @ centroids_LD.T).argmax(1)
        self.lists = [torch.nonzero(assign_P == c).flatten() for c in range(nlist)]

    def search(self, queries_QD: torch.Tensor, m: int, nprobe: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :func:`exact_neighbours` over the ``nprobe`` nearest lists of each query; rows past
        the candidates found hold score −inf and index −1."""
        nprobe = min(nprobe, len(self.lists))
        probes_QN = (queries_QD @ self.centroids_LD.T).topk(nprobe, dim=1).indices
        scores_QM = torch.full((queries_QD.shape[0], m), -math.inf)
        index_QM = torch.full((queries_QD.shape[0], m), -1, dtype=torch.long)
        for q in range(queries_QD.shape[0]):
            candidates = torch.cat([self.lists[c] for c in probes_QN[q].tolist()]).sort().values
            if not len(candidates):
                continue
            top = (self.pool_PD[candidates] @ queries_QD[q]).topk(min(m, len(candidates)))
            scores_QM[q, :len(top.values)] = top.values
            index_QM[q, :len(top.values)] = candidates[top.indices]
        return scores_QM, index_QM


def merge_neighbours(scores_QM: torch.Tensor, index_QM: torch.Tensor, k: int) -> list[dict]:
    """Cross-task nearest neighbours merged until ``k`` (Ivison et al. 2022, §2: retrieve each
    target example's nearest pool examples and train on the union).

    The rule: round r = 1, 2, … adds every query's r-th nearest pool row that is not selected
    yet, so the result is the union of all queries' top-(r−1) neighbours plus part of round r.
    Within a round rows enter by decreasing similarity (ties: lower query, then lower pool
    index), and the first ``k`` rows are kept. Returns at most ``k`` dicts
    ``{"index", "score", "target", "rank"}`` in selection order (fewer when the neighbour lists
    run out: the caller asks for deeper lists).
    """
    selected: dict[int, dict] = {}
    scores, index = scores_QM.tolist(), index_QM.tolist()
    for rank in range(index_QM.shape[1] if index_QM.dim() == 2 else 0):
        entries = sorted((-scores[q][rank], q, index[q][rank]) for q in range(len(index)) if index[q][rank] >= 0)
        for neg_score, q, i in entries:
            if i not in selected:
                selected[i] = {"index": i, "score": -neg_score, "target": q, "rank": rank + 1}
                if len(selected) == k:
                    return list(selected.values())
    return list(selected.values())
