"""``fusion`` stage on a synthetic room (:mod:`tests.synth`) with exact depth in a known SfM frame.

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
from tests.synth import ROOM, intrinsics, look_at, render_room, room_surface_distance

W, H = 160, 120
SFM_SCALE = 0.37  # SfM units per metre


def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return cv2.Rodrigues(axis * np.radians(deg))[0]


#: sfm_from_world (true metric world → emulated SfM frame): X_sfm = s R X + t
SFM_R = _rot([0.3, -0.8, 0.5], 57.0)
SFM_T = np.array([0.4, -1.1, 2.3])


def sfm_from_world() -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = SFM_SCALE * SFM_R
    T[:3, 3] = SFM_T
    return T


def to_world(points_in_sfm: np.ndarray) -> np.ndarray:
    """Undo the known similarity: SfM-frame points → true metric world."""
    return (np.asarray(points_in_sfm) - SFM_T) @ SFM_R / SFM_SCALE


def cam_from_sfm(cam_from_world: np.ndarray) -> np.ndarray:
    """Pose in the emulated SfM frame (camera coordinates in SfM units)."""
    Rc, tc = cam_from_world[:3, :3], cam_from_world[:3, 3]
    T = np.eye(4)
    T[:3, :3] = Rc @ SFM_R.T
    T[:3, 3] = SFM_SCALE * tc - Rc @ SFM_R.T @ SFM_T
    return T


def room_poses(room=ROOM) -> list[np.ndarray]:
    """Cameras looking around the room (8 headings × 2 pitches) from two standpoints ~1.5 m high."""
    poses = []
    for eye in ((1.8, 1.6, 1.5), (3.0, 1.8, 1.6)):
        eye = np.asarray(eye)
        for pitch in (-30.0, 25.0):
            for k in range(8):
                yaw = np.radians(45.0 * k + (10 if pitch > 0 else 0))
                p = np.radians(pitch)
                fwd = np.array([np.cos(yaw) * np.cos(p), np.sin(yaw) * np.cos(p), np.sin(p)])
                poses.append(look_at(eye, eye + fwd))
    return poses


def mark_complete(scene: Scene, stages=("ingest", "shots", "quality", "keyframes", "sfm", "depth")) -> None:
    def mark(m):
        for s in stages:
            m["stages"][s] = {"status": "complete"}

    scene.update_manifest(mark)


def make_dense_scene(root: Path, poses=None, room=ROOM, furniture=None, sparse: bool = True) -> Scene:
    """Scene folder with cameras.json (SfM frame), frames/, depth/ and sparse_points.ply for ``poses``."""
    from tests import synth

    furniture = synth.FURNITURE if furniture is None else furniture
    poses = room_poses(room) if poses is None else poses
    K = intrinsics(W, H)
    scene = Scene.create(root, {"path": str(root), "kind": "synthetic", "sha256": "0" * 64, "size_bytes": 0})
    frames, sparse_pts = [], []
    rng = np.random.default_rng(0)
    for i, pose in enumerate(poses):
        sf = 10 * i
        rgb, depth = render_room(pose, K, W, H, room=room, furniture=furniture)
        path = scene.keyframe_path(sf)
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        d_sfm = (depth * SFM_SCALE).astype(np.float32)
        dpath = scene.root / "depth" / f"{sf:06d}.npz"
        dpath.parent.mkdir(exist_ok=True)
        np.savez(dpath, depth_m=d_sfm, confidence=np.ones_like(d_sfm), scale_applied=np.float64(1.0),
                 world=np.str_("sfm"))
        c_sfm = cam_from_sfm(pose)
        frames.append(CameraFrame(frame_name(sf), sf, sf / 30.0, W, H, K.copy(), c_sfm))
        if sparse:
            mask = np.zeros(depth.shape, bool)
            mask.ravel()[rng.choice(depth.size, 150, replace=False)] = True
            pts, _ = fusion.backproject(d_sfm, K, c_sfm, mask)
            sparse_pts.append(pts)
    write_json(scene.cameras_json, {"convention": "opencv", "world": "sfm",
                                    "distortion": {"model": "PINHOLE", "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]},
                                    "frames": [f.to_json() for f in frames]})
    if sparse:
        write_ply_points(scene.sparse_points_ply, np.concatenate(sparse_pts), comments=["frame: sfm"])
    mark_complete(scene)
    return scene


_FUSED: dict = {}


def fused_room(tmp_path_factory):
    """The room scene fused with the default config, built once per test session and shared with
    ``tests/test_layout.py`` (which only ever works on copies of it)."""
    if "room" not in _FUSED:
        scene = make_dense_scene(tmp_path_factory.mktemp("fusion") / "scene")
        result = fusion.run(scene, fusion.Config())
        mark_complete(scene, ("fusion",))
        _FUSED["room"] = (scene, result)
    return _FUSED["room"]


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
