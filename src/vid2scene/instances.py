"""``instances`` stage: class-agnostic 3D segments of the fused mesh + multi-view 2D detections → objects.

Schema of ``instances.json``: docs/schemas.md (frame ``gravity_z_up_metric``, metres). Method (after
SceneVerse++'s 2D→3D view consensus, with ScanNet's mesh segmentator for the 3D part):

1. Geometry: ``mesh.ply`` (metric, z up, floor z = 0, written by ``layout``). Vertices within
   ``plane_margin_m`` of a layout plane (floor z = 0, the ceiling plane, each wall plane) are removed; what
   is left is the "object" part of the mesh.
2. Over-segmentation: Felzenszwalb–Huttenlocher graph segmentation (IJCV 2004) on the mesh's edge graph with
   ScanNet's weights (Dai et al. 2017, ``Segmentator``): ``w = 1 − n_a·n_b``, squared for convex edges
   (``(p_b − p_a)·n_b > 0``); merge when ``w ≤ min(Int(A) + k/|A|, Int(B) + k/|B|)``; segments smaller than
   ``seg_min_vertices`` are then joined to a neighbour along the lightest edges.
3. Multi-view consensus, per registered keyframe with a ``detections/*.json``: the segments' vertices are
   projected (pinhole K, OpenCV axes); a vertex is visible if in front of the camera, inside the image and
   not behind the mesh's own surface there (Open3D ray casting of the whole mesh, planes included, at
   ``work_size``; the depth map ``depth/NNNNNN.npz`` is the fallback where no ray hits). A segment with at
   least ``min_visible_vertices`` visible vertices is *seen*; it is *assigned* to the smallest detection box
   that holds ≥ ``min_inside`` of its visible vertices (box grown by ``box_margin_rel``) and whose
   foreground depth (25th percentile of the ray-cast depth in the box) is not far in front of the segment
   (median depth ≤ ``(1 + depth_band_rel)·d_fg + depth_band_m``), i.e. not background seen through the box.
4. Segments assigned in fewer than ``min_segment_support`` of the views that see them (or in fewer than two
   views) are dropped. Two segments are merged when, over the views that see both and assign at least one,
   they fall in the *same* detection at least twice and in at least ``merge_ratio`` of those views;
   instances are the connected components.
5. Per instance, per view the detection holding most of its vertices votes ``score`` for its label; the
   label is the vote winner, the supporting views those whose detection has that label; instances with
   fewer than ``min_views`` supporting views are dropped, where a view supports the instance only if the box
   of its projected visible vertices has IoU ≥ ``min_view_iou`` with the detection (a small fragment that
   sits inside a chair's box in every view is not the chair). Same-label instances closer than ``dup_gap_m``
   that fall in the same detection at least as often as in two different ones (views where both are assigned)
   are merged (an object seen from two sides). Segments farther than ``cluster_gap_m`` from the largest
   spatial cluster of their instance are dropped first (a stray piece of a neighbour that sat in the box).
6. Box: gravity-aligned — yaw and horizontal size from the minimum-area rectangle (``cv2.minAreaRect``) of
   the xy footprint of the instance's vertices (outliers beyond 3 MAD dropped), z from the 1st–99th
   percentile, snapped to the floor when within ``floor_snap_m``. Local x is the longer horizontal side,
   ``yaw_rad`` in [−π/2, π/2).
7. Scale: object-size priors (:data:`SIZE_PRIORS`, typical sizes of COCO indoor classes) from confident
   instances (median view IoU ≥ ``prior_min_iou``) give a second metric scale estimate (inverse-variance mean
   of log size ratios, ratios beyond 1.5× of the median one dropped); it is recorded
   next to the layout scale and their combination under ``"scale"``; the scene is not rescaled.
8. Optional captions: :mod:`vid2scene.instances_caption` sends the best crop of each instance to an
   OpenAI-compatible chat endpoint (``captioner: "openai"``).
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import progress
from .errors import StageFailed
from .fusion import WORLD_METRIC, load_depth, ply_frame, read_mesh_ply
from .io import read_json, write_json
from .scene import CameraFrame, Scene
from .stage import StageResult

NAME = "instances"
OUTPUTS = ["instances.json"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plane_margin_m: float = Field(0.05, ge=0, description="vertices this close to a layout plane are removed")
    seg_k: float = Field(0.01, gt=0, description="Felzenszwalb threshold constant k (ScanNet kThresh)")
    seg_min_vertices: int = Field(20, ge=1, description="smallest segment (ScanNet segMinVerts)")
    work_size: int = Field(320, ge=32, description="long side (pixels) of the occlusion ray-cast")
    occlusion_tol_rel: float = Field(0.05, ge=0, description="a vertex is occluded if farther than the surface "
                                     "by more than this share of the depth ...")
    occlusion_tol_m: float = Field(0.04, ge=0, description="... plus this many metres")
    min_visible_vertices: int = Field(8, ge=1)
    min_inside: float = Field(0.6, gt=0, le=1, description="share of a segment's visible vertices in a box")
    box_margin_rel: float = Field(0.05, ge=0, description="boxes grown by this share of their size per side")
    depth_band_rel: float = Field(0.5, ge=0)
    depth_band_m: float = Field(0.3, ge=0)
    min_segment_support: float = Field(0.3, ge=0, le=1, description="assigned views / seen views of a segment")
    merge_ratio: float = Field(0.5, gt=0, le=1)
    min_views: int = Field(3, ge=1, description="instances supported by fewer keyframes are dropped")
    min_view_iou: float = Field(0.2, ge=0, le=1, description="a view supports an instance only if the projected box "
                                "of its visible vertices has at least this IoU with the detection")
    dup_gap_m: float = Field(0.1, ge=0, description="same-label instances this close may be one object")
    cluster_gap_m: float = Field(0.1, gt=0, description="segments of an instance farther than this from its "
                                 "largest spatial cluster are dropped")
    floor_snap_m: float = Field(0.1, ge=0, description="box bottoms this close to the floor are set to z = 0")
    prior_min_score: float = Field(0.5, ge=0, le=1, description="instances used for the object-size scale")
    prior_min_views: int = Field(3, ge=1)
    prior_min_iou: float = Field(0.4, ge=0, le=1, description="median view IoU of instances used for the scale")
    captioner: Literal["none", "openai"] = Field("none", description="labeller backend for captions")
    vlm_base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 "
                                     "(env VID2SCENE_VLM_BASE_URL)")
    vlm_model: str | None = Field(None, description="model name (env VID2SCENE_VLM_MODEL)")
    vlm_api_key: str | None = Field(None, description="API key (env VID2SCENE_VLM_API_KEY); not written anywhere")
    vlm_timeout_s: float = Field(30.0, gt=0)
    vlm_retries: int = Field(2, ge=0)
    caption_max_instances: int = Field(50, ge=0)


#: Typical sizes of COCO indoor classes: (dimension, metres, sigma metres). ``top`` is the height of the top
#: above the floor (z max; robust to legs the reconstruction misses, for furniture standing on the floor),
#: ``height`` the z extent, ``length`` the longer horizontal side. Rough figures from common furniture
#: standards / product ranges; "dining table" is wide because COCO's class also takes desks and counters.
SIZE_PRIORS: dict[str, tuple[str, float, float]] = {
    "chair": ("top", 0.88, 0.12),
    "couch": ("top", 0.85, 0.12),
    "bed": ("top", 0.6, 0.15),
    "dining table": ("top", 0.75, 0.1),
    "toilet": ("top", 0.75, 0.08),
    "refrigerator": ("top", 1.7, 0.2),
    "oven": ("top", 0.9, 0.06),
    "microwave": ("height", 0.3, 0.05),
    "tv": ("height", 0.5, 0.2),
    "laptop": ("length", 0.34, 0.05),
    "keyboard": ("length", 0.44, 0.05),
    "mouse": ("length", 0.11, 0.015),
    "cell phone": ("length", 0.15, 0.015),
    "bottle": ("height", 0.25, 0.06),
    "cup": ("height", 0.1, 0.02),
    "book": ("length", 0.23, 0.05),
}


# ---------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------
def layout_plane_mask(vertices: np.ndarray, layout: dict, margin_m: float) -> np.ndarray:
    """``N`` bool: True for vertices farther than ``margin_m`` from every layout plane (kept as objects).

    ``vertices``: ``N×3`` metres in ``gravity_z_up_metric``. Planes: the floor ``z = 0`` (also drops
    everything below it), the ceiling plane (and above it) if ``layout["ceiling"]`` exists, and each wall
    ``n·x + d = 0`` of ``layout["walls"]`` (only the band around the plane: a "wall" may be a cabinet front).
    """
    V = np.asarray(vertices, np.float64)
    keep = V[:, 2] > margin_m
    ceil = layout.get("ceiling")
    if ceil:
        n, d = np.asarray(ceil["normal"], float), float(ceil["d"])
        s = V @ n + d
        # the ceiling normal may face up or down: "below the ceiling" is the side the floor origin is on
        side = np.sign(d) if d != 0 else 1.0
        keep &= s * side > margin_m
    for w in layout.get("walls") or []:
        n, d = np.asarray(w["normal"], float), float(w["d"])
        keep &= np.abs(V @ n + d) > margin_m
    return keep


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """Unique undirected edges ``E×2`` (int64, ``a < b``) of a triangle list ``M×3``."""
    t = np.asarray(triangles, np.int64).reshape(-1, 3)
    e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    e.sort(axis=1)
    return np.unique(e[e[:, 0] != e[:, 1]], axis=0)


def felzenszwalb_mesh(vertices: np.ndarray, normals: np.ndarray, edges: np.ndarray, k: float = 0.01,
                      min_vertices: int = 20) -> np.ndarray:
    """Graph-based over-segmentation of a mesh (Felzenszwalb & Huttenlocher 2004; ScanNet's Segmentator).

    Args:
        vertices: ``N×3`` positions; normals: ``N×3`` unit vertex normals; edges: ``E×2`` vertex indices.
        k: threshold constant (larger → larger segments); min_vertices: segments below this size are merged
            into a neighbour (lightest edges first).

    Returns:
        ``N`` int64 segment ids, consecutive from 0; vertices without edges are their own segments.
    """
    V, Nn = np.asarray(vertices, np.float64), np.asarray(normals, np.float64)
    n = len(V)
    E = np.asarray(edges, np.int64).reshape(-1, 2)
    a, b = E[:, 0], E[:, 1]
    dot = np.clip(np.einsum("ij,ij->i", Nn[a], Nn[b]), -1.0, 1.0)
    w = 1.0 - dot
    convex = np.einsum("ij,ij->i", V[b] - V[a], Nn[b]) > 0
    w = np.where(convex, w * w, w)
    order = np.argsort(w, kind="stable")
    parent = list(range(n))
    size = [1] * n
    thr = [k] * n

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    ea, eb, ew = a[order].tolist(), b[order].tolist(), w[order].tolist()
    for i in range(len(ea)):
        ra, rb = find(ea[i]), find(eb[i])
        if ra == rb:
            continue
        wi = ew[i]
        if wi <= thr[ra] and wi <= thr[rb]:
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            thr[ra] = wi + k / size[ra]
    for i in range(len(ea)):
        ra, rb = find(ea[i]), find(eb[i])
        if ra != rb and (size[ra] < min_vertices or size[rb] < min_vertices):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
    roots = np.fromiter((find(i) for i in range(n)), np.int64, n)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def oriented_box(points: np.ndarray, floor_snap_m: float = 0.1) -> dict:
    """Gravity-aligned box of ``N×3`` metric z-up points: ``{"center", "size", "yaw_rad"}`` + ``"aabb"``.

    Footprint: ``cv2.minAreaRect`` of the xy points after dropping points farther than 3 MADs (per axis) from
    the median; local x is the longer side, ``yaw_rad`` ∈ [−π/2, π/2) is its angle from world +x about +z.
    Height: 1st–99th percentile of z, bottom snapped to 0 when below ``floor_snap_m``. Sizes are full side
    lengths in metres (≥ 1 cm).
    """
    import cv2

    P = np.asarray(points, np.float64).reshape(-1, 3)
    if len(P) == 0:
        raise ValueError("oriented_box needs at least one point")
    med = np.median(P[:, :2], axis=0)
    mad = np.median(np.abs(P[:, :2] - med), axis=0) * 1.4826 + 1e-3
    inl = np.all(np.abs(P[:, :2] - med) <= 3.0 * mad + 0.05, axis=1)
    Q = P[inl] if inl.sum() >= 3 else P
    (cx, cy), (w, h), _ = cv2.minAreaRect(Q[:, :2].astype(np.float32))
    corners = cv2.boxPoints(((cx, cy), (w, h), _)).astype(np.float64)
    e1, e2 = corners[1] - corners[0], corners[2] - corners[1]
    if np.linalg.norm(e2) > np.linalg.norm(e1):
        e1, e2 = e2, e1
    sx, sy = float(np.linalg.norm(e1)), float(np.linalg.norm(e2))
    yaw = math.atan2(e1[1], e1[0]) if sx > 0 else 0.0
    yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2
    z0, z1 = np.percentile(P[:, 2], [1, 99])
    if z0 < floor_snap_m:
        z0 = 0.0
    size = [max(sx, 0.01), max(sy, 0.01), max(float(z1 - z0), 0.01)]
    center = [float(cx), float(cy), float((z0 + z1) / 2)]
    return {"center": center, "size": size, "yaw_rad": float(yaw),
            "aabb": {"min": [float(v) for v in Q[:, :2].min(0)] + [float(z0)],
                     "max": [float(v) for v in Q[:, :2].max(0)] + [float(z1)]}}


def box_corners(center, size, yaw_rad: float) -> np.ndarray:
    """``8×3`` corners of a gravity-aligned box (docs/schemas.md): ``center + R_z(yaw)·(±sx/2, ±sy/2), z ± sz/2``."""
    c, s = np.asarray(center, float), np.asarray(size, float) / 2
    R = np.array([[math.cos(yaw_rad), -math.sin(yaw_rad)], [math.sin(yaw_rad), math.cos(yaw_rad)]])
    out = []
    for dz in (-1, 1):
        for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            xy = c[:2] + R @ (np.array([dx, dy]) * s[:2])
            out.append([xy[0], xy[1], c[2] + dz * s[2]])
    return np.array(out)


def box_iou(a, b) -> float:
    """IoU of two ``[x0, y0, x1, y1]`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def project(points_in_world: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``N×2`` pixel coordinates (x right, y down; pixel centres at +0.5), ``N`` camera depth z)."""
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    pc = np.asarray(points_in_world, np.float64) @ R.T + t
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([K[0, 0] * pc[:, 0] / z + K[0, 2], K[1, 1] * pc[:, 1] / z + K[1, 2]], axis=1)
    return uv, z


class MeshRaycaster:
    """Depth of the mesh surface seen by a pinhole camera (Open3D ``RaycastingScene``, Embree)."""

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        from .fusion import _open3d

        o3d = _open3d()
        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        if len(triangles):
            self.scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, np.float32)),
                                     o3d.core.Tensor(np.asarray(triangles, np.uint32)))

    def depth(self, K: np.ndarray, cam_from_world: np.ndarray, width: int, height: int) -> np.ndarray:
        """``height×width`` float32 depth along the camera z axis (inf where no surface); ``K`` in pixels of
        that size."""
        R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
        C = -R.T @ t
        x = (np.arange(width) + 0.5 - K[0, 2]) / K[0, 0]
        y = (np.arange(height) + 0.5 - K[1, 2]) / K[1, 1]
        xs, ys = np.meshgrid(x, y)
        d = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3) @ R  # R^T (x, y, 1): camera z = 1
        rays = np.concatenate([np.broadcast_to(C, d.shape), d], 1).astype(np.float32)
        hit = self.scene.cast_rays(self._o3d.core.Tensor(rays))["t_hit"].numpy()
        return hit.reshape(height, width).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# consensus
# ---------------------------------------------------------------------------------------------------------
def _scaled_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    K2 = np.array(K, np.float64)
    K2[0] *= sx
    K2[1] *= sy
    return K2


def view_assignments(frame: CameraFrame, dets: list[dict], V: np.ndarray, seg: np.ndarray, n_seg: int,
                     ray: MeshRaycaster, depth_fallback: np.ndarray | None, config: Config) -> dict:
    """Project the object vertices into one keyframe and assign segments to its detections.

    ``V``: ``N×3`` object vertices (world), ``seg``: ``N`` segment ids in ``0..n_seg-1``. Returns ``{"vis":
    n_seg int visible-vertex counts, "bbox": n_seg×4 projected box of the visible vertices (keyframe pixels;
    NaN where unseen), "assign": n_seg detection index or −1}``.
    """
    W, H = frame.width, frame.height
    s = config.work_size / max(W, H)
    w, h = max(1, round(W * s)), max(1, round(H * s))
    Kw = _scaled_K(frame.K, w / W, h / H)
    zref = ray.depth(Kw, frame.cam_from_world, w, h)
    if depth_fallback is not None:
        import cv2

        fb = cv2.resize(depth_fallback, (w, h), interpolation=cv2.INTER_NEAREST)
        zref = np.where(np.isfinite(zref), zref, np.where(fb > 0, fb, np.inf)).astype(np.float32)
    uv, z = project(V, frame.K, frame.cam_from_world)
    inimg = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    idx = np.flatnonzero(inimg)
    px = np.clip((uv[idx, 0] * w / W).astype(int), 0, w - 1)
    py = np.clip((uv[idx, 1] * h / H).astype(int), 0, h - 1)
    zr = zref[py, px]
    ok = z[idx] <= zr * (1 + config.occlusion_tol_rel) + config.occlusion_tol_m  # inf (no hit) -> visible
    vis_idx = idx[ok]
    sv = seg[vis_idx]
    uvv = uv[vis_idx]
    vis = np.bincount(sv, minlength=n_seg)
    bbox = np.full((n_seg, 4), np.nan, np.float32)
    if len(sv):
        lo = np.full((n_seg, 2), np.inf)
        hi = np.full((n_seg, 2), -np.inf)
        np.minimum.at(lo, sv, uvv)
        np.maximum.at(hi, sv, uvv)
        seen = vis > 0
        bbox[seen] = np.concatenate([lo[seen], hi[seen]], 1)
    assign = np.full(n_seg, -1, np.int64)
    best_area = np.full(n_seg, np.inf)
    seen_ok = vis >= config.min_visible_vertices
    if len(sv) and dets:
        for j, d in enumerate(dets):
            x0, y0, x1, y1 = d["bbox_xyxy"]
            mx, my = config.box_margin_rel * (x1 - x0), config.box_margin_rel * (y1 - y0)
            inside = (uvv[:, 0] >= x0 - mx) & (uvv[:, 0] <= x1 + mx) & (uvv[:, 1] >= y0 - my) & (uvv[:, 1] <= y1 + my)
            cnt = np.bincount(sv[inside], minlength=n_seg)
            with np.errstate(divide="ignore", invalid="ignore"):
                share = np.where(vis > 0, cnt / np.maximum(vis, 1), 0.0)
                zin = np.bincount(sv[inside], weights=z[vis_idx][inside], minlength=n_seg) / np.maximum(cnt, 1)
            # foreground depth of the box: 25th percentile of the surface depth inside it
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
    return {"vis": vis.astype(np.int32), "bbox": bbox, "assign": assign}


def consensus(vis: np.ndarray, assign: np.ndarray, config: Config, seg_size: np.ndarray | None = None) -> np.ndarray:
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
    n_views, n_seg = assign.shape
    seen = vis >= config.min_visible_vertices
    asg = (assign >= 0) & seen
    n_seen, n_asg = seen.sum(0), asg.sum(0)
    support = (n_asg >= 2) & (n_asg >= config.min_segment_support * np.maximum(n_seen, 1))
    good = np.flatnonzero(support)
    group = np.full(n_seg, -1, np.int64)
    if len(good) == 0:
        return group
    size = np.ones(n_seg) if seg_size is None else np.asarray(seg_size, float)
    # per group: visible counts (n_views,) and detection weights {view: {detection: vertices}}
    gvis = {int(s): vis[:, s].astype(np.int64) for s in good}
    gw = {int(s): {int(v): {int(assign[v, s]): float(size[s])} for v in np.flatnonzero(asg[:, s])} for s in good}
    members = {int(s): [int(s)] for s in good}

    def det_of(g):
        d = np.full(n_views, -1, np.int64)
        for v, dd in gw[g].items():
            d[v] = max(dd, key=dd.get)
        return d

    def merge_weights(a, b):
        out = {v: dict(dd) for v, dd in a.items()}
        for v, dd in b.items():
            o = out.setdefault(v, {})
            for d, w in dd.items():
                o[d] = o.get(d, 0.0) + w
        return out

    det = {g: det_of(g) for g in members}
    index: dict[tuple[int, int], set] = {}  # (view, detection) -> groups assigned to it

    def add_index(g):
        for v in np.flatnonzero(det[g] >= 0):
            index.setdefault((int(v), int(det[g][v])), set()).add(g)

    def drop_index(g):
        for v in np.flatnonzero(det[g] >= 0):
            index[(int(v), int(det[g][v]))].discard(g)

    for g in members:
        add_index(g)

    def score(g, h):
        dg, dh = det[g], det[h]
        sg, sh = gvis[g] >= config.min_visible_vertices, gvis[h] >= config.min_visible_vertices
        together = int(((dg >= 0) & (dg == dh)).sum())
        denom = int((sg & sh & ((dg >= 0) | (dh >= 0))).sum())
        return together / max(denom, 1), together, denom

    def neighbours(g):
        out = set()
        for v in np.flatnonzero(det[g] >= 0):
            out |= index[(int(v), int(det[g][v]))]
        out.discard(g)
        return out

    def wilson(r, n):  # lower bound (z = 1) of the agreement: well-supported merges go first
        n = max(n, 1)
        return (r + 0.5 / n - math.sqrt(r * (1 - r) / n + 0.25 / n ** 2)) / (1 + 1 / n)

    import heapq

    version = {g: 0 for g in members}
    heap: list = []

    def push(g, h):
        g, h = min(g, h), max(g, h)
        r, tog, den = score(g, h)
        if r >= config.merge_ratio and tog >= 2:
            heapq.heappush(heap, (-wilson(r, den), -tog, g, h, version[g], version[h]))

    for g in list(members):
        for h in neighbours(g):
            if g < h:
                push(g, h)
    while heap:
        _, _, g, h, vg, vh = heapq.heappop(heap)
        if g not in members or h not in members or version[g] != vg or version[h] != vh:
            continue  # stale entry: one of the two groups changed since it was scored
        drop_index(g)
        drop_index(h)
        gvis[g] = gvis[g] + gvis.pop(h)
        gw[g] = merge_weights(gw[g], gw.pop(h))
        members[g] += members.pop(h)
        det.pop(h)
        version.pop(h)
        det[g] = det_of(g)
        version[g] += 1
        add_index(g)
        for x in neighbours(g):
            push(g, x)
    for i, (_, segs) in enumerate(sorted(members.items())):
        group[segs] = i
    return group


# ---------------------------------------------------------------------------------------------------------
# scale from object sizes
# ---------------------------------------------------------------------------------------------------------
def object_scale(instances: list[dict], layout_scale: float | None, layout_sigma: float | None,
                 config: Config | None = None) -> dict:
    """Metric scale from object-size priors (:data:`SIZE_PRIORS`), next to the layout's.

    Each confident instance (score ≥ ``prior_min_score``, ≥ ``prior_min_views`` views, label with a prior)
    gives ``r_i = prior_i / measured_i`` (measured in the current, layout-scaled metres) with relative sigma
    ``σ_i / prior_i``; the estimate is the inverse-variance mean of ``log r_i`` (its sigma widened to the
    spread of the ``log r_i`` when that is larger), times ``layout_scale`` (metres per SfM unit). ``combined``
    is the inverse-variance mean of the two estimates (the layout's alone when it has sigma 0: a user scale).
    """
    config = config or Config()
    used = []
    for inst in instances:
        pr = SIZE_PRIORS.get(inst["label"])
        if pr is None or inst["score"] < config.prior_min_score or inst["n_views"] < config.prior_min_views:
            continue
        if inst.get("views") and np.median([v["iou"] for v in inst["views"]]) < config.prior_min_iou:
            continue  # the box does not frame the detected object well: its size says little
        dim, prior_m, sigma_m = pr
        size = inst["box"]["size"]
        if dim == "top":
            measured = inst["box"]["center"][2] + size[2] / 2 if "center" in inst["box"] else size[2]
        else:
            measured = size[2] if dim == "height" else max(size[0], size[1])
        if measured <= 0.01:
            continue
        used.append({"id": inst["id"], "label": inst["label"], "dimension": dim, "measured_m": round(measured, 4),
                     "prior_m": prior_m, "ratio": round(prior_m / measured, 4)})
    out = {"layout_metres_per_sfm_unit": layout_scale, "layout_sigma": layout_sigma,
           "object_prior_metres_per_sfm_unit": None, "object_prior_sigma": None, "n_objects_used": len(used),
           "combined": layout_scale, "combined_sigma": layout_sigma, "objects": used}
    if not used or layout_scale is None:
        return out
    logs = np.log([u["ratio"] for u in used])
    if len(used) >= 3:  # drop ratios more than 1.5x away from the median one (partial or merged objects)
        keep = np.abs(logs - np.median(logs)) <= math.log(1.5)
        for u, k in zip(used, keep):
            u["used"] = bool(k)
        used = [u for u, k in zip(used, keep) if k]
        logs = logs[keep]
        out["n_objects_used"] = len(used)
    sig = np.array([SIZE_PRIORS[u["label"]][2] / SIZE_PRIORS[u["label"]][1] for u in used])
    wts = 1.0 / sig ** 2
    mu = float((wts * logs).sum() / wts.sum())
    s_mu = float(1.0 / math.sqrt(wts.sum()))
    if len(used) > 1:
        s_mu = max(s_mu, float(np.std(logs, ddof=1) / math.sqrt(len(used))))
    s_obj = layout_scale * math.exp(mu)
    sig_obj = s_obj * s_mu
    out["object_prior_metres_per_sfm_unit"] = round(s_obj, 6)
    out["object_prior_sigma"] = round(sig_obj, 6)
    if layout_sigma is not None and layout_sigma > 0:
        w1, w2 = 1 / layout_sigma ** 2, 1 / sig_obj ** 2
        out["combined"] = round((w1 * layout_scale + w2 * s_obj) / (w1 + w2), 6)
        out["combined_sigma"] = round(1 / math.sqrt(w1 + w2), 6)
    return out


# ---------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------
def _vertex_normals(mesh) -> np.ndarray:
    if not mesh.has_vertex_normals():
        mesh.compute_vertex_normals()
    n = np.asarray(mesh.vertex_normals, np.float64)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def run(scene: Scene, config: Config) -> StageResult:
    from .detect import load_detections

    scene.require("layout")
    scene.require("detect")
    t0 = time.perf_counter()
    mesh_path = scene.root / "mesh.ply"
    if not mesh_path.is_file():
        raise StageFailed(NAME, f"missing {mesh_path}; run fusion and layout first")
    frame_name, _ = ply_frame(mesh_path)
    if frame_name != WORLD_METRIC:
        raise StageFailed(NAME, f"mesh.ply is in frame '{frame_name}', expected {WORLD_METRIC}; re-run layout")
    layout = read_json(scene.root / "layout.json")
    mesh = read_mesh_ply(mesh_path)
    V_all = np.asarray(mesh.vertices, np.float64)
    F_all = np.asarray(mesh.triangles, np.int64)
    N_all = _vertex_normals(mesh)
    frames = [f for f in scene.load_cameras() if f.registered]
    dets = {f.source_frame: load_detections(scene, f.source_frame) for f in frames}
    n_dets = sum(len(d["detections"]) for d in dets.values() if d)
    detector = next((d["detector"] for d in dets.values() if d), None)
    lscale = layout.get("scale", {})
    warnings: list[str] = []

    keep = layout_plane_mask(V_all, layout, config.plane_margin_m)
    obj_idx = np.flatnonzero(keep)
    instances: list[dict] = []
    qc: dict = {"n_vertices": len(V_all), "n_object_vertices": int(len(obj_idx)), "n_detections": n_dets,
                "n_views": len(frames)}
    if n_dets == 0 or len(obj_idx) == 0 or not frames:
        warnings.append("no detections in any keyframe: no instances" if n_dets == 0 else
                        "no registered keyframes: no instances" if not frames else
                        "no mesh vertices left after removing the layout planes: no instances")
    else:
        remap = np.full(len(V_all), -1, np.int64)
        remap[obj_idx] = np.arange(len(obj_idx))
        E = mesh_edges(F_all)
        E = remap[E]
        E = E[(E >= 0).all(1)]
        V = V_all[obj_idx]
        with progress.bar("instances: segments", total=None):
            seg = felzenszwalb_mesh(V, N_all[obj_idx], E, config.seg_k, config.seg_min_vertices)
        n_seg = int(seg.max()) + 1
        ray = MeshRaycaster(V_all, F_all)
        vis_t, bbox_t, asg_t, used_frames = [], [], [], []
        with progress.bar("instances: views", total=len(frames)) as bar:
            for f in frames:
                d = dets.get(f.source_frame)
                dep = scene.root / "depth" / f"{f.source_frame:06d}.npz"
                fb = load_depth(dep, float(lscale.get("metres_per_sfm_unit") or 1.0))[0] if dep.is_file() else None
                r = view_assignments(f, (d or {}).get("detections", []), V, seg, n_seg, ray, fb, config)
                vis_t.append(r["vis"])
                bbox_t.append(r["bbox"])
                asg_t.append(r["assign"])
                used_frames.append(f)
                bar.advance()
        vis, asg, bbox = np.stack(vis_t), np.stack(asg_t), np.stack(bbox_t)
        group = consensus(vis, asg, config, np.bincount(seg, minlength=n_seg))
        instances = build_instances(group, seg, obj_idx, V, vis, asg, bbox, used_frames, dets, config)
        qc.update({"n_segments": n_seg, "n_supported_segments": int((group >= 0).sum())})
        if not instances:
            warnings.append("detections found but no instance reached min_views supporting keyframes")
    scale = object_scale(instances, lscale.get("metres_per_sfm_unit"), lscale.get("sigma"), config)
    if config.captioner != "none" and instances:
        from .instances_caption import caption_instances

        caption_instances(scene, instances, config)
    doc = {"frame": WORLD_METRIC, "units": "m", "geometry": "mesh.ply", "n_vertices": int(len(V_all)),
           "detector": detector, "instances": instances, "scale": scale}
    write_json(scene.root / "instances.json", doc, indent=None)
    secs = time.perf_counter() - t0
    per_class: dict[str, int] = {}
    for i in instances:
        per_class[i["label"]] = per_class.get(i["label"], 0) + 1
    qc.update({"n_instances": len(instances), "per_class": dict(sorted(per_class.items())),
               "seconds_per_keyframe": round(secs / max(len(frames), 1), 4),
               "object_prior_metres_per_sfm_unit": scale["object_prior_metres_per_sfm_unit"],
               "layout_metres_per_sfm_unit": scale["layout_metres_per_sfm_unit"]})
    summary = f"{len(instances)} instances" + (": " + ", ".join(f"{v} {k}" for k, v in sorted(per_class.items()))
                                              if per_class else "")
    return StageResult(qc=qc, summary=summary, warnings=warnings)


def build_instances(group: np.ndarray, seg: np.ndarray, obj_idx: np.ndarray, V: np.ndarray, vis: np.ndarray,
                    asg: np.ndarray, bbox: np.ndarray, frames: list[CameraFrame], dets: dict,
                    config: Config) -> list[dict]:
    """Instance records (docs/schemas.md) from segment groups: label votes, view support, duplicate merging,
    boxes. Arguments as produced in :func:`run` (``vis``/``asg``/``bbox`` indexed ``[view, segment]``)."""
    from scipy.spatial import cKDTree

    seg_size = np.bincount(seg, minlength=vis.shape[1])
    det_lists = [(dets.get(f.source_frame) or {}).get("detections", []) for f in frames]

    def votes_for(segs: np.ndarray) -> tuple[dict, dict]:
        """per view: (det index, label, score) of the detection holding most of the group's vertices."""
        per_view = {}
        for v in range(len(frames)):
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
        return per_view, votes

    groups = [np.flatnonzero(group == g) for g in range(int(group.max()) + 1)] if (group >= 0).any() else []
    cands = []
    for segs in groups:
        per_view, votes = votes_for(segs)
        if not votes:
            continue
        label = max(votes, key=votes.get)
        cands.append({"segs": segs, "label": label, "per_view": per_view, "votes": votes})

    # keep each group's largest spatial cluster of segments
    from scipy.sparse.csgraph import connected_components as _cc

    seg_pts = {}
    for c in cands:
        segs = c["segs"]
        if len(segs) > 1:
            trees = []
            for sgi in segs:
                p = V[seg == sgi]
                p = p[:: max(1, len(p) // 400)]
                seg_pts[int(sgi)] = p
                trees.append(cKDTree(p))
            adj = np.zeros((len(segs), len(segs)), bool)
            for i in range(len(segs)):
                for j in range(i + 1, len(segs)):
                    d = trees[i].query(seg_pts[int(segs[j])], k=1, distance_upper_bound=config.cluster_gap_m)[0]
                    adj[i, j] = adj[j, i] = bool(np.isfinite(d).any())
            _, lab = _cc(adj, directed=False)
            w = np.bincount(lab, weights=seg_size[segs])
            kept = segs[lab == int(np.argmax(w))]
            if len(kept) < len(segs):
                per_view, votes = votes_for(kept)
                c.update(segs=kept, per_view=per_view, votes=votes, label=max(votes, key=votes.get) if votes else None)
    cands = [c for c in cands if c["label"] is not None]

    # merge same-label instances that are close in 3D and not split across two detections of one view
    def pts(c):
        return V[np.isin(seg, c["segs"])]

    merged = True
    while merged:
        merged = False
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                a, b = cands[i], cands[j]
                if a["label"] != b["label"]:
                    continue
                shared = set(a["per_view"]) & set(b["per_view"])
                n_diff = sum(a["per_view"][v][0] != b["per_view"][v][0] for v in shared)
                if n_diff > len(shared) - n_diff:
                    continue
                pa, pb = pts(a), pts(b)
                gap = np.maximum(np.maximum(pa.min(0) - pb.max(0), pb.min(0) - pa.max(0)), 0)
                if np.linalg.norm(gap) > config.dup_gap_m:  # bounding boxes already too far apart
                    continue
                dist = cKDTree(pa[:: max(1, len(pa) // 3000)]).query(pb[:: max(1, len(pb) // 3000)], k=1)[0].min()
                if dist <= config.dup_gap_m:
                    segs = np.concatenate([a["segs"], b["segs"]])
                    per_view, votes = votes_for(segs)
                    label = max(votes, key=votes.get)
                    cands[i] = {"segs": segs, "label": label, "per_view": per_view, "votes": votes}
                    del cands[j]
                    merged = True
                    break
            if merged:
                break

    out = []
    for c in cands:
        support = {v: t for v, t in c["per_view"].items() if t[1] == c["label"]}
        if len(support) < config.min_views:
            continue
        vmask = np.isin(seg, c["segs"])
        n_pts = int(vmask.sum())
        views = []
        for v in sorted(support):
            j, lab, sc = support[v]
            bb = bbox[v, c["segs"]]
            ok = np.isfinite(bb[:, 0])
            if not ok.any():
                continue
            proj = [float(bb[ok, 0].min()), float(bb[ok, 1].min()), float(bb[ok, 2].max()), float(bb[ok, 3].max())]
            det_box = det_lists[v][j]["bbox_xyxy"]
            iou = box_iou(proj, det_box)
            if iou < config.min_view_iou:  # a fragment inside the box, not the object the box frames
                continue
            views.append({"frame": frames[v].source_frame, "bbox_xyxy": det_box, "score": round(sc, 4),
                          "projected_bbox_xyxy": [round(x, 1) for x in proj], "iou": round(iou, 3),
                          "visible_share": round(float(vis[v, c["segs"]].sum()) / max(n_pts, 1), 3)})
        if len(views) < config.min_views:
            continue
        kept = {fr["frame"] for fr in views}
        support = {v: t for v, t in support.items() if frames[v].source_frame in kept}
        box = oriented_box(V[vmask], config.floor_snap_m)
        fr = [frames[v] for v in sorted(support)]
        out.append({"label": c["label"], "score": round(float(np.mean([t[2] for t in support.values()])), 4),
                    "n_views": len(support), "label_votes": {k: round(x, 3) for k, x in
                                                             sorted(c["votes"].items(), key=lambda kv: -kv[1])},
                    "vertex_ids": obj_idx[vmask].tolist(), "n_points": n_pts,
                    "box": {"center": [round(x, 4) for x in box["center"]], "size": [round(x, 4) for x in box["size"]],
                            "yaw_rad": round(box["yaw_rad"], 5)},
                    "aabb": {k: [round(x, 4) for x in vals] for k, vals in box["aabb"].items()},
                    "first_frame": fr[0].source_frame, "last_frame": fr[-1].source_frame,
                    "first_timestamp_s": round(fr[0].timestamp_s, 4), "last_timestamp_s": round(fr[-1].timestamp_s, 4),
                    "views": views, "caption": None})
    out.sort(key=lambda d: (-d["n_views"] * d["score"], d["label"]))
    for i, d in enumerate(out):
        d["id"] = i
    return [{"id": d.pop("id"), **d} for d in out]


def load_instances(scene: Scene) -> dict:
    """``instances.json`` as a dict (schema in docs/schemas.md)."""
    return read_json(scene.root / "instances.json")
