"""``layout`` stage: gravity-aligned metric world frame, floor / ceiling / walls, room polygon.

Steps (all detection is done in the SfM frame, so a re-run sees the same input and gives the same result):

1. Points: ``points.ply`` brought back to the SfM frame (its header says which frame it is in and, if not SfM,
   the ``world_from_sfm`` that was applied). Cameras: from the COLMAP model in ``sfm/`` (the source of truth);
   when ``sfm/`` is absent, from ``cameras.json`` (its own ``world_from_sfm`` undone).
2. Planes: sequential RANSAC (Open3D ``segment_plane``, seeded) with a threshold relative to the scene size,
   each plane refitted by least squares on its inliers; planes whose inliers are degenerate (a line) are
   ignored. Camera up = mean of the cameras' −y axes in the world.
3. Floor: among near-horizontal planes (normal within ``horizontal_tol_deg`` of camera up) with most cameras
   above them and enough support, the lowest. None → :class:`StageFailed`. Ceiling: the highest such plane with
   the cameras below it. Walls: near-vertical planes.
4. Gravity: the floor normal is refit (IRLS, Huber) on every point within a wide band of the RANSAC floor (a
   warped video floor tilts a thin RANSAC patch by degrees), then made orthogonal to the wall normals
   (Manhattan: walls are vertical; :func:`manhattan_up`) unless that moves it by more than
   ``max_manhattan_correction_deg``. Rotation: floor normal → +z; the normal of the best-supported wall → +x (Manhattan yaw; PCA of the floor
   points without walls). Scale s (metres per SfM unit): user ``metric_scale``, else inverse-variance
   combination of the priors camera height above the floor (1.55 ± 0.15 m) and floor-to-ceiling height
   (2.6 ± 0.3 m, only with a ceiling plane). Translation: floor at z = 0, room footprint's min corner at x = y = 0.
5. Footprint: occupancy grid (``grid_m``) of all points between floor and ceiling, closed, holes filled,
   opened (``footprint_open_m``: spurs through doors, thin bridges),
   largest component → polygon (Douglas–Peucker), floor area, extent.
6. Writes (idempotent: every asset is regenerated from its SfM-frame source): ``layout.json``;
   ``cameras.json`` (``world: gravity_z_up_metric``, ``world_from_sfm``), ``sparse_points.ply``,
   ``transforms.json``; ``mesh.ply`` / ``points.ply`` (old transform undone first); ``depth/*.npz``
   (``depth_m = depth_m / scale_applied · s``, ``scale_applied = s``); ``manifest.json`` ``world_from_sfm``.

``layout.json`` schema (units metres, frame ``gravity_z_up_metric``; planes as ``n·x + d = 0`` with unit
normal ``n``)::

    {"frame": "gravity_z_up_metric", "units": "m",
     "world_from_sfm": 4×4 (s·R | t),
     "scale": {"metres_per_sfm_unit": s, "sigma": σ, "method": "user" | "priors",
               "estimates": [{"source": "camera_height" | "ceiling_height", "value": s_i, "sigma": σ_i,
                              "measured_sfm": sfm units, "prior_m": m, "prior_sigma_m": m}]},
     "gravity": {"camera_up_vs_floor_normal_deg": deg, "up_in_sfm": [3],
                 "method": "floor_refit+walls" | "floor_refit" | "floor_ransac", "walls_used": n,
                 "correction_vs_ransac_floor_deg": deg},
     "floor": {"normal": [0,0,1], "d": 0, "n_inliers": n, "rms_m": m},
     "ceiling": {"normal": [3], "d": d, "height_m": m, "n_inliers": n} | null,
     "walls": [{"normal": [3], "d": d, "n_inliers": n, "length_m": m}],
     "room": {"polygon_xy": [[x, y], ...], "floor_area_m2": a, "extent_m": [sx, sy], "height_m": h,
              "height_source": "ceiling_plane" | "points"},
     "cameras": {"n_registered": n, "median_height_m": m}}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import progress
from .errors import StageFailed
from .fusion import (WORLD_METRIC, WORLD_SFM, _open3d, frame_comments, ply_frame, read_mesh_ply, read_points_ply,
                     write_mesh_ply)
from .io import atomic_path, finished_files, read_json, write_json, write_ply_points
from .scene import CameraFrame, Scene
from .stage import StageResult

NAME = "layout"
OUTPUTS = ["layout.json"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric_scale: float | None = Field(None, gt=0, description="metres per SfM unit, if known (overrides priors)")
    scale_priors: list[Literal["camera_height", "ceiling_height"]] = ["camera_height", "ceiling_height"]
    camera_height_m: float = Field(1.55, gt=0, description="prior: camera height above the floor (handheld)")
    camera_height_sigma_m: float = Field(0.15, gt=0)
    ceiling_height_m: float = Field(2.6, gt=0, description="prior: floor-to-ceiling height")
    ceiling_height_sigma_m: float = Field(0.3, gt=0)
    plane_threshold_rel: float = Field(0.012, gt=0, description="RANSAC inlier distance / median point-to-camera "
                                                                "distance")
    max_planes: int = Field(10, ge=1)
    min_plane_share: float = Field(0.02, gt=0, lt=1, description="smallest plane, as a share of the points")
    horizontal_tol_deg: float = Field(20.0, gt=0, lt=45)
    vertical_tol_deg: float = Field(15.0, gt=0, lt=45)
    ransac_iterations: int = Field(1000, ge=50)
    max_ransac_points: int = Field(50_000, ge=1000, description="random subsample for plane RANSAC")
    grid_m: float = Field(0.05, gt=0, description="footprint occupancy cell (metres)")
    footprint_open_m: float = Field(0.5, ge=0, description="footprint: opening square (metres) that cuts spurs "
                                    "through doors/windows and thin bridges to neighbouring spaces")
    footprint_simplify_m: float = Field(0.15, gt=0, description="footprint polygon simplification tolerance (m)")
    floor_refit_band_rel: float = Field(0.05, ge=0, description="refit the floor normal (IRLS, Huber) on all "
                                        "points within this distance of the RANSAC floor (relative to the median "
                                        "point-to-camera distance): a warped floor's RANSAC patch tilts by degrees")
    manhattan_gravity: bool = Field(True, description="make the floor normal orthogonal to the wall normals "
                                    "(walls are vertical), weighted by support; ignored if it moves the normal by "
                                    "more than max_manhattan_correction_deg")
    max_manhattan_correction_deg: float = Field(5.0, gt=0)
    seed: int = 0


# ---------------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------------
def apply_sim3(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ T[:3, :3].T + T[:3, 3]


def sim3_scale(T: np.ndarray) -> float:
    return float(np.cbrt(np.linalg.det(np.asarray(T)[:3, :3])))


def sim3(s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = t
    return T


def transform_camera(cam_from_src: np.ndarray, dst_from_src: np.ndarray) -> np.ndarray:
    """``cam_from_dst`` for a Sim(3) ``dst_from_src``; camera coordinates are rescaled to the dst units so the
    result stays a rigid transform."""
    s = sim3_scale(dst_from_src)
    S = np.diag([s, s, s, 1.0])
    out = S @ np.asarray(cam_from_src, dtype=np.float64) @ np.linalg.inv(dst_from_src)
    out[3] = [0, 0, 0, 1]
    return out


def _to_sfm(points: np.ndarray, frame: str, T: np.ndarray | None, what: str) -> np.ndarray:
    if frame == WORLD_SFM:
        return points
    if T is None:
        raise StageFailed(NAME, f"{what} is in frame '{frame}' but records no world_from_sfm to undo")
    return apply_sim3(np.linalg.inv(T), points)


# ---------------------------------------------------------------------------------------------------------
# inputs in the SfM frame
# ---------------------------------------------------------------------------------------------------------
def sfm_cameras(scene: Scene) -> tuple[list[CameraFrame], np.ndarray, np.ndarray | None, dict | None]:
    """(cameras in the SfM frame, sparse points in the SfM frame, their colours, distortion) — from ``sfm/``
    when it holds a model, else from ``cameras.json`` / ``sparse_points.ply`` with their transforms undone."""
    cj = read_json(scene.cameras_json)
    distortion = cj.get("distortion")
    if (scene.sfm_dir / "images.bin").is_file() or (scene.sfm_dir / "images.txt").is_file():
        from .sfm import camera_frames

        rec = scene.load_reconstruction()
        keyframes = [{"source_frame": f["source_frame"], "timestamp_s": f["timestamp_s"]} for f in cj["frames"]]
        frames = camera_frames(rec, keyframes, [f["name"] for f in cj["frames"]])
        pts = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
        cols = np.array([p.color for p in rec.points3D.values()], dtype=np.uint8).reshape(-1, 3)
        return frames, pts, cols, distortion
    frames = [CameraFrame.from_json(f) for f in cj["frames"]]
    world = cj.get("world", WORLD_SFM)
    if world != WORLD_SFM:
        T = cj.get("world_from_sfm") or scene.read_manifest().get("world_from_sfm")
        if T is None:
            raise StageFailed(NAME, "cameras.json is not in the SfM frame and records no world_from_sfm, and "
                                    "there is no COLMAP model in sfm/ to regenerate it from")
        sfm_from_world = np.linalg.inv(np.asarray(T, dtype=np.float64))
        for f in frames:
            if f.registered:
                f.cam_from_world = transform_camera(f.cam_from_world, sfm_from_world)
    pts, cols = np.zeros((0, 3)), None
    if scene.sparse_points_ply.is_file():
        from .io import read_ply_points

        pts, cols = read_ply_points(scene.sparse_points_ply)
        frame, T = ply_frame(scene.sparse_points_ply)
        pts = _to_sfm(pts, frame, T, "sparse_points.ply")
    return frames, pts, cols, distortion


# ---------------------------------------------------------------------------------------------------------
# planes
# ---------------------------------------------------------------------------------------------------------
def detect_planes(points: np.ndarray, threshold: float, config: Config) -> list[dict]:
    """Sequential RANSAC planes: dicts with unit ``normal``, ``d`` (n·x + d = 0), ``inliers`` (indices into
    ``points``), ``rms`` and ``degenerate`` (inliers spread along a line)."""
    o3d = _open3d()
    o3d.utility.random.seed(int(config.seed))
    n_all = len(points)
    min_inliers = max(10, int(config.min_plane_share * n_all))
    remaining = np.arange(n_all)
    planes = []
    for _ in range(config.max_planes):
        if len(remaining) < max(min_inliers, 3):
            break
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[remaining]))
        model, inl = pcd.segment_plane(threshold, 3, config.ransac_iterations)
        inl = np.asarray(inl, dtype=np.int64)
        if len(inl) < min_inliers:
            break
        idx = remaining[inl]
        P = points[idx]
        c = P.mean(0)
        _, sv, vt = np.linalg.svd(P - c, full_matrices=False)
        n = vt[2] if sv[1] > 1e-12 else np.asarray(model[:3], dtype=np.float64)
        n = n / np.linalg.norm(n)
        d = -float(n @ c)
        dist = P @ n + d
        degenerate = bool(sv[1] < 0.05 * sv[0])
        planes.append({"normal": n, "d": d, "inliers": idx, "rms": float(np.sqrt(np.mean(dist ** 2))),
                       "degenerate": degenerate, "sv": sv})
        remaining = np.delete(remaining, inl)
    return planes


def camera_up(frames: list[CameraFrame]) -> np.ndarray:
    """Mean of the registered cameras' −y axes (OpenCV: y points down) in the world, unit length."""
    ups = np.array([-f.cam_from_world[1, :3] for f in frames if f.registered])
    u = ups.mean(0)
    n = np.linalg.norm(u)
    if n < 1e-6:
        raise StageFailed(NAME, "camera orientations disagree on 'up' (mean up vector is zero)")
    return u / n


