"""The layout solver: VIPScene's clean-up of an object plan, re-implemented.

Steps, in order (world frame, metres):

1. **Class-aware NMS** — objects in descending score; an object whose 3D IoU with a kept one exceeds
   ``nms_iou_same`` (same label, 0.1) or ``nms_iou_cross`` (different labels, 0.2) is removed (listed in
   ``plan.removed``); its objects on top go to another support by the stacking rule, else to the floor.
2. **Support** — a floor object's bottom goes to z = 0; an object on top of another rests on its support's top
   with its centre inside the support's footprint; wall objects keep their height.
3. **Wall snapping** — a floor or wall object whose footprint's nearest corner is within ``snap_distance_m``
   of a wall (either side: an object poking through the wall is pulled in), whose centre projects onto the
   wall segment and whose axes are within ``snap_angle_deg`` of the wall's direction is turned parallel to the
   wall and moved so that its footprint touches it from inside. Its objects on top move with it.
4. **Pattern search** — over the floor positions of the *groups* (a floor / wall object and everything on top
   of it): per iteration each group tries the 8 compass moves of ``step_m`` (0.01 m) and takes the best one
   that lowers the cost; it stops after ``max_iterations`` (1000) or when no group improves. Cost =
   Σ displacement² (m², from the position after snapping) + ``overlap_weight`` (10) × Σ pairwise overlap area of
   the footprints grown by ``padding_m`` (0.05 m; pairs whose height ranges overlap, in different groups) +
   ``outside_weight`` (10) × Σ footprint area outside the room polygon (m²; a footprint whose centre is outside
   adds its area × that centre's distance to the room, so that an object wholly outside is pulled back; with
   ``corner_depth``, the default, it also adds the distance in metres of every footprint corner outside the
   room: a corner poking through a wall adds area only with the square of its depth, which the displacement
   term can outweigh). Between objects the padding plays that part.
   Polygons with shapely.

:func:`vary` samples an alternative arrangement that keeps the plan's relations (what stands on what, what
stands against which wall): groups are shifted (against a wall: along it) and free-standing ones turned by a
multiple of 90°, seeded, and then solved with the shifted positions as the anchors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...geometry import box_iou_3d, rot_z
from .plan import Plan, PlanConfig, PlanObject, describe, stacks_on, wall_distance, yaw_to_wall

COMPASS = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [1, -1], [-1, 1], [-1, -1]], np.float64)


class SolverConfig(BaseModel):
    """Solver parameters (module docstring)."""

    model_config = ConfigDict(extra="forbid")
    nms_iou_same: float = Field(0.1, ge=0, le=1)
    nms_iou_cross: float = Field(0.2, ge=0, le=1)
    snap_distance_m: float = Field(0.25, ge=0)
    snap_angle_deg: float = Field(15.0, ge=0, le=45)
    step_m: float = Field(0.01, gt=0)
    max_iterations: int = Field(1000, ge=0)
    overlap_weight: float = Field(10.0, ge=0)
    outside_weight: float = Field(10.0, ge=0)
    padding_m: float = Field(0.05, ge=0)
    min_z_overlap_m: float = Field(0.02, ge=0, description="height ranges overlapping less than this never collide")
    corner_depth: bool = Field(True, description="add the distance of footprint corners outside the room to the "
                                                 "outside term (False: VIPScene's area-only objective)")


@dataclass
class SolveReport:
    """What the solver did: removed objects, snapped objects, iterations, costs, seconds, per-object
    displacement (m, floor xy and 3D) from the input plan."""

    removed: list[dict] = field(default_factory=list)
    snapped: list[str] = field(default_factory=list)
    iterations: int = 0
    cost_before: float = 0.0
    cost_after: float = 0.0
    seconds: float = 0.0
    displacement_xy_m: dict[str, float] = field(default_factory=dict)
    displacement_m: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = list(self.displacement_xy_m.values())
        d3 = list(self.displacement_m.values())
        moved = [v for v in d if v > 1e-6]
        return {"removed": self.removed, "snapped": self.snapped, "iterations": self.iterations,
                "cost_before": round(self.cost_before, 6), "cost_after": round(self.cost_after, 6),
                "seconds": round(self.seconds, 4),
                "mean_displacement_xy_m": round(float(np.mean(d)), 4) if d else 0.0,
                "max_displacement_xy_m": round(float(np.max(d)), 4) if d else 0.0,
                "mean_displacement_m": round(float(np.mean(d3)), 4) if d3 else 0.0,
                "n_moved": len(moved),
                "mean_displacement_moved_xy_m": round(float(np.mean(moved)), 4) if moved else 0.0,
                "displacement_xy_m": {k: round(v, 4) for k, v in self.displacement_xy_m.items()}}


# ---------------------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------------------
def nms(plan: Plan, config: SolverConfig | None = None, plan_config: PlanConfig | None = None) -> list[dict]:
    """Class-aware NMS in place (step 1); returns the removed ``[{"object_name", "reason"}]``. An object whose
    support is removed is given the highest kept support by the stacking rule (``plan_config``), else the floor."""
    cfg = config or SolverConfig()
    order = sorted(plan.objects, key=lambda o: -o.score)
    kept: list[PlanObject] = []
    removed = []
    for o in order:
        hit = None
        for k in kept:
            thr = cfg.nms_iou_same if k.label == o.label else cfg.nms_iou_cross
            iou = box_iou_3d(o.box(), k.box())
            if iou > thr:
                hit = (k, iou)
                break
        if hit is None:
            kept.append(o)
        else:
            removed.append({"object_name": o.object_name, "reason": f"nms: 3D IoU {hit[1]:.2f} with "
                                                                    f"{hit[0].object_name}"})
    gone = {r["object_name"] for r in removed}
    plan.objects = [o for o in plan.objects if o.object_name not in gone]
    for o in plan.objects:
        o.objects_on_top = [n for n in o.objects_on_top if n not in gone]
    for o in plan.objects:
        if o.on in gone:  # its support was a duplicate: the stacking rule again, among the kept objects
            supports = [s for s in plan.objects if stacks_on(o, s, plan_config)]
            s = max(supports, key=lambda s: s.z_range[1], default=None)
            o.location, o.on = ("top", s.object_name) if s else ("floor", None)
            if s:
                s.objects_on_top.append(o.object_name)
            o.description = describe(o)
    plan.removed = list(plan.removed) + removed
    return removed


def settle(plan: Plan) -> None:
    """Step 2 in place: floor objects stand on z = 0, objects on top rest on their support (centre inside its
    footprint), supports first."""
    names = plan.by_name()
    for o in plan.objects:
        if o.location == "floor":
            o.position[2] = o.size[2] / 2
    done: set[str] = set()

    def rest(o: PlanObject) -> None:
        if o.object_name in done or o.location != "top" or o.on not in names:
            return
        s = names[o.on]
        rest(s)
        o.position[2] = s.z_range[1] + o.size[2] / 2
        R = rot_z(s.yaw)[:2, :2]
        local = R.T @ (np.asarray(o.position[:2]) - s.position[:2])
        half = np.asarray(s.size[:2]) / 2
        local = np.clip(local, -half, half)
        o.position[:2] = list(map(float, np.asarray(s.position[:2]) + R @ local))
        done.add(o.object_name)

    for o in plan.objects:
        rest(o)


def groups(plan: Plan) -> list[list[int]]:
    """Object indices per group: a root (floor / wall object, or an object whose support is missing) first,
    then everything resting on it, transitively."""
    names = {o.object_name: i for i, o in enumerate(plan.objects)}
    roots = [i for i, o in enumerate(plan.objects) if o.location != "top" or o.on not in names]
    out = []
    for r in roots:
        g, todo = [r], [r]
        while todo:
            for n in plan.objects[todo.pop()].objects_on_top:
                if n in names and names[n] not in g:
                    g.append(names[n])
                    todo.append(names[n])
        out.append(g)
    return out


def move_group(plan: Plan, group: list[int], delta_xy, dyaw: float = 0.0) -> None:
    """Move a group rigidly in place: turn it by ``dyaw`` about its root's centre, then shift by ``delta_xy``."""
    root = plan.objects[group[0]]
    c = np.asarray(root.position[:2], np.float64)
    R = rot_z(dyaw)[:2, :2]
    for i in group:
        o = plan.objects[i]
        p = c + R @ (np.asarray(o.position[:2]) - c) + np.asarray(delta_xy, np.float64)
        o.position[0], o.position[1] = float(p[0]), float(p[1])
        o.rotation.yaw_rad = float(o.yaw + dyaw)


