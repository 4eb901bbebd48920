"""First-person views of a plan: a small numpy / OpenCV z-buffer rasteriser, the two camera paths, PNG + MP4.

What is drawn (world frame, metres; OpenCV camera axes, K with pixel centres at +0.5 as everywhere):

* the room shell — floor (0.5 m checker) and ceiling as ray–plane hits inside the room polygon, walls as quads
  from z = 0 to the room height, drawn only from their inner side (a camera outside the room polygon, as where
  the walk starts in a corridor, sees into the room through the walls' backs);
* every object as its box, one colour per class (:func:`plan_colours`), faces shaded by orientation,
  object outlines darkened, and each visible object labelled at the centroid of its visible pixels.

:func:`render_view` also returns the object-id buffer (``-1`` nothing, ``-2`` wall, ``-3`` floor, ``-4``
ceiling, ``k ≥ 0`` plan object ``k``) and the z-depth buffer, which the per-frame agreement score uses.

Paths: :func:`trajectory_views` — the scene's own registered keyframe cameras, evenly subsampled;
:func:`walk_views` — a walk through free space (the navigation graph of :mod:`vid2scene.tasks.nav` over the
solved plan) from the entrance to the farthest reachable node, at camera height, looking along the path.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...geometry import intrinsics_for_size, pixel_rays
from .plan import Plan

WALL, FLOOR, CEILING, NOTHING = -2, -3, -4, -1
NEAR_M = 0.05
# box faces as corner indices of geometry.box_corners (bottom 0-3, top 4-7) and a shade per face
FACES = [((0, 1, 2, 3), 0.45), ((4, 5, 6, 7), 1.0), ((0, 1, 5, 4), 0.8), ((1, 2, 6, 5), 0.65),
         ((2, 3, 7, 6), 0.8), ((3, 0, 4, 7), 0.65)]


@dataclass
class View:
    """One pinhole view: ``K`` 3×3 (pixels of ``width × height``), ``cam_from_world`` 4×4, a name."""

    name: str
    K: np.ndarray
    cam_from_world: np.ndarray
    width: int
    height: int
    source_frame: int | None = None

    def resized(self, width: int) -> "View":
        """The same camera for an image ``width`` pixels wide (height kept in proportion, even)."""
        h = max(2, int(round(self.height * width / self.width / 2)) * 2)
        w = max(2, int(width) // 2 * 2)
        return View(self.name, intrinsics_for_size(self.K, (self.width, self.height), (w, h)),
                    np.asarray(self.cam_from_world, np.float64), w, h, self.source_frame)


@dataclass
class Rendered:
    """``rgb`` H×W×3 uint8, ``ids`` H×W int32 (module docstring), ``depth`` H×W float32 z (inf = nothing)."""

    rgb: np.ndarray
    ids: np.ndarray
    depth: np.ndarray


PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [174, 199, 232],
                    [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213], [219, 219, 141],
                    [158, 218, 229]], np.float32)


def class_colour(label: str) -> np.ndarray:
    """A fixed RGB colour (3 float 0..255) for a class label: a 16-colour palette indexed by the label's hash."""
    return PALETTE[int(hashlib.md5(label.encode()).hexdigest()[:8], 16) % len(PALETTE)].copy()


def plan_colours(plan: Plan) -> dict[str, np.ndarray]:
    """One colour per class of the plan: the palette in the order of the sorted class names (distinct for up to
    16 classes; beyond that :func:`class_colour`)."""
    labels = sorted({o.label for o in plan.objects})
    return {lab: PALETTE[i].copy() if i < len(PALETTE) else class_colour(lab) for i, lab in enumerate(labels)}


