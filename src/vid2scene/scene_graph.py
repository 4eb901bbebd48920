"""``scene_graph`` stage: objects, the room and their spatial relations with metric evidence →
``scene_graph.json`` (schema in docs/schemas.md; world frame ``gravity_z_up_metric``, metres). Reads
``instances.json``, ``layout.json`` and the instances' vertices of ``mesh.ply`` through
:class:`~vid2scene.scene.Scene` (mesh in the world frame).

Relations (``A pred B``; boxes are the instances' gravity-aligned boxes, footprints their rotated xy
rectangles, intersected with shapely; point distances from ``scipy.spatial.cKDTree`` on the instances'
mesh vertices, each subsampled to ≤ ``max_points`` points):

* ``on`` — A rests on B's top: ``gap_m = A.zmin − B.zmax`` within ±``on_gap_m``, ``overlap_xy`` (footprint
  intersection / A's footprint area) ≥ ``on_overlap``, A's centre above B's. ``supported_by`` is implied.
* ``on_floor`` — A's bottom within ``on_floor_m`` of the floor (z = 0) and A is on no other object
  (``object`` is ``"floor"``).
* ``above`` / ``below`` — footprints overlap ≥ ``above_overlap`` (of the smaller footprint) and A's bottom is
  above B's top by more than ``on_gap_m`` (``dz_m`` = that gap); written for both directions.
* ``near`` — closest-point distance < ``near_m`` (``distance_m``), once per unordered pair (subject < object).
* ``inside`` — A's box centre (xy) in the room polygon of ``layout.json`` grown by ``inside_margin_m``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import StageFailed
from .geometry import box_corners
from .scene import SCENE_GRAPH_JSON, WORLD_NAME, Scene
from .stage import StageResult

NAME = "scene_graph"
OUTPUTS = [SCENE_GRAPH_JSON]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_gap_m: float = Field(0.08, ge=0, description="|A bottom − B top| for 'on'")
    on_overlap: float = Field(0.5, gt=0, le=1, description="share of A's footprint over B for 'on'")
    on_floor_m: float = Field(0.1, ge=0, description="bottom this close to z = 0 is 'on_floor'")
    above_overlap: float = Field(0.3, gt=0, le=1, description="footprint overlap for 'above'/'below'")
    near_m: float = Field(0.5, gt=0, description="closest-point distance below which two objects are 'near'")
    inside_margin_m: float = Field(0.1, ge=0)
    max_points: int = Field(4000, ge=10, description="points per instance for closest-point distances")


def footprint(obj: dict):
    """shapely Polygon of an object's rotated xy footprint (``center``, ``size``, ``yaw_rad``)."""
    from shapely.geometry import Polygon

    return Polygon(box_corners(obj["center"], obj["size"], obj["yaw_rad"])[:4, :2])


def relations(objects: list[dict], points: dict[int, np.ndarray], room_polygon, config: Config) -> list[dict]:
    """Relation records for ``objects`` (scene-graph object dicts with ``min``/``max``/``center``/``size``/
    ``yaw_rad``); ``points``: id → ``N×3`` world points of that instance (may be empty: box corners used);
    ``room_polygon``: shapely Polygon of the room footprint or None. Order: ``on`` / ``above`` / ``below``,
    ``on_floor``, ``near``, ``inside``."""
    rels, on_something = vertical_relations(objects, config)
    rels += floor_relations(objects, on_something, config)
    rels += near_relations(objects, points, config)
    if room_polygon is not None:
        rels += inside_relations(objects, room_polygon, config)
    return rels


def vertical_relations(objects: list[dict], config: Config) -> tuple[list[dict], set]:
    """(``on``, ``above`` and ``below`` records of every ordered pair, ids of the objects that are on another)."""
    fps = {o["id"]: footprint(o) for o in objects}
    rels: list[dict] = []
    on_something = set()
    for a in objects:
        for b in objects:
            if a["id"] == b["id"]:
                continue
            fa, fb = fps[a["id"]], fps[b["id"]]
            inter = fa.intersection(fb).area if fa.is_valid and fb.is_valid else 0.0
            ov_a = inter / fa.area if fa.area > 0 else 0.0
            ov_small = inter / max(min(fa.area, fb.area), 1e-9)
            gap = a["min"][2] - b["max"][2]
            if abs(gap) <= config.on_gap_m and ov_a >= config.on_overlap and a["center"][2] > b["center"][2]:
                rels.append({"subject": a["id"], "predicate": "on", "object": b["id"],
                             "evidence": {"gap_m": round(gap, 4), "overlap_xy": round(ov_a, 3)}})
                on_something.add(a["id"])
            elif gap > config.on_gap_m and ov_small >= config.above_overlap:
                ev = {"dz_m": round(gap, 4), "overlap_xy": round(ov_small, 3)}
                rels.append({"subject": a["id"], "predicate": "above", "object": b["id"], "evidence": ev})
                rels.append({"subject": b["id"], "predicate": "below", "object": a["id"], "evidence": dict(ev)})
    return rels, on_something


def floor_relations(objects: list[dict], on_something: set, config: Config) -> list[dict]:
    """``on_floor`` records of the objects whose bottom is near z = 0 and that are on no other object."""
    return [{"subject": a["id"], "predicate": "on_floor", "object": "floor",
             "evidence": {"gap_m": round(a["min"][2], 4)}}
            for a in objects if a["id"] not in on_something and a["min"][2] <= config.on_floor_m]