def snap_to_walls(plan: Plan, config: SolverConfig | None = None) -> list[str]:
    """Step 3 in place; returns the names of the snapped objects."""
    cfg = config or SolverConfig()
    walls = plan.room.walls
    snapped = []
    for g in groups(plan):
        o = plan.objects[g[0]]
        if o.location not in ("floor", "wall") or not walls:
            continue
        best = None
        for w in walls:
            dyaw = yaw_to_wall(o, w)
            if abs(math.degrees(dyaw)) > cfg.snap_angle_deg:
                continue
            v, u = wall_distance(o, w)
            if abs(v) <= cfg.snap_distance_m and 0.0 <= u <= 1.0 and (best is None or abs(v) < abs(best[0])):
                best = (v, w, dyaw)
        if best is None:
            continue
        _, w, dyaw = best
        move_group(plan, g, (0.0, 0.0), dyaw)
        v, _ = wall_distance(o, w)
        move_group(plan, g, -v * np.asarray(w.inward_normal_xy, np.float64))
        snapped.append(o.object_name)
    return snapped


# ---------------------------------------------------------------------------------------------------------
# pattern search
# ---------------------------------------------------------------------------------------------------------
class _Problem:
    """Cost terms of the pattern search over group positions (module docstring)."""

    def __init__(self, plan: Plan, cfg: SolverConfig):
        from shapely.geometry import Polygon
        from shapely import prepared

        self.cfg = cfg
        self.plan = plan
        self.groups = groups(plan)
        self.room = Polygon(plan.room.polygon_xy).buffer(0)
        self._room_prep = prepared.prep(self.room)
        self.pos = np.array([plan.objects[g[0]].position[:2] for g in self.groups], np.float64).reshape(-1, 2)
        self.anchor = self.pos.copy()
        # members: footprint offsets from the root's position (padded and not), height ranges
        self.members = []
        for g in self.groups:
            c = np.asarray(plan.objects[g[0]].position[:2], np.float64)
            self.members.append([(plan.objects[i].footprint(cfg.padding_m) - c, plan.objects[i].footprint() - c,
                                  plan.objects[i].z_range) for i in g])
        self.radius = np.array([max(float(np.linalg.norm(m[0], axis=1).max()) for m in mem) for mem in self.members])

    def _polys(self, gi: int, p: np.ndarray, padded: bool) -> list:
        from shapely.geometry import Polygon

        return [Polygon(m[0 if padded else 1] + p) for m in self.members[gi]]

    def overlap(self, gi: int, gj: int, pi: np.ndarray, pj: np.ndarray) -> float:
        if np.linalg.norm(pi - pj) >= self.radius[gi] + self.radius[gj]:
            return 0.0
        a, b = self._polys(gi, pi, True), self._polys(gj, pj, True)
        tot = 0.0
        for (ma, pa) in zip(self.members[gi], a):
            for (mb, pb) in zip(self.members[gj], b):
                dz = min(ma[2][1], mb[2][1]) - max(ma[2][0], mb[2][0])
                if dz > self.cfg.min_z_overlap_m:
                    tot += pa.intersection(pb).area
        return tot

    def outside(self, gi: int, p: np.ndarray) -> float:
        """Footprint area outside the room, plus area × centre distance for a centre outside (m²), plus the
        corners' distances outside (m, with ``corner_depth``)."""
        import shapely

        tot = 0.0
        for m, poly in zip(self.members[gi], self._polys(gi, p, False)):
            if not self._room_prep.contains(poly):
                tot += poly.difference(self.room).area
                c = poly.centroid
                if not self._room_prep.contains(c):
                    tot += poly.area * self.room.distance(c)
                if self.cfg.corner_depth:
                    xy = m[1] + p
                    out = ~shapely.contains_xy(self.room, xy[:, 0], xy[:, 1])
                    if out.any():
                        tot += float(shapely.distance(self.room, shapely.points(xy[out])).sum())
        return tot

    def local(self, gi: int, p: np.ndarray) -> tuple[float, float]:
        """(penalty, displacement²) of group ``gi`` at ``p`` against the others where they are now."""
        pen = self.cfg.outside_weight * self.outside(gi, p)
        ov = sum(self.overlap(gi, j, p, self.pos[j]) for j in range(len(self.groups)) if j != gi)
        return pen + self.cfg.overlap_weight * ov, float(np.sum((p - self.anchor[gi]) ** 2))

    def total(self) -> float:
        n = len(self.groups)
        out = sum(self.cfg.outside_weight * self.outside(i, self.pos[i]) for i in range(n))
        out += sum(self.cfg.overlap_weight * self.overlap(i, j, self.pos[i], self.pos[j])
                   for i in range(n) for j in range(i + 1, n))
        return out + float(np.sum((self.pos - self.anchor) ** 2))

    def search(self) -> int:
        """Run the pattern search; returns the number of iterations."""
        step = self.cfg.step_m
        it = 0
        for it in range(1, self.cfg.max_iterations + 1):
            improved = False
            for gi in range(len(self.groups)):
                pen, disp = self.local(gi, self.pos[gi])
                if pen <= 0 and disp <= 0:
                    continue
                cur = pen + disp
                best, best_p = cur - 1e-12, None
                for d in COMPASS:
                    p = self.pos[gi] + step * d
                    pn, dn = self.local(gi, p)
                    if pn + dn < best:
                        best, best_p = pn + dn, p
                if best_p is not None:
                    self.pos[gi] = best_p
                    improved = True
            if not improved:
                break
        return it

    def apply(self) -> None:
        for gi, g in enumerate(self.groups):
            d = self.pos[gi] - np.asarray(self.plan.objects[g[0]].position[:2])
            move_group(self.plan, g, d)


