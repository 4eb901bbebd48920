"""``fusion`` stage on a synthetic room (:mod:`tests.fixtures.room`) with exact depth in a known SfM frame.

:func:`make_dense_scene` builds a scene folder by hand, as ``sfm`` + ``depth`` would leave it: cameras that look
around the room from two standpoints, with their TRUE poses moved into an "SfM frame" by a known similarity
(scale ``SFM_SCALE`` SfM units per metre, a known rotation and translation), keyframes, ``depth/*.npz`` from the
renderer's true depth in SfM units, and ``sparse_points.ply`` sampled from the surfaces. No COLMAP model is
written (``layout`` falls back to ``cameras.json`` / ``sparse_points.ply`` when ``sfm/`` is absent).
``tests/test_layout.py`` reuses it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vid2scene import fusion
from vid2scene.errors import StageFailed
from vid2scene.io import write_json, write_ply_points
from vid2scene.scene import CameraFrame, Scene, frame_name
from tests.fixtures.room import ROOM, intrinsics, look_at, render_room, room_surface_distance

from tests.fixtures.dense import H, W, fused_room, make_dense_scene, mark_complete, room_poses, to_world


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    return fused_room(tmp_path_factory)


def test_mesh_matches_the_true_surfaces(fused):
    scene, result = fused
    mesh = fusion.read_mesh_ply(scene.root / "mesh.ply")
    v = to_world(np.asarray(mesh.vertices))
    assert len(mesh.triangles) > 1000
    assert mesh.has_vertex_colors()
    d = room_surface_distance(v)
    assert np.median(d) < 0.02, np.median(d)
    assert np.percentile(d, 95) < 0.06
    # qc records the settings in SfM units (voxel = median depth / 100)
    qc = result.qc
    assert qc["units"] == "sfm" and qc["frame"] == "sfm"
    assert qc["voxel_size"] == pytest.approx(qc["median_depth"] / 100, rel=1e-3)
    assert 0.005 < qc["voxel_size"] / SFM_SCALE < 0.04  # ~2 cm in metres


def test_points_are_clean_and_in_the_room(fused):
    scene, result = fused
    pts, cols, nrm = fusion.read_points_ply(scene.root / "points.ply")
    assert len(pts) > 2000 and cols is not None and nrm is not None
    p = to_world(pts)
    assert np.all(p > -0.03) and np.all(p < np.asarray(ROOM) + 0.03), (p.min(0), p.max(0))
    d = room_surface_distance(p)
    assert np.percentile(d, 99.5) < 0.03 and d.max() < 0.08, (np.percentile(d, 99.5), d.max())
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-3)


def test_ply_headers_name_the_frame(fused):
    scene, _ = fused
    for name in ("mesh.ply", "points.ply"):
        assert "frame: sfm" in fusion.read_ply_comments(scene.root / name)
        assert fusion.ply_frame(scene.root / name) == ("sfm", None)


def test_flat_plane_gives_planar_mesh(tmp_path):
    """Regression guard: open3d 0.20.0's ScalableTSDFVolume returned an empty mesh even for a flat plane."""
    room = (12.0, 12.0, 3.0)
    poses = [look_at((6.0 + 0.2 * i, 6.0, 1.5), (6.6 + 0.2 * i, 6.2, 0.0)) for i in range(4)]
    scene = make_dense_scene(tmp_path / "plane", poses=poses, room=room, furniture=(), sparse=False)
    fusion.run(scene, fusion.Config())
    mesh = fusion.read_mesh_ply(scene.root / "mesh.ply")
    assert len(mesh.triangles) > 100, "TSDF produced an empty mesh for a flat plane (open3d regression?)"
    v = to_world(np.asarray(mesh.vertices))
    assert np.abs(v[:, 2]).max() < 0.03, np.abs(v[:, 2]).max()  # on the floor plane z = 0
    s = np.linalg.svd(v - v.mean(0), compute_uv=False)
    assert s[2] / s[0] < 0.01


def test_no_depth_is_a_stage_failure(tmp_path):
    scene = make_dense_scene(tmp_path / "s", poses=room_poses()[:2], sparse=False)
    for p in (scene.root / "depth").glob("*.npz"):
        p.unlink()
    with pytest.raises(StageFailed, match="no depth maps"):
        fusion.run(scene, fusion.Config())


def test_depth_stage_must_be_complete(tmp_path):
    scene = make_dense_scene(tmp_path / "s", poses=room_poses()[:2], sparse=False)
    scene.update_manifest(lambda m: m["stages"].pop("depth"))
    with pytest.raises(StageFailed, match="depth"):
        fusion.run(scene, fusion.Config())
