"""Symbolic, offline plausibility scores of a plan (world frame, metres).

* ``collision_rate`` — share of objects whose footprint overlaps another's by more than ``collision_tol_m2``
  where their height ranges overlap (an object and what rests on it never collide); also ``n_collision_pairs``
  and ``overlap_area_m2``.
* ``out_of_room_rate`` — share of objects with more than ``outside_tol_m2`` of footprint outside the room polygon.
* ``support_violation_rate`` — share of objects not supported: a floor object whose bottom is off z = 0, an
  object on top whose bottom is off its support's top or whose centre is outside the support's footprint (by
  more than ``support_tol_m``); wall objects and objects on an unreconstructed surface (``top``, ``on: null``)
  are exempt.
* ``reachable_floor_share`` — free floor (room grid of ``cell_m`` minus the footprints of objects in the body
  band 0.1–1.8 m, eroded by ``agent_radius_m``) reachable from the entrance (grid BFS, 4-connected) over all
  free floor; the entrance snaps to the nearest free cell.
* ``wall_parallel_share`` — share of floor / wall objects whose axes are within ``parallel_tol_deg`` of the
  nearest wall's direction (modulo 90°).
* ``frame_agreement`` — mean over keyframes with detections of the F1 between the plan's visible objects
  (id buffer of :func:`~.render.render_view`, at least ``min_visible_px`` pixels, box of the visible pixels) and
  the keyframe's detections, matched greedily by label and 2D IoU ≥ ``agreement_iou``; None without detections.
* ``f1_iou25`` — SpatialLM's F1 at 3D IoU 0.25 against reference boxes (the lifted instances, or true boxes),
  label-matched, greedy by IoU; also ``precision_iou25`` / ``recall_iou25``.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...geometry import box_iou_2d, box_iou_3d
from .plan import Plan, yaw_to_wall, wall_distance

SCORE_KEYS = ("collision_rate", "out_of_room_rate", "support_violation_rate", "reachable_floor_share",
              "wall_parallel_share", "frame_agreement", "f1_iou25")


class ScoreConfig(BaseModel):
    """Tolerances of the scores (module docstring)."""

    model_config = ConfigDict(extra="forbid")
    collision_tol_m2: float = Field(1e-3, ge=0)
    min_z_overlap_m: float = Field(0.02, ge=0)
    outside_tol_m2: float = Field(5e-3, ge=0)
    support_tol_m: float = Field(0.05, ge=0)
    cell_m: float = Field(0.05, gt=0)
    agent_radius_m: float = Field(0.2, ge=0)
    body_z_min_m: float = 0.1
    body_z_max_m: float = 1.8
    parallel_tol_deg: float = Field(5.0, ge=0)
    agreement_iou: float = Field(0.3, ge=0, le=1)
    min_visible_px: int = Field(30, ge=1)
    f1_iou: float = Field(0.25, gt=0, le=1)


def _poly(o):
    from shapely.geometry import Polygon

    return Polygon(o.footprint())


def collisions(plan: Plan, config: ScoreConfig | None = None) -> list[tuple[int, int, float]]:
    """``(i, j, area m²)`` of every colliding object pair (module docstring), i < j."""
    cfg = config or ScoreConfig()
    objs = plan.objects
    polys = [_poly(o) for o in objs]
    related = {(o.object_name, o.on) for o in objs if o.on} | {(o.on, o.object_name) for o in objs if o.on}
    out = []
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            a, b = objs[i], objs[j]
            if (a.object_name, b.object_name) in related:
                continue
            dz = min(a.z_range[1], b.z_range[1]) - max(a.z_range[0], b.z_range[0])
            if dz <= cfg.min_z_overlap_m:
                continue
            area = polys[i].intersection(polys[j]).area
            if area > cfg.collision_tol_m2:
                out.append((i, j, float(area)))
    return out


def outside_areas(plan: Plan) -> list[float]:
    """Footprint area (m²) of each object outside the room polygon."""
    from shapely.geometry import Polygon

    room = Polygon(plan.room.polygon_xy).buffer(0)
    return [float(_poly(o).difference(room).area) for o in plan.objects]


def support_violations(plan: Plan, config: ScoreConfig | None = None) -> list[int]:
    """Indices of the unsupported objects (module docstring)."""
    from shapely.geometry import Point

    cfg = config or ScoreConfig()
    names = plan.by_name()
    bad = []
    for k, o in enumerate(plan.objects):
        z0 = o.z_range[0]
        if o.location == "floor":
            ok = abs(z0) <= cfg.support_tol_m
        elif o.location == "top" and o.on is not None:
            s = names.get(o.on)
            ok = s is not None and abs(z0 - s.z_range[1]) <= cfg.support_tol_m and \
                _poly(s).buffer(cfg.support_tol_m).contains(Point(o.position[:2]))
        else:
            ok = True
        if not ok:
            bad.append(k)
    return bad


def free_floor(plan: Plan, config: ScoreConfig | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(free H×W bool grid, origin xy of cell (0, 0)'s centre, cell m): room minus body-band obstacles, eroded."""
    from ..nav import free_grid

    cfg = config or ScoreConfig()
    P = np.asarray(plan.room.polygon_xy, np.float64)
    lo = P.min(0) - 2 * cfg.cell_m
    w, h = (np.ceil((P.max(0) + 2 * cfg.cell_m - lo) / cfg.cell_m).astype(int) + 1)
    body = [o.footprint() for o in plan.objects
            if o.z_range[1] > cfg.body_z_min_m and o.z_range[0] < cfg.body_z_max_m]
    free = free_grid(P, body, lo, (w, h), cfg.cell_m, cfg.agent_radius_m)
    return free, lo, cfg.cell_m


