"""Scores on hand-made layouts with known answers, and their direction as errors grow."""

from __future__ import annotations

import math

import pytest

from tests.fixtures import layout_scene as ls
from vid2scene.tasks.layout_synth import agreement_inputs
from vid2scene.tasks.layout_synth.plan import build_plan
from vid2scene.tasks.layout_synth.scores import (f1_3d, frame_agreement, match_f1, reachable_share,
                                                 score_plan)

SQUARE = {"room": {"polygon_xy": [[0, 0], [4, 0], [4, 4], [0, 4]], "height_m": 2.5}}


def rec(i, label, center, size, yaw=0.0):
    return {"id": i, "label": label, "box": {"center": list(center), "size": list(size), "yaw_rad": yaw}}


def square_plan(records, entrance=(0.5, 0.5)):
    plan = build_plan(records, SQUARE)
    plan.room.entrance_xy = list(entrance)
    return plan


def test_collision_and_out_of_room_known_answers():
    plan = square_plan([rec(0, "box", (1, 1, 0.5), (1, 1, 1)), rec(1, "box", (1.5, 1, 0.5), (1, 1, 1)),
                        rec(2, "box", (3, 3, 0.5), (0.5, 0.5, 1)), rec(3, "box", (3.9, 2, 0.5), (0.4, 0.4, 1))])
    s = score_plan(plan)
    assert s["collision_rate"] == 0.5 and s["n_collision_pairs"] == 1 and s["overlap_area_m2"] == pytest.approx(0.5)
    assert s["out_of_room_rate"] == 0.25 and s["outside_area_m2"] == pytest.approx(0.04)
    assert s["support_violation_rate"] == 0 and s["wall_parallel_share"] == 1.0
    # lifted clear of box 0 (height ranges apart): no collision, but a floating floor object
    plan.objects[1].position[2] = 1.6
    s = score_plan(plan)
    assert s["collision_rate"] == 0 and s["support_violation_rate"] == 0.25


def test_support_violations():
    table = rec(0, "table", (2, 2, 0.375), (1.2, 0.8, 0.75))
    plan = square_plan([table, rec(1, "cup", (2, 2, 0.8), (0.1, 0.1, 0.1)),
                        rec(2, "book", (2.3, 2, 0.9), (0.2, 0.2, 0.1))])
    assert [o.location for o in plan.objects] == ["floor", "top", "top"]
    s = score_plan(plan)
    assert s["support_violation_rate"] == pytest.approx(1 / 3, abs=1e-4)  # the book floats 0.1 m above the table top
    plan.objects[2].position[2] = 0.8
    assert score_plan(plan)["support_violation_rate"] == 0
    plan.objects[2].position[:2] = [3.5, 3.5]                   # rests at table height, far off the table
    assert score_plan(plan)["support_violation_rate"] == pytest.approx(1 / 3, abs=1e-4)


def test_reachable_floor_share_with_a_wall_to_wall_barrier():
    open_room = square_plan([rec(0, "box", (3, 3, 0.5), (0.5, 0.5, 1))])
    assert reachable_share(open_room) == 1.0
    barrier = square_plan([rec(0, "bookshelf", (2, 2, 1.0), (0.2, 4.0, 2.0))])
    assert reachable_share(barrier) == pytest.approx(0.5, abs=0.03)         # the far half is cut off
    low = square_plan([rec(0, "rug", (2, 2, 0.02), (0.2, 4.0, 0.04))])      # below the body band: walkable
    assert reachable_share(low) == 1.0
    # a growing box closing the passage between two walls: reachability never goes up
    shares = []
    for w in (0.5, 1.5, 2.5, 3.5, 4.0):
        plan = square_plan([rec(0, "bookshelf", (2, w / 2, 1.0), (0.2, w, 2.0))])
        shares.append(reachable_share(plan))
    assert shares == sorted(shares, reverse=True) and shares[0] == 1.0 and shares[-1] < 0.55


