"""Loaders and geometry shared by the task generators (VQA, VLN, BEV, exports).

Every generator reads the scene through these functions, never by parsing files ad hoc. Schemas:
``instances.json`` / ``scene_graph.json`` in ``docs/schemas.md``; ``layout.json`` in :mod:`vid2scene.layout`;
``cameras.json`` / ``video.json`` in DESIGN.md. Task generators need the metric z-up world frame
(``gravity_z_up_metric``: z up, floor at z = 0, metres), so a scene that stopped before ``layout`` is refused.

Errors: a missing or unreadable input raises :class:`~vid2scene.errors.InputError` naming the file; an input in
the wrong frame raises :class:`~vid2scene.errors.InputError` too (the scene must be run through ``layout``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fusion import WORLD_METRIC
from ..io import read_json
from ..scene import CameraFrame, Scene

INSTANCES_JSON = "instances.json"
SCENE_GRAPH_JSON = "scene_graph.json"
LAYOUT_JSON = "layout.json"
MESH_PLY = "mesh.ply"


def scene_of(scene: Scene | str | Path) -> Scene:
    """A :class:`Scene` from a Scene or a folder path (no manifest needed: task inputs are plain files)."""
    return scene if isinstance(scene, Scene) else Scene(scene)


def _read(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{path.parent} has no {path.name} ({what}); run the stage that writes it first")
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"unreadable {path}: {e}") from e


def _check_frame(d: dict, path: Path) -> None:
    frame = d.get("frame", WORLD_METRIC)
    if frame != WORLD_METRIC:
        raise InputError(f"{path} is in frame '{frame}'; task generators need '{WORLD_METRIC}' "
                         "(metric, z up, floor at z = 0): run the layout stage before detect/instances")


def require_inputs(scene: Scene | str | Path, names: list[str]) -> None:
    """Raise InputError naming every file of ``names`` (e.g. ``["instances.json", "layout.json"]``) that the
    scene folder lacks."""
    scene = scene_of(scene)
    missing = [n for n in names if not (scene.root / n).is_file()]
    if missing:
        raise InputError(f"{scene.root} lacks {', '.join(missing)} (needed by the task generators); "
                         "run the stages that write them first")


# ---------------------------------------------------------------------------------------------------------
# instances
# ---------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Instance:
    """One object instance of ``instances.json`` (world frame ``gravity_z_up_metric``, metres).

    ``center`` (3,), ``size`` (3,) full side lengths along the box axes (local x, local y, z), ``yaw_rad`` rotation
    of local x about +z from world +x; ``aabb_min`` / ``aabb_max`` (3,); ``vertex_ids`` int64 indices into the
    vertices of ``mesh.ply``; ``first_timestamp_s`` seconds from the start of the video where the instance is
    first seen (None if unknown). ``raw`` is the full JSON record.
    """

    id: int
    label: str
    center: np.ndarray
    size: np.ndarray
    yaw_rad: float
    aabb_min: np.ndarray
    aabb_max: np.ndarray
    vertex_ids: np.ndarray
    score: float = 1.0
    first_frame: int | None = None
    first_timestamp_s: float | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def axes(self) -> np.ndarray:
        """3×3 rows: the box axes in world coordinates ``[cos yaw, sin yaw, 0]``, ``[-sin yaw, cos yaw, 0]``,
        ``[0, 0, 1]``."""
        c, s = math.cos(self.yaw_rad), math.sin(self.yaw_rad)
        return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])

    def corners(self) -> np.ndarray:
        """8×3 box corners ``center + R_z(yaw)·(±sx/2, ±sy/2), z ± sz/2`` (world, metres)."""
        signs = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
        return self.center + (signs * self.size) @ self.axes

    def footprint_xy(self) -> np.ndarray:
        """4×2 floor footprint of the box (counter-clockwise corners, world x/y, metres)."""
        hx, hy = self.size[0] / 2, self.size[1] / 2
        local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        return self.center[:2] + local @ self.axes[:2, :2]

    def bbox_meta(self) -> dict:
        """VSI-Bench's per-object ``object_bbox`` record: centroid, axesLengths, normalizedAxes (row-major 3×3,
        rows = box axes), min, max (metres, world frame)."""
        return {"id": self.id, "label": self.label, "centroid": _r(self.center), "axesLengths": _r(self.size),
                "normalizedAxes": _r(self.axes.ravel()), "min": _r(self.aabb_min), "max": _r(self.aabb_max)}


def _r(a, nd: int = 4) -> list[float]:
    return [round(float(v), nd) for v in np.asarray(a).ravel()]


def load_instances(scene: Scene | str | Path) -> list[Instance]:
    """Instances of ``SCENE/instances.json`` sorted by id.

    Raises:
        InputError: the file is missing, unreadable, not in ``gravity_z_up_metric``, or a record lacks
            ``id`` / ``label`` / ``box``.
    """
    scene = scene_of(scene)
    path = scene.root / INSTANCES_JSON
    d = _read(path, "object instances")
    _check_frame(d, path)
    out = []
    for rec in d.get("instances", []):
        try:
            box = rec["box"]
            center = np.asarray(box["center"], dtype=np.float64)
            size = np.asarray(box["size"], dtype=np.float64)
            yaw = float(box.get("yaw_rad", 0.0))
            inst = Instance(id=int(rec["id"]), label=str(rec["label"]).strip().lower(), center=center, size=size,
                            yaw_rad=yaw, aabb_min=np.zeros(3), aabb_max=np.zeros(3),
                            vertex_ids=np.asarray(rec.get("vertex_ids", []), dtype=np.int64),
                            score=float(rec.get("score", 1.0)),
                            first_frame=None if rec.get("first_frame") is None else int(rec["first_frame"]),
                            first_timestamp_s=(None if rec.get("first_timestamp_s") is None
                                               else float(rec["first_timestamp_s"])), raw=rec)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: malformed instance record {rec.get('id', '?')}: {e!r}") from e
        if "aabb" in rec:
            inst.aabb_min = np.asarray(rec["aabb"]["min"], dtype=np.float64)
            inst.aabb_max = np.asarray(rec["aabb"]["max"], dtype=np.float64)
        else:
            c = inst.corners()
            inst.aabb_min, inst.aabb_max = c.min(0), c.max(0)
        out.append(inst)
    return sorted(out, key=lambda i: i.id)


def load_scene_graph(scene: Scene | str | Path, required: bool = True) -> dict | None:
    """``SCENE/scene_graph.json`` as a dict (schema in docs/schemas.md), or None when absent and not required.

    Raises:
        InputError: missing (when ``required``), unreadable, or not in ``gravity_z_up_metric``.
    """
    scene = scene_of(scene)
    path = scene.root / SCENE_GRAPH_JSON
    if not path.is_file() and not required:
        return None
    d = _read(path, "scene graph")
    _check_frame(d, path)
    return d


def load_layout(scene: Scene | str | Path) -> dict:
    """``SCENE/layout.json`` (schema in :mod:`vid2scene.layout`).

    Raises:
        InputError: missing, unreadable, not metric z-up, or without ``room.polygon_xy`` / ``floor_area_m2``.
    """
    scene = scene_of(scene)
    path = scene.root / LAYOUT_JSON
    d = _read(path, "room layout")
    _check_frame(d, path)
    room = d.get("room") or {}
    if not room.get("polygon_xy") or room.get("floor_area_m2") is None:
        raise InputError(f"{path} has no room polygon / floor area")
    return d


def room_polygon(layout: dict) -> np.ndarray:
    """K×2 float64 room footprint polygon (world x/y, metres) of a layout dict."""
    return np.asarray(layout["room"]["polygon_xy"], dtype=np.float64).reshape(-1, 2)


def load_cameras(scene: Scene | str | Path, registered_only: bool = True) -> list[CameraFrame]:
    """Keyframe cameras of ``cameras.json`` sorted by timestamp (registered ones only by default).

    Raises:
        InputError: missing / unreadable, or the cameras are not in ``gravity_z_up_metric``.
    """
    scene = scene_of(scene)
    d = _read(scene.cameras_json, "camera poses")
    if d.get("world", WORLD_METRIC) != WORLD_METRIC:
        raise InputError(f"{scene.cameras_json} is in world '{d.get('world')}'; run the layout stage first")
    cams = [CameraFrame.from_json(f) for f in d["frames"]]
    if registered_only:
        cams = [c for c in cams if c.registered]
    return sorted(cams, key=lambda c: (c.timestamp_s, c.source_frame))


def load_video_info(scene: Scene | str | Path) -> dict | None:
    """``video.json`` (fps, duration_s, ...) or None when absent."""
    scene = scene_of(scene)
    return _read(scene.video_json, "video info") if scene.video_json.is_file() else None


def scene_name(scene: Scene | str | Path) -> str:
    """The scene's name: the folder name."""
    return scene_of(scene).root.resolve().name


