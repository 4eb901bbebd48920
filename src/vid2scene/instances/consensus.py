"""Multi-view consensus of mesh segments with the 2D detections (after SceneVerse++'s 2D→3D view consensus).

Per view (:func:`view_assignments`): the segments' vertices are projected; a vertex is visible if in front of
the camera, inside the image and not behind the mesh's own surface there. A segment with enough visible
vertices is *seen*; it is *assigned* to the smallest detection box that holds most of its visible vertices
and whose foreground depth is not far in front of it. Across views (:func:`consensus`): well-supported
segments are grouped by greedy average-linkage agglomeration of their view-by-view detections. Per group:
label votes (:func:`label_votes`), the largest spatial cluster (:func:`keep_largest_cluster`), same-label
duplicates merged (:func:`merge_duplicates`), supporting views (:func:`supporting_views`).

Tables are indexed ``[view, segment]``; every coordinate is in the world frame (metres), pixels are keyframe
pixels.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from ..geometry import MeshRaycaster, box_iou_2d, project, scale_intrinsics
from ..scene import CameraFrame


# ---------------------------------------------------------------------------------------------------------
# one view
# ---------------------------------------------------------------------------------------------------------
def surface_depth(frame: CameraFrame, ray: MeshRaycaster, depth_fallback: np.ndarray | None,
                  work_size: int) -> np.ndarray:
    """``h×w`` float32 z-depth (metres, inf where unknown) of the mesh seen by ``frame`` at ``work_size`` long
    side, with ``depth_fallback`` (``H×W`` metres, 0 = unknown; nearest-resized) where no ray hits."""
    W, H = frame.width, frame.height
    s = work_size / max(W, H)
    w, h = max(1, round(W * s)), max(1, round(H * s))
    zref = ray.depth(scale_intrinsics(frame.K, w / W, h / H), frame.cam_from_world, w, h)
    if depth_fallback is not None:
        import cv2

        fb = cv2.resize(depth_fallback, (w, h), interpolation=cv2.INTER_NEAREST)
        zref = np.where(np.isfinite(zref), zref, np.where(fb > 0, fb, np.inf)).astype(np.float32)
    return zref


def visible_vertices(frame: CameraFrame, V: np.ndarray, zref: np.ndarray,
                     config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices of the visible vertices of ``V``, their ``N×2`` pixel coordinates, their camera z): in front of
    the camera, inside the image and not farther than the surface ``zref`` (:func:`surface_depth`) by more than
    ``occlusion_tol_rel`` of it plus ``occlusion_tol_m``."""
    W, H = frame.width, frame.height
    h, w = zref.shape
    uv, z = project(V, frame.K, frame.cam_from_world)
    inimg = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    idx = np.flatnonzero(inimg)
    px = np.clip((uv[idx, 0] * w / W).astype(int), 0, w - 1)
    py = np.clip((uv[idx, 1] * h / H).astype(int), 0, h - 1)
    zr = zref[py, px]
    ok = z[idx] <= zr * (1 + config.occlusion_tol_rel) + config.occlusion_tol_m  # inf (no hit) -> visible
    vis_idx = idx[ok]
    return vis_idx, uv[vis_idx], z[vis_idx]


