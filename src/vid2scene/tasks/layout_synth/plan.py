"""The object plan: one entry per object in Holodeck's / VIPScene's plan fields, the room, and the stacking rule.

World frame ``gravity_z_up_metric`` (z up, floor at z = 0, metres). An object is a gravity-aligned box: ``position``
is the box centre, ``size`` the full side lengths along the box's local x, local y and z, ``rotation.yaw_rad`` the
rotation of local x about +z from world +x (the ``instances.json`` box, docs/schemas.md).

``plan.json`` / ``plan_raw.json``::

    {"format": "vipscene_object_plan", "frame": "gravity_z_up_metric", "units": "m",
     "room": {"polygon_xy": [[x, y], ...], "height_m": h, "floor_area_m2": a,
              "walls": [{"id": 0, "a": [x, y], "b": [x, y], "height_m": h, "inward_normal_xy": [nx, ny]}],
              "doors": [...], "entrance_xy": [x, y], "entrance_source": "door" | "first_camera" | "centroid"},
     "objects": [{"object_name": "chair-3", "instance_id": 3, "label": "chair", "description": "...",
                  "location": "floor" | "top" | "wall", "on": "dining table-2" | null,
                  "size": [sx, sy, sz], "position": [x, y, z], "rotation": {"yaw_rad": r},
                  "objects_on_top": ["laptop-8"], "score": 0.8}],
     "removed": [{"object_name", "reason"}]}

The room polygon is the layout footprint simplified as the SpatialLM exporter simplifies it, so its edges are the
walls of ``layout.txt``. ``location``: ``top`` — the object rests on another (``on``) by the stacking rule below;
``floor`` — objects on the floor, and floating furniture (``floor_labels``: a support violation the solver drops
to the floor); ``wall`` — wall-mounted classes (``wall_labels``) near a wall and above the floor; ``top`` with
``on: null`` — any other object above the floor with no support in the plan: it rests on a surface the
reconstruction did not produce as an object (a counter top, a shelf), and keeps its height. Objects whose centre
lies more than ``drop_outside_m`` outside the room polygon belong to another room: they are left out of the plan
(listed in ``removed``).

Stacking rule (VIPScene): object A is on B when B is a support class (counters, tables, islands, sinks, desks),
B's footprint area is at least ``min_support_area_m2`` (0.2 m²), the footprints overlap by more than
``min_overlap_share`` (10 %) of the smaller one, and A's bottom lies between B's top minus ``stack_tol_m`` and
B's top plus ``stack_max_gap_m``. Among several supports the highest wins.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...geometry import box_corners

FORMAT = "vipscene_object_plan"
WORLD = "gravity_z_up_metric"

SUPPORT_LABELS = ("counter", "table", "island", "sink", "desk")
WALL_LABELS = ("tv", "clock", "picture", "painting", "mirror", "whiteboard", "poster", "window", "shelf")
FLOOR_LABELS = ("chair", "couch", "sofa", "bed", "table", "desk", "refrigerator", "plant", "toilet", "bench",
                "cabinet", "bookshelf", "oven", "dishwasher", "dresser", "wardrobe")


class PlanConfig(BaseModel):
    """Plan construction: stacking rule, location thresholds, room simplification."""

    model_config = ConfigDict(extra="forbid")
    support_labels: list[str] = Field(list(SUPPORT_LABELS), description="a label containing one of these words "
                                                                         "can carry objects")
    wall_labels: list[str] = Field(list(WALL_LABELS), description="wall-mountable classes (words)")
    floor_labels: list[str] = Field(list(FLOOR_LABELS), description="furniture that stands on the floor (words)")
    drop_outside_m: float = Field(0.5, ge=0, description="objects whose centre is farther than this outside the "
                                                         "room polygon are left out (another room)")
    min_support_area_m2: float = Field(0.2, ge=0)
    min_overlap_share: float = Field(0.1, ge=0, le=1, description="footprint overlap / smaller footprint")
    stack_tol_m: float = Field(0.1, ge=0, description="the top's bottom may sink this far into the support")
    stack_max_gap_m: float = Field(1.0, ge=0, description="... or float this far above it")
    floor_tol_m: float = Field(0.15, ge=0, description="a bottom this close to z = 0 stands on the floor")
    wall_distance_m: float = Field(0.3, ge=0, description="a wall-mountable object this close to a wall hangs on it")
    wall_simplify_m: float = Field(0.15, ge=0, description="Douglas-Peucker tolerance of the room polygon "
                                                           "(as the SpatialLM exporter)")


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    yaw_rad: float = 0.0


class PlanObject(BaseModel):
    """One object of the plan (Holodeck / VIPScene fields, metres, radians, world frame)."""

    model_config = ConfigDict(extra="forbid")
    object_name: str
    instance_id: int | None = None
    label: str
    description: str = ""
    location: Literal["floor", "top", "wall"] = "floor"
    on: str | None = None
    size: list[float] = Field(min_length=3, max_length=3)
    position: list[float] = Field(min_length=3, max_length=3)
    rotation: Rotation = Field(default_factory=Rotation)
    objects_on_top: list[str] = Field(default_factory=list)
    score: float = 1.0

    @property
    def yaw(self) -> float:
        return float(self.rotation.yaw_rad)

    def corners(self, pad_m: float = 0.0) -> np.ndarray:
        """``8×3`` box corners (:func:`vid2scene.geometry.box_corners` order), sides grown by ``pad_m`` in x/y."""
        s = np.asarray(self.size, np.float64) + np.array([pad_m, pad_m, 0.0])
        return box_corners(self.position, s, self.yaw)

    def footprint(self, pad_m: float = 0.0) -> np.ndarray:
        """``4×2`` floor footprint, counter-clockwise (metres)."""
        return self.corners(pad_m)[:4, :2]

    @property
    def z_range(self) -> tuple[float, float]:
        z, h = float(self.position[2]), float(self.size[2])
        return z - h / 2, z + h / 2

    def box(self) -> dict:
        """``{"center", "size", "yaw_rad"}`` as in ``instances.json``."""
        return {"center": list(map(float, self.position)), "size": list(map(float, self.size)), "yaw_rad": self.yaw}


class Wall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    a: list[float] = Field(min_length=2, max_length=2)
    b: list[float] = Field(min_length=2, max_length=2)
    height_m: float
    inward_normal_xy: list[float] = Field(min_length=2, max_length=2)


class Room(BaseModel):
    model_config = ConfigDict(extra="forbid")
    polygon_xy: list[list[float]]
    height_m: float
    floor_area_m2: float
    walls: list[Wall] = Field(default_factory=list)
    doors: list[dict] = Field(default_factory=list)
    entrance_xy: list[float] | None = None
    entrance_source: str = "centroid"


class Plan(BaseModel):
    """The object plan of one room (see the module docstring for the JSON)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["vipscene_object_plan"] = FORMAT
    frame: Literal["gravity_z_up_metric"] = WORLD
    units: Literal["m"] = "m"
    room: Room
    objects: list[PlanObject]
    removed: list[dict] = Field(default_factory=list)

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        """Raises pydantic.ValidationError on a record that does not follow the schema."""
        return cls.model_validate(d)

    def by_name(self) -> dict[str, PlanObject]:
        return {o.object_name: o for o in self.objects}

    def instance_dicts(self) -> list[dict]:
        """The objects as ``instances.json``-style records (``id``, ``label``, ``box``) for the SpatialLM text."""
        return [{"id": k, "label": o.label, "box": o.box()} for k, o in enumerate(self.objects)]