def choose_floor_ceiling(planes: list[dict], up: np.ndarray, centres: np.ndarray, tol_deg: float):
    """(floor plane, ceiling plane or None), both with normals oriented along ``up``."""
    cos_tol = math.cos(math.radians(tol_deg))
    floors, ceilings = [], []
    for p in planes:
        if p["degenerate"]:
            continue
        n, d = p["normal"], p["d"]
        if n @ up < 0:
            n, d = -n, -d
            p["normal"], p["d"] = n, d
        if n @ up < cos_tol:
            continue
        h = centres @ n + d  # camera heights above the plane
        if np.mean(h > 0) >= 0.8:
            floors.append((p, float(np.median(h))))
        elif np.mean(h < 0) >= 0.8:
            ceilings.append((p, float(np.median(h))))
    if not floors:
        return None, None
    best = max(len(p["inliers"]) for p, _ in floors)
    floor = max(((p, h) for p, h in floors if len(p["inliers"]) >= 0.25 * best), key=lambda ph: ph[1])[0]
    ceiling = None
    if ceilings:
        best = max(len(p["inliers"]) for p, _ in ceilings)
        ceiling = min(((p, h) for p, h in ceilings if len(p["inliers"]) >= 0.25 * best), key=lambda ph: ph[1])[0]
    return floor, ceiling


