"""``sfm.backend: poses``: a TUM trajectory in, points triangulated with it, the same poses out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vid2scene.errors import StageFailed
from vid2scene.sfm.poses import read_tum, write_tum
from tests.fixtures.room import (ROOM, fast_config, intrinsics, render_room, room_surface_distance, run_stages,
                                 scene_from_images, walk_trajectory)

W, H = 320, 240
K_TRUE = intrinsics(W, H)


def test_tum_file_round_trips(tmp_path):
    poses = walk_trajectory(5)
    p = tmp_path / "t.txt"
    write_tum(p, [0.1 * i for i in range(5)], poses)
    ts, back = read_tum(p)
    np.testing.assert_allclose(ts, [0.1 * i for i in range(5)], atol=1e-9)
    np.testing.assert_allclose(back, np.asarray(poses), atol=1e-7)
    # the file holds camera-to-world: its translation is the camera centre
    first = [float(v) for v in p.read_text().splitlines()[1].split()]
    np.testing.assert_allclose(first[1:4], -poses[0][:3, :3].T @ poses[0][:3, 3], atol=1e-7)
    # OpenGL camera axes (x right, y up, z backward) are converted
    gl = np.diag([1.0, -1.0, -1.0, 1.0])
    lines = ["0 " + " ".join(f"{v:.9f}" for v in (*np.linalg.inv(poses[0])[:3, 3], *_quat(np.linalg.inv(poses[0]) @ gl)))]
    (tmp_path / "gl.txt").write_text("\n".join(lines))
    np.testing.assert_allclose(read_tum(tmp_path / "gl.txt", "opengl")[1][0], poses[0], atol=1e-7)
    (tmp_path / "bad.txt").write_text("0 1 2 3\n")
    with pytest.raises(StageFailed):
        read_tum(tmp_path / "bad.txt")


def _quat(c2w):
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(c2w[:3, :3]).as_quat()


def test_poses_backend_triangulates_with_a_tum_trajectory(tmp_path):
    n = 20
    poses = walk_trajectory(n)
    scene = scene_from_images(tmp_path, [render_room(p, K_TRUE, W, H)[0] for p in poses])
    tum = tmp_path / "trajectory.txt"
    write_tum(tum, [i / 10.0 for i in range(n)], poses)  # image folders get 10 fps timestamps
    cfg = fast_config(keyframes={"min_disparity": 0.02, "min_keyframes": 8, "image_folder": "disparity"},
                      sfm={"backend": "poses", "poses": {"path": str(tum)}, "loop_closure": False,
                           "known_intrinsics": [K_TRUE[0, 0], K_TRUE[1, 1], K_TRUE[0, 2], K_TRUE[1, 2]]})
    result = run_stages(scene, cfg, "sfm")["sfm"]
    cams = scene.cameras()
    assert all(c.registered for c in cams) and len(cams) >= 8
    for c in cams:  # the imported poses come back unchanged (metric, the trajectory's frame)
        np.testing.assert_allclose(c.cam_from_world, poses[c.source_frame], atol=1e-6)
        np.testing.assert_allclose(c.K, K_TRUE, atol=1e-6)
    pts = scene.sparse_points().points
    assert len(pts) >= 300 and result.qc["mapper"] == "poses"
    d = room_surface_distance(pts)
    assert np.median(d) < 0.01 * min(ROOM) and np.mean(d < 0.05) > 0.8
    assert result.qc["mean_reprojection_error_px"] < 1.0
    assert json.loads(scene.cameras_json.read_text())["world"] == "sfm"


def test_poses_backend_needs_a_trajectory_and_intrinsics(tmp_path):
    poses = walk_trajectory(24)
    scene = scene_from_images(tmp_path, [render_room(p, K_TRUE, W, H)[0] for p in poses])
    tum = tmp_path / "trajectory.txt"
    write_tum(tum, [i / 10.0 for i in range(24)], poses)
    cfg = fast_config(keyframes={"min_disparity": 0.02, "min_keyframes": 6, "image_folder": "disparity"},
                      sfm={"backend": "poses", "poses": {"path": str(tum)}, "loop_closure": False})
    run_stages(scene, cfg, "keyframes")
    with pytest.raises(StageFailed, match="known_intrinsics"):
        run_stages(scene, cfg, "sfm", start="sfm")
    cfg.sfm.poses.time_offset_s = 100.0
    cfg.sfm.known_intrinsics = [K_TRUE[0, 0], K_TRUE[1, 1], K_TRUE[0, 2], K_TRUE[1, 2]]
    with pytest.raises(StageFailed, match="covers 0 of"):
        run_stages(scene, cfg, "sfm", start="sfm")
