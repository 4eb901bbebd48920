"""``layout`` stage: gravity-aligned metric world frame, floor / ceiling / walls, room polygon.

Steps (all detection is done in the SfM frame, on inputs no stage rewrites, so a re-run sees the same input and
gives the same result):

1. Inputs, in the SfM frame: the video point cloud (``Scene.points()``) and the registered cameras
   (``Scene.cameras()``).
2. Planes: sequential RANSAC (Open3D ``segment_plane``, seeded) with a threshold relative to the scene size,
   each plane refitted by least squares on its inliers; planes whose inliers are degenerate (a line) are
   ignored. Camera up = mean of the cameras' −y axes in the world.
3. Gravity cues that need no plane (:func:`prior_cues`): the cameras' axes (``camera_axes``, the weakest: the
   direction most orthogonal to every camera's right axis, robust to a camera pitched down) and the vertical
   vanishing direction of line segments (OpenCV's LSD) in up to ``vp_max_keyframes`` keyframes
   (``vanishing_points``: RANSAC over pairs of interpretation planes, then least squares). Their combination is
   the reference up for classifying planes.
4. Floor: among near-horizontal planes (normal within ``horizontal_tol_deg`` of that up) with most cameras
   above them and enough support, the lowest; ceiling: the highest such plane with the cameras below it; walls:
   near-vertical planes. The floor normal is refit (IRLS, Huber) on every point within a wide band of the
   RANSAC floor (a warped video floor tilts a thin RANSAC patch by degrees), then made orthogonal to the wall
   normals (Manhattan: walls are vertical; :func:`manhattan_up`) unless that moves it by more than
   ``max_manhattan_correction_deg`` — the ``floor`` cue. Other horizontal planes (ceiling, tables, counters)
   vote with their normals (``horizontal_planes``). Every cue is combined by inverse variance
   (:func:`combine_cues`, sigmas ``*_sigma_deg``) into up. No floor plane (or ``floor`` left out of
   ``gravity_cues``): up from the other cues (made orthogonal to the walls), the floor height from the lowest
   horizontal support, else the lowest points, else the camera-height prior (:func:`fallback_floor`),
   ``floor_observed: false`` and a stage warning — never a failed scene.
   Rotation: up → +z; the normal of the best-supported wall → +x (Manhattan yaw; PCA of the floor
   points without walls). Scale s (metres per SfM unit): user ``metric_scale``, else inverse-variance
   combination of the priors camera height above the floor (1.55 ± 0.15 m; its sigma grows with the floor
   height's uncertainty when the floor is not seen) and floor-to-ceiling height (2.6 ± 0.3 m, only with a
   ceiling plane). Translation: floor at z = 0, room footprint's min corner at x = y = 0.
5. Footprint: occupancy grid (``grid_m``) of all points between floor and ceiling, closed, holes filled,
   opened (``footprint_open_m``: spurs through doors, thin bridges),
   largest component → polygon (Douglas–Peucker), floor area, extent.
6. Writes ``layout.json`` only (``Scene.write_layout``, which also copies ``world_from_sfm`` into the
   manifest). No other asset is touched: the loaders apply ``world_from_sfm`` when asked for
   ``frame="world"`` (``Scene.cameras``, ``Scene.mesh``, ``Scene.points``, ``Scene.depth``, ...).

``layout.json`` schema (units metres, frame ``gravity_z_up_metric``; planes as ``n·x + d = 0`` with unit
normal ``n``)::

    {"frame": "gravity_z_up_metric", "units": "m",
     "world_from_sfm": 4×4 (s·R | t),
     "scale": {"metres_per_sfm_unit": s, "sigma": σ, "method": "user" | "priors",
               "estimates": [{"source": "camera_height" | "ceiling_height", "value": s_i, "sigma": σ_i,
                              "measured_sfm": sfm units, "prior_m": m, "prior_sigma_m": m}]},
     "gravity": {"camera_up_vs_floor_normal_deg": deg, "up_in_sfm": [3] (the cameras' mean up),
                 "method": "floor_refit+walls+cues" | "floor_refit" | ... | "cues", "walls_used": n,
                 "correction_vs_ransac_floor_deg": deg, "floor_observed": bool,
                 "cue": "floor+vanishing_points+..." (cues by weight), "uncertainty_deg": deg,
                 "cues": [{"cue", "up_in_sfm", "sigma_deg", "weight", "angle_to_up_deg", ...}],
                 "floor_up_in_sfm": [3] (the up used: +z of the world)},
     "floor": {"normal": [0,0,1], "d": 0, "n_inliers": n, "rms_m": m | null, "observed": bool,
               "height_cue": "floor_plane" | "horizontal_support" | "lowest_points" | "camera_height_prior",
               "height_uncertainty_m": m},
     "ceiling": {"normal": [3], "d": d, "height_m": m, "n_inliers": n} | null,
     "walls": [{"normal": [3], "d": d, "n_inliers": n, "length_m": m}],
     "room": {"polygon_xy": [[x, y], ...], "floor_area_m2": a, "extent_m": [sx, sy], "height_m": h,
              "height_source": "ceiling_plane" | "points"},
     "cameras": {"n_registered": n, "median_height_m": m}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import geometry, io, progress
from .errors import StageFailed
from .scene import WORLD_NAME, CameraFrame, Scene
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
    gravity_cues: list[Literal["floor", "horizontal_planes", "vanishing_points", "camera_axes"]] = Field(
        ["floor", "horizontal_planes", "vanishing_points", "camera_axes"],
        description="cues combined for the up direction (weights from their sigmas); 'floor' off = the fallback")
    floor_sigma_deg: float = Field(1.0, gt=0, description="gravity cue sigma: the refit floor plane")
    horizontal_sigma_deg: float = Field(4.0, gt=0, description="gravity cue sigma: other horizontal planes "
                                        "(ceiling, tables, counters), for the best-supported one")
    vp_sigma_deg: float = Field(2.0, gt=0, description="gravity cue sigma: vertical vanishing direction of "
                                "line segments at best (grows with the segments' residual spread)")
    camera_sigma_deg: float = Field(10.0, gt=0, description="gravity cue sigma: the cameras' axes (weakest)")
    vp_max_keyframes: int = Field(40, ge=1, description="keyframes (evenly spaced) searched for line segments")
    vp_min_length_rel: float = Field(0.06, gt=0, lt=1, description="shortest line segment, share of the image "
                                     "diagonal")
    vp_vertical_tol_deg: float = Field(30.0, gt=0, lt=90, description="segments within this angle of the "
                                       "prior's vertical direction in the image are vertical candidates")
    vp_inlier_deg: float = Field(2.0, gt=0, description="a segment supports an up direction when its "
                                 "interpretation plane contains it within this angle")
    seed: int = 0


# ---------------------------------------------------------------------------------------------------------
# planes
# ---------------------------------------------------------------------------------------------------------
def detect_planes(points: np.ndarray, threshold: float, config: Config) -> list[dict]:
    """Sequential RANSAC planes: dicts with unit ``normal``, ``d`` (n·x + d = 0), ``inliers`` (indices into
    ``points``), ``rms`` and ``degenerate`` (inliers spread along a line)."""
    o3d = io.open3d()
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
@dataclass
class Structure:
    """Planes found in the SfM frame: the RANSAC sample, its scale, the floor, ceiling and walls."""

    sample: np.ndarray           # N×3 RANSAC subsample of the points (SfM frame)
    ref: float                   # median point-to-camera-centroid distance (SfM units)
    threshold: float             # RANSAC inlier distance (SfM units)
    planes: list[dict]
    floor: dict | None           # the floor plane; None when no floor is seen
    ceiling: dict | None
    walls: list[dict]


@dataclass
class Gravity:
    """The floor plane ``n·x + d = 0`` (SfM frame, ``n`` = up) and how it was found: the combined cues, whether
    a floor plane was seen, the cue that gave the floor height, uncertainties (degrees, SfM units)."""

    normal: np.ndarray
    d: float
    method: str
    walls_used: int
    refit_deg: float
    floor_observed: bool = True
    cue: str = "floor"
    uncertainty_deg: float = 0.0
    cues: list = None  # type: ignore[assignment]
    floor_cue: str = "floor_plane"
    height_sigma_sfm: float = 0.0


@dataclass
class Scale:
    """Metres per SfM unit and its evidence."""

    s: float
    sigma: float
    method: str
    estimates: list[dict]
    camera_height_sfm: float
    ceiling_sfm: float | None


def run(scene: Scene, config: Config) -> StageResult:
    """Find gravity, the floor, metric scale and the room footprint; write ``layout.json`` (``world_from_sfm``).

    A scene whose floor is not seen still gets a layout: gravity from the other cues, the floor height from the
    lowest horizontal support (or the lowest points, or the camera-height prior), ``floor_observed: false`` and a
    stage warning.

    Raises:
        StageFailed: ``fusion`` has not completed or ``points.ply`` / ``cameras.json`` is missing; no registered
            cameras; fewer than 100 points or a degenerate cloud; no metric scale (no ``metric_scale`` and no
            prior); no room footprint.
    """
    scene.require("fusion")
    pts, reg = inputs(scene)
    centres = np.array([f.center_in_world for f in reg])
    up = camera_up(reg)
    cues = prior_cues(scene, reg, config)
    up0 = combine_cues(cues, up)[0] if cues else up
    st = find_structure(pts, centres, up0, config)
    grav = gravity(pts, st, centres, cues, up0, config)
    floor_pts = st.sample[st.floor["inliers"]] if st.floor is not None and len(st.floor["inliers"]) >= 3 else \
        st.sample
    R = gravity_rotation(grav.normal, st.walls, floor_pts, reg[0].cam_from_world[2, :3])
    sc = metric_scale(centres, st, grav, config)
    T, room = world_frame(pts, R, sc, grav, config)
    doc = layout_doc(T, R, sc, st, grav, up, room, len(reg))
    scene.write_layout(doc)
    return summarise(doc, sc, st, room, grav)


def inputs(scene: Scene) -> tuple[np.ndarray, list[CameraFrame]]:
    """(finite video points ``N×3`` float64, registered cameras), both in the SfM frame.

    Raises:
        StageFailed: no registered cameras, or fewer than 100 points.
    """
    pts = scene.points().points
    pts = pts[np.isfinite(pts).all(1)]
    reg = [f for f in scene.cameras() if f.registered]
    if not reg:
        raise StageFailed(NAME, "no registered cameras")
    if len(pts) < 100:
        raise StageFailed(NAME, f"no layout: only {len(pts)} points in points.ply (need 100)")
    return pts, reg


def find_structure(pts: np.ndarray, centres: np.ndarray, up: np.ndarray, config: Config) -> Structure:
    """Sequential RANSAC planes on a seeded subsample, then the floor (None when none is seen), ceiling and
    walls among them (wall normals face the cameras), classified against ``up``.

    Raises:
        StageFailed: a degenerate cloud (all points at the cameras, or every plane degenerate: points on a line).
    """
    rng = np.random.default_rng(config.seed)
    sample = pts if len(pts) <= config.max_ransac_points else \
        pts[np.sort(rng.choice(len(pts), config.max_ransac_points, replace=False))]
    ref = float(np.median(np.linalg.norm(sample - centres.mean(0), axis=1)))
    if not ref > 0:
        raise StageFailed(NAME, "no layout: degenerate point cloud (all points at the cameras)")
    _, sv, _ = np.linalg.svd(sample - sample.mean(0), full_matrices=False)
    if sv[1] < 0.05 * sv[0]:
        raise StageFailed(NAME, "no layout: degenerate point cloud (the points lie along a line)")
    thr = config.plane_threshold_rel * ref
    with progress.bar("layout: planes", total=None):
        planes = detect_planes(sample, thr, config)
    floor, ceiling = choose_floor_ceiling(planes, up, centres, config.horizontal_tol_deg)
    if "floor" not in config.gravity_cues and floor is not None:
        # the floor cue is disabled (what a scene without a visible floor gets): its plane is no cue at all
        planes = [p for p in planes if p is not floor]
        floor = None
    ref_up = floor["normal"] if floor is not None else up
    sin_v = math.sin(math.radians(config.vertical_tol_deg))
    walls = [p for p in planes if p is not floor and p is not ceiling and not p["degenerate"]
             and abs(float(p["normal"] @ ref_up)) < sin_v]
    for w in walls:  # wall normals face the cameras (into the room)
        if w["normal"] @ centres.mean(0) + w["d"] < 0:
            w["normal"], w["d"] = -w["normal"], -w["d"]
    return Structure(sample, ref, thr, planes, floor, ceiling, walls)


# ---------------------------------------------------------------------------------------------------------
# gravity cues
# ---------------------------------------------------------------------------------------------------------
def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two directions (degrees, 0..180)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    c = float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def camera_axes_up(frames: list[CameraFrame]) -> tuple[np.ndarray, float]:
    """Up from the registered cameras' axes, robust to a camera pitched down: a hand-held or head-mounted
    camera keeps its x (right) axis nearly horizontal whatever its pitch, so up is the direction most orthogonal
    to every right axis — the eigenvector of the smallest eigenvalue of ``(1/n) Σ x_i x_iᵀ − 0.01 ū ūᵀ`` (``ū``
    the mean −y axis, :func:`camera_up`, which breaks the tie when the right axes barely turn and gives the sign).

    Returns (unit up ``(3,)`` in the SfM frame, spread: the second-smallest eigenvalue of the right axes' scatter,
    0 when the camera never turns, ~0.5 when it turns all round)."""
    X = np.array([f.cam_from_world[0, :3] for f in frames if f.registered], np.float64)
    u = camera_up(frames)
    S = X.T @ X / len(X)
    n = np.linalg.eigh(S - 0.01 * np.outer(u, u))[1][:, 0]
    spread = float(np.sort(np.linalg.eigvalsh(S))[1])
    return (n if n @ u >= 0 else -n), spread


def line_segments(grey: np.ndarray, min_length: float) -> np.ndarray:
    """Line segments ``M×4`` float (x1, y1, x2, y2 pixels) of a grey ``H×W`` uint8 image by OpenCV's line segment
    detector (LSD, von Gioi et al. 2012), at least ``min_length`` px long."""
    import cv2

    lines = cv2.createLineSegmentDetector().detect(grey)[0]
    if lines is None:
        return np.zeros((0, 4), np.float64)
    L = lines.reshape(-1, 4).astype(np.float64)
    return L[np.hypot(L[:, 2] - L[:, 0], L[:, 3] - L[:, 1]) >= min_length]


def vanishing_up(normals: np.ndarray, weights: np.ndarray, prior: np.ndarray, start_deg: float,
                 inlier_deg: float, iterations: int = 500, seed: int = 0) -> tuple[np.ndarray, int, float] | None:
    """The vertical vanishing direction from interpretation planes of line segments (Kosecka & Zhang 2002, on
    the Gaussian sphere): RANSAC over pairs of segments (the candidate ``d = n_i × n_j``, kept only within
    ``start_deg`` of ``prior``) scoring the weight of the segments whose plane contains ``d`` within
    ``inlier_deg``, then the least-squares direction of the best inliers — the unit ``d`` minimising
    ``Σ w_i (n_i·d)²`` (re-selected three times).

    Args:
        normals: ``M×3`` unit normals of the planes through each camera centre and segment (SfM frame).
        weights: ``M`` segment weights (lengths).
        prior: unit up the search stays near (sign reference).
        seed: RANSAC seed (deterministic).

    Returns:
        (unit up, inlier count, RMS residual in degrees), or None with fewer than 20 inliers or a degenerate set
        (every plane alike: the direction is not fixed).
    """
    prior = prior / np.linalg.norm(prior)
    rng = np.random.default_rng(seed)
    m = len(normals)
    if m < 20:
        return None
    sin_in = math.sin(math.radians(inlier_deg))
    cos_start = math.cos(math.radians(start_deg))
    best, best_score = None, 0.0
    pairs = rng.integers(0, m, size=(iterations, 2))
    for i, j in pairs:
        d = np.cross(normals[i], normals[j])
        nd = np.linalg.norm(d)
        if nd < 1e-6:
            continue
        d /= nd
        if d @ prior < 0:
            d = -d
        if d @ prior < cos_start:
            continue
        score = float(weights[np.abs(normals @ d) < sin_in].sum())
        if score > best_score:
            best, best_score = d, score
    if best is None:
        return None
    d = best
    for _ in range(3):
        inl = np.abs(normals @ d) < sin_in
        if inl.sum() < 20:
            return None
        N, w = normals[inl], weights[inl]
        ev, V = np.linalg.eigh((N * w[:, None]).T @ N)
        if ev[1] < 1e-3 * ev[2]:
            return None
        d = V[:, 0] if V[:, 0] @ prior >= 0 else -V[:, 0]
    r = np.degrees(np.arcsin(np.clip(np.abs(normals @ d), 0, 1)))
    inl = r < inlier_deg
    if inl.sum() < 20:
        return None
    return d, int(inl.sum()), float(np.sqrt(np.average(r[inl] ** 2, weights=weights[inl])))


def segment_planes(scene: Scene, frames: list[CameraFrame], prior: np.ndarray, config: Config
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Interpretation-plane normals (``M×3``, SfM frame) and lengths (``M``) of the line segments in up to
    ``vp_max_keyframes`` evenly spaced registered keyframes that could be vertical: their plane contains
    ``prior`` within ``vp_vertical_tol_deg``. Keyframes that cannot be read are skipped."""
    import cv2

    idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), config.vp_max_keyframes)).round().astype(int))
    sin_tol = math.sin(math.radians(config.vp_vertical_tol_deg))
    normals, lengths = [], []
    for i in idx:
        f = frames[int(i)]
        try:
            rgb = scene.keyframe_image(f.source_frame)
        except (OSError, StageFailed):
            continue
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        h, w = grey.shape
        sx, sy = f.width / w, f.height / h  # keyframe image → camera pixels (same size unless resized)
        L = line_segments(grey, config.vp_min_length_rel * math.hypot(w, h))
        if not len(L):
            continue
        Kinv = np.linalg.inv(f.K)
        p1 = np.c_[L[:, 0] * sx, L[:, 1] * sy, np.ones(len(L))] @ Kinv.T
        p2 = np.c_[L[:, 2] * sx, L[:, 3] * sy, np.ones(len(L))] @ Kinv.T
        n_cam = np.cross(p1, p2)
        n_cam /= np.maximum(np.linalg.norm(n_cam, axis=1, keepdims=True), 1e-12)
        n_w = n_cam @ f.cam_from_world[:3, :3]  # R^T n for each row
        keep = np.abs(n_w @ prior) < sin_tol
        normals.append(n_w[keep])
        lengths.append(np.hypot(L[keep, 2] - L[keep, 0], L[keep, 3] - L[keep, 1]))
    if not normals:
        return np.zeros((0, 3)), np.zeros(0)
    return np.concatenate(normals), np.concatenate(lengths)