# ---------------------------------------------------------------------------------------------------------
# the stacking rule
# ---------------------------------------------------------------------------------------------------------
def has_word(label: str, words) -> bool:
    """Whether ``label`` contains one of ``words`` as a word (``"dining table"`` has ``"table"``)."""
    toks = set(str(label).lower().replace("_", " ").replace("-", " ").split())
    return any(w.lower() in toks or (" " in w and w.lower() in str(label).lower()) for w in words)


def polygon_area(xy: np.ndarray) -> float:
    """Area (m²) of a simple polygon ``K×2`` (shoelace, either orientation)."""
    x, y = np.asarray(xy, np.float64).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def footprint_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area (m²) of two floor polygons ``K×2`` (shapely)."""
    from shapely.geometry import Polygon

    return float(Polygon(a).intersection(Polygon(b)).area)


def stacks_on(top: PlanObject, bottom: PlanObject, config: PlanConfig | None = None) -> bool:
    """VIPScene's stacking rule (module docstring): whether ``top`` rests on ``bottom``."""
    cfg = config or PlanConfig()
    if top is bottom or not has_word(bottom.label, cfg.support_labels):
        return False
    fb, ft = bottom.footprint(), top.footprint()
    area_b, area_t = polygon_area(fb), polygon_area(ft)
    if area_b < cfg.min_support_area_m2:
        return False
    if footprint_overlap(ft, fb) <= cfg.min_overlap_share * min(area_b, area_t):
        return False
    z_top_bottom, z_support = top.z_range[0], bottom.z_range[1]
    return z_support - cfg.stack_tol_m <= z_top_bottom <= z_support + cfg.stack_max_gap_m