def gravity_rotation(n_floor: np.ndarray, walls: list[dict], floor_points: np.ndarray,
                     first_view_dir: np.ndarray) -> np.ndarray:
    """3×3 rotation (world_from_sfm, up to scale) with ``n_floor`` → +z and +x along the Manhattan axis that is
    closest to the first camera's horizontal viewing direction (deterministic: no sign ambiguity)."""
    n = n_floor / np.linalg.norm(n_floor)
    e1 = np.eye(3)[int(np.argmin(np.abs(n)))]
    e1 = e1 - (e1 @ n) * n
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    if walls:
        th = np.array([math.atan2(w["normal"] @ e2, w["normal"] @ e1) for w in walls])
        wt = np.array([len(w["inliers"]) for w in walls], float)
        phi = math.atan2((wt * np.sin(4 * th)).sum(), (wt * np.cos(4 * th)).sum()) / 4
    else:
        F = floor_points - floor_points.mean(0)
        a = np.linalg.svd(F, full_matrices=False)[2][0]
        phi = math.atan2(a @ e2, a @ e1)
    view = math.atan2(first_view_dir @ e2, first_view_dir @ e1)
    k = round((view - phi) / (math.pi / 2))
    ang = phi + k * math.pi / 2
    x = math.cos(ang) * e1 + math.sin(ang) * e2
    return np.stack([x, np.cross(n, x), n])


