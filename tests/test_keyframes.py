"""``keyframes`` stage on known camera motion in the synthetic room (:mod:`tests.fixtures.room`).

The main sequence is a camera translating sideways at constant speed in front of a flat wall: every visible
point is at the same depth ``D``, so the image motion is the same everywhere and known exactly,
``fx · step / D`` pixels per frame, and the keyframe spacing follows from the threshold.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from vid2scene.errors import RejectedInput
from vid2scene.scene import frame_name
from tests.fixtures.room import fast_config, intrinsics, linear_trajectory, render_room, run_stages, scene_from_images

W, H = 320, 240
K = intrinsics(W, H)
WALL_DEPTH_M = 2.5       # camera at y = 1.5 m looking at the +y wall of the 4 m deep room
STEP_M = 0.035           # sideways travel per frame
N = 40
PX_PER_FRAME = K[0, 0] * STEP_M / WALL_DEPTH_M   # ≈ 3.52 px
THRESHOLD = 0.05         # keyframes.min_disparity used here: 16 px of the 320 px long side


def _sideways(n: int = N, width: int = W, height: int = H, step_m: float = STEP_M) -> list[np.ndarray]:
    """Frames of a constant-speed sideways move; only the flat +y wall is in view (no furniture)."""
    K_ = intrinsics(width, height)
    start = np.array([1.8, 4.0 - WALL_DEPTH_M, 1.35])
    poses = linear_trajectory(n, start, start + [step_m * (n - 1), 0, 0], target_offset=(0, 1, 0))
    frames = []
    for p in poses:
        rgb, depth = render_room(p, K_, width, height, furniture=())
        assert np.allclose(depth, WALL_DEPTH_M, atol=1e-3)  # the premise of the expected motion
        frames.append(rgb)
    return frames


def _cfg(**keyframes):
    # 40 frames at 3.5 px/frame give 9 keyframes at THRESHOLD: lower min_keyframes (default 10).
    # The frames are a sequence saved as images: select by disparity, not every image.
    return fast_config(keyframes={"min_keyframes": 4, "min_disparity": THRESHOLD, "image_folder": "disparity",
                                  **keyframes})


@pytest.fixture(scope="module")
def sideways_scene(tmp_path_factory):
    scene = scene_from_images(tmp_path_factory.mktemp("keyframes") / "sideways", _sideways())
    run_stages(scene, _cfg(), "keyframes")
    return scene


def test_keyframe_count_and_spacing_follow_the_motion(sideways_scene):
    kf = sideways_scene.keyframes()
    records = kf["keyframes"]
    sf = [r["source_frame"] for r in records]
    assert sf == sorted(sf) and sf[0] == 0 and sf[-1] == N - 1
    assert [r["reason"] for r in records][0] == "first" and records[-1]["reason"] in ("last", "disparity")
    # A keyframe is taken at the first frame whose displacement reaches the threshold: every
    # ceil(16 px / 3.52 px) = 5 frames; the total motion over the threshold bounds the count from above.
    thr_px = THRESHOLD * W
    gap = math.ceil(thr_px / PX_PER_FRAME)
    total_px = PX_PER_FRAME * (N - 1)
    n_disp = sum(r["reason"] == "disparity" for r in records)
    assert (N - 1) // gap - 1 <= n_disp <= total_px / thr_px + 0.5, (n_disp, sf)
    # Roughly uniform: consecutive disparity keyframes are gap ± 1 frames apart.
    gaps = np.diff([r["source_frame"] for r in records if r["reason"] in ("first", "disparity")])
    assert np.all(np.abs(gaps - gap) <= 1), gaps
    # The recorded displacement is the true one (gap frames × 3.52 px) within 0.5 px.
    for r, g in zip([r for r in records if r["reason"] == "disparity"], gaps):
        assert r["disparity_rel"] >= THRESHOLD
        assert abs(r["disparity_rel"] * W - g * PX_PER_FRAME) < 0.5, (r, g)
        assert r["tracked_share"] > 0.5


def test_every_keyframe_has_a_reason_and_frames_holds_exactly_them(sideways_scene):
    kf = sideways_scene.keyframes()
    allowed = {"first", "disparity", "track_loss", "last"}
    assert all(r["reason"] in allowed for r in kf["keyframes"])
    assert sum(kf["reasons"].values()) == len(kf["keyframes"])
    files = sorted(p.name for p in sideways_scene.frames_dir.iterdir())
    assert files == sorted(frame_name(r["source_frame"]) for r in kf["keyframes"])
    img = sideways_scene.keyframe_image(kf["keyframes"][0]["source_frame"])
    assert img.shape == (H, W, 3) and (kf["width"], kf["height"]) == (W, H)
    assert kf["n_candidates"] == N and kf["capped"] is False
    assert sideways_scene.is_complete("keyframes")


def test_max_keyframes_cap(sideways_scene):
    # Reuse the ingested frames: re-run only keyframes with a cap of 4.
    cfg = _cfg(max_keyframes=4, min_keyframes=2)
    run_stages(sideways_scene, cfg, "keyframes", start="keyframes")
    kf = sideways_scene.keyframes()
    try:
        assert 2 <= len(kf["keyframes"]) <= 4
        assert kf["capped"] is True and kf["min_disparity"] > THRESHOLD
        assert len(list(sideways_scene.frames_dir.iterdir())) == len(kf["keyframes"])
    finally:  # leave the module fixture as the other tests expect it
        run_stages(sideways_scene, _cfg(), "keyframes", start="keyframes")


def test_rejected_frames_are_never_keyframes(tmp_path):
    frames = _sideways(30)
    bad = {5, 6, 10, 15, 20, 29}  # including one that would be a disparity keyframe, and the last frame
    for i in bad:
        frames[i] = cv2.GaussianBlur(frames[i], (0, 0), 4.0) if i % 2 else (frames[i] * 0.1).astype(np.uint8)
    scene = scene_from_images(tmp_path, frames)
    run_stages(scene, _cfg(), "keyframes")
    verdicts = {r["source_frame"]: r["verdict"] for r in scene.quality()["frames"]}
    assert {i for i, v in verdicts.items() if v != "ok"} == bad
    sf = [r["source_frame"] for r in scene.keyframes()["keyframes"]]
    assert not set(sf) & bad
    assert sf[0] == 0 and sf[-1] == 28  # the last *usable* frame closes the sequence


def test_letterbox_is_cropped_from_keyframes(tmp_path):
    top = 30
    frames = []
    for rgb in _sideways(24, W, H - 2 * top):
        canvas = np.zeros((H, W, 3), np.uint8)
        canvas[top: H - top] = rgb
        frames.append(canvas)
    scene = scene_from_images(tmp_path, frames)
    run_stages(scene, _cfg(), "keyframes")
    kf = scene.keyframes()
    crop = kf["crop"]
    assert abs(crop["top"] - top) <= 2 and abs(crop["bottom"] - top) <= 2
    h = H - crop["top"] - crop["bottom"]
    assert (kf["width"], kf["height"]) == (W, h)
    for r in kf["keyframes"]:
        img = scene.keyframe_image(r["source_frame"])
        assert img.shape[:2] == (h, W)
        assert img[:2].mean() > 30 and img[-2:].mean() > 30  # no black rows left


def test_static_camera_is_rejected(tmp_path):
    rng = np.random.default_rng(1)
    still = _sideways(1)[0]
    frames = [np.clip(still + rng.normal(0, 2.0, still.shape), 0, 255).astype(np.uint8) for _ in range(30)]
    scene = scene_from_images(tmp_path, frames)
    # Sensor noise alone would make quality call the frames 'frozen'; switch that off so keyframes decides.
    cfg = fast_config(quality={"frozen_max_diff": 0.0})
    run_stages(scene, cfg, "quality")
    assert scene.quality()["counts"] == {"ok": 30}
    with pytest.raises(RejectedInput, match="insufficient camera motion"):
        run_stages(scene, cfg, "keyframes", start="keyframes")
    m = scene.read_manifest()
    assert m["stages"]["keyframes"]["status"] == "failed"
    assert m["failure"]["error_type"] == "RejectedInput" and m["status"] != "complete"
    assert not scene.keyframes_json.exists()