class Raster:
    """Colour, id and z buffers of one view; triangles are given in world coordinates."""

    def __init__(self, view: View, background=(40, 40, 48)):
        self.view = view
        w, h = view.width, view.height
        self.rgb = np.empty((h, w, 3), np.float32)
        self.rgb[:] = background
        self.ids = np.full((h, w), NOTHING, np.int32)
        self.depth = np.full((h, w), np.inf, np.float32)
        T = np.asarray(view.cam_from_world, np.float64)
        self.R, self.t = T[:3, :3], T[:3, 3]
        self.K = np.asarray(view.K, np.float64)

    def plane(self, z_plane: float, inside: "RoomMask", colour_fn, oid: int) -> None:
        """Fill the pixels whose ray hits the horizontal plane ``z = z_plane`` inside the room polygon."""
        v = self.view
        rays = pixel_rays(self.K, v.width, v.height).reshape(-1, 3) @ self.R  # world directions, camera z = 1
        C = -self.R.T @ self.t
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (z_plane - C[2]) / rays[:, 2]
        ok = np.isfinite(t) & (t > NEAR_M)
        hit = C[:2] + t[:, None] * rays[:, :2]
        ok &= inside.contains(hit)
        t = t.reshape(v.height, v.width)
        ok = ok.reshape(v.height, v.width) & (t < self.depth)
        self.depth[ok] = t[ok]
        self.ids[ok] = oid
        self.rgb[ok] = colour_fn(hit.reshape(v.height, v.width, 2)[ok])

    def triangle(self, tri_world: np.ndarray, colour: np.ndarray, oid: int) -> None:
        """Rasterise one world triangle (3×3) with near-plane clipping and a z-test."""
        pc = tri_world @ self.R.T + self.t
        for poly in _clip_near(pc):
            for k in range(1, len(poly) - 1):
                self._raster(np.stack([poly[0], poly[k], poly[k + 1]]), colour, oid)

    def _raster(self, pc: np.ndarray, colour: np.ndarray, oid: int) -> None:
        K = self.K
        z = pc[:, 2]
        uv = pc[:, :2] / z[:, None] * [K[0, 0], K[1, 1]] + K[:2, 2]
        h, w = self.ids.shape
        x0, y0 = np.floor(uv.min(0) - 0.5).astype(int)
        x1, y1 = np.ceil(uv.max(0) - 0.5).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
        if x1 < x0 or y1 < y0:
            return
        (ax, ay), (bx, by), (cx, cy) = uv
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        if abs(area) < 1e-12:
            return
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        l0 = ((bx - xs) * (cy - ys) - (by - ys) * (cx - xs)) / area
        l1 = ((cx - xs) * (ay - ys) - (cy - ys) * (ax - xs)) / area
        l2 = 1.0 - l0 - l1
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        if not inside.any():
            return
        zz = 1.0 / (l0 / z[0] + l1 / z[1] + l2 / z[2])  # perspective-correct depth
        sub_d = self.depth[y0:y1 + 1, x0:x1 + 1]
        m = inside & (zz < sub_d)
        sub_d[m] = zz[m]
        self.ids[y0:y1 + 1, x0:x1 + 1][m] = oid
        self.rgb[y0:y1 + 1, x0:x1 + 1][m] = colour

    def result(self) -> Rendered:
        return Rendered(np.clip(self.rgb, 0, 255).astype(np.uint8), self.ids, self.depth)


def _clip_near(pc: np.ndarray) -> list[np.ndarray]:
    """Sutherland–Hodgman clip of a camera-frame polygon against ``z ≥ NEAR_M`` (0 or 1 polygons)."""
    out = []
    n = len(pc)
    for i in range(n):
        a, b = pc[i], pc[(i + 1) % n]
        ia, ib = a[2] >= NEAR_M, b[2] >= NEAR_M
        if ia:
            out.append(a)
        if ia != ib:
            s = (NEAR_M - a[2]) / (b[2] - a[2])
            out.append(a + s * (b - a))
    return [np.array(out)] if len(out) >= 3 else []


