"""Losses and schedules of LAM3C pre-training (re-implemented from the paper's stated semantics).

* :func:`laplacian_smoothing_loss`: feature smoothness over a kNN graph of a point cloud, robust (Huber) and
  edge-cut, so noisy video surfaces are pulled together only between near points;
* :func:`noise_consistency_loss`: student embeddings against the EMA teacher's embeddings of a noisier copy of
  the same view, matched by nearest neighbour;
* :func:`sinkhorn_knopp` and :func:`distillation_loss`: the Sonata-style self-distillation objective they sit on;
* :func:`laplacian_weight`, :func:`cosine_schedule`, :func:`linear_warmup`: the schedules.

All distances in metres; ``batch`` tensors are ``N`` int64 sample indices.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree


def knn(x: torch.Tensor, k: int, batch: torch.Tensor | None = None, query: torch.Tensor | None = None,
        query_batch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours (Euclidean, a KD-tree per sample) of ``query`` (default ``x``, then the point
    itself is its first neighbour) among the points ``x`` of the same sample. No gradient.

    Args:
        x: ``N×3`` reference points; batch: ``N`` sample index (default all 0).
        query: ``M×3`` query points; query_batch: ``M``.
        k: neighbours per query; a sample with fewer than ``k`` points pads with distance ``inf`` and index −1.

    Returns:
        ``(dist M×k, idx M×k)`` sorted by distance, on ``x``'s device (``dist`` in ``x``'s dtype).
    """
    xn = x.detach().cpu().double().numpy()
    bn = np.zeros(len(xn), np.int64) if batch is None else batch.cpu().numpy()
    if query is None:
        qn, qbn = xn, bn
    else:
        qn = query.detach().cpu().double().numpy()
        qbn = np.zeros(len(qn), np.int64) if query_batch is None else query_batch.cpu().numpy()
    dist = np.full((len(qn), k), np.inf)
    idx = np.full((len(qn), k), -1, np.int64)
    for b in np.unique(qbn):
        qi = np.flatnonzero(qbn == b)
        ri = np.flatnonzero(bn == b)
        kk = min(k, len(ri))
        if kk == 0:
            continue
        d, j = cKDTree(xn[ri]).query(qn[qi], k=kk)
        dist[qi, :kk] = d.reshape(len(qi), kk)
        idx[qi, :kk] = ri[j.reshape(len(qi), kk)]
    return (torch.from_numpy(dist).to(device=x.device, dtype=x.dtype),
            torch.from_numpy(idx).to(device=x.device))


def huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber function of non-negative residuals: ``r²/2`` for ``r ≤ δ``, else ``δ(r − δ/2)``."""
    return torch.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def laplacian_smoothing_loss(coord: torch.Tensor, z: torch.Tensor, batch: torch.Tensor | None = None,
                             k: int = 24, cut: float = 0.08, delta: float = 0.5) -> torch.Tensor:
    """Robust graph-Laplacian smoothness of features ``z`` over points ``coord``.

    Per sample: the ``k`` nearest neighbours of every point (the point itself included, as a kNN query returns
    it); ``σ = √m`` with ``m`` the median over points of the distance to the ``k``-th of them; edge weights
    ``w_ij = exp(−d_ij²/σ²)``; self-edges and edges with ``d_ij ≥ cut`` removed. Point term
    ``L_i = Σ_j w_ij·huber(‖z_i − z_j‖, δ) / Σ_j w_ij`` (degree-normalised), averaged over the points with at least
    one edge (a sample without edges contributes 0), then averaged over samples.

    Args:
        coord: ``N×3`` positions (m); z: ``N×C`` features (gradients flow into ``z`` only); batch: ``N``.
    Returns:
        scalar tensor.
    """
    if batch is None:
        batch = torch.zeros(len(coord), dtype=torch.long, device=coord.device)
    samples = torch.unique(batch)
    total = z.new_zeros(())
    for b in samples.tolist():
        sel = torch.nonzero(batch == b).squeeze(1)
        c = coord[sel].detach()
        d, j = knn(c, k)
        kk = min(k, len(sel))
        sigma2 = torch.median(d[:, kk - 1])
        w = torch.exp(-d ** 2 / sigma2.clamp(min=1e-12))
        valid = (j >= 0) & (j != torch.arange(len(sel), device=c.device)[:, None]) & (d < cut)
        w = torch.where(valid, w, torch.zeros_like(w))
        zs = z.index_select(0, sel)
        nb = zs.index_select(0, j.clamp(min=0).reshape(-1)).reshape(len(sel), j.shape[1], -1)
        r = torch.linalg.vector_norm(zs[:, None, :] - nb, dim=-1)
        deg = w.sum(1)
        has = deg > 0
        if not bool(has.any()):
            continue
        per = (w * huber(r, delta)).sum(1)[has] / deg[has]
        total = total + per.mean()
    return total / max(len(samples), 1)


def nearest_match(s_coord: torch.Tensor, t_coord: torch.Tensor, s_batch: torch.Tensor, t_batch: torch.Tensor,
                  radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each student point's nearest teacher point of the same sample within ``radius`` (m):
    ``(student_idx, teacher_idx)`` int64 of the matched pairs."""
    d, j = knn(t_coord, 1, t_batch, s_coord, s_batch)
    ok = (j[:, 0] >= 0) & (d[:, 0] <= radius)
    return torch.nonzero(ok).squeeze(1), j[ok, 0]


