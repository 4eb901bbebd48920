"""Per-view object masks lifted to 3D and clustered across views (after MaskClustering, Yan et al. CVPR 2024,
and OpenMask3D's multi-view mask lifting, Takmaz et al. NeurIPS 2023, with detector boxes as the 2D masks).

Every coordinate is in the world frame (z up, floor z = 0, metres); pixels are keyframe pixels. The 3D points
are the object vertices of the fused mesh (layout planes removed), so an instance's points are ``mesh.ply``
vertices.

1. Per view, per detection (:func:`view_masks`): the visible object points (in front of the camera, inside the
   image, not behind the mesh surface there: the ray-cast depth, the keyframe's depth map where no ray hits)
   that project inside the box form the candidates; their camera depths are split into layers at gaps larger
   than ``fg_gap_rel·z + fg_gap_m``; the mask is the layer with the largest centre-weighted mass (a box is
   centred on its object; background seen through or beside it lies in other layers). A point in two masks of
   one view goes to the one whose median depth is nearest its own.
2. Across views (:func:`cluster_masks`), per label: mask ``a`` is *consistent* with mask ``b`` of another view
   when most of ``a``'s points that ``b``'s view sees lie in ``b``. The pair score is the mean of the two
   directions, weighted by how many of each other's points the two views see (``link_min_points`` gives half
   weight). Masks are grouped by greedy average linkage while the best pair of groups scores ≥
   ``merge_score``, then, with hysteresis, groups too small to be an instance join their best-linked group at
   ≥ ``merge_score_low``; always under a cannot-link constraint: two masks of one view (two boxes in one
   keyframe) never share a group. So a label seen as k separate boxes in a view yields k groups, and a 3D blob
   covered by several same-label boxes of one view is split between them.
3. Points of a group (:func:`group_points`): a point is kept when it lies in at least ``point_share`` of the
   group's masks whose view sees it (and in at least two masks); a point kept by several groups goes to the one
   with the highest share. Then the largest spatial component (voxels of ``cluster_gap_m``) is kept and
   background surfaces are removed by local support (:func:`remove_support`).

Everything is deterministic and independent of the order of views and detections: masks are sorted by
(frame, label, box) first and ties are broken by that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..geometry import box_iou_2d, project
from ..scene import CameraFrame


@dataclass
class ViewMask:
    """One detection's mask: ``view`` index into the frame list, ``det`` index into that view's detections,
    ``pts`` sorted int64 indices into the object points, ``frame`` the keyframe's source frame."""

    view: int
    det: int
    frame: int
    label: str
    score: float
    bbox: list[float]
    pts: np.ndarray


@dataclass
class ViewData:
    """What one view contributes: ``vis`` sorted int64 indices of its visible object points and its masks;
    ``rejected`` ``(det index, reason)`` for detections that gave no mask."""

    vis: np.ndarray
    masks: list[ViewMask]
    rejected: list[tuple[int, str]] = field(default_factory=list)


def foreground_layer(z: np.ndarray, weight: np.ndarray, gap_rel: float, gap_m: float) -> np.ndarray:
    """Bool mask of the depth layer with the largest total ``weight``.

    ``z``: ``n`` camera depths (metres); layers are runs of the sorted depths without a gap larger than
    ``gap_rel·z + gap_m``. Ties go to the nearer layer.
    """
    if len(z) == 0:
        return np.zeros(0, bool)
    order = np.argsort(z, kind="stable")
    zs = z[order]
    gaps = np.diff(zs) > gap_rel * zs[:-1] + gap_m
    layer = np.concatenate([[0], np.cumsum(gaps)])
    w = np.bincount(layer, weights=weight[order])
    best = int(np.argmax(w))  # argmax takes the first (nearest) on ties
    out = np.zeros(len(z), bool)
    out[order[layer == best]] = True
    return out


