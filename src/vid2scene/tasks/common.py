"""The scene as the task generators and exporters see it, and the geometry they share.

Every asset is read through :class:`~vid2scene.scene.Scene`'s loaders in the world frame (``frame="world"``:
z up against gravity, floor at z = 0, metres; ``world_from_sfm`` from ``layout.json`` applied on load), never by
parsing files here. Schemas: ``instances.json`` / ``scene_graph.json`` in ``docs/schemas.md``; ``layout.json``
in :mod:`vid2scene.layout`; ``cameras.json`` / ``video.json`` in DESIGN.md.

Errors: these commands run on a scene folder the user names, so a missing or unreadable input — including a
scene that stopped before ``layout`` (no world frame) — raises :class:`~vid2scene.errors.InputError` naming the
file and the stage that writes it (the :class:`~vid2scene.errors.StageFailed` of the loader, re-raised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from .. import geometry
from ..errors import InputError, StageFailed
from ..scene import WORLD, WORLD_NAME, CameraFrame, Mesh, Scene

T = TypeVar("T")


def scene_of(scene: Scene | str | Path) -> Scene:
    """A :class:`Scene` from a Scene or a folder path (no manifest needed: task inputs are plain files)."""
    return scene if isinstance(scene, Scene) else Scene(scene)


def load(loader: Callable[..., T], *args, **kwargs) -> T:
    """``loader(*args, **kwargs)`` (a :class:`Scene` loader); its :class:`StageFailed` (asset missing, unreadable,
    or no world frame yet) re-raised as :class:`InputError` with the same reason."""
    try:
        return loader(*args, **kwargs)
    except StageFailed as e:
        raise InputError(str(e)) from e
    except (OSError, ValueError) as e:  # a corrupt PLY / NPZ file
        raise InputError(f"unreadable scene asset: {e}") from e


def check_world(doc: dict, what: str) -> dict:
    """``doc`` unchanged when its ``frame`` (absent = world) is the world frame, else InputError."""
    frame = doc.get("frame", WORLD_NAME)
    if frame != WORLD_NAME:
        raise InputError(f"{what} is in frame '{frame}'; task generators need '{WORLD_NAME}' "
                         "(metric, z up, floor at z = 0): run the layout stage before detect/instances")
    return doc


def require_inputs(scene: Scene | str | Path, names: list[str]) -> None:
    """Raise InputError naming every asset of ``names`` (paths relative to the scene folder, the constants of
    :mod:`vid2scene.scene`, e.g. ``[INSTANCES_JSON, LAYOUT_JSON]``) that the scene folder lacks."""
    scene = scene_of(scene)
    missing = [n for n in names if not scene.has(n)]
    if missing:
        raise InputError(f"{scene.root} lacks {', '.join(missing)} (needed by the task generators); "
                         "run the stages that write them first")


# ---------------------------------------------------------------------------------------------------------
# instances
# ---------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Instance:
    """One object instance of ``instances.json`` (world frame, metres).

    ``center`` (3,), ``size`` (3,) full side lengths along the box axes (local x, local y, z), ``yaw_rad`` rotation
    of local x about +z from world +x; ``aabb_min`` / ``aabb_max`` (3,); ``vertex_ids`` int64 indices into the
    vertices of the scene's mesh (:meth:`Scene.mesh`); ``first_timestamp_s`` seconds from the start of the video
    where the instance is first seen (None if unknown). ``raw`` is the full JSON record.
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
        """8×3 box corners (world, metres) in the order of :func:`vid2scene.geometry.box_corners`."""
        return geometry.box_corners(self.center, self.size, self.yaw_rad)

    def footprint_xy(self) -> np.ndarray:
        """4×2 floor footprint of the box (counter-clockwise corners, world x/y, metres)."""
        return self.corners()[:4, :2]

    def bbox_meta(self) -> dict:
        """VSI-Bench's per-object ``object_bbox`` record: centroid, axesLengths, normalizedAxes (row-major 3×3,
        rows = box axes), min, max (metres, world frame)."""
        return {"id": self.id, "label": self.label, "centroid": _r(self.center), "axesLengths": _r(self.size),
                "normalizedAxes": _r(self.axes.ravel()), "min": _r(self.aabb_min), "max": _r(self.aabb_max)}


def _r(a, nd: int = 4) -> list[float]:
    return [round(float(v), nd) for v in np.asarray(a).ravel()]


def instances_doc(scene: Scene | str | Path) -> dict:
    """``instances.json`` as a dict (:meth:`Scene.instances`), checked to be in the world frame and to hold an
    ``instances`` list.

    Raises:
        InputError: missing, unreadable, not in the world frame, or without an ``instances`` list.
    """
    scene = scene_of(scene)
    d = check_world(load(scene.instances), "instances.json")
    if not isinstance(d.get("instances"), list):
        raise InputError(f"{scene.instances_json} has no 'instances' list")
    return d