class RoomMask:
    """Point-in-room test by lookup in a top-down raster of the room polygon (``cell_m`` cells)."""

    def __init__(self, polygon_xy, cell_m: float = 0.02):
        import cv2

        P = np.asarray(polygon_xy, np.float64)
        self.lo = P.min(0) - 2 * cell_m
        self.cell = cell_m
        w, h = (np.ceil((P.max(0) + 2 * cell_m - self.lo) / cell_m).astype(int) + 1)
        self.mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(self.mask, [np.round((P - self.lo) / cell_m).astype(np.int32).reshape(-1, 1, 2)], 1)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        ij = np.floor((np.asarray(xy).reshape(-1, 2) - self.lo) / self.cell + 0.5)
        ok = np.isfinite(ij).all(1)
        ij = np.where(ok[:, None], ij, -1).astype(np.int64)
        h, w = self.mask.shape
        ok &= (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
        out = np.zeros(len(ij), bool)
        out[ok] = self.mask[ij[ok, 1], ij[ok, 0]] > 0
        return out


def _floor_colour(xy: np.ndarray) -> np.ndarray:
    chk = ((np.floor(xy[:, 0] / 0.5) + np.floor(xy[:, 1] / 0.5)) % 2)[:, None]
    return np.where(chk > 0, [150, 140, 125], [175, 165, 150]).astype(np.float32)


def render_view(plan: Plan, view: View, labels: bool = True, room_mask: RoomMask | None = None) -> Rendered:
    """Render the plan's room shell and boxes seen by ``view`` (module docstring)."""
    ras = Raster(view)
    mask = room_mask or RoomMask(plan.room.polygon_xy)
    h_room = plan.room.height_m
    ras.plane(0.0, mask, _floor_colour, FLOOR)
    ras.plane(h_room, mask, lambda xy: np.full((len(xy), 3), 215, np.float32), CEILING)
    C = -ras.R.T @ ras.t
    for w in plan.room.walls:
        a, b = np.asarray(w.a, np.float64), np.asarray(w.b, np.float64)
        if float(np.dot(w.inward_normal_xy, C[:2] - a)) < 0:
            continue  # seen from outside: culled (exact from inside the room; see-through from outside)
        q = np.array([[*a, 0.0], [*b, 0.0], [*b, h_room], [*a, h_room]])
        n = np.array([*w.inward_normal_xy, 0.0])
        shade = 0.75 + 0.25 * abs(float(n @ (C - q.mean(0)) / max(np.linalg.norm(C - q.mean(0)), 1e-9)))
        col = np.array([205, 195, 180], np.float32) * shade
        ras.triangle(q[[0, 1, 2]], col, WALL)
        ras.triangle(q[[0, 2, 3]], col, WALL)
    colours = plan_colours(plan)
    for k, o in enumerate(plan.objects):
        corners = o.corners()
        base = colours[o.label]
        for face, shade in FACES:
            q = corners[list(face)]
            ras.triangle(q[[0, 1, 2]], base * shade, k)
            ras.triangle(q[[0, 2, 3]], base * shade, k)
    out = ras.result()
    _outline(out)
    if labels:
        draw_labels(out, [o.label for o in plan.objects])
    return out


def _outline(r: Rendered) -> None:
    ids = r.ids
    edge = np.zeros(ids.shape, bool)
    edge[:, 1:] |= (ids[:, 1:] != ids[:, :-1]) & ((ids[:, 1:] >= 0) | (ids[:, :-1] >= 0))
    edge[1:, :] |= (ids[1:, :] != ids[:-1, :]) & ((ids[1:, :] >= 0) | (ids[:-1, :] >= 0))
    r.rgb[edge] = (r.rgb[edge] * 0.35).astype(np.uint8)


def visible_objects(ids: np.ndarray, min_pixels: int = 30) -> dict[int, list[float]]:
    """``{object index: [x0, y0, x1, y1]}`` pixel box of the visible pixels of every object with at least
    ``min_pixels`` pixels in the id buffer (pixel edges: a pixel (r, c) spans [c, c + 1) × [r, r + 1))."""
    out = {}
    ks, counts = np.unique(ids[ids >= 0], return_counts=True)
    for k, n in zip(ks, counts):
        if n < min_pixels:
            continue
        rr, cc = np.nonzero(ids == k)
        out[int(k)] = [float(cc.min()), float(rr.min()), float(cc.max() + 1), float(rr.max() + 1)]
    return out


def draw_labels(r: Rendered, labels: list[str], min_pixels: int = 150) -> None:
    """Write each visible object's label at the centroid of its visible pixels (in place)."""
    import cv2

    h, w = r.ids.shape
    scale = max(0.3, w / 900.0)
    img = np.ascontiguousarray(r.rgb)
    for k in visible_objects(r.ids, min_pixels):
        rr, cc = np.nonzero(r.ids == k)
        text = labels[k]
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = int(np.clip(cc.mean() - tw / 2, 0, max(w - tw, 0)))
        y = int(np.clip(rr.mean() + th / 2, th, h - 1))
        cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    r.rgb[:] = img


# ---------------------------------------------------------------------------------------------------------
# camera paths
# ---------------------------------------------------------------------------------------------------------
def trajectory_views(cameras, max_views: int = 48, width: int = 320) -> list[View]:
    """Up to ``max_views`` registered world-frame keyframe cameras in time order (evenly subsampled), resized to
    ``width`` pixels."""
    cams = sorted([c for c in cameras if c.registered], key=lambda c: (c.timestamp_s, c.source_frame))
    if len(cams) > max_views:
        cams = [cams[i] for i in np.linspace(0, len(cams) - 1, max_views).round().astype(int)]
    return [View(f"{c.source_frame:06d}", c.K, c.cam_from_world, c.width, c.height, c.source_frame).resized(width)
            for c in cams]


def look_along(eye, yaw_rad: float, pitch_rad: float = 0.0) -> np.ndarray:
    """4×4 ``cam_from_world`` (OpenCV axes) at ``eye`` looking along heading ``yaw_rad`` (about +z from +x),
    tilted down by ``pitch_rad``."""
    eye = np.asarray(eye, np.float64)
    fwd = np.array([math.cos(yaw_rad) * math.cos(pitch_rad), math.sin(yaw_rad) * math.cos(pitch_rad),
                    -math.sin(pitch_rad)])
    right = np.array([math.sin(yaw_rad), -math.cos(yaw_rad), 0.0])
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd])
    T[:3, 3] = -T[:3, :3] @ eye
    return T