def box_mask(uv: np.ndarray, z: np.ndarray, box, config, pixel_mask: np.ndarray | None = None) -> np.ndarray:
    """Bool over the visible points ``uv`` (``n×2`` pixels, ``z`` depths): inside ``box`` ``[x0, y0, x1, y1]``
    (and inside ``pixel_mask``, an ``H×W`` bool 2D mask of the object, when given) and in its foreground layer
    (:func:`foreground_layer`, weights falling linearly from 1 at the box centre to ``0.1`` at its border)."""
    x0, y0, x1, y1 = box
    inside = (uv[:, 0] >= x0) & (uv[:, 0] <= x1) & (uv[:, 1] >= y0) & (uv[:, 1] <= y1)
    if pixel_mask is not None and inside.any():
        h, w = pixel_mask.shape
        px = np.clip(uv[:, 0].astype(int), 0, w - 1)
        py = np.clip(uv[:, 1].astype(int), 0, h - 1)
        inside &= pixel_mask[py, px]
    idx = np.flatnonzero(inside)
    out = np.zeros(len(uv), bool)
    if len(idx) == 0:
        return out
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = max((x1 - x0) / 2, 1e-6), max((y1 - y0) / 2, 1e-6)
    wx = 1 - np.abs(uv[idx, 0] - cx) / hx
    wy = 1 - np.abs(uv[idx, 1] - cy) / hy
    w = 0.1 + 0.9 * np.clip(wx, 0, 1) * np.clip(wy, 0, 1)
    fg = foreground_layer(z[idx], w, config.fg_gap_rel, config.fg_gap_m)
    out[idx[fg]] = True
    return out


def view_masks(view: int, frame: CameraFrame, dets: list[dict], vis_idx: np.ndarray, uvv: np.ndarray,
               zv: np.ndarray, config, pixel_masks: list | None = None) -> ViewData:
    """Masks of one view's detections from its visible object points (indices ``vis_idx``, pixels ``uvv``,
    camera depths ``zv`` in metres; ``pixel_masks``: per detection an ``H×W`` bool 2D mask or None).

    A point in the masks of several detections of the view (overlapping boxes: a chair in front of another,
    a chair before a table) goes to the one whose median depth is nearest its own, so two boxes of one view
    never share a point. Detections whose mask keeps fewer than ``mask_min_points`` points are rejected with a
    reason.
    """
    masks, rejected = [], []
    if not dets:
        return ViewData(np.sort(vis_idx), masks, rejected)
    M = np.stack([box_mask(uvv, zv, d["bbox_xyxy"], config, None if pixel_masks is None else pixel_masks[j])
                  for j, d in enumerate(dets)])
    shared = M.sum(0) >= 2
    if shared.any():
        med = np.array([np.median(zv[m]) if m.any() else np.inf for m in M])
        dz = np.where(M[:, shared], np.abs(zv[shared][None, :] - med[:, None]), np.inf)
        win = np.argmin(dz, axis=0)
        M[:, shared] = False
        M[win, np.flatnonzero(shared)] = True
    for j, d in enumerate(dets):
        n = int(M[j].sum())
        if n < config.mask_min_points:
            rejected.append((j, f"mask of {n} visible mesh points < mask_min_points={config.mask_min_points}"))
            continue
        masks.append(ViewMask(view, j, int(frame.source_frame), d["label"], float(d["score"]),
                              [float(x) for x in d["bbox_xyxy"]], np.sort(vis_idx[M[j]])))
    return ViewData(np.sort(vis_idx), masks, rejected)


def sort_masks(masks: list[ViewMask]) -> list[ViewMask]:
    """Masks in a canonical order (frame, label, box), independent of input order."""
    return sorted(masks, key=lambda m: (m.frame, m.label, tuple(round(x, 2) for x in m.bbox), m.det))


def _incidence(rows: list[np.ndarray], n_cols: int):
    from scipy.sparse import csr_matrix

    lens = np.array([len(r) for r in rows], np.int64)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    idx = np.concatenate(rows) if len(rows) and lens.sum() else np.zeros(0, np.int64)
    return csr_matrix((np.ones(len(idx), np.float32), idx, indptr), shape=(len(rows), n_cols))


