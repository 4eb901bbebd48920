"""People are kept out of SfM: keypoints inside detect's person boxes never reach the database (DESIGN.md:
``sfm`` reads the person boxes and drops their keypoints)."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from vid2scene.sfm.features import Features, drop_in_boxes
from tests.fixtures.room import fast_config, intrinsics, render_room, run_stages, scene_from_images, walk_trajectory

W, H = 320, 240


def test_drop_in_boxes_removes_exactly_the_keypoints_inside_the_grown_boxes():
    xy = np.array([[10, 10], [50, 50], [59, 50], [61, 50], [200, 100]], np.float32)
    f = Features(xy, np.arange(5 * 128, dtype=np.uint8).reshape(5, 128) % 7,
                 np.c_[xy, np.ones((5, 1)), np.zeros((5, 2)), np.ones((5, 1))].astype(np.float32))
    kept, n = drop_in_boxes(f, [[40, 40, 60, 60]])
    assert n == 2 and kept.keypoints.tolist() == [[10, 10], [61, 50], [200, 100]]
    assert len(kept.descriptors) == 3 and (kept.descriptors[1] == f.descriptors[3]).all()
    assert kept.colmap_keypoints[:, :2].tolist() == kept.keypoints.tolist()
    kept, n = drop_in_boxes(f, [[40, 40, 60, 60]], margin=0.1)  # 2 px each side: 61 is inside now
    assert n == 3
    assert drop_in_boxes(f, [])[1] == 0


def test_sfm_leaves_the_keypoints_in_person_boxes_out_of_the_model(tmp_path):
    n = 14
    K = intrinsics(W, H)
    scene = scene_from_images(tmp_path, [render_room(p, K, W, H)[0] for p in walk_trajectory(n)])
    cfg = fast_config(keyframes={"min_disparity": 0.02, "min_keyframes": 8, "image_folder": "disparity"},
                      sfm={"mask_people": True})
    run_stages(scene, cfg, "keyframes")
    kfs = scene.keyframes()["keyframes"]
    w, h = scene.keyframes()["width"], scene.keyframes()["height"]
    box = [0.35 * w, 0.2 * h, 0.65 * w, 0.9 * h]  # a 'person' in the middle of every other keyframe
    with_person = {int(k["source_frame"]) for k in kfs[::2]}
    for sf in with_person:
        scene.write_detections(sf, {"frame": sf, "width": w, "height": h, "detector": "test", "detections": [],
                                    "people": [{"score": 0.9, "bbox_xyxy": box}]})
    result = run_stages(scene, cfg, "sfm", start="sfm")["sfm"]
    people = result.qc["people"]
    assert people["keyframes"] == len(with_person) and people["keypoints_dropped"] > 50
    rec = pycolmap.Reconstruction(str(scene.root / "sfm"))
    m = 0.05
    lo = np.array([box[0] - m * (box[2] - box[0]), box[1] - m * (box[3] - box[1])])
    hi = np.array([box[2] + m * (box[2] - box[0]), box[3] + m * (box[3] - box[1])])
    seen_inside_elsewhere = 0
    for im in rec.images.values():
        xy = np.array([p.xy for p in im.points2D]).reshape(-1, 2)
        inside = np.all((xy >= lo) & (xy <= hi), axis=1)
        sf = int(im.name.split(".")[0])
        if sf in with_person:
            assert not inside.any(), im.name
        else:
            seen_inside_elsewhere += int(inside.sum())
    assert seen_inside_elsewhere > 0  # the same region keeps its keypoints where nobody stands

    off = cfg.model_copy(update={"sfm": cfg.sfm.model_copy(update={"mask_people": False})})
    assert "people" not in run_stages(scene, off, "sfm", start="sfm")["sfm"].qc
