"""What the depth backends share: the per-keyframe view, sparse SfM depth priors, source-view selection,
geometric consistency filtering, sparse filling and upsampling.

Pixel convention: ``K`` in ``cameras.json`` follows COLMAP (the centre of pixel ``(i, j)`` is at
``(i + 0.5, j + 0.5)``). Scaling an image by ``s`` scales such a K exactly (``geometry.scale_intrinsics``).
OpenCV's ``warpPerspective`` / ``remap`` address pixel centres at integers, so ``geometry.cv_K`` shifts the
principal point by -0.5 before building OpenCV maps.

Lens distortion (``cameras.json["distortion"]``, SIMPLE_RADIAL with a small k) is ignored: on
hololens_office (k = 0.0056) it moves the image corners by < 0.6 px at 540 px wide, < 0.4 px at the 320 px
working resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol

import cv2
import numpy as np

from .. import geometry, parallel
from ..scene import CameraFrame
from ..stage import Options


@dataclass
class View:
    """One registered keyframe at working resolution (SfM frame)."""

    index: int                         # position in the list of registered frames
    frame: CameraFrame                 # full-resolution camera (cameras.json)
    load_rgb: Callable[[], np.ndarray]  # the keyframe at full resolution, H×W×3 uint8 RGB
    scale: float                       # working / full resolution
    grey: np.ndarray                   # h×w float32 in 0..1, working resolution
    K: np.ndarray                      # 3×3 at working resolution (COLMAP convention)

    @property
    def cam_from_world(self) -> np.ndarray:
        return self.frame.cam_from_world  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int]:
        return self.grey.shape  # type: ignore[return-value]


@dataclass
class Sparse:
    """SfM points a keyframe observes, in that camera: pixel coordinates at *working* resolution
    (COLMAP convention) and depth (SfM units)."""

    uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    z: np.ndarray = field(default_factory=lambda: np.zeros(0))
    point_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.z)


@dataclass
class SparseSet:
    """The sparse SfM priors of every view: ``observed[i]`` the ids of the points view ``i`` observes,
    ``xyz_of`` their SfM-frame positions (3,) float64, ``sparse[i]`` those points projected into view ``i``."""

    observed: list[np.ndarray]
    xyz_of: dict[int, np.ndarray]
    sparse: list[Sparse]


class DepthBackend(Protocol):
    """A depth estimator (the stage's backend plugin shape: ``name``, ``Options``, ``is_installed``,
    constructed as ``cls(options)``). All depths are in SfM units at working resolution."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]]

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        """``(True, "installed")`` or ``(False, "not installed: …")``; cheap, no model loading."""
        ...

    def select_sources(self, views: list[View], priors: SparseSet) -> list[list[int]]:
        """Per view, the indices of the neighbouring views it is matched against (empty lists for a
        single-view backend)."""
        ...

    def estimate(self, ref: View, sources: list[View], sparse: Sparse,
                 depth_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (depth h×w float32 SfM units, 0 = unknown; confidence h×w float32 0..1; weak h×w bool:
        pixels where the backend had no usable signal and a sparse fill may be used) at working resolution."""
        ...

    def filter(self, views: list[View], sources: list[list[int]], depths: list[np.ndarray],
               confs: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Depths and confidences after any cross-view check (unchanged for a single-view backend)."""
        ...


# ---------------------------------------------------------------------------------------------------------
# working resolution
# ---------------------------------------------------------------------------------------------------------
def working_scale(width: int, height: int, max_size: int) -> float:
    """Working / full resolution: ``max_size`` over the long side, never above 1."""
    return min(1.0, float(max_size) / max(width, height))


def working_size(width: int, height: int, s: float) -> tuple[int, int]:
    """``(w, h)`` pixels of a ``width×height`` image scaled by ``s`` (at least 1×1)."""
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def working_grey(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``h×w`` float32 grey in 0..1 of an ``H×W×3`` uint8 RGB image, area-resized to ``size = (w, h)``."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if (grey.shape[1], grey.shape[0]) != tuple(size):
        grey = cv2.resize(grey, tuple(size), interpolation=cv2.INTER_AREA)
    return grey.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------------------
# sparse priors
# ---------------------------------------------------------------------------------------------------------
def sparse_observations(rec, min_track_length: int = 2, max_error_px: float = 4.0) -> dict[str, np.ndarray]:
    """Per image name, the ids of the SfM points it observes (tracks of at least ``min_track_length``
    images, reprojection error at most ``max_error_px``)."""
    good = {pid for pid, p in rec.points3D.items()
            if p.track.length() >= min_track_length and p.error <= max_error_px}
    out = {}
    for im in rec.images.values():
        ids = [p.point3D_id for p in im.points2D if p.has_point3D()]
        out[im.name] = np.array(sorted({i for i in ids if i in good}), np.int64)
    return out


def project_sparse(frame: CameraFrame, K: np.ndarray, xyz: np.ndarray, ids: np.ndarray,
                   size: tuple[int, int]) -> Sparse:
    """Project world points ``xyz`` (N×3) into ``frame`` with working-resolution ``K``; keep those in front
    of the camera and inside the ``(w, h)`` image."""
    if len(xyz) == 0:
        return Sparse()
    uv, z = geometry.project(xyz, K, frame.cam_from_world)
    ok = geometry.in_image(uv, z, *size)
    return Sparse(uv=uv[ok], z=z[ok], point_ids=ids[ok])


def depth_range(z: np.ndarray, margin: float, lo_pct: float = 2.0, hi_pct: float = 98.0) -> tuple[float, float]:
    """Depth bounds from sparse depths: percentiles widened by ``margin`` (relative)."""
    lo, hi = np.percentile(z, [lo_pct, hi_pct])
    return float(lo / (1.0 + margin)), float(hi * (1.0 + margin))


# ---------------------------------------------------------------------------------------------------------
# source-view selection
# ---------------------------------------------------------------------------------------------------------
def select_sources(ref: int, centers: np.ndarray, observed: list[np.ndarray], xyz_of: dict[int, np.ndarray],
                   n_views: int, min_angle_deg: float, best_angle_deg: float, candidates: int = 30) -> list[int]:
    """Pick up to ``n_views`` source views for ``ref`` (indices into ``centers`` / ``observed``).

    Score of a candidate (the MVSNet view-selection score, Yao et al. 2018): over the SfM points both views
    observe, the sum of ``exp(-(θ - θ0)² / 2σ²)`` of the triangulation angle θ at the point, with
    ``θ0 = best_angle_deg``, ``σ = 1°`` below θ0 and ``10°`` above; angles below ``min_angle_deg`` count 0
    (tiny baselines give no depth signal). Views sharing few points (little overlap) score low.
    """
    ids_r = observed[ref]
    if len(ids_r) == 0:
        return []
    shared = [(j, np.intersect1d(ids_r, observed[j], assume_unique=True)) for j in range(len(observed)) if j != ref]
    shared = sorted((s for s in shared if len(s[1]) >= 3), key=lambda s: -len(s[1]))[:candidates]
    scores = []
    for j, ids in shared:
        X = np.stack([xyz_of[i] for i in ids])
        a = X - centers[ref]
        b = X - centers[j]
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        sigma = np.where(ang < best_angle_deg, 1.0, 10.0)
        wgt = np.exp(-((ang - best_angle_deg) ** 2) / (2 * sigma ** 2)) * (ang >= min_angle_deg)
        scores.append((float(wgt.sum()), len(ids), j))
    scores.sort(reverse=True)
    top = scores[0][0] if scores else 0.0
    return [j for s, _, j in scores if s > 0.05 * top and s > 0][:n_views]


# ---------------------------------------------------------------------------------------------------------
# consistency, fill, upsampling
# ---------------------------------------------------------------------------------------------------------
def consistency_count(ref: View, depth_r: np.ndarray, sources: list[View], depths: list[np.ndarray],
                      rel_tol: float) -> np.ndarray:
    """Per ref pixel, in how many ``sources`` its 3-D point lands on the source's own depth within
    ``rel_tol`` (relative depth error, the point's depth in the source vs the source's depth map there).

    ``depth_r``: ``h×w`` float32 z-depth of ``ref`` (SfM units, 0 = unknown); ``depths[j]``: the source's map at
    its working resolution. Returns ``h×w`` int32 counts (0 where ``depth_r`` is 0). Only the pixels with depth
    are projected; the source depth is looked up at the nearest pixel (``cv2.remap`` ``INTER_NEAREST``, 0
    outside the image)."""
    h, w = depth_r.shape
    flat = depth_r.ravel()
    idx = np.flatnonzero(flat > 0)
    count = np.zeros(h * w, np.int32)
    if len(idx) == 0:
        return count.reshape(h, w)
    X = geometry.pixel_rays(ref.K, w, h).reshape(-1, 3)[idx].T * flat[idx][None].astype(np.float64)
    # remap wants 2-D maps with sides below SHRT_MAX: lay the M points out in rows of w
    n_rows = (len(idx) + w - 1) // w
    pad = n_rows * w - len(idx)
    for src, d_s in zip(sources, depths):
        R, t = geometry.relative_pose(src.cam_from_world, ref.cam_from_world)
        Xs = R @ X + t[:, None]
        z = Xs[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (geometry.cv_K(src.K) @ Xs)[:2] / z
        maps = np.nan_to_num(uv, nan=-1e4, posinf=-1e4, neginf=-1e4).astype(np.float32)
        if pad:
            maps = np.pad(maps, ((0, 0), (0, pad)), constant_values=-1e4)
        ds = cv2.remap(d_s, maps[0].reshape(n_rows, w), maps[1].reshape(n_rows, w), interpolation=cv2.INTER_NEAREST,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0).ravel()[: len(idx)]
        count[idx] += (z > 0) & (ds > 0) & (np.abs(z - ds) <= rel_tol * ds)
    return count.reshape(h, w)


def neighbour_sources(views: list[View], priors: SparseSet, n_views: int, min_angle_deg: float,
                      best_angle_deg: float) -> list[list[int]]:
    """Per view, up to ``n_views`` neighbours scored by triangulation angle at shared SfM points
    (:func:`select_sources`)."""
    centers = np.stack([v.frame.center_in_world for v in views])
    return [select_sources(i, centers, priors.observed, priors.xyz_of, n_views, min_angle_deg, best_angle_deg)
            for i in range(len(views))]


def consistency_filter(views: list[View], sources: list[list[int]], depths: list[np.ndarray],
                       confs: list[np.ndarray], min_consistent_views: int,
                       rel_tol: float, workers: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Geometric consistency across views (every multi-view backend): a depth is kept if it agrees with at
    least ``min_consistent_views`` of its source views' depth maps within ``rel_tol`` (relative); its
    confidence is weighted by the share of agreeing views. A view without sources loses all depth. Views run on
    :func:`vid2scene.parallel.map_ordered` threads (``workers``; NumPy / OpenCV only, the inputs are only
    read), with the same result for any number of workers."""

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        src = sources[i]
        if not src:
            return np.zeros_like(depths[i]), np.zeros_like(confs[i])
        cnt = consistency_count(views[i], depths[i], [views[j] for j in src], [depths[j] for j in src], rel_tol)
        keep = cnt >= min(min_consistent_views, len(src))
        c = confs[i] * (0.5 + 0.5 * np.minimum(1.0, cnt / max(len(src) - 1, 1)))
        return np.where(keep, depths[i], 0).astype(np.float32), np.where(keep, c, 0).astype(np.float32)

    out = list(parallel.map_ordered(one, range(len(views)), workers))
    return [d for d, _ in out], [c for _, c in out]


def sparse_fill(sparse: Sparse, shape: tuple[int, int], mask: np.ndarray, step: int = 4) -> np.ndarray:
    """Depth at ``mask`` pixels linearly interpolated (in inverse depth) from the sparse points inside their
    convex hull; 0 elsewhere. Evaluated on a grid every ``step`` pixels and resized (the interpolant is
    piecewise linear and smooth, and scattered queries are slow)."""
    from scipy.interpolate import LinearNDInterpolator
    from scipy.spatial import QhullError

    h, w = shape
    out = np.zeros(shape, np.float32)
    if len(sparse) < 4 or not mask.any():
        return out
    gw, gh = (w + step - 1) // step + 1, (h + step - 1) // step + 1
    gu, gv = np.meshgrid(np.arange(gw) * step + 0.5, np.arange(gh) * step + 0.5)
    try:
        f = LinearNDInterpolator(sparse.uv, 1.0 / sparse.z, fill_value=0.0)
        inv = f(np.stack([gu.ravel(), gv.ravel()], 1)).reshape(gh, gw).astype(np.float32)
    except QhullError:  # degenerate (collinear) points
        return out
    inside = (inv > 0).astype(np.float32)
    M = np.float32([[step, 0, 0], [0, step, 0]])  # grid index -> pixel index
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    inv_full = cv2.warpAffine(inv, cv2.invertAffineTransform(M), (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    ok = cv2.warpAffine(inside, cv2.invertAffineTransform(M), (w, h), flags=flags,
                        borderMode=cv2.BORDER_REPLICATE) > 0.999
    sel = mask & ok & (inv_full > 0)
    out[sel] = 1.0 / inv_full[sel]
    return out


def upsample(depth: np.ndarray, conf: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Working → full resolution without flying pixels: bilinear where the 2×2 neighbourhood is valid and
    smooth (bilinear within 2% of nearest), nearest elsewhere."""
    if depth.shape == (height, width):
        return depth, conf
    near = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
    lin = cv2.resize(depth, (width, height), interpolation=cv2.INTER_LINEAR)
    valid = cv2.resize((depth > 0).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    smooth = (valid > 0.999) & (np.abs(lin - near) <= 0.02 * np.maximum(near, 1e-9))
    d = np.where(smooth, lin, near).astype(np.float32)
    c = cv2.resize(conf, (width, height), interpolation=cv2.INTER_NEAREST)
    return d, np.where(d > 0, c, 0).astype(np.float32)