def near_relations(objects: list[dict], points: dict[int, np.ndarray], config: Config) -> list[dict]:
    """``near`` records (closest-point distance < ``near_m``) once per unordered pair, subject < object."""
    from scipy.spatial import cKDTree

    trees = {}
    for o in objects:
        p = points.get(o["id"])
        if p is None or len(p) == 0:
            p = box_corners(o["center"], o["size"], o["yaw_rad"])
        if len(p) > config.max_points:
            p = p[np.random.default_rng(o["id"]).choice(len(p), config.max_points, replace=False)]
        trees[o["id"]] = (cKDTree(p), p)
    rels = []
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            ta, _ = trees[a["id"]]
            _, pb = trees[b["id"]]
            d = float(ta.query(pb, k=1)[0].min())
            if d < config.near_m:
                s, o = sorted((a["id"], b["id"]))
                rels.append({"subject": s, "predicate": "near", "object": o, "distance_m": round(d, 4)})
    return rels


def inside_relations(objects: list[dict], room_polygon, config: Config) -> list[dict]:
    """``inside`` records of the objects whose box centre (xy) is in the room polygon grown by
    ``inside_margin_m``."""
    from shapely.geometry import Point

    grown = room_polygon.buffer(config.inside_margin_m)
    return [{"subject": a["id"], "predicate": "inside", "object": "room"} for a in objects
            if grown.contains(Point(a["center"][0], a["center"][1]))]


def run(scene: Scene, config: Config) -> StageResult:
    """Objects, the room and their relations → ``scene_graph.json``.

    Raises:
        StageFailed: ``instances`` has not completed, ``instances.json`` is missing, unreadable or not in the
            world frame, or (with instances) the mesh cannot be read in the world frame.
    """
    scene.require("instances")
    inst = scene.instances()
    if inst.get("frame") != WORLD_NAME:
        raise StageFailed(NAME, f"instances.json is in frame '{inst.get('frame')}', expected {WORLD_NAME}")
    layout_room = (scene.layout() if scene.layout_json.is_file() else {}).get("room") or {}
    room_poly, room = room_record(layout_room)
    objects, points = graph_objects(inst["instances"], instance_vertices(scene, inst))
    rels = relations(objects, points, room_poly, config)
    inside = {r["subject"] for r in rels if r["predicate"] == "inside"}
    for o in objects:
        o["inside_room"] = o["id"] in inside if room_poly is not None else None
    scene.write_scene_graph({"frame": WORLD_NAME, "units": "m", "room": room, "objects": objects,
                             "relations": rels})
    counts: dict[str, int] = {}
    for r in rels:
        counts[r["predicate"]] = counts.get(r["predicate"], 0) + 1
    warnings = [] if objects else ["no objects: the scene graph holds only the room"]
    return StageResult(qc={"n_objects": len(objects), "n_relations": len(rels), "per_predicate": counts},
                       summary=f"{len(objects)} objects, {len(rels)} relations", warnings=warnings)


def room_record(room_l: dict):
    """(shapely Polygon of the room footprint or None, the graph's ``room`` record or None) from
    ``layout.json``'s ``room`` (``polygon_xy``, ``floor_area_m2``, ``height_m``, ``extent_m``)."""
    from shapely.geometry import Polygon

    poly_xy = room_l.get("polygon_xy") or []
    if len(poly_xy) < 3:
        return None, None
    room_poly = Polygon(poly_xy).buffer(0)
    c = room_poly.centroid
    h = float(room_l.get("height_m") or 0.0)
    return room_poly, {"id": "room", "polygon_xy": poly_xy, "floor_area_m2": room_l.get("floor_area_m2"),
                       "height_m": room_l.get("height_m"), "center": [round(c.x, 4), round(c.y, 4), round(h / 2, 4)],
                       "extent_m": room_l.get("extent_m")}


def instance_vertices(scene: Scene, inst: dict) -> np.ndarray | None:
    """``V×3`` world-frame vertices of ``mesh.ply`` (which ``vertex_ids`` index), or None without instances or
    without the mesh file."""
    if not inst["instances"] or not scene.mesh_ply.is_file():
        return None
    return scene.mesh(frame="world").vertices


def graph_objects(instances: list[dict], vertices: np.ndarray | None) -> tuple[list[dict], dict[int, np.ndarray]]:
    """(scene-graph object records with ``min``/``max`` of the box corners, id → ``N×3`` points of the
    instance's mesh vertices; empty without ``vertices``)."""
    objects, points = [], {}
    for i in instances:
        b = i["box"]
        corners = box_corners(b["center"], b["size"], b["yaw_rad"])
        objects.append({"id": i["id"], "label": i["label"], "center": b["center"], "size": b["size"],
                        "yaw_rad": b["yaw_rad"], "min": np.round(corners.min(0), 4).tolist(),
                        "max": np.round(corners.max(0), 4).tolist()})
        if vertices is not None:
            ids = np.asarray(i["vertex_ids"], np.int64)
            points[i["id"]] = vertices[ids[(ids >= 0) & (ids < len(vertices))]]
    return objects, points


__all__ = ["NAME", "OUTPUTS", "Config", "run", "relations", "footprint"]