# ---------------------------------------------------------------------------------------------------------
# building a plan
# ---------------------------------------------------------------------------------------------------------
def room_walls(layout: dict, config: PlanConfig | None = None) -> tuple[np.ndarray, list[Wall], float]:
    """(room polygon ``K×2`` counter-clockwise, walls, room height m) from ``layout.json``; the walls are the
    SpatialLM exporter's (``export.spatiallm.layout_lines``: room polygon edges after simplification).

    Raises:
        ValueError: the layout has no room polygon (``room.polygon_xy`` with ≥ 3 points) or no positive height.
    """
    from ...export.spatiallm import layout_lines, parse_layout

    cfg = config or PlanConfig()
    room = (layout or {}).get("room") or {}
    h = float(room.get("height_m") or 0.0)
    if len(room.get("polygon_xy") or []) < 3 or h <= 0:
        raise ValueError("layout.json has no room polygon / height")
    walls = parse_layout("\n".join(layout_lines([], layout, wall_simplify_m=cfg.wall_simplify_m)))["walls"]
    P = np.array([[w["ax"], w["ay"]] for w in walls], np.float64)
    ccw = _signed_area(P) > 0
    if not ccw:
        P = P[::-1]
    out = []
    for i in range(len(P)):
        a, b = P[i], P[(i + 1) % len(P)]
        d = (b - a) / max(np.linalg.norm(b - a), 1e-12)
        out.append(Wall(id=i, a=_r(a), b=_r(b), height_m=round(h, 4), inward_normal_xy=_r([-d[1], d[0]], 6)))
    return P, out, h


def _signed_area(P: np.ndarray) -> float:
    x, y = P.T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _r(v, nd: int = 4) -> list[float]:
    return [round(float(x), nd) for x in np.asarray(v).ravel()]


def wall_distance(obj: PlanObject, wall: Wall) -> tuple[float, float]:
    """(signed distance m of the footprint's corner nearest the wall, inward positive; position of the
    footprint centre along the wall as a share of its length, 0..1 on the segment)."""
    a, b, n = (np.asarray(v, np.float64) for v in (wall.a, wall.b, wall.inward_normal_xy))
    v = (obj.footprint() - a) @ n
    L = max(float(np.linalg.norm(b - a)), 1e-9)
    u = float((np.asarray(obj.position[:2]) - a) @ (b - a) / L ** 2)
    return float(v.min()), u


def entrance(layout: dict, cameras, polygon: np.ndarray) -> tuple[list[float], str]:
    """The point the room is entered from: a door's centre (``layout["doors"]``, when known), else the first
    registered camera's floor position, else the polygon's centroid; ``(xy, source)``."""
    from shapely.geometry import Point, Polygon

    doors = (layout or {}).get("doors") or []
    for d in doors:
        c = d.get("center") or d.get("position")
        if c is not None:
            return _r(c[:2]), "door"
    poly = Polygon(polygon)
    cams = sorted([c for c in (cameras or []) if c.registered], key=lambda c: (c.timestamp_s, c.source_frame))
    if cams:
        p = cams[0].center_in_world[:2]
        if not poly.contains(Point(p)):
            q = poly.exterior.interpolate(poly.exterior.project(Point(p)))
            p = np.array([q.x, q.y]) + 0.3 * (np.array(poly.centroid.coords[0]) - [q.x, q.y]) / max(
                poly.centroid.distance(q), 1e-9)
        return _r(p), "first_camera"
    return _r(poly.centroid.coords[0]), "centroid"


def describe(obj: PlanObject, caption: str | None = None) -> str:
    sx, sy, sz = obj.size
    where = {"floor": "on the floor", "top": f"on top of {obj.on}" if obj.on else "on a surface",
             "wall": "on a wall"}[obj.location]
    base = f"{obj.label}, {sx:.2f} x {sy:.2f} x {sz:.2f} m, {where}"
    return f"{base}; {caption}" if caption else base


