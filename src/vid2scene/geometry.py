"""Shared geometry: rigid and similarity transforms, intrinsics, projection, back-projection, ray casting, boxes.

Conventions (DESIGN.md, "Conventions"):

* Transforms are 4×4 float64 homogeneous matrices named ``dst_from_src``; they compose right to left
  (``cam_from_sfm = cam_from_world @ world_from_sfm``). A Sim(3) is ``[[s·R, t], [0, 1]]``.
* Camera axes are OpenCV's: x right, y down, z forward. Pixel coordinates have the top-left pixel's centre
  at (0.5, 0.5), as in COLMAP; :func:`cv_K` gives the K for OpenCV's integer-centre addressing.
* Point sets are ``N×3`` float arrays; a function that takes ``points_in_world`` returns float64.
* Gravity-aligned boxes (instances, exports) are ``center`` (3,), ``size`` (3,) = extent along the box's own
  x, y and the world z, and ``yaw_rad`` about world +z (counter-clockwise seen from above). Their corners are
  always in the order of :func:`box_corners`.

Every stage that needs one of these calls it from here; nothing here reads files.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------------------


def sim3(s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4×4 Sim(3) ``[[s·R, t], [0, 1]]`` from a scale ``s`` (> 0), a 3×3 rotation ``R`` and a 3-vector ``t``."""
    T = np.eye(4)
    T[:3, :3] = float(s) * np.asarray(R, np.float64)
    T[:3, 3] = np.asarray(t, np.float64).reshape(3)
    return T


def sim3_scale(T: np.ndarray | None) -> float:
    """Scale ``s`` of a Sim(3) ``T`` (``cbrt(det(sR))``); 1.0 for None or an SE(3)."""
    if T is None:
        return 1.0
    return float(np.cbrt(np.linalg.det(np.asarray(T, np.float64)[:3, :3])))


def sim3_rotation(T: np.ndarray) -> np.ndarray:
    """3×3 rotation ``R`` of a Sim(3) ``T`` (its linear part divided by the scale)."""
    T = np.asarray(T, np.float64)
    return T[:3, :3] / sim3_scale(T)


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4×4 SE(3) or Sim(3) (``src_from_dst`` from ``dst_from_src``)."""
    return np.linalg.inv(np.asarray(T, np.float64))


def apply_transform(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``N×3`` float64 points mapped by a 4×4 SE(3)/Sim(3) ``T``: ``p' = (sR) p + t``."""
    T = np.asarray(T, np.float64)
    return np.asarray(points, np.float64).reshape(-1, 3) @ T[:3, :3].T + T[:3, 3]