def refit_floor(points: np.ndarray, normal: np.ndarray, d: float, band: float, huber: float,
                iterations: int = 10) -> tuple[np.ndarray, float, int]:
    """Refit a plane ``n·x + d = 0`` to every point within ``band`` of it by iteratively reweighted least squares
    (Huber weights with scale ``huber``; weighted PCA). ``points`` N×3 float (any frame/units; band and huber in
    the same units). Returns (unit normal oriented like ``normal``, d, points used); the input plane when fewer
    than 3 points are in the band. The band is re-selected around each refit plane (``iterations`` times).

    Why: on video reconstructions the floor is slightly warped (pose drift), so the RANSAC inlier patch of a thin
    threshold tilts by a few degrees; the wide-support fit averages the warp out (hololens_office: 3.6° → 2.2°
    against the ground-truth gravity)."""
    n = np.asarray(normal, np.float64)
    d = float(d)
    used = 0
    for _ in range(iterations):  # the band is re-selected around each new plane: a tilted start walks back
        P = points[np.abs(points @ n + d) < band]
        if len(P) < 3:
            break
        used = len(P)
        c = P.mean(0)
        for _ in range(3):
            r = (P - c) @ n
            w = 1.0 / np.maximum(np.abs(r) / huber, 1.0)
            c = (P * w[:, None]).sum(0) / w.sum()
            Q = P - c
            m = np.linalg.eigh((Q * w[:, None]).T @ Q)[1][:, 0]
            n = m if m @ normal >= 0 else -m
        d = -float(n @ c)
    return n, d, used