def noise_consistency_loss(s_emb: torch.Tensor, t_emb: torch.Tensor, s_idx: torch.Tensor,
                           t_idx: torch.Tensor) -> torch.Tensor:
    """Mean over matched pairs of ``Σ(ŝ − t̂)²`` with ``ŝ, t̂`` the L2-normalised embeddings (= 2 − 2cos); the
    teacher side carries no gradient. 0 without pairs."""
    if len(s_idx) == 0:
        return s_emb.sum() * 0
    s = F.normalize(s_emb.index_select(0, s_idx), dim=-1)
    t = F.normalize(t_emb.detach().index_select(0, t_idx), dim=-1)
    return ((s - t) ** 2).sum(-1).mean()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iters: int = 3) -> torch.Tensor:
    """Balanced soft assignments of ``B`` samples to ``K`` prototypes (DINOv2 / Sonata centring).

    ``Q = exp(logits/T)``, then ``iters`` rounds of normalising every prototype's total to ``1/K`` and every
    sample's total to ``1/B``; returned scaled so each sample's row sums to 1 (``B×K`` float32). After enough
    rounds each prototype column sums to ``B/K``.
    """
    q = torch.exp((logits.float() - logits.float().max()) / temperature).t()  # K×B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def distillation_loss(s_logits: torch.Tensor, t_targets: torch.Tensor, s_idx: torch.Tensor, t_idx: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Cross-entropy ``−Σ_k q_t log softmax(s/T_s)`` averaged over matched pairs (0 without pairs)."""
    if len(s_idx) == 0:
        return s_logits.sum() * 0
    logp = F.log_softmax(s_logits.index_select(0, s_idx).float() / temperature, dim=-1)
    return -(t_targets[t_idx] * logp).sum(-1).mean()


# ---- schedules ---------------------------------------------------------------------------------------------------

def cosine_schedule(start: float, end: float, frac: float) -> float:
    """Cosine from ``start`` (frac 0) to ``end`` (frac 1); frac clipped to [0, 1]."""
    f = min(max(frac, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * f))


def linear_warmup(start: float, end: float, frac: float, warmup: float) -> float:
    """Linear from ``start`` to ``end`` over the first ``warmup`` share of training, then ``end``."""
    if warmup <= 0:
        return end
    f = min(max(frac / warmup, 0.0), 1.0)
    return start + (end - start) * f


def laplacian_weight(step: int, total: int, start: float = 2e-4, peak: float = 3e-3, end: float = 1.5e-3,
                     warmup: float = 0.1) -> float:
    """LAM3C's Laplacian weight: linear ``start → peak`` over the first ``warmup`` share of ``total`` steps,
    then cosine ``peak → end``."""
    frac = step / max(total, 1)
    if frac < warmup:
        return linear_warmup(start, peak, frac, warmup)
    return cosine_schedule(peak, end, (frac - warmup) / max(1 - warmup, 1e-12))