def prior_cues(scene: Scene, frames: list[CameraFrame], config: Config) -> list[dict]:
    """The gravity cues that need no plane: the cameras' axes (weakest) and the vertical vanishing direction
    of line segments in the keyframes. Each cue: ``{"cue", "up_in_sfm" (3,), "sigma_deg", "weight", ...}``."""
    cues = []
    cam_u, spread = camera_axes_up(frames)
    if "camera_axes" in config.gravity_cues:
        sigma = config.camera_sigma_deg * (1.0 if spread > 0.05 else 2.0)  # little turning: pitch not fixed
        cues.append({"cue": "camera_axes", "up_in_sfm": cam_u, "sigma_deg": sigma, "right_axis_spread": spread})
    if "vanishing_points" in config.gravity_cues:
        N, wts = segment_planes(scene, frames, cam_u, config)
        vp = vanishing_up(N, wts, cam_u, config.vp_vertical_tol_deg, config.vp_inlier_deg, seed=config.seed) \
            if len(N) >= 20 else None
        if vp is not None:
            d, n_inl, rms = vp
            sigma = config.vp_sigma_deg * max(1.0, rms / config.vp_inlier_deg * 2.0) * max(1.0, math.sqrt(200 / n_inl))
            cues.append({"cue": "vanishing_points", "up_in_sfm": d, "sigma_deg": sigma, "n_segments": int(len(N)),
                         "n_inliers": n_inl, "rms_deg": round(rms, 3)})
    return cues