def manhattan_up(n_floor: np.ndarray, walls: list[dict], floor_weight: float = 0.1) -> np.ndarray:
    """Unit up vector close to ``n_floor`` and orthogonal to the wall normals: the eigenvector of the smallest
    eigenvalue of ``Σ_i w_i n_i n_iᵀ − λ n_f n_fᵀ`` (``w_i`` = wall inliers, ``λ = floor_weight · Σ w_i``), i.e. the
    minimiser of ``Σ w_i (n·n_i)² + λ (1 − (n·n_f)²)`` — walls are vertical in a Manhattan room (one wall: the
    floor normal projected onto the wall plane's orthogonal complement; two: nearly their cross product).
    Returns ``n_floor`` when there are no walls."""
    if not walls:
        return n_floor
    W = np.array([len(w["inliers"]) for w in walls], np.float64)
    N = np.array([w["normal"] for w in walls], np.float64)
    M = (N * W[:, None]).T @ N - floor_weight * W.sum() * np.outer(n_floor, n_floor)
    n = np.linalg.eigh(M)[1][:, 0]
    return n if n @ n_floor >= 0 else -n


def combine_scale(estimates: list[dict]) -> tuple[float, float]:
    """Inverse-variance weighted mean and its sigma."""
    w = np.array([1.0 / e["sigma"] ** 2 for e in estimates])
    v = np.array([e["value"] for e in estimates])
    return float((w * v).sum() / w.sum()), float(1.0 / math.sqrt(w.sum()))