def solve(plan: Plan, config: SolverConfig | None = None) -> tuple[Plan, SolveReport]:
    """The solved copy of ``plan`` and what the solver did (module docstring); ``plan`` is not modified.

    The pattern search's displacement term is measured from the positions after snapping; the report's
    displacements are from ``plan``'s own positions (removed objects excluded).
    """
    cfg = config or SolverConfig()
    t0 = time.perf_counter()
    out = plan.model_copy(deep=True)
    rep = SolveReport()
    rep.removed = nms(out, cfg)
    settle(out)
    rep.snapped = snap_to_walls(out, cfg)
    prob = _Problem(out, cfg)
    rep.cost_before = prob.total()
    rep.iterations = prob.search()
    rep.cost_after = prob.total()
    prob.apply()
    rep.seconds = time.perf_counter() - t0
    before = plan.by_name()
    for o in out.objects:
        p0 = np.asarray(before[o.object_name].position, np.float64)
        p1 = np.asarray(o.position, np.float64)
        rep.displacement_xy_m[o.object_name] = float(np.linalg.norm(p1[:2] - p0[:2]))
        rep.displacement_m[o.object_name] = float(np.linalg.norm(p1 - p0))
    return out, rep


def vary(plan: Plan, seed: int, shift_sigma_m: float = 0.5, config: SolverConfig | None = None,
         wall_touch_m: float = 0.03) -> tuple[Plan, SolveReport]:
    """An alternative arrangement of a solved ``plan`` that keeps its relations (module docstring), solved.

    Groups whose root touches a wall (within ``wall_touch_m``) slide along that wall by N(0, σ); others shift by
    N(0, σ) in x and y and turn by k·90°, k uniform in {0, 1, 2, 3}. Seeded by ``seed``; deterministic.
    """
    rng = np.random.default_rng(seed)
    cfg = config or SolverConfig()
    out = plan.model_copy(deep=True)
    for g in groups(out):
        o = out.objects[g[0]]
        if o.location not in ("floor", "wall"):
            continue
        touching = [w for w in out.room.walls if abs(wall_distance(o, w)[0]) <= wall_touch_m
                    and 0 <= wall_distance(o, w)[1] <= 1]
        if touching:
            w = touching[0]
            a, d = np.asarray(w.a, np.float64), np.asarray(w.b, np.float64) - np.asarray(w.a, np.float64)
            L = max(float(np.linalg.norm(d)), 1e-9)
            u = (o.footprint() - a) @ (d / L)  # keep the footprint along the wall segment
            shift = float(np.clip(rng.normal(0, shift_sigma_m), -u.min(), L - u.max()))
            move_group(out, g, shift * d / L)
        elif o.location == "floor":
            move_group(out, g, (0.0, 0.0), int(rng.integers(0, 4)) * math.pi / 2)
            move_group(out, g, rng.normal(0, shift_sigma_m, 2))
    out.removed = []
    return solve(out, cfg)