def segment_boxes(sv: np.ndarray, uvv: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """``n_seg×4`` float32 ``[x0, y0, x1, y1]`` box of each segment's visible vertices (NaN where unseen);
    ``sv``: segment id per visible vertex, ``uvv`` their pixels, ``vis`` visible vertices per segment."""
    n_seg = len(vis)
    bbox = np.full((n_seg, 4), np.nan, np.float32)
    if len(sv):
        lo = np.full((n_seg, 2), np.inf)
        hi = np.full((n_seg, 2), -np.inf)
        np.minimum.at(lo, sv, uvv)
        np.maximum.at(hi, sv, uvv)
        seen = vis > 0
        bbox[seen] = np.concatenate([lo[seen], hi[seen]], 1)
    return bbox


def assign_to_detections(frame: CameraFrame, dets: list[dict], sv: np.ndarray, uvv: np.ndarray, zv: np.ndarray,
                         vis: np.ndarray, zref: np.ndarray, config) -> np.ndarray:
    """``n_seg`` int64 detection index per segment (−1: none): the smallest box (grown by ``box_margin_rel``)
    holding ≥ ``min_inside`` of a seen segment's visible vertices whose foreground depth ``d_fg`` (25th
    percentile of ``zref`` in the box) is not far in front of the segment (mean depth of its vertices in the
    box ≤ ``(1 + depth_band_rel)·d_fg + depth_band_m``)."""
    W, H = frame.width, frame.height
    h, w = zref.shape
    n_seg = len(vis)
    assign = np.full(n_seg, -1, np.int64)
    best_area = np.full(n_seg, np.inf)
    seen_ok = vis >= config.min_visible_vertices
    if not len(sv) or not dets:
        return assign
    for j, d in enumerate(dets):
        x0, y0, x1, y1 = d["bbox_xyxy"]
        mx, my = config.box_margin_rel * (x1 - x0), config.box_margin_rel * (y1 - y0)
        inside = (uvv[:, 0] >= x0 - mx) & (uvv[:, 0] <= x1 + mx) & (uvv[:, 1] >= y0 - my) & (uvv[:, 1] <= y1 + my)
        cnt = np.bincount(sv[inside], minlength=n_seg)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(vis > 0, cnt / np.maximum(vis, 1), 0.0)
            zin = np.bincount(sv[inside], weights=zv[inside], minlength=n_seg) / np.maximum(cnt, 1)
        bx0, by0 = int(max(0, math.floor(x0 * w / W))), int(max(0, math.floor(y0 * h / H)))
        bx1, by1 = int(min(w, math.ceil(x1 * w / W))), int(min(h, math.ceil(y1 * h / H)))
        patch = zref[by0:by1, bx0:bx1]
        patch = patch[np.isfinite(patch)]
        d_fg = float(np.percentile(patch, 25)) if patch.size else np.inf
        depth_ok = zin <= d_fg * (1 + config.depth_band_rel) + config.depth_band_m
        area = (x1 - x0) * (y1 - y0)
        cand = seen_ok & (share >= config.min_inside) & depth_ok & (area < best_area)
        assign[cand] = j
        best_area[cand] = area
    return assign


def view_assignments(frame: CameraFrame, dets: list[dict], V: np.ndarray, seg: np.ndarray, n_seg: int,
                     ray: MeshRaycaster, depth_fallback: np.ndarray | None, config) -> dict:
    """Project the object vertices into one keyframe and assign segments to its detections.

    Args:
        frame: a registered camera in the world frame.
        dets: the keyframe's detections (``bbox_xyxy`` in keyframe pixels).
        V: ``N×3`` object vertices (world); seg: ``N`` segment ids in ``0..n_seg-1``.
        ray: ray caster of the whole mesh (world frame), for occlusion.
        depth_fallback: ``H×W`` metres (0 = unknown) used where no ray hits, or None.
        config: the ``instances`` Config.

    Returns:
        ``{"vis": n_seg int32 visible-vertex counts, "bbox": n_seg×4 float32 projected box of the visible
        vertices (keyframe pixels; NaN where unseen), "assign": n_seg int64 detection index or −1}``.
    """
    zref = surface_depth(frame, ray, depth_fallback, config.work_size)
    vis_idx, uvv, zv = visible_vertices(frame, V, zref, config)
    sv = seg[vis_idx]
    vis = np.bincount(sv, minlength=n_seg)
    return {"vis": vis.astype(np.int32), "bbox": segment_boxes(sv, uvv, vis),
            "assign": assign_to_detections(frame, dets, sv, uvv, zv, vis, zref, config)}


# ---------------------------------------------------------------------------------------------------------
# grouping segments across views
# ---------------------------------------------------------------------------------------------------------
def supported_segments(vis: np.ndarray, assign: np.ndarray, config) -> np.ndarray:
    """Indices of the segments assigned (while seen) in at least two views and in at least
    ``min_segment_support`` of the views that see them."""
    seen = vis >= config.min_visible_vertices
    asg = (assign >= 0) & seen
    n_seen, n_asg = seen.sum(0), asg.sum(0)
    return np.flatnonzero((n_asg >= 2) & (n_asg >= config.min_segment_support * np.maximum(n_seen, 1)))


def _wilson(r: float, n: int) -> float:
    """Lower bound (z = 1) of an agreement ratio ``r`` over ``n`` views: well-supported merges go first."""
    n = max(n, 1)
    return (r + 0.5 / n - math.sqrt(r * (1 - r) / n + 0.25 / n ** 2)) / (1 + 1 / n)


class _GroupMerger:
    """Groups of segments with their per-view visible counts and detection weights, an inverted index
    ``(view, detection) → groups`` and a heap of candidate merges (stale entries skipped by version)."""

    def __init__(self, vis: np.ndarray, assign: np.ndarray, good: np.ndarray, size: np.ndarray, config):
        self.n_views = assign.shape[0]
        self.min_vis, self.merge_ratio = config.min_visible_vertices, config.merge_ratio
        asg = (assign >= 0) & (vis >= self.min_vis)
        self.gvis = {int(s): vis[:, s].astype(np.int64) for s in good}
        self.gw = {int(s): {int(v): {int(assign[v, s]): float(size[s])} for v in np.flatnonzero(asg[:, s])}
                   for s in good}
        self.members = {int(s): [int(s)] for s in good}
        self.det = {g: self._det_of(g) for g in self.members}
        self.version = {g: 0 for g in self.members}
        self.index: dict[tuple[int, int], set] = {}
        self.heap: list = []
        for g in self.members:
            self._index(g, add=True)

    def _det_of(self, g: int) -> np.ndarray:
        """``n_views`` detection of group ``g`` per view (the one holding most of its vertices; −1 none)."""
        d = np.full(self.n_views, -1, np.int64)
        for v, dd in self.gw[g].items():
            d[v] = max(dd, key=dd.get)
        return d

    def _index(self, g: int, add: bool) -> None:
        for v in np.flatnonzero(self.det[g] >= 0):
            key = (int(v), int(self.det[g][v]))
            if add:
                self.index.setdefault(key, set()).add(g)
            else:
                self.index[key].discard(g)

    def _neighbours(self, g: int) -> set:
        out = set()
        for v in np.flatnonzero(self.det[g] >= 0):
            out |= self.index[(int(v), int(self.det[g][v]))]
        out.discard(g)
        return out

    def _score(self, g: int, h: int) -> tuple[float, int, int]:
        """(agreement, views together in one detection, views where both are seen and one is assigned)."""
        dg, dh = self.det[g], self.det[h]
        sg, sh = self.gvis[g] >= self.min_vis, self.gvis[h] >= self.min_vis
        together = int(((dg >= 0) & (dg == dh)).sum())
        denom = int((sg & sh & ((dg >= 0) | (dh >= 0))).sum())
        return together / max(denom, 1), together, denom

    def _push(self, g: int, h: int) -> None:
        g, h = min(g, h), max(g, h)
        r, tog, den = self._score(g, h)
        if r >= self.merge_ratio and tog >= 2:
            heapq.heappush(self.heap, (-_wilson(r, den), -tog, g, h, self.version[g], self.version[h]))

    def _merge(self, g: int, h: int) -> None:
        """Merge group ``h`` into ``g`` and queue ``g``'s new candidate merges."""
        self._index(g, add=False)
        self._index(h, add=False)
        self.gvis[g] = self.gvis[g] + self.gvis.pop(h)
        w = {v: dict(dd) for v, dd in self.gw[g].items()}
        for v, dd in self.gw.pop(h).items():
            o = w.setdefault(v, {})
            for d, x in dd.items():
                o[d] = o.get(d, 0.0) + x
        self.gw[g] = w
        self.members[g] += self.members.pop(h)
        self.det.pop(h)
        self.version.pop(h)
        self.det[g] = self._det_of(g)
        self.version[g] += 1
        self._index(g, add=True)
        for x in self._neighbours(g):
            self._push(g, x)

    def run(self) -> dict[int, list[int]]:
        """Merge while the best pair agrees ≥ ``merge_ratio`` in ≥ 2 views; returns ``{group: segments}``."""
        for g in list(self.members):
            for h in self._neighbours(g):
                if g < h:
                    self._push(g, h)
        while self.heap:
            _, _, g, h, vg, vh = heapq.heappop(self.heap)
            if g not in self.members or h not in self.members or self.version[g] != vg or self.version[h] != vh:
                continue  # stale entry: one of the two groups changed since it was scored
            self._merge(g, h)
        return self.members


def consensus(vis: np.ndarray, assign: np.ndarray, config, seg_size: np.ndarray | None = None) -> np.ndarray:
    """Group segments into instances from the per-view tables (greedy average-linkage agglomeration).

    ``vis``: ``n_views×n_seg`` int visible-vertex counts; ``assign``: ``n_views×n_seg`` detection index or −1;
    ``seg_size``: vertices per segment (weights of a group's vote for its detection in a view; default 1).
    Segments assigned in fewer than two views, or in fewer than ``min_segment_support`` of the views that see
    them, are dropped (−1). Then, starting from one group per segment, the pair of groups with the highest
    *agreement* — views where both are assigned to the same detection ÷ views where both are seen and at
    least one is assigned — is merged while that agreement is ≥ ``merge_ratio`` with at least two such
    views. A group's detection in a view is the one holding most of its assigned vertices. Merging groups
    rather than chaining segment pairs keeps one weak segment-level coincidence (a chair seat inside a table's
    box twice) from joining two objects.

    Returns ``n_seg`` int64 group ids, consecutive from 0 (−1 for dropped segments).
    """
    n_seg = assign.shape[1]
    group = np.full(n_seg, -1, np.int64)
    good = supported_segments(vis, assign, config)
    if len(good) == 0:
        return group
    size = np.ones(n_seg) if seg_size is None else np.asarray(seg_size, float)
    members = _GroupMerger(vis, assign, good, size, config).run()
    for i, (_, segs) in enumerate(sorted(members.items())):
        group[segs] = i
    return group


# ---------------------------------------------------------------------------------------------------------
# from groups to instances: votes, clusters, duplicates, supporting views
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """A group of segments on its way to an instance: ``per_view`` maps a view to ``(detection index, label,
    score)`` of the detection holding most of its vertices there; ``votes`` sums the scores per label."""

    segs: np.ndarray
    label: str | None
    per_view: dict[int, tuple[int, str, float]]
    votes: dict[str, float]


def label_votes(segs: np.ndarray, asg: np.ndarray, seg_size: np.ndarray,
                det_lists: list[list[dict]]) -> Candidate:
    """The candidate of segments ``segs``: per view the detection holding most of their vertices votes its
    ``score`` for its label; the label is the vote winner (None without votes)."""
    per_view = {}
    for v in range(len(det_lists)):
        a = asg[v, segs]
        m = a >= 0
        if not m.any():
            continue
        w = np.bincount(a[m], weights=seg_size[segs][m])
        j = int(np.argmax(w))
        d = det_lists[v][j]
        per_view[v] = (j, d["label"], float(d["score"]))
    votes: dict[str, float] = {}
    for _, lab, sc in per_view.values():
        votes[lab] = votes.get(lab, 0.0) + sc
    return Candidate(segs, max(votes, key=votes.get) if votes else None, per_view, votes)


def keep_largest_cluster(cand: Candidate, V: np.ndarray, seg: np.ndarray, seg_size: np.ndarray,
                         gap_m: float) -> np.ndarray:
    """The segments of ``cand`` in its largest (by vertices) spatial cluster: segments closer than ``gap_m``
    (on ≤ 400 subsampled vertices each) are connected."""
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    segs = cand.segs
    if len(segs) <= 1:
        return segs
    pts = []
    for sgi in segs:
        p = V[seg == sgi]
        pts.append(p[:: max(1, len(p) // 400)])
    trees = [cKDTree(p) for p in pts]
    adj = np.zeros((len(segs), len(segs)), bool)
    for i in range(len(segs)):
        for j in range(i + 1, len(segs)):
            d = trees[i].query(pts[j], k=1, distance_upper_bound=gap_m)[0]
            adj[i, j] = adj[j, i] = bool(np.isfinite(d).any())
    _, lab = connected_components(adj, directed=False)
    w = np.bincount(lab, weights=seg_size[segs])
    return segs[lab == int(np.argmax(w))]


def _may_be_one_object(a: Candidate, b: Candidate, V: np.ndarray, seg: np.ndarray, gap_m: float) -> bool:
    """Same label, not split across two detections of a view more often than together, and closer than
    ``gap_m`` (closest points of ≤ 3000 subsampled vertices each)."""
    from scipy.spatial import cKDTree

    if a.label != b.label:
        return False
    shared = set(a.per_view) & set(b.per_view)
    n_diff = sum(a.per_view[v][0] != b.per_view[v][0] for v in shared)
    if n_diff > len(shared) - n_diff:
        return False
    pa, pb = V[np.isin(seg, a.segs)], V[np.isin(seg, b.segs)]
    gap = np.maximum(np.maximum(pa.min(0) - pb.max(0), pb.min(0) - pa.max(0)), 0)
    if np.linalg.norm(gap) > gap_m:  # bounding boxes already too far apart
        return False
    return cKDTree(pa[:: max(1, len(pa) // 3000)]).query(pb[:: max(1, len(pb) // 3000)], k=1)[0].min() <= gap_m


def merge_duplicates(cands: list[Candidate], V: np.ndarray, seg: np.ndarray, gap_m: float, vote) -> list[Candidate]:
    """Merge same-label candidates that are one object seen from two sides (:func:`_may_be_one_object`),
    first pair first, until none is left; ``vote(segs) -> Candidate`` re-counts a merged group's votes."""
    cands = list(cands)
    merged = True
    while merged:
        merged = False
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                if _may_be_one_object(cands[i], cands[j], V, seg, gap_m):
                    cands[i] = vote(np.concatenate([cands[i].segs, cands[j].segs]))
                    del cands[j]
                    merged = True
                    break
            if merged:
                break
    return cands


def supporting_views(cand: Candidate, vis: np.ndarray, bbox: np.ndarray, n_points: int, frames: list[CameraFrame],
                     det_lists: list[list[dict]], min_view_iou: float) -> tuple[list[dict], dict]:
    """(``views`` records of ``instances.json``, ``{view: (det, label, score)}``) of the views whose detection
    has the candidate's label and frames it: the box of its projected visible vertices has IoU ≥
    ``min_view_iou`` with the detection (a fragment inside a chair's box in every view is not the chair)."""
    support = {v: t for v, t in cand.per_view.items() if t[1] == cand.label}
    views, kept = [], {}
    for v in sorted(support):
        j, _, sc = support[v]
        bb = bbox[v, cand.segs]
        ok = np.isfinite(bb[:, 0])
        if not ok.any():
            continue
        proj = [float(bb[ok, 0].min()), float(bb[ok, 1].min()), float(bb[ok, 2].max()), float(bb[ok, 3].max())]
        det_box = det_lists[v][j]["bbox_xyxy"]
        iou = box_iou_2d(proj, det_box)
        if iou < min_view_iou:
            continue
        views.append({"frame": frames[v].source_frame, "bbox_xyxy": det_box, "score": round(sc, 4),
                      "projected_bbox_xyxy": [round(x, 1) for x in proj], "iou": round(iou, 3),
                      "visible_share": round(float(vis[v, cand.segs].sum()) / max(n_points, 1), 3)})
        kept[v] = support[v]
    return views, kept