def footprint(points_xy: np.ndarray, cell: float, open_m: float = 0.5, simplify_m: float = 0.15):
    """Room footprint from the floor-plane projection of the points between floor and ceiling.

    ``points_xy`` N×2 float (metres, gravity-aligned frame). Occupancy grid of ``cell`` metres → closing (small
    gaps) → holes filled → morphological opening with a ``open_m`` square (cuts thin spurs: points seen through
    doors and windows, one-cell bridges to a neighbouring space; a square keeps the corners of a wall-aligned
    room) → the largest region → polygon simplified by Douglas–Peucker with tolerance ``simplify_m``.

    Returns (polygon K×2 metres, area m² of the region, extent (sx, sy) m of the points in it, (xmin, ymin) of
    those points).

    Raises:
        StageFailed: no occupied cell.
    """
    import cv2

    k_open = max(1, int(round(open_m / cell)))
    pad = 6 + k_open  # cells: more than the closing/opening radius, so they never reach the image border
    lo = points_xy.min(0) - pad * cell
    ij = np.floor((points_xy - lo) / cell).astype(np.int64)
    shape = ij.max(0) + pad + 1
    grid = np.zeros((int(shape[1]), int(shape[0])), np.uint8)
    grid[ij[:, 1], ij[:, 0]] = 255
    grid = cv2.morphologyEx(grid, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise StageFailed(NAME, "no room footprint: no occupied floor cells")
    filled = np.zeros_like(grid)
    cv2.drawContours(filled, contours, -1, 255, thickness=-1)
    if k_open > 1:
        opened = cv2.morphologyEx(filled, cv2.MORPH_OPEN, np.ones((k_open, k_open), np.uint8))
        if opened.any():
            filled = opened
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    region = np.zeros_like(grid)
    cv2.drawContours(region, [c], -1, 255, thickness=-1)
    area = float((region > 0).sum()) * cell * cell
    sel = region[ij[:, 1], ij[:, 0]] > 0
    if not sel.any():
        sel = np.ones(len(points_xy), bool)
    mn = points_xy[sel].min(0)  # not from cell indices: those flip with float rounding at a cell boundary
    extent = points_xy[sel].max(0) - mn
    approx = cv2.approxPolyDP(c, max(simplify_m / cell, 1.0), True).reshape(-1, 2)
    poly = lo + (approx + 0.5) * cell
    return poly, area, extent, mn


# ---------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------
def run(scene: Scene, config: Config) -> StageResult:
    scene.require("fusion")
    points_ply = scene.root / "points.ply"
    if not points_ply.is_file():
        raise StageFailed(NAME, f"missing {points_ply}; run fusion first")
    pts, _, _ = read_points_ply(points_ply)
    frame, T_old = ply_frame(points_ply)
    pts = _to_sfm(pts, frame, T_old, "points.ply")
    pts = pts[np.isfinite(pts).all(1)]
    frames, sparse_pts, sparse_cols, distortion = sfm_cameras(scene)
    reg = [f for f in frames if f.registered]
    if not reg:
        raise StageFailed(NAME, "no registered cameras")
    if len(pts) < 100:
        raise StageFailed(NAME, f"no floor plane found: only {len(pts)} points in points.ply")
    centres = np.array([f.center_in_world for f in reg])
    up = camera_up(reg)

    rng = np.random.default_rng(config.seed)
    sample = pts if len(pts) <= config.max_ransac_points else \
        pts[np.sort(rng.choice(len(pts), config.max_ransac_points, replace=False))]
    ref = float(np.median(np.linalg.norm(sample - centres.mean(0), axis=1)))
    if not ref > 0:
        raise StageFailed(NAME, "no floor plane found: degenerate point cloud (all points at the cameras)")
    thr = config.plane_threshold_rel * ref
    with progress.bar("layout: planes", total=None):
        planes = detect_planes(sample, thr, config)
    floor, ceiling = choose_floor_ceiling(planes, up, centres, config.horizontal_tol_deg)
    if floor is None:
        kinds = ", ".join(f"{len(p['inliers'])} pts{' (degenerate)' if p['degenerate'] else ''} at "
                          f"{math.degrees(math.acos(min(1.0, abs(float(p['normal'] @ up))))):.0f}° from up"
                          for p in planes) or "none"
        raise StageFailed(NAME, "no floor plane found: no well-supported, non-degenerate near-horizontal plane "
                                f"below the cameras (planes: {kinds})")
    n_f, d_f = floor["normal"], floor["d"]
    sin_v = math.sin(math.radians(config.vertical_tol_deg))
    walls = [p for p in planes if p is not floor and p is not ceiling and not p["degenerate"]
             and abs(float(p["normal"] @ n_f)) < sin_v]
    for w in walls:  # wall normals face the cameras (into the room)
        if w["normal"] @ centres.mean(0) + w["d"] < 0:
            w["normal"], w["d"] = -w["normal"], -w["d"]

    # gravity: the floor normal refit over a wide band, then made orthogonal to the walls (Manhattan)
    n_ransac = n_f
    if config.floor_refit_band_rel > 0:
        n_f, d_f, _ = refit_floor(pts, n_f, d_f, config.floor_refit_band_rel * ref, thr)
    gravity_method = "floor_refit" if config.floor_refit_band_rel > 0 else "floor_ransac"
    walls_used = 0
    if config.manhattan_gravity and walls:
        n_m = manhattan_up(n_f, walls)
        corr = math.degrees(math.acos(min(1.0, float(n_m @ n_f))))
        if corr <= config.max_manhattan_correction_deg:
            # keep the floor through the same point: the band's centroid height does not change
            c_f = -d_f * n_f
            n_f, d_f = n_m, -float(n_m @ c_f)
            gravity_method += "+walls"
            walls_used = len(walls)
    floor["normal"], floor["d"] = n_f, d_f
    refit_deg = math.degrees(math.acos(min(1.0, float(n_f @ n_ransac))))

    # rotation: floor normal -> z; yaw: the Manhattan axis (from the walls, else floor PCA) closest to the
    # first camera's horizontal viewing direction -> +x
    R = gravity_rotation(n_f, walls, sample[floor["inliers"]], reg[0].cam_from_world[2, :3])

    # scale
    heights = centres @ n_f + d_f
    h_sfm = float(np.median(heights))
    estimates = []
    if "camera_height" in config.scale_priors:
        v = config.camera_height_m / h_sfm
        estimates.append({"source": "camera_height", "value": v, "sigma": v * config.camera_height_sigma_m /
                          config.camera_height_m, "measured_sfm": h_sfm, "prior_m": config.camera_height_m,
                          "prior_sigma_m": config.camera_height_sigma_m})
    ceil_sfm = None
    if ceiling is not None:
        ceil_sfm = float(np.median(sample[ceiling["inliers"]] @ n_f + d_f))
        if "ceiling_height" in config.scale_priors and ceil_sfm > 0:
            v = config.ceiling_height_m / ceil_sfm
            estimates.append({"source": "ceiling_height", "value": v, "sigma": v * config.ceiling_height_sigma_m /
                              config.ceiling_height_m, "measured_sfm": ceil_sfm, "prior_m": config.ceiling_height_m,
                              "prior_sigma_m": config.ceiling_height_sigma_m})
    if config.metric_scale is not None:
        s, sigma, method = float(config.metric_scale), 0.0, "user"
    elif estimates:
        (s, sigma), method = combine_scale(estimates), "priors"
    else:
        raise StageFailed(NAME, "no metric scale: no metric_scale given and no scale prior enabled")

    # translation: floor at z = 0, then footprint min corner at x = y = 0
    T = sim3(s, R, np.array([0.0, 0.0, s * d_f]))
    P = apply_sim3(T, pts)
    room_h = s * ceil_sfm if ceil_sfm else float(np.percentile(P[:, 2], 99.5))
    band = (P[:, 2] > -0.1) & (P[:, 2] < room_h + 0.1)
    if band.sum() < 3:
        raise StageFailed(NAME, "no room footprint: no points between floor and ceiling")
    poly, area, extent, mn = footprint(P[band, :2], config.grid_m, config.footprint_open_m,
                                      config.footprint_simplify_m)
    T[:2, 3] -= mn
    poly = poly - mn

    def plane_out(p: dict) -> dict:
        n_w = R @ p["normal"]
        # the plane itself mapped by T (n·x + d = 0 → n_w·x_w + s·d − n_w·t = 0), not its RANSAC inliers'
        # centroid: the floor's plane is refit after RANSAC, and must come out as z = 0
        d_w = s * float(p["d"]) - float(n_w @ T[:3, 3])
        Q = apply_sim3(T, sample[p["inliers"]])
        horiz = np.cross([0.0, 0.0, 1.0], n_w)
        length = float(np.ptp(Q @ horiz / max(np.linalg.norm(horiz), 1e-9))) if np.linalg.norm(horiz) > 1e-6 else None
        return {"normal": np.round(n_w, 6).tolist(), "d": round(d_w, 5), "n_inliers": len(p["inliers"]),
                "rms_m": round(s * p["rms"], 5), **({"length_m": round(length, 4)} if length is not None else {})}

    floor_out = plane_out(floor)
    gravity_deg = math.degrees(math.acos(min(1.0, float(n_f @ up))))
    layout = {
        "frame": WORLD_METRIC, "units": "m", "world_from_sfm": T.tolist(),
        "scale": {"metres_per_sfm_unit": s, "sigma": sigma, "method": method, "estimates": estimates},
        "gravity": {"camera_up_vs_floor_normal_deg": round(gravity_deg, 3), "up_in_sfm": up.tolist(),
                    "method": gravity_method, "walls_used": walls_used,
                    "correction_vs_ransac_floor_deg": round(refit_deg, 3)},
        "floor": {k: v for k, v in floor_out.items() if k != "length_m"},
        "ceiling": None if ceiling is None else dict(plane_out(ceiling), height_m=round(s * ceil_sfm, 4)),
        "walls": [plane_out(w) for w in walls],
        "room": {"polygon_xy": np.round(poly, 4).tolist(), "floor_area_m2": round(area, 3),
                 "extent_m": np.round(extent, 4).tolist(), "height_m": round(room_h, 4),
                 "height_source": "ceiling_plane" if ceil_sfm else "points"},
        "cameras": {"n_registered": len(reg), "median_height_m": round(s * h_sfm, 4)},
    }
    write_world_assets(scene, T, frames, sparse_pts, sparse_cols, distortion)
    write_json(scene.root / "layout.json", layout)
    qc = {"metres_per_sfm_unit": round(s, 6), "scale_sigma": round(sigma, 6), "scale_method": method,
          "scale_estimates": {e["source"]: round(e["value"], 6) for e in estimates},
          "camera_up_vs_floor_normal_deg": round(gravity_deg, 3), "n_planes": len(planes), "n_walls": len(walls),
          "ceiling_found": ceiling is not None, "room_height_m": round(room_h, 3),
          "floor_area_m2": round(area, 3), "extent_m": np.round(extent, 3).tolist(),
          "camera_height_m": round(s * h_sfm, 3), "plane_threshold_sfm": round(thr, 6)}
    return StageResult(qc=qc, summary=f"floor + {len(walls)} walls{' + ceiling' if ceiling else ''}; room "
                       f"{extent[0]:.2f} × {extent[1]:.2f} × {room_h:.2f} m, {area:.1f} m²; scale {s:.4g} m/unit "
                       f"({method})")


def write_world_assets(scene: Scene, T: np.ndarray, frames_sfm: list[CameraFrame], sparse_pts: np.ndarray,
                       sparse_cols: np.ndarray | None, distortion: dict | None) -> None:
    """Rewrite every world-frame asset in the frame ``T = world_from_sfm`` from its SfM-frame source."""
    from .export.nerfstudio import write_transforms

    s = sim3_scale(T)
    comments = frame_comments(WORLD_METRIC, T, NAME)
    frames = []
    for f in frames_sfm:
        pose = None if f.cam_from_world is None else transform_camera(f.cam_from_world, T)
        frames.append(CameraFrame(f.name, f.source_frame, f.timestamp_s, f.width, f.height, f.K, pose))
    cj = {"convention": "opencv", "world": WORLD_METRIC, "units": "m", "world_from_sfm": T.tolist()}
    if distortion is not None:
        cj["distortion"] = distortion
    cj["frames"] = [f.to_json() for f in frames]
    write_json(scene.cameras_json, cj)
    write_ply_points(scene.sparse_points_ply, apply_sim3(T, sparse_pts), sparse_cols, comments=comments)
    if any(f.registered for f in frames):
        write_transforms(scene.transforms_json, frames, image_dir="frames", distortion=distortion, world=WORLD_METRIC)
    R = T[:3, :3] / s
    pp = scene.root / "points.ply"
    if pp.is_file():
        p, c, n = read_points_ply(pp)
        frame, T_old = ply_frame(pp)
        p = apply_sim3(T, _to_sfm(p, frame, T_old, "points.ply"))
        if n is not None and frame != WORLD_SFM:
            n = n @ (T_old[:3, :3] / sim3_scale(T_old))  # undo the old rotation: R_old^T n
        write_ply_points(pp, p, c, normals=None if n is None else n @ R.T, comments=comments)
    mp = scene.root / "mesh.ply"
    if mp.is_file():
        mesh = read_mesh_ply(mp)
        frame, T_old = ply_frame(mp)
        v = apply_sim3(T, _to_sfm(np.asarray(mesh.vertices), frame, T_old, "mesh.ply"))
        n = np.asarray(mesh.vertex_normals) if mesh.has_vertex_normals() else None
        if n is not None and frame != WORLD_SFM:
            n = n @ (T_old[:3, :3] / sim3_scale(T_old))
        write_mesh_ply(mp, v, np.asarray(mesh.triangles),
                       colors=np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else None,
                       normals=None if n is None else n @ R.T, comments=comments)
    for dp in finished_files(scene.root / "depth", "*.npz"):
        rescale_depth(dp, s)

    def mark(m: dict) -> None:
        m["world_from_sfm"] = T.tolist()
        m.setdefault("conventions", {}).update(world=WORLD_METRIC, world_units="m",
                                               world_axes="z up (against gravity), floor at z = 0")

    scene.update_manifest(mark)


def rescale_depth(path: Path, s: float) -> None:
    """Bring one depth map to the metric frame: ``depth_m = depth_m / scale_applied · s`` (idempotent)."""
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    applied = float(data.get("scale_applied", 1.0))
    if applied == s and str(data.get("world", "")) == WORLD_METRIC:
        return
    d = np.asarray(data["depth_m"], dtype=np.float32)
    data["depth_m"] = (d * np.float32(s / applied)).astype(np.float32)
    data["scale_applied"] = np.float64(s)
    data["world"] = np.str_(WORLD_METRIC)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **data)