def pair_scores(masks: list[ViewMask], vis: list[np.ndarray], n_points: int,
                min_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(``n×n`` float64 pair score, ``n×n`` float64 evidence weight) of masks (all of one label).

    ``c[a, b]`` = |a ∩ b| / |a ∩ seen by b's view|; the score is ``(c[a, b] + c[b, a]) / 2``. Its weight is
    ``m / (m + min_points)`` with ``m`` the smaller of the two denominators (0 for masks of one view): a pair
    whose views see few of each other's points counts little, and the weight grows smoothly with the evidence
    instead of switching on at a point count (a hard cut at ``min_points`` flips pairs in and out between two
    reconstructions of one video). ``vis``: per view, the indices of its visible points; ``n_points``: number
    of object points.
    """
    S = _incidence([m.pts for m in masks], n_points)
    Vm = _incidence([vis[m.view] for m in masks], n_points)
    inter = (S @ S.T).toarray().astype(np.float64)
    den = (S @ Vm.T).toarray().astype(np.float64)  # den[a, b] = |a ∩ vis(view of b)|
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(den > 0, inter / np.maximum(den, 1), 0.0)
    score = (c + c.T) / 2
    views = np.array([m.view for m in masks])
    m = np.minimum(den, den.T)
    weight = np.where(views[:, None] != views[None, :], m / (m + float(min_points)), 0.0)
    np.fill_diagonal(weight, 0.0)
    return np.where(weight > 0, score, 0.0), weight


def cluster_masks(masks: list[ViewMask], vis: list[np.ndarray], n_points: int, n_views: int,
                  config) -> list[list[int]]:
    """Groups (lists of indices into ``masks``, all one label, canonical order) by greedy average linkage of
    :func:`pair_scores` with the one-view cannot-link constraint.

    The linkage of two groups is the evidence-weighted mean of their masks' pair scores; a merge needs a
    linkage ≥ ``merge_score`` and a summed evidence weight ≥ 0.5 (one pair whose views see
    ``link_min_points`` of each other's points). Then, with hysteresis (two thresholds, as in Canny's edge
    linking): a group of fewer than ``min_views`` masks — too small to become an instance alone — joins its
    best-linked group while that linkage is ≥ ``merge_score_low``. Whether two halves of one object seen at a
    linkage near ``merge_score`` merge in the first phase or the second, the result is the same group, so the
    existence of the object does not hang on which side of ``merge_score`` the linkage falls in one
    reconstruction. Returns the groups sorted by their first mask."""
    n = len(masks)
    if n == 0:
        return []
    score, weight = pair_scores(masks, vis, n_points, config.link_min_points)
    ssum, cnt = score * weight, weight.copy()
    V = np.zeros((n, n_views), bool)
    V[np.arange(n), [m.view for m in masks]] = True
    # conflict[a, b]: groups a and b hold masks of one view (cannot-link). Kept up to date at each merge (a
    # group's row is the union of its members' rows) instead of recomputed from V, which cost n² × views per
    # merge and grew as n³ with the video's length.
    conflict = (V.astype(np.int32) @ V.T.astype(np.int32)) > 0
    alive = np.ones(n, bool)
    members = [[i] for i in range(n)]
    low = min(config.merge_score_low, config.merge_score)
    strong = True
    while True:
        with np.errstate(divide="ignore", invalid="ignore"):
            avg = np.where(cnt > 0, ssum / np.maximum(cnt, 1e-12), -1.0)
        ok = alive[:, None] & alive[None, :] & ~conflict & (cnt >= 0.5)
        if not strong:  # second phase: only pairs with a group too small to stand alone
            small = V.sum(1) < config.min_views
            ok &= small[:, None] | small[None, :]
        np.fill_diagonal(ok, False)
        avg = np.where(ok, avg, -1.0)
        k = int(np.argmax(avg))
        a, b = divmod(k, n)
        if avg[a, b] < (config.merge_score if strong else low):
            if not strong:
                break
            strong = False
            continue
        a, b = min(a, b), max(a, b)
        ssum[a] += ssum[b]
        ssum[:, a] += ssum[:, b]
        cnt[a] += cnt[b]
        cnt[:, a] += cnt[:, b]
        ssum[b], ssum[:, b], cnt[b], cnt[:, b] = 0, 0, 0, 0
        ssum[a, a], cnt[a, a] = 0, 0
        V[a] |= V[b]
        V[b] = False
        conflict[a] |= conflict[b]
        conflict[:, a] |= conflict[:, b]
        conflict[b], conflict[:, b] = False, False
        alive[b] = False
        members[a] += members[b]
        members[b] = []
    return sorted((sorted(g) for g, al in zip(members, alive) if al), key=lambda g: g[0])


def group_points(group: list[int], masks: list[ViewMask], vis_sets: list[np.ndarray],
                 n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted candidate point indices, their share): per point of the group's masks, the masks holding it ÷
    the group's views that see it, for points held by at least two masks (one when the group has one mask)."""
    hits = np.zeros(n_points, np.int32)
    seen = np.zeros(n_points, np.int32)
    for i in group:
        hits[masks[i].pts] += 1
        seen[vis_sets[masks[i].view]] += 1
    need = 2 if len(group) > 1 else 1
    cand = np.flatnonzero(hits >= need)
    return cand, hits[cand] / np.maximum(seen[cand], 1)


def largest_component(P: np.ndarray, gap_m: float) -> np.ndarray:
    """Bool over ``P`` (``n×3``): the points of the largest 26-connected component of occupied voxels of size
    ``gap_m``."""
    from scipy import ndimage

    if len(P) == 0:
        return np.zeros(0, bool)
    q = np.floor((P - P.min(0)) / gap_m).astype(np.int64)
    dims = q.max(0) + 1
    if np.prod(dims) > 50_000_000:  # a huge sparse extent: fall back to keeping everything
        return np.ones(len(P), bool)
    grid = np.zeros(dims, bool)
    grid[q[:, 0], q[:, 1], q[:, 2]] = True
    lab, n = ndimage.label(grid, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return np.ones(len(P), bool)
    pl = lab[q[:, 0], q[:, 1], q[:, 2]]
    counts = np.bincount(pl, minlength=n + 1)
    counts[0] = 0
    return pl == int(np.argmax(counts))


#: Labels whose own top is a support surface (their horizontal layers are never removed).
SURFACE_LABELS = frozenset({"dining table", "table", "desk", "coffee table", "counter", "bed", "couch", "sofa",
                            "bench", "cabinet", "kitchen cabinet", "shelf", "bookshelf", "dresser", "nightstand",
                            "toilet", "sink", "bathtub", "refrigerator", "oven", "microwave", "tv stand"})


def remove_support(P: np.ndarray, Nrm: np.ndarray, config, label: str | None = None) -> tuple[np.ndarray, str | None]:
    """Bool keep-mask over an instance's points ``P`` (``n×3``, unit normals ``Nrm``) and what was removed.

    Local support removal. Horizontal layers (normals within 25° of ±z; 2 cm z-bins holding ≥ 10 % of the
    points, ±2 cm) whose footprint reaches beyond the footprint of the points off the layer (2nd–98th
    percentiles) by ≥ ``support_overhang_m`` (or 30 % of that footprint's size for small objects, at least
    2 cm) are a table top / floor piece the box took in, and are removed — unless
    ``label`` is a surface itself (:data:`SURFACE_LABELS`). A vertical plane (the dominant horizontal normal
    direction among near-vertical normals, a 2 cm band) holding ≥ 20 % of the points whose extent along the
    plane exceeds the other points' by ≥ ``support_overhang_m`` on both sides is a wall behind the object,
    and is removed. A box-shaped object (a fridge's front and side) has nothing beyond its faces and is kept.
    """
    keep = np.ones(len(P), bool)
    if len(P) < 50:
        return keep, None
    what = []
    nz = np.abs(Nrm[:, 2])
    horiz = nz > math.cos(math.radians(25))
    if label not in SURFACE_LABELS and horiz.sum() >= 0.1 * len(P):
        z = P[horiz, 2]
        edges = np.arange(z.min(), z.max() + 0.04, 0.02)
        hist, edges = np.histogram(z, bins=edges)
        for k in np.flatnonzero(hist >= 0.1 * len(P)):
            zc = (edges[k] + edges[k + 1]) / 2
            band = keep & horiz & (np.abs(P[:, 2] - zc) <= 0.02)
            rest = keep & (np.abs(P[:, 2] - zc) > 0.05)
            if band.sum() < 0.1 * len(P) or rest.sum() < 0.2 * len(P):
                continue
            rlo, rhi = np.percentile(P[rest, :2], [2, 98], axis=0)
            blo, bhi = np.percentile(P[band, :2], [1, 99], axis=0)
            thr = min(config.support_overhang_m, max(0.02, 0.3 * float(np.max(rhi - rlo))))  # small objects
            if np.max(np.concatenate([rlo - blo, bhi - rhi])) >= thr:
                keep &= ~band
                what.append(f"support layer at z {zc:.2f} m")
    vert = (nz < math.sin(math.radians(20))) & keep
    if vert.sum() >= 0.2 * len(P):
        ang_all = np.arctan2(Nrm[:, 1], Nrm[:, 0]) % math.pi
        hist, edges = np.histogram(ang_all[vert], bins=36, range=(0, math.pi))
        a = edges[int(np.argmax(hist))] + math.pi / 72
        dang = np.abs(ang_all - a)
        cand = vert & (np.minimum(dang, math.pi - dang) < math.radians(15))
        if cand.any():
            n0 = np.array([math.cos(a), math.sin(a)])
            nc = Nrm[cand, :2] * np.sign(Nrm[cand, :2] @ n0)[:, None]  # refine the direction on its normals
            n = nc.mean(0) / max(np.linalg.norm(nc.mean(0)), 1e-9)
            s, along = P[:, :2] @ n, P[:, :2] @ np.array([-n[1], n[0]])
            band = keep & (np.abs(s - np.median(s[cand])) <= 0.02) & (nz < math.sin(math.radians(30)))
            rest = keep & ~band
            if band.sum() >= 0.2 * len(P) and rest.sum() >= 0.2 * len(P):
                blo, bhi = along[band].min(), along[band].max()
                rlo, rhi = np.percentile(along[rest], [2, 98])
                if rlo - blo >= config.support_overhang_m and bhi - rhi >= config.support_overhang_m:
                    keep &= ~band
                    what.append("wall behind")
    return keep, (", ".join(what) or None)


def grow_unseen(pts: np.ndarray, P: np.ndarray, unseen: np.ndarray, gap_m: float, max_rounds: int = 100) -> np.ndarray:
    """``pts`` plus the object points no keyframe sees (``unseen``: sorted indices into ``P``) reachable from
    them through unseen points closer than ``gap_m`` (the top of a tall object above every view's image, its
    back against a wall): nothing contradicts them, and the mesh connects them. Returns sorted indices."""
    from scipy.spatial import cKDTree

    if len(unseen) == 0 or len(pts) == 0:
        return pts
    tree = cKDTree(P[unseen])
    taken = np.zeros(len(unseen), bool)
    front = P[pts]
    for _ in range(max_rounds):
        hits = tree.query_ball_point(front, gap_m, return_sorted=False)
        new = np.unique(np.fromiter((i for h in hits for i in h), np.int64))
        new = new[~taken[new]] if len(new) else new
        if len(new) == 0:
            break
        taken[new] = True
        front = P[unseen[new]]
    return np.union1d(pts, unseen[taken])


def projected_box(P: np.ndarray, frame: CameraFrame) -> list[float] | None:
    """``[x0, y0, x1, y1]`` keyframe-pixel box of the world points ``P`` in front of ``frame`` and inside its
    image (None when none is)."""
    uv, z = project(P, frame.K, frame.cam_from_world)
    ok = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < frame.width) & (uv[:, 1] >= 0) & (uv[:, 1] < frame.height)
    if not ok.any():
        return None
    q = uv[ok]
    return [float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())]


__all__ = ["ViewMask", "ViewData", "foreground_layer", "box_mask", "view_masks", "sort_masks", "pair_scores",
           "cluster_masks", "group_points", "grow_unseen", "SURFACE_LABELS", "largest_component", "remove_support", "projected_box", "box_iou_2d"]
