"""The object plan: schema round-trip, the stacking rule on hand-made pairs, location assignment."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tests.fixtures import layout_scene as ls
from vid2scene.tasks.layout_synth.plan import (Plan, PlanConfig, PlanObject, Rotation, build_plan, has_word,
                                               room_walls, stacks_on)


def box(name, label, center, size, yaw=0.0, location="floor"):
    return PlanObject(object_name=name, label=label, position=list(center), size=list(size),
                      rotation=Rotation(yaw_rad=yaw), location=location)


def test_plan_schema_round_trip():
    plan = build_plan(ls.instance_records(), ls.layout_doc(), ls.cameras())
    doc = json.loads(json.dumps(plan.to_json()))
    back = Plan.from_json(doc)
    assert back == plan and back.to_json() == doc
    assert doc["format"] == "vipscene_object_plan" and doc["frame"] == "gravity_z_up_metric" and doc["units"] == "m"
    o = doc["objects"][0]
    assert set(o) == {"object_name", "instance_id", "label", "description", "location", "on", "size", "position",
                      "rotation", "objects_on_top", "score"}
    assert o["object_name"] == "couch-0" and o["rotation"] == {"yaw_rad": 0.0} and o["size"] == [2.0, 0.9, 0.8]
    assert len(doc["room"]["walls"]) == 4 and doc["room"]["floor_area_m2"] == pytest.approx(30.0)
    assert doc["room"]["entrance_source"] == "first_camera"
    bad = json.loads(json.dumps(doc))
    bad["objects"][0]["location"] = "ceiling"
    with pytest.raises(ValidationError):
        Plan.from_json(bad)
    bad = json.loads(json.dumps(doc))
    bad["objects"][0]["size"] = [1.0, 2.0]
    with pytest.raises(ValidationError):
        Plan.from_json(bad)
    bad = json.loads(json.dumps(doc))
    bad["objects"][0]["colour"] = "red"
    with pytest.raises(ValidationError):
        Plan.from_json(bad)


def test_plan_locations_and_relations():
    plan = build_plan(ls.instance_records(), ls.layout_doc(), ls.cameras())
    by = plan.by_name()
    assert by["laptop-7"].location == "top" and by["laptop-7"].on == "dining table-1"
    assert by["dining table-1"].objects_on_top == ["laptop-7"]
    assert by["tv-5"].location == "wall"
    assert all(by[n].location == "floor" for n in ("couch-0", "chair-2", "chair-3", "refrigerator-4"))
    assert "on top of dining table-1" in by["laptop-7"].description
    floating = build_plan(ls.plant_floating(ls.instance_records(), 3, 0.5), ls.layout_doc())
    assert floating.by_name()["chair-3"].location == "floor"  # must stand: a support violation to fix
    lifted = build_plan(ls.plant_floating(ls.instance_records(), 7, 0.4), ls.layout_doc())
    assert lifted.by_name()["laptop-7"].on == "dining table-1"  # floats above its table: still on it


TABLE = box("table-0", "dining table", (0, 0, 0.375), (1.0, 0.6, 0.75))


@pytest.mark.parametrize("top, expected", [
    (box("cup", "cup", (0.1, 0.0, 0.8), (0.1, 0.1, 0.1)), True),              # on the table top
    (box("cup", "cup", (0.1, 0.0, 1.1), (0.1, 0.1, 0.1)), True),              # floating 0.3 m above it
    (box("cup", "cup", (0.1, 0.0, 1.9), (0.1, 0.1, 0.1)), False),             # 1.1 m above: not on it
    (box("cup", "cup", (0.1, 0.0, 0.5), (0.1, 0.1, 0.1)), False),             # sunk 0.3 m into it: not on it
    (box("cup", "cup", (1.0, 0.0, 0.8), (0.1, 0.1, 0.1)), False),             # beside it
    (box("box", "box", (0.57, 0.0, 0.85), (0.2, 0.2, 0.2)), True),            # 15 % of the smaller footprint
    (box("box", "box", (0.59, 0.0, 0.85), (0.2, 0.2, 0.2)), False),           # 5 % overlap
])
def test_stacking_rule_on_a_table(top, expected):
    assert stacks_on(top, TABLE) is expected


def test_stacking_rule_support_classes_and_area():
    cup = box("cup", "cup", (0.0, 0.0, 0.5), (0.1, 0.1, 0.1))
    chair = box("chair-1", "chair", (0, 0, 0.225), (0.5, 0.5, 0.45))
    assert not stacks_on(cup, chair)                                           # a chair is not a support
    for label in ("kitchen counter", "counter", "desk", "kitchen island", "sink", "coffee table"):
        assert stacks_on(cup, box("s", label, (0, 0, 0.225), (0.5, 0.5, 0.45))), label
    small = box("t", "table", (0, 0, 0.225), (0.4, 0.4, 0.45))                 # 0.16 m² < 0.2 m²
    assert not stacks_on(cup, small)
    assert stacks_on(cup, small, PlanConfig(min_support_area_m2=0.1))
    assert has_word("dining table", ["table"]) and not has_word("tablet", ["table"])
    assert not stacks_on(TABLE, TABLE)


def test_room_walls_are_ccw_with_inward_normals():
    lay = ls.layout_doc()
    lay["room"]["polygon_xy"] = lay["room"]["polygon_xy"][::-1]                # clockwise input
    P, walls, h = room_walls(lay)
    assert h == pytest.approx(2.6) and len(walls) == 4
    for w in walls:
        mid = [(w.a[0] + w.b[0]) / 2 + 0.1 * w.inward_normal_xy[0], (w.a[1] + w.b[1]) / 2 + 0.1 * w.inward_normal_xy[1]]
        assert 0 < mid[0] < 6 and 0 < mid[1] < 5
    with pytest.raises(ValueError):
        room_walls({"room": {"polygon_xy": [[0, 0], [1, 0]], "height_m": 2.5}})


def test_unsupported_objects_and_objects_of_another_room():
    from vid2scene.tasks.layout_synth.scores import score_plan
    from vid2scene.tasks.layout_synth.solver import solve

    recs = ls.instance_records() + [
        {"id": 8, "label": "microwave", "box": {"center": [0.3, 3.0, 1.05], "size": [0.5, 0.35, 0.3], "yaw_rad": 0}},
        {"id": 9, "label": "chair", "box": {"center": [8.0, 2.0, 0.45], "size": [0.45, 0.45, 0.9], "yaw_rad": 0}}]
    plan = build_plan(recs, ls.layout_doc())
    by = plan.by_name()
    assert by["microwave-8"].location == "top" and by["microwave-8"].on is None   # on an unreconstructed counter
    assert "on a surface" in by["microwave-8"].description
    assert "chair-9" not in by and plan.removed[0]["object_name"] == "chair-9" and "outside the room" in \
        plan.removed[0]["reason"]
    out, _ = solve(plan)
    assert out.by_name()["microwave-8"].position[2] == pytest.approx(1.05)       # keeps its height
    assert score_plan(out)["support_violation_rate"] == 0
    assert [r["object_name"] for r in out.removed] == ["chair-9"]