def build_plan(instances: list[dict], layout: dict, cameras=None, config: PlanConfig | None = None) -> Plan:
    """The object plan of a room from ``instances.json``'s instances and ``layout.json`` (module docstring).

    Args:
        instances: ``instances.json`` ``"instances"`` records (``id``, ``label``, ``box``, optional ``score``,
            ``caption``); records without a box are skipped.
        layout: ``layout.json`` (its ``room`` polygon and height; ``doors`` when present).
        cameras: registered :class:`~vid2scene.scene.CameraFrame` s in the world frame (for the entrance) or None.

    Raises:
        ValueError: the layout has no room polygon.
    """
    cfg = config or PlanConfig()
    P, walls, h = room_walls(layout, cfg)
    objs = []
    for rec in sorted(instances, key=lambda d: int(d["id"])):
        box = rec.get("box")
        if not box:
            continue
        label = str(rec["label"]).strip().lower()
        objs.append(PlanObject(object_name=f"{label}-{int(rec['id'])}", instance_id=int(rec["id"]), label=label,
                               size=[abs(float(v)) for v in box["size"]], position=list(map(float, box["center"])),
                               rotation=Rotation(yaw_rad=float(box.get("yaw_rad", 0.0))),
                               score=float(rec.get("score", 1.0))))
    objs, removed = split_outside(objs, P, cfg.drop_outside_m)
    assign_locations(objs, walls, cfg)
    captions = {int(r["id"]): r.get("caption") for r in instances}
    for o in objs:
        o.description = describe(o, captions.get(o.instance_id))
    xy, src = entrance(layout, cameras, P)
    room = Room(polygon_xy=[_r(p) for p in P], height_m=round(h, 4), floor_area_m2=round(polygon_area(P), 3),
                walls=walls, doors=list((layout or {}).get("doors") or []), entrance_xy=xy, entrance_source=src)
    return Plan(room=room, objects=objs, removed=removed)


def split_outside(objs: list[PlanObject], polygon: np.ndarray, max_m: float) -> tuple[list[PlanObject], list[dict]]:
    """(objects kept, ``[{"object_name", "reason"}]`` of those whose centre is more than ``max_m`` outside the
    room polygon)."""
    from shapely.geometry import Point, Polygon

    room = Polygon(polygon).buffer(0)
    kept, removed = [], []
    for o in objs:
        d = room.distance(Point(o.position[:2]))
        if d > max_m:
            removed.append({"object_name": o.object_name, "reason": f"outside the room: centre {d:.2f} m beyond "
                                                                    "its polygon"})
        else:
            kept.append(o)
    return kept, removed


def assign_locations(objs: list[PlanObject], walls: list[Wall], config: PlanConfig | None = None) -> None:
    """Set ``location``, ``on`` and ``objects_on_top`` of every object in place (module docstring)."""
    cfg = config or PlanConfig()
    for o in objs:
        o.objects_on_top, o.on = [], None
    for o in objs:
        supports = [s for s in objs if stacks_on(o, s, cfg)]
        if supports:
            s = max(supports, key=lambda s: (s.z_range[1], -abs(s.z_range[1] - o.z_range[0])))
            o.location, o.on = "top", s.object_name
            s.objects_on_top.append(o.object_name)
        elif o.z_range[0] <= cfg.floor_tol_m:
            o.location = "floor"
        elif has_word(o.label, cfg.wall_labels) and walls and \
                min(abs(wall_distance(o, w)[0]) for w in walls) <= cfg.wall_distance_m:
            o.location = "wall"
        elif has_word(o.label, cfg.floor_labels):
            o.location = "floor"
        else:
            o.location = "top"
    # a support that is itself on top of something keeps its own objects; cycles cannot form (strictly higher)


def yaw_to_wall(obj: PlanObject, wall: Wall) -> float:
    """Smallest rotation (rad, signed) that makes the object's axes parallel to the wall (modulo 90°)."""
    a, b = np.asarray(wall.a), np.asarray(wall.b)
    ang = math.atan2(b[1] - a[1], b[0] - a[0])
    d = (ang - obj.yaw) % (math.pi / 2)
    return d - math.pi / 2 if d > math.pi / 4 else d