# ---------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------
def load_mesh_vertices(scene: Scene | str | Path) -> np.ndarray | None:
    """N×3 float64 vertices of ``SCENE/mesh.ply`` (world frame), or None when there is no mesh."""
    from plyfile import PlyData

    path = scene_of(scene).root / MESH_PLY
    if not path.is_file():
        return None
    try:
        v = PlyData.read(str(path))["vertex"].data
    except Exception as e:  # plyfile raises several types on a broken file
        raise InputError(f"unreadable {path}: {e}") from e
    return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)


def box_samples(inst: Instance, per_side: int = 6) -> np.ndarray:
    """Points on the surface of an instance's box (``6·per_side²``-ish ×3, world, metres): a stand-in for the
    instance's points when it has no mesh vertices."""
    t = np.linspace(-0.5, 0.5, per_side)
    g = np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
    g = g[np.abs(g).max(1) >= 0.5 - 1e-9]  # surface only
    return inst.center + (g * inst.size) @ inst.axes


def instance_points(inst: Instance, vertices: np.ndarray | None, max_points: int | None = 4000,
                    min_points: int = 10) -> np.ndarray:
    """M×3 float64 points of an instance: ``vertices[vertex_ids]`` (world, metres), deterministically thinned to
    at most ``max_points``; the box surface (:func:`box_samples`) when there are fewer than ``min_points``
    valid vertex ids or no mesh.

    Raises:
        InputError: a vertex id is out of range of ``vertices``.
    """
    ids = inst.vertex_ids
    if vertices is None or len(ids) < min_points:
        return box_samples(inst)
    if ids.min() < 0 or ids.max() >= len(vertices):
        raise InputError(f"instance {inst.id} ({inst.label}) has vertex ids outside mesh.ply's "
                         f"{len(vertices)} vertices")
    if max_points is not None and len(ids) > max_points:
        ids = ids[np.linspace(0, len(ids) - 1, max_points).round().astype(np.int64)]
    return vertices[ids]