def combine_cues(cues: list[dict], sign_ref: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverse-variance weighted mean of unit up vectors (each cue's ``up_in_sfm`` flipped to agree with
    ``sign_ref``; weight ``1/sigma_deg²`` written into each cue). Returns (unit up, sigma in degrees:
    ``1/√Σw``, at least the weighted RMS angle of the cues to the mean over √n)."""
    U = np.array([np.asarray(c["up_in_sfm"], float) * (1 if np.asarray(c["up_in_sfm"]) @ sign_ref >= 0 else -1)
                  for c in cues])
    w = np.array([1.0 / c["sigma_deg"] ** 2 for c in cues])
    for c, wi in zip(cues, w):
        c["weight"] = float(wi)
    u = (U * w[:, None]).sum(0)
    u /= np.linalg.norm(u)
    ang = np.array([angle_deg(x, u) for x in U])
    sigma = max(1.0 / math.sqrt(w.sum()), math.sqrt(float(np.average(ang ** 2, weights=w)) / max(len(cues), 1)))
    return u, sigma


def gravity(pts: np.ndarray, st: Structure, centres: np.ndarray, cues: list[dict], up0: np.ndarray,
            config: Config) -> Gravity:
    """Up and the floor plane from every cue. With a floor plane: its normal refit over a wide band
    (:func:`refit_floor`) and made orthogonal to the walls (:func:`manhattan_up`) unless that moves it by more than
    ``max_manhattan_correction_deg`` — the ``floor`` cue. Other horizontal planes (ceiling, tables) vote with
    their normals (``horizontal_planes``). All cues are combined (:func:`combine_cues`); the floor plane is kept
    through its refit centroid. Without a floor: the combined up, made orthogonal to the walls, and the floor
    height from :func:`fallback_floor`. ``st.floor`` is updated to the result (a plane record in either case)."""
    cues = [dict(c) for c in cues]
    method, walls_used, refit_deg = "", 0, 0.0
    c_f = None
    if st.floor is not None:
        n_ransac = n_f = st.floor["normal"]
        d_f = st.floor["d"]
        if config.floor_refit_band_rel > 0:
            n_f, d_f, _ = refit_floor(pts, n_f, d_f, config.floor_refit_band_rel * st.ref, st.threshold)
        method = "floor_refit" if config.floor_refit_band_rel > 0 else "floor_ransac"
        if config.manhattan_gravity and st.walls:
            n_m = manhattan_up(n_f, st.walls)
            if angle_deg(n_m, n_f) <= config.max_manhattan_correction_deg:
                method += "+walls"
                walls_used = len(st.walls)
                n_f = n_m
        c_f = -d_f * n_f if abs(d_f) > 0 else np.zeros(3)
        refit_deg = angle_deg(n_f, n_ransac)
        cues.append({"cue": "floor", "up_in_sfm": n_f, "sigma_deg": config.floor_sigma_deg,
                     "n_inliers": len(st.floor["inliers"]), "method": method})
        ref_up = n_f
    else:
        ref_up = up0
    if "horizontal_planes" in config.gravity_cues:
        cos_tol = math.cos(math.radians(config.horizontal_tol_deg))
        others = [p for p in st.planes if p is not st.floor and not p["degenerate"]
                  and abs(float(p["normal"] @ ref_up)) >= cos_tol]
        if others:
            W = np.array([len(p["inliers"]) for p in others], float)
            U = np.array([p["normal"] * np.sign(p["normal"] @ ref_up) for p in others])
            u = (U * W[:, None]).sum(0)
            cues.append({"cue": "horizontal_planes", "up_in_sfm": u / np.linalg.norm(u),
                         "sigma_deg": config.horizontal_sigma_deg, "n_planes": len(others),
                         "n_inliers": int(W.sum())})
    if not cues:
        cues.append({"cue": "camera_up_mean", "up_in_sfm": up0, "sigma_deg": 2 * config.camera_sigma_deg})
    up, sigma = combine_cues(cues, ref_up)
    if st.floor is None and config.manhattan_gravity and st.walls:
        n_m = manhattan_up(up, st.walls)
        if angle_deg(n_m, up) <= config.max_manhattan_correction_deg:
            up, walls_used = n_m, len(st.walls)
    for c in cues:
        c["angle_to_up_deg"] = round(angle_deg(c["up_in_sfm"], up), 3)
        c["up_in_sfm"] = np.round(np.asarray(c["up_in_sfm"], float), 6).tolist()
        c["sigma_deg"] = round(float(c["sigma_deg"]), 3)
    cue = "+".join(c["cue"] for c in sorted(cues, key=lambda c: -c["weight"]))
    if st.floor is not None:
        d = -float(up @ c_f)
        st.floor["normal"], st.floor["d"] = up, d
        heights = st.sample[st.floor["inliers"]] @ up + d
        h_sigma = float(np.std(heights)) if len(heights) else 0.0
        return Gravity(up, d, method + ("+cues" if len(cues) > 1 else ""), walls_used, refit_deg, True, cue,
                       sigma, cues, "floor_plane", h_sigma)
    d, floor_cue, h_sigma, support = fallback_floor(st, centres, up, config)
    st.floor = {"normal": up, "d": d, "inliers": support, "rms": float("nan"), "degenerate": False}
    return Gravity(up, d, "cues", walls_used, 0.0, False, cue, sigma, cues, floor_cue, h_sigma)


def fallback_floor(st: Structure, centres: np.ndarray, up: np.ndarray, config: Config
                   ) -> tuple[float, str, float, np.ndarray]:
    """Floor height when no floor plane is seen: ``n·x + d = 0`` with ``n = up``. In order: the lowest
    near-horizontal plane with most cameras above it (``horizontal_support``: a table, a counter — the floor is
    at or below it); the lowest points (1st percentile of the heights of the points below the cameras,
    ``lowest_points``); the camera-height prior (``camera_height_prior``: the cameras' median height minus the
    prior height, scaled by a 2 m typical camera-to-surface distance). Returns (d, cue, height sigma in SfM
    units, indices into ``st.sample`` of the supporting points)."""
    cos_tol = math.cos(math.radians(config.horizontal_tol_deg))
    h_cam = float(np.median(centres @ up))
    best = None
    for p in st.planes:
        if p["degenerate"] or abs(float(p["normal"] @ up)) < cos_tol:
            continue
        hp = float(np.median(st.sample[p["inliers"]] @ up))
        if np.mean(centres @ up > hp) >= 0.8 and (best is None or hp < best[0]):
            best = (hp, p)
    z = st.sample @ up
    if best is not None:
        hp, p = best
        return -hp, "horizontal_support", float(np.std(st.sample[p["inliers"]] @ up)) + 0.3 * (h_cam - hp), \
            p["inliers"]
    below = np.nonzero(z < h_cam)[0]
    if len(below) >= 50:
        hp = float(np.percentile(z[below], 1.0))
        sel = below[z[below] <= hp + st.threshold]
        return -hp, "lowest_points", 0.3 * (h_cam - hp), sel
    depth_prior_m = 2.0
    h_sfm = config.camera_height_m * st.ref / depth_prior_m
    return -(h_cam - h_sfm), "camera_height_prior", 0.5 * h_sfm, np.zeros(0, np.int64)


def metric_scale(centres: np.ndarray, st: Structure, grav: Gravity, config: Config) -> Scale:
    """Metres per SfM unit: the user's ``metric_scale``, else the inverse-variance combination of the enabled
    priors (camera height above the floor; floor-to-ceiling height when there is a ceiling).

    Raises:
        StageFailed: no ``metric_scale`` and no prior enabled.
    """
    h_sfm = float(np.median(centres @ grav.normal + grav.d))
    estimates = []
    if "camera_height" in config.scale_priors and h_sfm > 0:
        v = config.camera_height_m / h_sfm
        rel = math.hypot(config.camera_height_sigma_m / config.camera_height_m,
                         0.0 if grav.floor_observed else grav.height_sigma_sfm / h_sfm)
        estimates.append({"source": "camera_height", "value": v, "sigma": v * rel, "measured_sfm": h_sfm,
                          "prior_m": config.camera_height_m, "prior_sigma_m": config.camera_height_sigma_m,
                          "floor_observed": grav.floor_observed})
    ceil_sfm = None
    if st.ceiling is not None:
        ceil_sfm = float(np.median(st.sample[st.ceiling["inliers"]] @ grav.normal + grav.d))
        if "ceiling_height" in config.scale_priors and ceil_sfm > 0:
            v = config.ceiling_height_m / ceil_sfm
            estimates.append({"source": "ceiling_height", "value": v, "sigma": v * config.ceiling_height_sigma_m /
                              config.ceiling_height_m, "measured_sfm": ceil_sfm, "prior_m": config.ceiling_height_m,
                              "prior_sigma_m": config.ceiling_height_sigma_m})
    if config.metric_scale is not None:
        return Scale(float(config.metric_scale), 0.0, "user", estimates, h_sfm, ceil_sfm)
    if estimates:
        s, sigma = combine_scale(estimates)
        return Scale(s, sigma, "priors", estimates, h_sfm, ceil_sfm)
    raise StageFailed(NAME, "no metric scale: no metric_scale given and no scale prior enabled")


def world_frame(pts: np.ndarray, R: np.ndarray, sc: Scale, grav: Gravity, config: Config) -> tuple[np.ndarray, dict]:
    """``world_from_sfm`` (4×4 Sim(3): floor at z = 0, footprint's min corner at x = y = 0) and the room
    (``polygon`` K×2 m, ``area`` m², ``extent`` (2,) m, ``height`` m).

    Raises:
        StageFailed: no points between floor and ceiling, or no footprint.
    """
    s = sc.s
    T = geometry.sim3(s, R, np.array([0.0, 0.0, s * grav.d]))
    P = geometry.apply_transform(T, pts)
    room_h = s * sc.ceiling_sfm if sc.ceiling_sfm else float(np.percentile(P[:, 2], 99.5))
    band = (P[:, 2] > -0.1) & (P[:, 2] < room_h + 0.1)
    if band.sum() < 3:
        raise StageFailed(NAME, "no room footprint: no points between floor and ceiling")
    poly, area, extent, mn = footprint(P[band, :2], config.grid_m, config.footprint_open_m,
                                       config.footprint_simplify_m)
    T[:2, 3] -= mn
    return T, {"polygon": poly - mn, "area": area, "extent": extent, "height": room_h}


def plane_doc(p: dict, T: np.ndarray, R: np.ndarray, sample: np.ndarray) -> dict:
    """One plane of ``layout.json`` in the world frame: the plane itself mapped by ``T`` (``n·x + d = 0`` →
    ``n_w·x_w + s·d − n_w·t = 0``; not its RANSAC inliers' centroid, so the refit floor comes out as z = 0), its
    support, RMS (m) and horizontal length (m, for non-horizontal planes)."""
    s = geometry.sim3_scale(T)
    n_w = R @ p["normal"]
    d_w = s * float(p["d"]) - float(n_w @ T[:3, 3])
    Q = geometry.apply_transform(T, sample[p["inliers"]])
    horiz = np.cross([0.0, 0.0, 1.0], n_w)
    length = float(np.ptp(Q @ horiz / max(np.linalg.norm(horiz), 1e-9))) \
        if np.linalg.norm(horiz) > 1e-6 and len(Q) else None
    rms = None if not np.isfinite(p["rms"]) else round(s * p["rms"], 5)
    return {"normal": np.round(n_w, 6).tolist(), "d": round(d_w, 5), "n_inliers": len(p["inliers"]),
            "rms_m": rms, **({"length_m": round(length, 4)} if length is not None else {})}


def layout_doc(T: np.ndarray, R: np.ndarray, sc: Scale, st: Structure, grav: Gravity, up: np.ndarray, room: dict,
               n_registered: int) -> dict:
    """The ``layout.json`` document (schema in the module docstring)."""
    s = sc.s
    gravity_deg = math.degrees(math.acos(min(1.0, float(grav.normal @ up))))
    floor_out = plane_doc(st.floor, T, R, st.sample)
    return {
        "frame": WORLD_NAME, "units": "m", "world_from_sfm": T.tolist(),
        "scale": {"metres_per_sfm_unit": s, "sigma": sc.sigma, "method": sc.method, "estimates": sc.estimates},
        "gravity": {"camera_up_vs_floor_normal_deg": round(gravity_deg, 3), "up_in_sfm": up.tolist(),
                    "method": grav.method, "walls_used": grav.walls_used,
                    "correction_vs_ransac_floor_deg": round(grav.refit_deg, 3),
                    "floor_observed": bool(grav.floor_observed), "cue": grav.cue,
                    "uncertainty_deg": round(float(grav.uncertainty_deg), 3), "cues": grav.cues or [],
                    "floor_up_in_sfm": np.round(grav.normal, 8).tolist()},
        "floor": dict({k: v for k, v in floor_out.items() if k != "length_m"}, observed=bool(grav.floor_observed),
                      height_cue=grav.floor_cue, height_uncertainty_m=round(s * float(grav.height_sigma_sfm), 4)),
        "ceiling": None if st.ceiling is None else dict(plane_doc(st.ceiling, T, R, st.sample),
                                                        height_m=round(s * sc.ceiling_sfm, 4)),
        "walls": [plane_doc(w, T, R, st.sample) for w in st.walls],
        "room": {"polygon_xy": np.round(room["polygon"], 4).tolist(), "floor_area_m2": round(room["area"], 3),
                 "extent_m": np.round(room["extent"], 4).tolist(), "height_m": round(room["height"], 4),
                 "height_source": "ceiling_plane" if sc.ceiling_sfm else "points"},
        "cameras": {"n_registered": n_registered, "median_height_m": round(s * sc.camera_height_sfm, 4)},
    }


def summarise(doc: dict, sc: Scale, st: Structure, room: dict, grav: Gravity) -> StageResult:
    """The stage's QC figures, summary line and warnings (a fallback layout is a warning, not a failure)."""
    s, extent, room_h, area = sc.s, room["extent"], room["height"], room["area"]
    qc = {"metres_per_sfm_unit": round(s, 6), "scale_sigma": round(sc.sigma, 6), "scale_method": sc.method,
          "scale_estimates": {e["source"]: round(e["value"], 6) for e in sc.estimates},
          "camera_up_vs_floor_normal_deg": doc["gravity"]["camera_up_vs_floor_normal_deg"],
          "n_planes": len(st.planes), "n_walls": len(st.walls),
          "ceiling_found": st.ceiling is not None, "room_height_m": round(room_h, 3),
          "floor_area_m2": round(area, 3), "extent_m": np.round(extent, 3).tolist(),
          "camera_height_m": round(s * sc.camera_height_sfm, 3), "plane_threshold_sfm": round(st.threshold, 6),
          "floor_observed": grav.floor_observed, "gravity_cue": grav.cue,
          "gravity_uncertainty_deg": round(float(grav.uncertainty_deg), 3), "floor_height_cue": grav.floor_cue,
          "floor_height_uncertainty_m": doc["floor"]["height_uncertainty_m"]}
    warnings = []
    if not grav.floor_observed:
        warnings.append(f"no floor plane seen: gravity from {grav.cue} (±{grav.uncertainty_deg:.1f}°), floor height "
                        f"from {grav.floor_cue} (±{doc['floor']['height_uncertainty_m']:.2f} m); metric scale "
                        "and heights are less certain")
    worst = max((c for c in grav.cues or [] if c["cue"] != "camera_axes"), key=lambda c: c["angle_to_up_deg"],
                default=None)
    if worst is not None and worst["angle_to_up_deg"] > 3 * max(worst["sigma_deg"], 1.0):
        warnings.append(f"gravity cues disagree: {worst['cue']} is {worst['angle_to_up_deg']:.1f}° from the "
                        "combined up")
    what = "floor" if grav.floor_observed else f"floor from {grav.floor_cue}"
    return StageResult(qc=qc, summary=f"{what} + {len(st.walls)} walls{' + ceiling' if st.ceiling else ''}; room "
                       f"{extent[0]:.2f} × {extent[1]:.2f} × {room_h:.2f} m, {area:.1f} m²; scale {s:.4g} m/unit "
                       f"({sc.method})", warnings=warnings)
