"""``instances`` (``masks`` method): a row of four touching chairs and a plant against a wall
(tests/fixtures/chair_row.py), the lower-bound rule on a view with k boxes, order independence and the
per-label meta."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.fixtures.chair_row import CHAIR_ROW, build_chair_row
from vid2scene.config import PipelineConfig
from vid2scene.instances.config import Config
from vid2scene.instances.lifting import ViewMask, cluster_masks, foreground_layer, remove_support
from vid2scene.pipeline import run_stage


@pytest.fixture(scope="module")
def row(tmp_path_factory):
    scene, info = build_chair_row(tmp_path_factory.mktemp("row"))
    res = run_stage(scene, "instances", PipelineConfig())
    return scene, info, res, json.loads((scene.root / "instances.json").read_text())


def test_four_touching_chairs_are_four_instances(row):
    _, info, _, doc = row
    chairs = [i for i in doc["instances"] if i["label"] == "chair"]
    assert len(chairs) == 4
    # the detections saw them as separate boxes in one keyframe
    assert max(sum(d["label"] == "chair" for d in v) for v in info["detections"].values()) >= 4
    truth = sorted(o.center_xy[0] for o in CHAIR_ROW if o.label == "chair")
    got = sorted(i["box"]["center"][0] for i in chairs)
    assert np.allclose(got, truth, atol=0.1)  # well within the 0.5 m pitch: each box on its own chair
    for i in chairs:
        assert max(i["box"]["size"][:2]) <= 0.7  # no box over two chairs (1.0 m)
    assert doc["meta"]["per_label"]["chair"]["instances"] == 4


def test_plant_box_within_10cm_and_no_wall(row):
    _, _, _, doc = row
    plant = next(o for o in CHAIR_ROW if o.label == "potted plant")
    got = [i for i in doc["instances"] if i["label"] == "potted plant"]
    assert len(got) == 1
    b = got[0]["box"]
    assert np.linalg.norm(np.subtract(b["center"], plant.center)) <= 0.10
    assert np.all(np.abs(np.subtract(sorted(b["size"][:2]), sorted(plant.size[:2]))) <= 0.10)
    assert abs(b["size"][2] - plant.size[2]) <= 0.10


def test_meta_explains_every_label(row):
    _, info, res, doc = row
    per = doc["meta"]["per_label"]
    labels = {d["label"] for v in info["detections"].values() for d in v}
    assert set(per) == labels
    for lab, m in per.items():
        assert {"detections", "keyframes", "max_in_one_keyframe", "masks", "groups", "instances", "rejected",
                "note"} <= set(m)
        if m["keyframes"] >= 5 and m["instances"] == 0:
            assert m["note"] and any(lab in w for w in res.warnings)  # a label the evidence asks for: said why


def _mask(view, det, pts):
    return ViewMask(view, det, 10 * view, "chair", 0.9, [0, 0, 10, 10], np.asarray(sorted(pts), np.int64))


def test_lower_bound_k_boxes_in_one_view_never_merge():
    # view 0 has three chair boxes whose masks overlap (touching chairs); views 1, 2 see the three chairs as
    # one wide box each. Whatever the overlaps, the three boxes of view 0 stay in three groups.
    a, b, c = range(0, 40), range(30, 70), range(60, 100)
    masks = [_mask(0, 0, a), _mask(0, 1, b), _mask(0, 2, c), _mask(1, 0, range(0, 100)), _mask(2, 0, range(0, 100))]
    vis = [np.arange(100)] * 3
    groups = cluster_masks(masks, vis, 100, 3, Config())
    view0 = [sum(masks[i].view == 0 for i in g) for g in groups]
    assert max(view0) == 1 and sum(view0) == 3
    # and two consistent masks from two views of one object do merge
    g2 = cluster_masks([_mask(0, 0, a), _mask(1, 0, a)], [np.arange(100)] * 2, 100, 2, Config())
    assert g2 == [[0, 1]]


def test_clustering_is_order_independent():
    rng = np.random.default_rng(0)
    masks = []
    for v in range(6):
        for k, lo in enumerate((0, 50, 100)):
            pts = np.arange(lo, lo + 50)
            masks.append(_mask(v, k, pts[rng.random(50) < 0.8]))
    vis = [np.arange(150)] * 6
    ref = cluster_masks(masks, vis, 150, 6, Config())
    assert len(ref) == 3
    sh = list(range(len(masks)))
    random.Random(1).shuffle(sh)
    got = cluster_masks([masks[i] for i in sh], vis, 150, 6, Config())
    as_sets = sorted(sorted((masks[sh[i]].view, masks[sh[i]].det) for i in g) for g in got)
    assert as_sets == sorted(sorted((masks[i].view, masks[i].det) for i in g) for g in ref)


def test_foreground_layer_picks_the_centred_object():
    z = np.array([2.0, 2.02, 2.05, 3.5, 3.52, 3.55, 3.6])   # object at 2 m, wall at 3.5 m
    w = np.array([1.0, 1.0, 1.0, 0.2, 0.2, 0.2, 0.2])
    assert foreground_layer(z, w, 0.08, 0.08).tolist() == [True] * 3 + [False] * 4


def test_support_removal_drops_a_wall_behind_a_plant():
    rng = np.random.default_rng(0)
    plant = rng.uniform([-0.2, -0.2, 0.0], [0.2, 0.2, 1.0], (800, 3))
    pn = rng.normal(size=(800, 3))
    wall = np.c_[rng.uniform(-0.8, 0.8, 600), np.full(600, 0.22), rng.uniform(0, 1.4, 600)]
    wn = np.tile([0.0, -1.0, 0.0], (600, 1))
    P, N = np.r_[plant, wall], np.r_[pn / np.linalg.norm(pn, axis=1, keepdims=True), wn]
    keep, what = remove_support(P, N, Config())
    assert "wall" in what and keep[:800].mean() > 0.95 and keep[800:].mean() < 0.05
    # a box-shaped object (two visible faces) keeps both
    front = np.c_[rng.uniform(-0.35, 0.35, 500), np.full(500, -0.35), rng.uniform(0, 1.7, 500)]
    side = np.c_[np.full(500, -0.35), rng.uniform(-0.35, 0.35, 500), rng.uniform(0, 1.7, 500)]
    N2 = np.r_[np.tile([0, -1.0, 0], (500, 1)), np.tile([-1.0, 0, 0], (500, 1))]
    keep2, _ = remove_support(np.r_[front, side], N2, Config())
    assert keep2.all()


def test_separate_boxes_ignore_an_enclosing_duplicate():
    from vid2scene.instances.masks import separate_boxes

    couch, carpet_fp = [280, 60, 470, 258], [20, 60, 495, 355]  # a second box around the first one
    assert separate_boxes([couch, carpet_fp]) == 1
    assert separate_boxes([[0, 0, 10, 10], [8, 0, 18, 10], [30, 0, 40, 10]]) == 3  # touching chairs: three


def test_stage_output_independent_of_detection_order(row, tmp_path):
    import shutil

    from tests.fixtures.objects import write_detections
    from vid2scene.scene import Scene

    scene, info, _, doc = row
    root = tmp_path / "shuffled"
    shutil.copytree(scene.root, root)
    shuffled = {sf: [d[i] for i in random.Random(sf).sample(range(len(d)), len(d))]
                for sf, d in info["detections"].items()}
    s2 = Scene(root)
    write_detections(s2, shuffled, 320, 240)
    run_stage(s2, "instances", PipelineConfig())
    doc2 = json.loads((root / "instances.json").read_text())
    key = lambda d: sorted((i["label"], tuple(i["box"]["center"]), tuple(i["box"]["size"])) for i in d["instances"])  # noqa: E731
    assert key(doc2) == key(doc)
