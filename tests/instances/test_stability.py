"""``instances`` (``masks`` method) gives the same per-label counts on two reconstructions of one video: the
mask clustering's hysteresis, the nested-mislabel rule, order independence of the views, and the whole stage
on a synthetic room whose poses and mesh are perturbed by about 1 cm / 0.2° (what two multi-threaded SfM runs
differ by)."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import cv2
import numpy as np
import pytest

from tests.fixtures.chair_row import build_chair_row
from vid2scene import geometry
from vid2scene.config import PipelineConfig
from vid2scene.instances.config import Config
from vid2scene.instances.lifting import ViewMask, cluster_masks
from vid2scene.instances.masks import accept_candidates
from vid2scene.pipeline import run_stage
from vid2scene.scene import CameraFrame, Scene


def _mask(view, pts, label="chair"):
    return ViewMask(view, 0, 10 * view, label, 0.8, [0, 0, 10, 10], np.asarray(sorted(pts), np.int64))


@pytest.mark.parametrize("overlap", [44, 49, 51, 56])
def test_two_halves_of_one_object_group_alike_on_either_side_of_merge_score(overlap):
    # views 0, 1 hold points 0..99 of an object, views 2, 3 points (100-overlap)..(199-overlap): the halves'
    # consistency is overlap/100, around merge_score = 0.5. Split, both halves would be groups of 2 < min_views
    # and the object would vanish in one reconstruction and not in the other.
    a = range(0, 100)
    b = range(100 - overlap, 200 - overlap)
    masks = [_mask(0, a), _mask(1, a), _mask(2, b), _mask(3, b)]
    vis = [np.arange(200)] * 4
    groups = cluster_masks(masks, vis, 200, 4, Config())
    assert groups == [[0, 1, 2, 3]]


def test_merged_groups_never_hold_two_masks_of_one_view():
    # three identical masks in each of six views: every pair of views agrees perfectly, so only the one-view
    # cannot-link stops merging; it must hold for groups built by earlier merges, not just for single masks
    masks = sorted((_mask(v, range(100)) for v in range(6) for _ in range(3)), key=lambda m: m.view)
    groups = cluster_masks(masks, [np.arange(100)] * 6, 100, 6, Config())
    assert sorted(len(g) for g in groups) == [6, 6, 6]
    for g in groups:
        assert sorted(masks[i].view for i in g) == list(range(6))


def test_a_small_group_far_below_merge_score_stays_apart():
    masks = [_mask(0, range(0, 100)), _mask(1, range(0, 100)), _mask(2, range(80, 180)), _mask(3, range(80, 180))]
    groups = cluster_masks(masks, [np.arange(200)] * 4, 200, 4, Config())
    assert groups == [[0, 1], [2, 3]]  # consistency 0.2 < merge_score_low: two objects


def test_pair_weight_grows_smoothly_with_mutually_seen_points():
    from vid2scene.instances.lifting import pair_scores

    w = []
    for k in (8, 9, 10, 11, 12, 40):
        m = [_mask(0, range(k)), _mask(1, range(k))]
        w.append(pair_scores(m, [np.arange(k)] * 2, k, 10)[1][0, 1])
    assert np.all(np.diff(w) > 0) and np.max(np.diff(w[:5])) < 0.05  # no jump at link_min_points
    assert pair_scores([_mask(0, range(5)), _mask(0, range(5))], [np.arange(5)], 5, 10)[1][0, 1] == 0  # one view


def _cand(label, pts, n_masks, score=0.8, first_view=0):
    ms = [_mask(first_view + v, pts, label) for v in range(n_masks)]
    for m in ms:
        m.score = score
    return {"label": label, "masks": ms, "pts": np.asarray(sorted(pts), np.int64),
            "share": np.ones(len(pts)), "cfg": Config()}


def test_a_mislabel_nested_in_a_plant_is_part_of_it_but_a_cup_on_a_table_stays():
    rejected = []
    reject = lambda *a: rejected.append(a)  # noqa: E731
    plant = _cand("potted plant", range(0, 1000), 8)
    cup_on_pot = _cand("cup", range(100, 200), 2, first_view=20)
    acc = accept_candidates([plant, cup_on_pot], Config(), reject)
    assert [c["label"] for c in acc] == ["potted plant"] and "part of" in rejected[0][3]
    assert acc[0]["absorbed"][0]["label"] == "cup"
    rejected.clear()
    table = _cand("dining table", range(0, 1000), 8)
    cup = _cand("cup", range(100, 150), 3, first_view=20)
    acc = accept_candidates([table, cup], Config(), reject)
    assert sorted(c["label"] for c in acc) == ["cup", "dining table"] and not rejected


def _counts(scene: Scene) -> Counter:
    return Counter(i["label"] for i in json.loads((scene.root / "instances.json").read_text())["instances"])


def _rewrite_cameras(scene: Scene, frames: list[CameraFrame], T_sw: np.ndarray) -> None:
    scene.write_cameras([CameraFrame(f.name, f.source_frame, f.timestamp_s, f.width, f.height, f.K,
                                     geometry.transform_pose(f.cam_from_world, T_sw)) for f in frames])


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    root = tmp_path_factory.mktemp("stab")
    scene, info = build_chair_row(root)
    run_stage(scene, "instances", PipelineConfig())
    return root, scene, info


def test_perturbed_poses_and_mesh_give_the_same_counts(room, tmp_path):
    root, scene, info = room
    ref = _counts(scene)
    assert ref["chair"] == 4
    copy = tmp_path / "perturbed"
    shutil.copytree(scene.root, copy)
    s2 = Scene(copy)
    rng = np.random.default_rng(7)
    T_sw = geometry.invert(info["world_from_sfm"])
    frames = []
    for f in info["frames"]:
        dR = cv2.Rodrigues(rng.normal(0, 1, 3) / math.sqrt(3) * math.radians(0.2))[0]
        T = f.cam_from_world.copy()
        T[:3, :3] = dR @ T[:3, :3]
        T[:3, 3] = dR @ T[:3, 3] + rng.normal(0, 0.01 / math.sqrt(3), 3)
        frames.append(CameraFrame(f.name, f.source_frame, f.timestamp_s, f.width, f.height, f.K, T))
    _rewrite_cameras(s2, frames, T_sw)
    mesh = s2.mesh(frame="sfm")
    s2.write_mesh(type(mesh)(mesh.vertices + rng.normal(0, 0.003, mesh.vertices.shape), mesh.triangles,
                             mesh.colors, mesh.normals, "sfm"))
    run_stage(s2, "instances", PipelineConfig())
    assert _counts(s2) == ref


def test_view_order_does_not_change_the_result(room, tmp_path):
    root, scene, info = room
    copy = tmp_path / "reversed"
    shutil.copytree(scene.root, copy)
    s2 = Scene(copy)
    _rewrite_cameras(s2, list(reversed(info["frames"])), geometry.invert(info["world_from_sfm"]))
    run_stage(s2, "instances", PipelineConfig())
    key = lambda s: sorted((i["label"], tuple(i["box"]["center"])) for i in  # noqa: E731
                           json.loads((s.root / "instances.json").read_text())["instances"])
    assert key(s2) == key(scene)


def test_a_slight_footprint_overshoot_is_cut_to_a_plausible_core_and_a_large_one_is_not():
    from vid2scene.instances.masks import footprint_core
    from vid2scene.instances.boxes import oriented_box

    cfg = Config()
    rng = np.random.default_rng(0)
    chair = rng.uniform([0, 0, 0], [0.5, 0.5, 0.9], (2000, 3))
    for reach in (1.25, 1.35, 1.5):  # a table piece reaching 1.25 .. 1.5 m from the chair's far side
        piece = rng.uniform([0.5, 0, 0.7], [reach, 0.5, 0.75], (400, 3))
        P = np.r_[chair, piece]
        core = footprint_core(np.arange(len(P)), P, "chair", cfg)
        assert core is not None
        assert max(oriented_box(P[core])["size"][:2]) <= cfg.footprint_tolerance * 1.1
        assert np.isin(np.arange(2000), core).mean() > 0.6  # the chair's own points stay
    wide = np.r_[chair, rng.uniform([0.5, 0, 0], [3.0, 0.5, 0.9], (4000, 3))]  # one box over several chairs
    assert footprint_core(np.arange(len(wide)), wide, "chair", cfg) is None


def test_a_box_over_a_small_table_and_its_chair_holds_their_centres():
    from vid2scene.instances.masks import centres_held

    def rec(lab, c, sz):
        return {"label": lab, "box": {"center": [*c, 0.4], "size": [*sz, 0.8], "yaw_rad": 0.0}}

    table, chair = rec("dining table", (3.0, 4.3), (1.0, 1.0)), rec("chair", (3.4, 4.0), (0.5, 0.5))
    over_both = rec("chair", (3.1, 4.2), (1.15, 0.95))["box"]
    assert centres_held(over_both, [table, chair]) == ["chair", "dining table"]
    neighbour = rec("chair", (3.9, 4.0), (0.5, 0.5))["box"]  # touching the chair: its centre 0.5 m away
    assert centres_held(neighbour, [table, chair]) == []


def test_a_box_holding_only_a_tables_centre_spans_the_table():
    from vid2scene.instances.masks import TABLE_LABELS, centres_held

    table = {"label": "dining table", "box": {"center": [3.0, 4.3, 0.4], "size": [1.0, 1.0, 0.8], "yaw_rad": 0.0}}
    box = {"center": [2.85, 4.25, 0.4], "size": [1.15, 0.95, 0.8], "yaw_rad": 0.0}
    assert set(centres_held(box, [table])) & TABLE_LABELS  # the rule finalise applies to a non-surface box


def test_a_group_at_min_views_does_not_hinge_on_one_views_iou(monkeypatch):
    """Three views frame a chair with IoU 0.5, 0.4 and one view near the 0.2 cut: whether that view's IoU is
    0.27 or 0.10 (cm-level pose differences between two runs), the chair stands; three poor views do not."""
    from types import SimpleNamespace

    from vid2scene.instances import masks as masks_mod
    from vid2scene.instances.config import Config

    cfg = Config()
    rng = np.random.default_rng(0)
    P = rng.uniform(0, 0.5, (400, 3))
    pts = np.arange(400)
    frames = [SimpleNamespace(source_frame=10 * i, timestamp_s=float(i)) for i in range(3)]
    ms = [SimpleNamespace(frame=10 * i, view=i, bbox=[0, 0, 10, 10], score=0.6, label="chair") for i in range(3)]
    group = {"label": "chair", "masks": ms, "absorbed": []}
    monkeypatch.setattr(masks_mod, "projected_box", lambda pts3, frame: [0.0, 0.0, 10.0, 10.0])

    def decide(ious):
        it = iter(ious)
        monkeypatch.setattr(masks_mod, "box_iou_2d", lambda a, b: next(it))
        rec, reason = masks_mod.instance_record(group, pts, P, pts, frames, [pts] * 3, {}, cfg)
        return rec is not None, reason

    assert decide([0.5, 0.4, 0.27])[0]
    assert decide([0.5, 0.4, 0.10])[0]  # the same chair when the third view's IoU falls below the cut
    ok, reason = decide([0.15, 0.12, 0.10])
    assert not ok and "mean IoU" in reason