def instances(scene: Scene | str | Path) -> list[Instance]:
    """The typed view of :func:`instances_doc`, sorted by id.

    Raises:
        InputError: as :func:`instances_doc`, or a record lacks ``id`` / ``label`` / ``box``.
    """
    scene = scene_of(scene)
    out = []
    for rec in instances_doc(scene)["instances"]:
        try:
            box = rec["box"]
            inst = Instance(id=int(rec["id"]), label=str(rec["label"]).strip().lower(),
                            center=np.asarray(box["center"], dtype=np.float64),
                            size=np.asarray(box["size"], dtype=np.float64), yaw_rad=float(box.get("yaw_rad", 0.0)),
                            aabb_min=np.zeros(3), aabb_max=np.zeros(3),
                            vertex_ids=np.asarray(rec.get("vertex_ids", []), dtype=np.int64),
                            score=float(rec.get("score", 1.0)),
                            first_frame=None if rec.get("first_frame") is None else int(rec["first_frame"]),
                            first_timestamp_s=(None if rec.get("first_timestamp_s") is None
                                               else float(rec["first_timestamp_s"])), raw=rec)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{scene.instances_json}: malformed instance record {rec.get('id', '?')}: {e!r}") from e
        if "aabb" in rec:
            inst.aabb_min = np.asarray(rec["aabb"]["min"], dtype=np.float64)
            inst.aabb_max = np.asarray(rec["aabb"]["max"], dtype=np.float64)
        else:
            c = inst.corners()
            inst.aabb_min, inst.aabb_max = c.min(0), c.max(0)
        out.append(inst)
    return sorted(out, key=lambda i: i.id)


def scene_graph(scene: Scene | str | Path, required: bool = True) -> dict | None:
    """``scene_graph.json`` (:meth:`Scene.scene_graph`), or None when absent and not ``required``.

    Raises:
        InputError: missing (when ``required``), unreadable, or not in the world frame.
    """
    scene = scene_of(scene)
    if not required and not scene.scene_graph_json.is_file():
        return None
    return check_world(load(scene.scene_graph), "scene_graph.json")


def layout(scene: Scene | str | Path, required: bool = True) -> dict | None:
    """``layout.json`` (:meth:`Scene.layout`), or None when absent and not ``required``.

    Raises:
        InputError: missing (when ``required``), unreadable, or not in the world frame.
    """
    scene = scene_of(scene)
    if not required and not scene.layout_json.is_file():
        return None
    return check_world(load(scene.layout), "layout.json")


def room_layout(scene: Scene | str | Path) -> dict:
    """:func:`layout`, checked to hold the room footprint ``room.polygon_xy`` and ``room.floor_area_m2``.

    Raises:
        InputError: as :func:`layout`, or without a room polygon / floor area.
    """
    d = layout(scene)
    room = d.get("room") or {}
    if not room.get("polygon_xy") or room.get("floor_area_m2") is None:
        raise InputError(f"{scene_of(scene).layout_json} has no room polygon / floor area")
    return d


def room_polygon(layout_doc: dict) -> np.ndarray:
    """K×2 float64 room footprint polygon (world x/y, metres) of a layout dict."""
    return np.asarray(layout_doc["room"]["polygon_xy"], dtype=np.float64).reshape(-1, 2)


def cameras(scene: Scene | str | Path, registered_only: bool = True) -> list[CameraFrame]:
    """Keyframe cameras in the world frame (:meth:`Scene.cameras` with ``frame="world"``), sorted by timestamp
    (registered ones only by default).

    Raises:
        InputError: no ``cameras.json``, or no ``world_from_sfm`` yet (``layout`` has not run).
    """
    cams = load(scene_of(scene).cameras, frame=WORLD)
    if registered_only:
        cams = [c for c in cams if c.registered]
    return sorted(cams, key=lambda c: (c.timestamp_s, c.source_frame))


def video_info(scene: Scene | str | Path) -> dict | None:
    """``video.json`` (fps, duration_s, ...) or None when absent."""
    scene = scene_of(scene)
    return load(scene.video_info) if scene.video_json.is_file() else None


def scene_name(scene: Scene | str | Path) -> str:
    """The scene's name: the folder name."""
    return scene_of(scene).root.resolve().name


def mesh(scene: Scene | str | Path) -> Mesh:
    """The scene's mesh in the world frame (:meth:`Scene.mesh`; vertex order kept, so ``instances.json``
    ``vertex_ids`` index it).

    Raises:
        InputError: no mesh, no world frame yet, an unreadable file, or a mesh without faces.
    """
    scene = scene_of(scene)
    m = load(scene.mesh, frame=WORLD)
    if len(m.triangles) == 0:
        raise InputError(f"{scene.mesh_ply} has no faces")
    return m


def mesh_vertices(scene: Scene | str | Path) -> np.ndarray | None:
    """``V×3`` float64 mesh vertices in the world frame, or None when the scene has no mesh.

    Raises:
        InputError: unreadable mesh, or no world frame yet.
    """
    scene = scene_of(scene)
    return load(scene.mesh, frame=WORLD).vertices if scene.mesh_ply.is_file() else None


# ---------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------
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


def footprint_distance(inst: Instance, xy: np.ndarray) -> np.ndarray:
    """``N`` floor distances (metres) from points ``xy`` (``N×2``, world) to an instance's box footprint
    (0 inside)."""
    local = (np.asarray(xy, float).reshape(-1, 2) - inst.center[:2]) @ inst.axes[:2, :2].T
    return np.linalg.norm(np.maximum(np.abs(local) - inst.size[:2] / 2, 0.0), axis=1)


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
