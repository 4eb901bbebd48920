"""``scene_graph``: relations of the synthetic furnished room (tests/fixtures/objects.py) — from the known boxes
directly, and end to end from the recovered instances (of a scene whose SfM frame is a scaled, rotated and shifted
copy of the world) — with their metric evidence checked against the truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from tests.fixtures.objects import OBJECTS, ROOM, box_mesh, build_scene, sim3_rotvec
from vid2scene import scene_graph as sg
from vid2scene.config import PipelineConfig
from vid2scene.geometry import box_corners
from vid2scene.pipeline import run_stage

LABEL_ID = {o.label: k for k, o in enumerate(OBJECTS)}


def gt_objects(extra=()):
    objs, pts = [], {}
    for k, o in enumerate(list(OBJECTS) + list(extra)):
        c = box_corners(o.center, o.size, o.yaw)
        objs.append({"id": k, "label": o.label, "center": o.center.tolist(), "size": list(o.size), "yaw_rad": o.yaw,
                     "min": c.min(0).tolist(), "max": c.max(0).tolist()})
        pts[k] = box_mesh(o.center_xy, o.size, o.yaw, o.z0, spacing=0.02)[0]
    return objs, pts


def rel_set(rels, pred):
    return {(r["subject"], r["object"]) for r in rels if r["predicate"] == pred}


def gt_distance(a, b) -> float:
    """Closest distance of two gravity-aligned boxes (footprint distance combined with the z gap)."""
    fa = Polygon(box_corners(a.center, a.size, a.yaw)[:4, :2])
    fb = Polygon(box_corners(b.center, b.size, b.yaw)[:4, :2])
    dz = max(0.0, a.z0 - (b.z0 + b.size[2]), b.z0 - (a.z0 + a.size[2]))
    return math.hypot(fa.distance(fb), dz)


def check_relations(rels, ids, dist_tol):
    t, c, cup, fr, couch, tv = (ids[x] for x in ("dining table", "chair", "cup", "refrigerator", "couch", "tv"))
    assert rel_set(rels, "on") == {(cup, t)}
    on = next(r for r in rels if r["predicate"] == "on")
    assert abs(on["evidence"]["gap_m"]) <= 0.03 and on["evidence"]["overlap_xy"] >= 0.9
    assert rel_set(rels, "on_floor") == {(t, "floor"), (c, "floor"), (fr, "floor"), (couch, "floor")}
    assert rel_set(rels, "above") == {(tv, couch)} and rel_set(rels, "below") == {(couch, tv)}
    ab = next(r for r in rels if r["predicate"] == "above")
    assert ab["evidence"]["dz_m"] == pytest.approx(1.2 - 0.8, abs=0.05)
    near = {(r["subject"], r["object"]): r["distance_m"] for r in rels if r["predicate"] == "near"}
    key = tuple(sorted((c, t)))
    assert key in near
    assert near[key] == pytest.approx(gt_distance(OBJECTS[LABEL_ID["chair"]], OBJECTS[LABEL_ID["dining table"]]),
                                      abs=dist_tol)
    assert tuple(sorted((fr, couch))) not in near and tuple(sorted((fr, c))) not in near
    for (s, o) in near:
        assert s < o  # written once per pair
    assert rel_set(rels, "inside") == {(k, "room") for k in ids.values()}


def test_relations_from_known_boxes():
    objs, pts = gt_objects()
    room = Polygon([(0, 0), (ROOM[0], 0), (ROOM[0], ROOM[1]), (0, ROOM[1])])
    rels = sg.relations(objs, pts, room, sg.Config())
    check_relations(rels, {o["label"]: o["id"] for o in objs}, dist_tol=0.03)


def test_object_outside_the_room_is_not_inside():
    from tests.fixtures.objects import Obj

    objs, pts = gt_objects(extra=[Obj("bench", (6.0, 1.0), (1.2, 0.4, 0.45), 0.0)])
    room = Polygon([(0, 0), (ROOM[0], 0), (ROOM[0], ROOM[1]), (0, ROOM[1])])
    rels = sg.relations(objs, pts, room, sg.Config())
    assert (len(OBJECTS), "room") not in rel_set(rels, "inside")


def test_scene_graph_stage_end_to_end(tmp_path):
    # 0.4 m per SfM unit: depth, mesh and cameras are read back in metres only through frame="world"
    scene, _ = build_scene(tmp_path, world_from_sfm=sim3_rotvec(0.4, (-0.2, 0.5, 0.3), (-2.0, 1.0, 0.5)))
    cfg = PipelineConfig()
    run_stage(scene, "instances", cfg)
    res = run_stage(scene, "scene_graph", cfg)
    g = json.loads((scene.root / "scene_graph.json").read_text())
    assert g["frame"] == "gravity_z_up_metric" and g["units"] == "m"
    assert g["room"]["id"] == "room" and g["room"]["floor_area_m2"] == pytest.approx(20.0)
    assert g["room"]["center"] == pytest.approx([2.5, 2.0, 1.35], abs=1e-3)
    ids = {o["label"]: o["id"] for o in g["objects"]}
    assert len(ids) == len(g["objects"]) == len(OBJECTS)
    for o in g["objects"]:
        assert o["inside_room"] is True
        assert np.all(np.asarray(o["min"]) <= np.asarray(o["max"]))
    check_relations(g["relations"], ids, dist_tol=0.05)
    assert res.qc["n_objects"] == len(OBJECTS)