def rotate_normals(T: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """``N×3`` unit normals under the rotation part of a Sim(3) ``T`` (scale removed; unit length kept)."""
    return np.asarray(normals, np.float64).reshape(-1, 3) @ sim3_rotation(T).T


def transform_pose(cam_from_src: np.ndarray, dst_from_src: np.ndarray) -> np.ndarray:
    """``cam_from_dst`` for a camera pose ``cam_from_src`` (SE(3)) and a Sim(3) ``dst_from_src``.

    Camera coordinates are rescaled to the dst units, so the result stays rigid (rotation unchanged up to the
    frame change, translation in dst units): ``cam_from_dst = diag(s, s, s, 1) · cam_from_src · src_from_dst``.
    """
    s = sim3_scale(dst_from_src)
    out = np.diag([s, s, s, 1.0]) @ np.asarray(cam_from_src, np.float64) @ invert(dst_from_src)
    out[3] = [0.0, 0.0, 0.0, 1.0]
    return out


def camera_center(cam_from_world: np.ndarray) -> np.ndarray:
    """Camera centre in world coordinates (3,) float64: ``C = -Rᵀ t``."""
    T = np.asarray(cam_from_world, np.float64)
    return -T[:3, :3].T @ T[:3, 3]


def relative_pose(src_from_world: np.ndarray, ref_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R 3×3, t 3) with ``X_src = R X_ref + t`` for two ``cam_from_world`` poses."""
    T = np.asarray(src_from_world, np.float64) @ invert(ref_from_world)
    return T[:3, :3], T[:3, 3]


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """Least-squares ``dst_from_src`` Sim(3) (or SE(3) when ``with_scale`` is False) between matched ``N×3``
    point sets (Umeyama 1991, eq. 40-42). Raises ValueError for fewer than 3 pairs or a degenerate set."""
    src = np.asarray(src, np.float64).reshape(-1, 3)
    dst = np.asarray(dst, np.float64).reshape(-1, 3)
    if len(src) != len(dst) or len(src) < 3:
        raise ValueError(f"umeyama needs >= 3 matched points, got {len(src)} and {len(dst)}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("umeyama: source points are all equal")
    U, D, Vt = np.linalg.svd(xd.T @ xs / len(src))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    return sim3(s, R, mu_d - s * R @ mu_s)


def rot_z(yaw_rad: float) -> np.ndarray:
    """3×3 rotation about +z by ``yaw_rad`` (counter-clockwise seen from above)."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------------------
# intrinsics, projection, back-projection
# ---------------------------------------------------------------------------------------------------------


def scale_intrinsics(K: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """3×3 K of the same camera for an image resized by ``sx`` horizontally and ``sy`` vertically (default
    ``sx``), pixel centres at +0.5 (COLMAP): ``fx·sx, cx·sx, fy·sy, cy·sy``."""
    sy = sx if sy is None else sy
    return np.diag([float(sx), float(sy), 1.0]) @ np.asarray(K, np.float64)


def intrinsics_for_size(K: np.ndarray, from_wh: tuple[int, int], to_wh: tuple[int, int]) -> np.ndarray:
    """3×3 K for an image resized from ``from_wh`` = (width, height) to ``to_wh`` pixels."""
    return scale_intrinsics(K, to_wh[0] / from_wh[0], to_wh[1] / from_wh[1])


def cv_K(K: np.ndarray) -> np.ndarray:
    """K for OpenCV's pixel addressing (pixel centres at integers): ``cx - 0.5, cy - 0.5``."""
    K = np.array(K, np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def project(points_in_world: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points through an OpenCV pinhole camera.

    Args:
        points_in_world: ``N×3`` float.
        K: 3×3 intrinsics in pixels (pixel centres at +0.5, COLMAP).
        cam_from_world: 4×4 pose.

    Returns:
        (``N×2`` float64 pixel coordinates, x right / y down; ``N`` float64 camera z in world units). Points
        behind the camera get z ≤ 0 and meaningless (possibly inf/nan) pixel coordinates.
    """
    T = np.asarray(cam_from_world, np.float64)
    K = np.asarray(K, np.float64)
    p = np.asarray(points_in_world, np.float64).reshape(-1, 3) @ T[:3, :3].T + T[:3, 3]
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (p[:, :2] / z[:, None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z


def in_image(uv: np.ndarray, z: np.ndarray, width: int, height: int) -> np.ndarray:
    """``N`` bool: in front of the camera (z > 0) and inside a ``width×height`` image."""
    return (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)


def pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """``H×W×3`` float64 camera-frame directions with z = 1 through every pixel centre (+0.5)."""
    K = np.asarray(K, np.float64)
    x = (np.arange(width) + 0.5 - K[0, 2]) / K[0, 0]
    y = (np.arange(height) + 0.5 - K[1, 2]) / K[1, 1]
    xs, ys = np.meshgrid(x, y)
    return np.stack([xs, ys, np.ones_like(xs)], axis=-1)


def backproject(depth: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray, mask: np.ndarray | None = None,
                stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World points of the pixels of a z-depth map.

    Args:
        depth: ``H×W`` float z-depth (0 or non-finite = unknown), in the units of ``cam_from_world``.
        K: 3×3 intrinsics for that ``H×W`` (pixel centres at +0.5).
        cam_from_world: 4×4 pose.
        mask: optional ``H×W`` bool of the pixels to use (default: every pixel with depth > 0).
        stride: use every ``stride``-th row and column.

    Returns:
        (``N×3`` float64 points in the world frame, ``N`` int64 flat pixel indices ``v·W + u``).
    """
    depth = np.asarray(depth)
    h, w = depth.shape
    valid = np.isfinite(depth) & (depth > 0)
    m = valid if mask is None else (valid & np.asarray(mask, bool))
    if stride > 1:
        keep = np.zeros_like(m)
        keep[::stride, ::stride] = m[::stride, ::stride]
        m = keep
    idx = np.flatnonzero(m)
    v, u = np.divmod(idx, w)
    z = depth.ravel()[idx].astype(np.float64)
    K = np.asarray(K, np.float64)
    pc = np.stack([(u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, z], axis=1)
    T = np.asarray(cam_from_world, np.float64)
    return (pc - T[:3, 3]) @ T[:3, :3], idx


class MeshRaycaster:
    """z-depth of a triangle mesh seen by pinhole cameras (Open3D ``RaycastingScene``, Embree).

    Args:
        vertices: ``V×3`` float, in the frame of the poses later passed to :meth:`depth`.
        triangles: ``F×3`` int vertex indices.
    """

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        from .io import open3d

        o3d = open3d()
        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self.empty = len(triangles) == 0
        if not self.empty:
            self.scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, np.float32)),
                                     o3d.core.Tensor(np.asarray(triangles, np.uint32)))

    def cast(self, K: np.ndarray, cam_from_world: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(``H×W`` float32 z-depth, inf where no surface; ``H×W`` int64 hit triangle id, -1 where none)."""
        if self.empty:
            return np.full((height, width), np.inf, np.float32), np.full((height, width), -1, np.int64)
        T = np.asarray(cam_from_world, np.float64)
        C = camera_center(T)
        dirs_cam = pixel_rays(K, width, height)
        dirs = dirs_cam.reshape(-1, 3) @ T[:3, :3]  # world directions, |z_cam| = 1
        rays = np.concatenate([np.broadcast_to(C, dirs.shape), dirs], axis=1).astype(np.float32)
        ans = self.scene.cast_rays(self._o3d.core.Tensor(rays))
        t = ans["t_hit"].numpy().reshape(height, width)  # along a direction whose camera z is 1 = z-depth
        tri = ans["primitive_ids"].numpy().astype(np.int64).reshape(height, width)
        tri[~np.isfinite(t)] = -1
        return t.astype(np.float32), np.where(tri == 4294967295, -1, tri)

    def depth(self, K: np.ndarray, cam_from_world: np.ndarray, width: int, height: int) -> np.ndarray:
        """``H×W`` float32 z-depth of the first surface hit (inf where none); ``K`` in pixels of that size."""
        return self.cast(K, cam_from_world, width, height)[0]


# ---------------------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------------------


def box_corners(center, size, yaw_rad: float) -> np.ndarray:
    """``8×3`` float64 corners of a gravity-aligned box (docs/schemas.md).

    Order: bottom face (z - sz/2) then top face (z + sz/2); on each face, in the box's own axes,
    (-x, -y), (+x, -y), (+x, +y), (-x, +y), i.e. counter-clockwise seen from above. So corners ``i`` and
    ``i + 4`` are one vertical edge, and ``0-1-2-3`` is the footprint polygon.
    """
    c = np.asarray(center, np.float64).reshape(3)
    half = np.asarray(size, np.float64).reshape(3) / 2
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    xy = (signs * half[:2]) @ rot_z(yaw_rad)[:2, :2].T + c[:2]
    bottom = np.column_stack([xy, np.full(4, c[2] - half[2])])
    top = np.column_stack([xy, np.full(4, c[2] + half[2])])
    return np.vstack([bottom, top])


def box_edges() -> list[tuple[int, int]]:
    """The 12 edges of :func:`box_corners`, as corner index pairs."""
    return [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def box_iou_2d(a, b) -> float:
    """IoU of two axis-aligned image boxes ``[x0, y0, x1, y1]`` (0 for empty boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_iou_2d_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``N×M`` IoU of ``N×4`` and ``M×4`` ``[x0, y0, x1, y1]`` boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def box_iou_3d(a: dict, b: dict) -> float:
    """3D IoU of two gravity-aligned boxes given as ``{"center", "size", "yaw_rad"}`` (footprint polygons
    intersected exactly with shapely, times the z overlap)."""
    from shapely.geometry import Polygon

    pa = Polygon(box_corners(a["center"], a["size"], a.get("yaw_rad", 0.0))[:4, :2])
    pb = Polygon(box_corners(b["center"], b["size"], b.get("yaw_rad", 0.0))[:4, :2])
    za = (a["center"][2] - a["size"][2] / 2, a["center"][2] + a["size"][2] / 2)
    zb = (b["center"][2] - b["size"][2] / 2, b["center"][2] + b["size"][2] / 2)
    dz = max(0.0, min(za[1], zb[1]) - max(za[0], zb[0]))
    inter = pa.intersection(pb).area * dz
    union = pa.area * (za[1] - za[0]) + pb.area * (zb[1] - zb[0]) - inter
    return float(inter / union) if union > 0 else 0.0


def project_box(center, size, yaw_rad: float, K: np.ndarray, cam_from_world: np.ndarray,
                width: int, height: int) -> list[float] | None:
    """Image box ``[x0, y0, x1, y1]`` (clipped to the image) enclosing the projected corners of a 3D box, or
    None when any corner is behind the camera or the box falls outside the image."""
    uv, z = project(box_corners(center, size, yaw_rad), K, cam_from_world)
    if np.any(z <= 0):
        return None
    x0, y0 = np.clip(uv.min(0), 0, [width, height])
    x1, y1 = np.clip(uv.max(0), 0, [width, height])
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return [float(x0), float(y0), float(x1), float(y1)]