def closest_distance(points_a: np.ndarray, points_b: np.ndarray) -> float:
    """Smallest Euclidean distance (metres) between two point sets (``N×3``, ``M×3``), via a KD-tree."""
    from scipy.spatial import cKDTree

    if len(points_a) > len(points_b):
        points_a, points_b = points_b, points_a
    d, _ = cKDTree(points_b).query(points_a, k=1)
    return float(d.min())


class PointCache:
    """Instance points and pairwise closest-point distances, computed once per scene."""

    def __init__(self, instances: list[Instance], vertices: np.ndarray | None, max_points: int = 4000):
        self.by_id = {i.id: i for i in instances}
        self.vertices = vertices
        self.max_points = max_points
        self._pts: dict[int, np.ndarray] = {}
        self._dist: dict[tuple[int, int], float] = {}

    def points(self, iid: int) -> np.ndarray:
        if iid not in self._pts:
            self._pts[iid] = instance_points(self.by_id[iid], self.vertices, self.max_points)
        return self._pts[iid]

    def distance(self, a: int, b: int) -> float:
        """Closest-point distance (metres) between instances ``a`` and ``b``."""
        key = (min(a, b), max(a, b))
        if key not in self._dist:
            self._dist[key] = closest_distance(self.points(a), self.points(b))
        return self._dist[key]


def by_label(instances: list[Instance]) -> dict[str, list[Instance]]:
    """Instances grouped by label (labels sorted, instances by id)."""
    out: dict[str, list[Instance]] = {}
    for i in sorted(instances, key=lambda i: (i.label, i.id)):
        out.setdefault(i.label, []).append(i)
    return dict(sorted(out.items()))


def wrap_angle(a: float | np.ndarray) -> float | np.ndarray:
    """Angle wrapped to (-π, π]."""
    return -((-np.asarray(a) + np.pi) % (2 * np.pi) - np.pi) if np.ndim(a) else \
        float(-((-a + math.pi) % (2 * math.pi) - math.pi))