def reachable_share(plan: Plan, config: ScoreConfig | None = None) -> float:
    """``reachable_floor_share`` (module docstring); 0 when there is no free floor."""
    from scipy import ndimage

    free, lo, cell = free_floor(plan, config)
    if not free.any():
        return 0.0
    e = np.asarray(plan.room.entrance_xy if plan.room.entrance_xy is not None else
                   np.mean(plan.room.polygon_xy, 0), np.float64)
    rr, cc = np.nonzero(free)
    k = int(np.argmin((cc * cell + lo[0] - e[0]) ** 2 + (rr * cell + lo[1] - e[1]) ** 2))
    lab, _ = ndimage.label(free)  # 4-connected
    return float((lab == lab[rr[k], cc[k]]).sum() / free.sum())


def wall_parallel_share(plan: Plan, config: ScoreConfig | None = None) -> float | None:
    """``wall_parallel_share`` (module docstring); None without walls or floor / wall objects."""
    cfg = config or ScoreConfig()
    objs = [o for o in plan.objects if o.location in ("floor", "wall")]
    if not objs or not plan.room.walls:
        return None
    n = 0
    for o in objs:
        w = min(plan.room.walls, key=lambda w: abs(wall_distance(o, w)[0]))
        n += abs(math.degrees(yaw_to_wall(o, w))) <= cfg.parallel_tol_deg
    return n / len(objs)


def match_f1(pred: list[dict], ref: list[dict], iou_fn, thr: float) -> tuple[float, float, float]:
    """(precision, recall, F1) of a greedy one-to-one matching (highest IoU first) of ``pred`` and ``ref``
    records ``{"label", ...}`` with the same label and ``iou_fn(p, r) ≥ thr``. Empty vs empty is (1, 1, 1)."""
    if not pred and not ref:
        return 1.0, 1.0, 1.0
    pairs = []
    for i, p in enumerate(pred):
        for j, r in enumerate(ref):
            if p["label"] == r["label"]:
                v = iou_fn(p, r)
                if v >= thr:
                    pairs.append((v, i, j))
    used_p, used_r, tp = set(), set(), 0
    for v, i, j in sorted(pairs, reverse=True):
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            tp += 1
    prec = tp / len(pred) if pred else 0.0
    rec = tp / len(ref) if ref else 0.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)


def f1_3d(plan: Plan, reference: list[dict], thr: float = 0.25) -> tuple[float, float, float]:
    """(precision, recall, F1) at 3D IoU ``thr`` of the plan's boxes against ``reference`` records
    ``{"label", "center", "size", "yaw_rad"}``."""
    pred = [{"label": o.label, **o.box()} for o in plan.objects]
    return match_f1(pred, reference, box_iou_3d, thr)


def frame_agreement(plan: Plan, views: list, detections: list[list[dict]],
                    config: ScoreConfig | None = None) -> float | None:
    """``frame_agreement`` (module docstring). ``views``: :class:`~.render.View` s (the keyframe cameras);
    ``detections``: per view, ``[{"label", "bbox_xyxy"}]`` in that view's pixels (None entries skipped)."""
    from .render import RoomMask, render_view, visible_objects

    cfg = config or ScoreConfig()
    mask = RoomMask(plan.room.polygon_xy)
    f1s = []
    for v, dets in zip(views, detections):
        if dets is None:
            continue
        r = render_view(plan, v, labels=False, room_mask=mask)
        vis = visible_objects(r.ids, cfg.min_visible_px)
        pred = [{"label": plan.objects[k].label, "bbox": b} for k, b in vis.items()]
        ref = [{"label": str(d["label"]).strip().lower(), "bbox": d["bbox_xyxy"]} for d in dets]
        f1s.append(match_f1(pred, ref, lambda p, r: box_iou_2d(p["bbox"], r["bbox"]), cfg.agreement_iou)[2])
    return float(np.mean(f1s)) if f1s else None


def score_plan(plan: Plan, reference: list[dict] | None = None, views: list | None = None,
               detections: list[list[dict]] | None = None, config: ScoreConfig | None = None) -> dict:
    """Every score of the module docstring as a JSON-able dict (rates in 0..1, rounded to 4 decimals).

    ``reference``: boxes for ``f1_iou25`` (None → the score is None); ``views`` + ``detections``: for
    ``frame_agreement`` (None → None)."""
    cfg = config or ScoreConfig()
    n = max(len(plan.objects), 1)
    col = collisions(plan, cfg)
    hit = {i for i, _, _ in col} | {j for _, j, _ in col}
    out_a = outside_areas(plan)
    sup = support_violations(plan, cfg)
    wp = wall_parallel_share(plan, cfg)
    agree = frame_agreement(plan, views, detections, cfg) if views and detections else None
    p, r, f = f1_3d(plan, reference, cfg.f1_iou) if reference is not None else (None, None, None)

    def rd(x):
        return None if x is None else round(float(x), 4)

    return {"n_objects": len(plan.objects), "collision_rate": rd(len(hit) / n), "n_collision_pairs": len(col),
            "overlap_area_m2": rd(sum(a for _, _, a in col)),
            "out_of_room_rate": rd(sum(a > cfg.outside_tol_m2 for a in out_a) / n),
            "outside_area_m2": rd(sum(out_a)),
            "support_violation_rate": rd(len(sup) / n), "reachable_floor_share": rd(reachable_share(plan, cfg)),
            "wall_parallel_share": rd(wp), "frame_agreement": rd(agree),
            "f1_iou25": rd(f), "precision_iou25": rd(p), "recall_iou25": rd(r)}