class _Obstacle:
    """What :func:`vid2scene.tasks.nav.build_free_space` reads of an object: height range and footprint."""

    def __init__(self, o):
        lo, hi = o.z_range
        self.aabb_min, self.aabb_max = np.array([0, 0, lo]), np.array([0, 0, hi])
        self._fp = o.footprint()

    def footprint_xy(self) -> np.ndarray:
        return self._fp


def walk_path(plan: Plan, step_m: float = 0.2) -> np.ndarray:
    """``N×2`` floor points (metres, every ``step_m``) of a walk through free space from the entrance to the
    graph node farthest from it along the navigation graph; empty when the graph has no edge."""
    import networkx as nx

    from ..nav import NavConfig, build_free_space, build_nav_graph, resample_polyline

    cfg = NavConfig()
    space = build_free_space(np.asarray(plan.room.polygon_xy), [_Obstacle(o) for o in plan.objects], [], cfg)
    graph = build_nav_graph(space, [], cfg)
    xy = graph.xy
    if len(xy) < 2 or graph.graph.number_of_edges() == 0:
        return np.zeros((0, 2))
    start_xy = np.asarray(plan.room.entrance_xy or np.mean(plan.room.polygon_xy, 0))
    comp = max(nx.connected_components(graph.graph), key=lambda c: (len(c), -min(
        np.linalg.norm(xy[list(c)] - start_xy, axis=1))))
    nodes = sorted(comp)
    a = nodes[int(np.argmin(np.linalg.norm(xy[nodes] - start_xy, axis=1)))]
    dist = nx.single_source_dijkstra_path_length(graph.graph, a, weight="length")
    b = max(dist, key=lambda n: (dist[n], -n))
    path = xy[graph.shortest_path(a, b)]
    return resample_polyline(path, step_m) if len(path) > 1 else path


def walk_views(plan: Plan, K: np.ndarray, size: tuple[int, int], eye_height_m: float = 1.5,
               pitch_deg: float = 10.0, step_m: float = 0.2, max_views: int = 64, width: int = 320) -> list[View]:
    """Views along :func:`walk_path` at ``eye_height_m``, looking 0.6 m ahead along the path, ``K`` for an
    image of ``size = (w, h)`` resized to ``width``; ends with a turn on the spot towards the room's centroid."""
    path = walk_path(plan, step_m)
    if len(path) < 2:
        return []
    if len(path) > max_views:
        path = path[np.linspace(0, len(path) - 1, max_views).round().astype(int)]
    views = []
    look = max(1, int(round(0.6 / step_m)))
    poses = []
    for i, p in enumerate(path):
        q = path[min(i + look, len(path) - 1)] if i < len(path) - 1 else p + (p - path[i - 1])
        poses.append((p, math.atan2(q[1] - p[1], q[0] - p[0])))
    c = np.mean(np.asarray(plan.room.polygon_xy, np.float64), 0)
    end, yaw0 = poses[-1]
    turn = (math.atan2(c[1] - end[1], c[0] - end[0]) - yaw0 + math.pi) % (2 * math.pi) - math.pi
    n_turn = int(math.ceil(abs(turn) / math.radians(20)))
    poses += [(end, yaw0 + turn * k / n_turn) for k in range(1, n_turn + 1)]
    for i, (p, yaw) in enumerate(poses):
        T = look_along([p[0], p[1], eye_height_m], yaw, math.radians(pitch_deg))
        views.append(View(f"walk_{i:04d}", K, T, size[0], size[1]).resized(width))
    return views


# ---------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------
def write_video(path: str | Path, frames: list[np.ndarray], fps: float = 8.0) -> str:
    """Write ``H×W×3`` uint8 RGB frames (even sizes) as an MP4 (:func:`vid2scene.io.write_video`: PyAV H.264);
    returns the codec used. Atomic."""
    from ...io import write_video as _write_video

    return _write_video(path, frames, fps)
