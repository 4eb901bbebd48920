"""Default settings finish short inputs: a 13-image folder and a 3-second clip of the textured room, and a walk
whose floor is never in view (a complete scene with ``floor_observed: false``). Every stage runs with the
default config (TransNetV2 shots, SSD detector, pycolmap SfM, plane-sweep depth, TSDF fusion), hence ``slow``."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.room import encode_clip, intrinsics, look_at, render_room, walk_trajectory, write_frames
from vid2scene.pipeline import STAGES, run_pipeline
from vid2scene.scene import Scene

pytestmark = pytest.mark.slow
W, H = 320, 240


def _complete(scene: Scene) -> dict:
    m = scene.read_manifest()
    assert m["status"] == "complete" and m["failure"] is None, m.get("failure")
    assert all(m["stages"][s]["status"] == "complete" for s in STAGES)
    return m


def test_13_image_folder_completes_with_defaults(tmp_path):
    K = intrinsics(W, H)
    write_frames(tmp_path / "photos", [render_room(p, K, W, H)[0] for p in walk_trajectory(13)])
    report = run_pipeline(tmp_path / "photos", tmp_path / "scene")
    m = _complete(report.scene)
    assert m["source"]["kind"] == "images"
    shots = report.scene.shots()
    assert shots["chosen"] == [0] and shots["detector"].startswith("none")
    kf = report.scene.keyframes()
    assert len(kf["keyframes"]) == 13 and kf["adapted"] == "images"
    assert sum(f.registered for f in report.scene.cameras()) >= 12


def test_3_second_clip_completes_with_defaults(tmp_path):
    K = intrinsics(W, H)
    clip = encode_clip(tmp_path / "clip.mp4", [render_room(p, K, W, H)[0] for p in walk_trajectory(30)])
    report = run_pipeline(clip, tmp_path / "scene")
    _complete(report.scene)
    kf = report.scene.keyframes()
    assert len(kf["keyframes"]) >= 10 and kf["min_disparity"] < 0.08  # the threshold adapted to the short clip
    assert sum(f.registered for f in report.scene.cameras()) >= 0.9 * len(kf["keyframes"])


def test_walk_with_the_floor_never_in_view_completes_with_floor_observed_false(tmp_path):
    """A walk with the camera pitched up by 32° (vertical half-FOV ~26°): neither the floor nor the furniture
    tops below the camera are ever in view."""
    K = intrinsics(W, H)
    poses = []
    for i, T in enumerate(walk_trajectory(40, pitch_deg=32.0)):
        poses.append(T)
    clip = encode_clip(tmp_path / "up.mp4", [render_room(p, K, W, H)[0] for p in poses])
    report = run_pipeline(clip, tmp_path / "scene")
    m = _complete(report.scene)
    lj = report.scene.layout()
    assert lj["gravity"]["floor_observed"] is False
    assert any("no floor plane seen" in w for w in m["stages"]["layout"]["warnings"])
    # z up: the true up (world +z) seen in the layout's world frame, through the cameras' rotations
    true_up_cam = [T[:3, :3] @ np.array([0.0, 0.0, 1.0]) for T in poses]
    frames = {f.source_frame: f for f in report.scene.cameras(frame="world") if f.registered}
    errs = [np.degrees(np.arccos(np.clip((f.cam_from_world[:3, :3] @ np.array([0.0, 0.0, 1.0])) @ true_up_cam[sf], -1, 1)))
            for sf, f in frames.items()]
    assert np.median(errs) < 5.0, np.round(errs, 1)