def test_wall_parallel_share():
    plan = square_plan([rec(0, "box", (1, 1, 0.5), (0.5, 0.5, 1), 0.0),
                        rec(1, "box", (3, 1, 0.5), (0.5, 0.5, 1), math.pi / 2 + 0.02),
                        rec(2, "box", (2, 3, 0.5), (0.5, 0.5, 1), 0.3)])
    assert score_plan(plan)["wall_parallel_share"] == pytest.approx(2 / 3, abs=1e-4)


def test_f1_iou25_known_answers():
    ref = [{"label": "box", "center": [1, 1, 0.5], "size": [1, 1, 1], "yaw_rad": 0.0},
           {"label": "box", "center": [3, 3, 0.5], "size": [1, 1, 1], "yaw_rad": 0.0},
           {"label": "chair", "center": [1, 3, 0.5], "size": [1, 1, 1], "yaw_rad": 0.0}]
    exact = square_plan([rec(0, "box", (1, 1, 0.5), (1, 1, 1)), rec(1, "box", (3, 3, 0.5), (1, 1, 1)),
                         rec(2, "chair", (1, 3, 0.5), (1, 1, 1))])
    assert f1_3d(exact, ref) == (1.0, 1.0, 1.0)
    # one exact, one shifted by 0.7 m (IoU 0.3/1.7 < 0.25), one with the wrong label
    bad = square_plan([rec(0, "box", (1, 1, 0.5), (1, 1, 1)), rec(1, "box", (3.7, 3, 0.5), (1, 1, 1)),
                       rec(2, "table", (1, 3, 0.5), (1, 1, 1))])
    p, r, f = f1_3d(bad, ref)
    assert (p, r, f) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    shifted = square_plan([rec(0, "box", (1.5, 1, 0.5), (1, 1, 1))])   # IoU 1/3 ≥ 0.25: a match
    assert f1_3d(shifted, ref) == pytest.approx((1.0, 1 / 3, 0.5))
    assert match_f1([], [], None, 0.25) == (1.0, 1.0, 1.0)
    assert match_f1([{"label": "a"}], [], None, 0.25)[2] == 0.0


def test_frame_agreement_with_the_keyframes_detections(tmp_path):
    scene = ls.write_layout_scene(tmp_path / "s", n_cameras=6)
    cams = [c for c in scene.cameras(frame="world") if c.registered]
    from vid2scene.tasks.layout_synth import Config

    views, dets = agreement_inputs(scene, cams, Config(agreement_width=160))
    assert len(views) == 6 and views[0].width == 160
    truth = build_plan(ls.instance_records(), ls.layout_doc(), cams)
    good = frame_agreement(truth, views, dets)
    moved = build_plan(ls.plant_overlap(ls.instance_records(), 0, 4, -1.0), ls.layout_doc(), cams)
    moved.objects[1].position[0] += 1.0
    bad = frame_agreement(moved, views, dets)
    assert good >= 0.9 and bad < good - 0.1
    assert frame_agreement(truth, views, [None] * len(views)) is None


def test_scores_move_the_right_way_as_errors_grow():
    lay = ls.layout_doc()
    prev = None
    for depth in (0.0, 0.1, 0.2, 0.3):
        recs = ls.plant_overlap(ls.instance_records(), 2, 1, depth) if depth else ls.instance_records()
        recs = ls.plant_through_wall(recs, 4, depth, "west") if depth else recs
        recs = ls.plant_floating(recs, 3, 2 * depth) if depth else recs
        s = score_plan(build_plan(recs, lay), ls.true_boxes())
        cur = (s["overlap_area_m2"], s["outside_area_m2"], s["support_violation_rate"], -s["f1_iou25"])
        if prev is not None:
            assert all(c >= p for c, p in zip(cur, prev)) and cur[0] > prev[0] and cur[1] > prev[1]
        prev = cur
