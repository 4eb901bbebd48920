"""``sfm.refine_all_frames``: the non-keyframes of the synthetic walk registered as extra constraints."""

from __future__ import annotations

import numpy as np
import pycolmap

from vid2scene.geometry import camera_center
from vid2scene.sfm.refine import extra_pairs
from vid2scene.scene import frame_name
from tests.fixtures.room import fast_config, intrinsics, render_room, run_stages, scene_from_images, walk_trajectory

W, H = 320, 240
K_TRUE = intrinsics(W, H)


def test_extra_pairs_link_each_frame_to_keyframes_around_it():
    pairs = extra_pairs([0, 10, 20], [5, 15, 25])
    assert (frame_name(0), frame_name(5)) in pairs and (frame_name(10), frame_name(5)) in pairs
    assert (frame_name(5), frame_name(15)) in pairs  # consecutive extra frames
    assert (frame_name(20), frame_name(25)) in pairs and (frame_name(10), frame_name(25)) in pairs
    assert all(a != b for a, b in pairs)


def test_all_frame_refinement_keeps_keyframes_as_the_output(tmp_path):
    n = 30
    poses = walk_trajectory(n)
    scene = scene_from_images(tmp_path, [render_room(p, K_TRUE, W, H)[0] for p in poses])
    cfg = fast_config(keyframes={"min_disparity": 0.03, "min_keyframes": 8, "image_folder": "disparity"},
                      sfm={"loop_closure": False, "pairing": "sequential", "sequential_overlap": 4,
                           "refine_all_frames": True, "refine_stride": 2})
    result = run_stages(scene, cfg, "sfm")["sfm"]
    ref = result.qc["refine"]
    n_kf = len(scene.keyframes()["keyframes"])
    assert ref["n_extra"] >= 5 and ref["n_extra_registered"] >= 0.8 * ref["n_extra"], ref
    assert ref["kept"] is True, (ref, result.warnings)
    cams = scene.cameras()
    assert len(cams) == n_kf  # the extra frames are constraints, not output
    rec = scene.reconstruction()
    names = {c.name for c in cams}
    assert {im.name for im in rec.images.values() if im.has_pose} <= names
    reg = [c for c in cams if c.registered]
    assert len(reg) >= 0.9 * n_kf
    est = np.array([c.center_in_world for c in reg])
    gt = np.array([camera_center(poses[c.source_frame]) for c in reg])
    M = pycolmap.estimate_sim3d(est, gt).matrix()
    ate = float(np.sqrt((((est @ M[:3, :3].T + M[:3, 3]) - gt) ** 2).sum(1).mean()))
    assert ate < 0.01 * np.linalg.norm(np.diff(gt, axis=0), axis=1).sum(), ate
    assert result.qc["mean_reprojection_error_px"] < 1.0
