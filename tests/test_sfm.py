"""``sfm`` stage: poses and points recovered from the synthetic room (:mod:`tests.fixtures.room`) up to Sim(3).

A 36-frame walk (2.6 m along the room, ±0.25 m sway, 40° of yaw, furniture for parallax) is rendered at
320×240 and run through ingest → shots → quality → keyframes → sfm. The recovered camera centres are aligned
to the true ones with a Sim(3) (``pycolmap.estimate_sim3d``, Umeyama); errors are then in metres and degrees.
"""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest

from vid2scene.errors import StageFailed
from vid2scene.io import cam_from_world_from_opengl
from vid2scene.sfm import Config as SfmConfig
from vid2scene.sfm import bow_vectors, check_qc, loop_pairs, sequential_pairs
from vid2scene.geometry import camera_center
from tests.fixtures.room import (ROOM, fast_config, intrinsics, look_at, render_room, room_surface_distance, run_stages,
                                 scene_from_images, walk_trajectory)

W, H = 320, 240
N = 36
K_TRUE = intrinsics(W, H)


def _rot_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def _cfg(**sfm):
    # 36 frames of a 2.6 m walk: a 2% disparity threshold gives ~15 keyframes (the default 5% gives ~6).
    # Loop closure is off here: a one-way walk has no revisits, and the BoW vocabulary costs seconds
    # (test_loop_closure_on_a_walk_that_returns exercises it).
    return fast_config(keyframes={"min_disparity": 0.02, "min_keyframes": 8},
                       sfm={"loop_closure": False, **sfm})


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    poses = walk_trajectory(N)
    frames = [render_room(p, K_TRUE, W, H)[0] for p in poses]
    return poses, frames, tmp_path_factory.mktemp("sfm")


def _reconstruct(walk, name: str, cfg):
    poses, frames, root = walk
    scene = scene_from_images(root / name, frames)
    results = run_stages(scene, cfg, "sfm")
    return scene, results["sfm"], poses


@pytest.fixture(scope="module")
def estimated(walk):
    """Intrinsics estimated by bundle adjustment (SIMPLE_RADIAL)."""
    return _reconstruct(walk, "estimated", _cfg())


@pytest.fixture(scope="module")
def known(walk):
    """Intrinsics given (PINHOLE, fixed in bundle adjustment)."""
    K = K_TRUE
    return _reconstruct(walk, "known", _cfg(known_intrinsics=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]]))


def _aligned(scene, poses):
    """(registered CameraFrames, Sim3d gt_from_sfm, aligned centres, true centres)."""
    reg = [c for c in scene.cameras() if c.registered]
    est = np.array([c.center_in_world for c in reg])
    gt = np.array([camera_center(poses[c.source_frame]) for c in reg])
    sim = pycolmap.estimate_sim3d(est, gt)
    assert sim is not None
    M = sim.matrix()
    return reg, sim, est @ M[:3, :3].T + M[:3, 3], gt


def test_renderer_geometry_is_what_the_tests_assume():
    """The ground truth itself: look_at's OpenCV axes, and rendered depth lying on the scene's surfaces."""
    eye, target = np.array([1.0, 1.0, 1.5]), np.array([3.0, 3.5, 0.8])
    T = look_at(eye, target)
    np.testing.assert_allclose(camera_center(T), eye, atol=1e-12)
    x = K_TRUE @ (T[:3, :3] @ target + T[:3, 3])
    np.testing.assert_allclose(x[:2] / x[2], [W / 2, H / 2], atol=1e-9)  # target at the principal point
    assert (T[:3, :3] @ [0, 0, 1])[1] < 0  # world up is image up (camera -y)
    _, depth = render_room(T, K_TRUE, W, H)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)  # COLMAP pixel centres
    pts_cam = np.stack([(u - K_TRUE[0, 2]) / K_TRUE[0, 0] * depth, (v - K_TRUE[1, 2]) / K_TRUE[1, 1] * depth,
                        depth], axis=-1).reshape(-1, 3)
    Tinv = np.linalg.inv(T)
    assert room_surface_distance(pts_cam @ Tinv[:3, :3].T + Tinv[:3, 3]).max() < 1e-3


@pytest.mark.parametrize("which", ["estimated", "known"])
def test_poses_match_truth_up_to_sim3(which, request):
    scene, result, poses = request.getfixturevalue(which)
    cams = scene.cameras()
    n_kf = len(scene.keyframes()["keyframes"])
    assert len(cams) == n_kf >= 10
    reg, sim, aligned, gt = _aligned(scene, poses)
    assert len(reg) / n_kf >= 0.9
    assert result.qc["registered_share"] >= 0.9
    # ATE: RMSE of aligned centres below 1% of the distance walked between the keyframes.
    path_m = np.linalg.norm(np.diff(gt, axis=0), axis=1).sum()
    ate_m = float(np.sqrt(((aligned - gt) ** 2).sum(axis=1).mean()))
    assert path_m > 2.5
    assert ate_m < 0.01 * path_m, (ate_m, path_m)
    # Orientation after the same alignment: cam_from_gt = cam_from_sfm · sfm_from_gt.
    R_align = sim.rotation.matrix()
    rot_err = [_rot_deg(c.cam_from_world[:3, :3] @ R_align.T @ poses[c.source_frame][:3, :3].T) for c in reg]
    assert max(rot_err) < 1.0, rot_err
    # Gauge-free check: relative rotations between all pairs of keyframes.
    rel_err = [_rot_deg((a.cam_from_world[:3, :3] @ b.cam_from_world[:3, :3].T)
                        @ (poses[a.source_frame][:3, :3] @ poses[b.source_frame][:3, :3].T).T)
               for i, a in enumerate(reg) for b in reg[i + 1:]]
    assert max(rel_err) < 1.0
    assert result.qc["mean_reprojection_error_px"] < 1.0


def test_estimated_focal_length_within_2_percent(estimated):
    scene, result, _ = estimated
    f = scene.cameras()[0].K[0, 0]
    assert abs(f / K_TRUE[0, 0] - 1) < 0.02, f
    assert result.qc["camera"]["model"] == "SIMPLE_RADIAL"


def test_known_intrinsics_are_kept(known):
    scene, result, _ = known
    for c in scene.cameras():
        np.testing.assert_allclose(c.K, K_TRUE, atol=1e-6)
    assert result.qc["camera"]["model"] == "PINHOLE"


def test_loop_closure_on_a_walk_that_returns(tmp_path):
    """Out along the room and back the same way: the way back revisits the views of the way out, more than
    ``sequential_overlap`` keyframes later, so retrieval must add loop pairs; the model stays accurate."""
    n = 30
    a, b = np.array([1.2, 0.9, 1.5]), np.array([3.4, 1.1, 1.5])
    poses = []
    for i in range(n):
        e = 0.5 - 0.5 * np.cos(2 * np.pi * i / (n - 1))  # 0 → 1 → 0
        pos = a + e * (b - a) + [0, 0, 0.15 * np.sin(2 * np.pi * i / (n - 1))]
        yaw = np.radians(80 + 20 * e)
        poses.append(look_at(pos, pos + [np.cos(yaw), np.sin(yaw), -0.12]))
    scene = scene_from_images(tmp_path, [render_room(p, K_TRUE, W, H)[0] for p in poses])
    # Few features keep the per-scene vocabulary quick to build.
    # The frames come from an image folder (kind "images"): force the video pairing.
    cfg = _cfg(loop_closure=True, loop_min_gap=8, loop_candidates=2, sequential_overlap=6,
               max_num_features=256, pairing="sequential")
    cfg.keyframes.min_disparity = 0.05  # the default: ~12 keyframes, the way back ~6-11 keyframes later
    result = run_stages(scene, cfg, "sfm")["sfm"]
    assert result.qc["n_loop_pairs"] > 0
    reg, _, aligned, gt = _aligned(scene, poses)
    assert len(reg) / len(scene.cameras()) >= 0.9
    ate_m = float(np.sqrt(((aligned - gt) ** 2).sum(axis=1).mean()))
    assert ate_m < 0.01 * np.linalg.norm(np.diff(gt, axis=0), axis=1).sum()


def test_cameras_json_schema(estimated):
    scene, _, _ = estimated
    d = json.loads(scene.cameras_json.read_text())
    assert d["convention"] == "opencv" and d["world"] == "sfm"
    keyframes = scene.keyframes()["keyframes"]
    assert [f["source_frame"] for f in d["frames"]] == [k["source_frame"] for k in keyframes]
    for f, k in zip(d["frames"], keyframes):
        assert f["name"] == f"{k['source_frame']:06d}.jpg"
        assert f["timestamp_s"] == pytest.approx(k["timestamp_s"])
        assert (f["width"], f["height"]) == (W, H)
        K = np.asarray(f["K"])
        assert K.shape == (3, 3) and K[2].tolist() == [0, 0, 1] and K[0, 1] == 0 and K[1, 0] == 0
        assert isinstance(f["registered"], bool)
        if f["registered"]:
            T = np.asarray(f["cam_from_world"])
            assert T.shape == (4, 4) and T[3].tolist() == [0, 0, 0, 1]
            np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
            assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)
        else:
            assert "cam_from_world" not in f


def test_sparse_points_lie_on_the_room_surfaces(estimated):
    scene, result, poses = estimated
    cloud = scene.sparse_points()
    pts, cols = cloud.points, cloud.colors
    assert len(pts) == result.qc["n_points"] >= 500
    assert cols is not None and cols.shape == pts.shape
    _, sim, _, _ = _aligned(scene, poses)
    M = sim.matrix()
    dist_m = room_surface_distance(pts @ M[:3, :3].T + M[:3, 3])
    # Median within 1% of the room's smallest side (2.7 cm); measured ~0.5 cm.
    assert np.median(dist_m) < 0.01 * min(ROOM), np.median(dist_m)
    assert np.mean(dist_m < 0.05) > 0.8


def test_transforms_json_round_trips(estimated):
    scene, _, _ = estimated
    d = json.loads(scene.transforms_json.read_text())
    by_name = {c.name: c for c in scene.cameras()}
    reg = [c for c in by_name.values() if c.registered]
    assert len(d["frames"]) == len(reg)
    K = reg[0].K
    assert (d["fl_x"], d["fl_y"], d["cx"], d["cy"]) == pytest.approx((K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    assert (d["w"], d["h"]) == (W, H)
    for f in d["frames"]:
        cam = by_name[f["file_path"].split("/")[-1]]
        assert f["file_path"] == f"frames/{cam.name}" and f["source_frame"] == cam.source_frame
        np.testing.assert_allclose(cam_from_world_from_opengl(np.asarray(f["transform_matrix"])),
                                   cam.cam_from_world, atol=1e-9)
        # OpenGL camera-to-world: its translation is the camera centre, its -z column the viewing direction.
        c2w = np.asarray(f["transform_matrix"])
        np.testing.assert_allclose(c2w[:3, 3], cam.center_in_world, atol=1e-9)
        np.testing.assert_allclose(-c2w[:3, 2], cam.cam_from_world[2, :3], atol=1e-9)


def test_sfm_model_on_disk_matches_cameras_json(estimated):
    scene, _, _ = estimated
    rec = scene.reconstruction()
    cams = {c.name: c for c in scene.cameras()}
    assert rec.num_reg_images() == sum(c.registered for c in cams.values())
    for im in rec.images.values():
        T = np.asarray(im.cam_from_world().matrix())
        np.testing.assert_allclose(T, cams[im.name].cam_from_world[:3], atol=1e-6)


def test_manifest_records_complete_sfm(estimated):
    scene, result, _ = estimated
    m = scene.read_manifest()
    assert m["stages"]["sfm"]["status"] == "complete"
    assert m["qc"]["sfm"]["n_registered"] == result.qc["n_registered"]
    assert m["failure"] is None


# ---------------------------------------------------------------------------------------------------------
# failure path
# ---------------------------------------------------------------------------------------------------------
def _textureless(n: int = 24, seed: int = 0) -> list[np.ndarray]:
    """Flat grey frames with sensor noise; a slow brightness ramp keeps quality from calling them 'frozen'."""
    rng = np.random.default_rng(seed)
    return [np.clip(110 + i + rng.normal(0, 3.0, (H, W, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)
            for i in range(n)]


def _assert_failed_cleanly(scene, err):
    reason = str(err)
    assert "\n" not in reason and reason.startswith("sfm: ")
    m = scene.read_manifest()
    assert m["status"] != "complete" and m["status"] == "failed"
    assert m["stages"]["sfm"]["status"] == "failed"
    assert m["failure"]["stage"] == "sfm" and m["failure"]["exit_code"] == 4
    assert m["failure"]["reason"] == reason
    for out in (scene.cameras_json, scene.sparse_points_ply, scene.transforms_json, scene.sfm_dir):
        assert not out.exists(), out
    assert not list(scene.root.glob(".sfm_work.*"))  # the temporary work folder is removed


def test_textureless_keyframes_fail_with_a_reason(tmp_path):
    scene = scene_from_images(tmp_path, _textureless())
    cfg = fast_config(keyframes={"min_keyframes": 4}, quality={"indoor": {"enabled": False}}, sfm={"loop_closure": False})
    run_stages(scene, cfg, "keyframes")
    assert len(scene.keyframes()["keyframes"]) >= 4  # the frames get through to sfm
    with pytest.raises(StageFailed) as ei:
        run_stages(scene, cfg, "sfm", start="sfm")
    assert "no model" in str(ei.value) or "poor reconstruction" in str(ei.value)
    assert "internal error" not in str(ei.value)
    _assert_failed_cleanly(scene, ei.value)


def test_textureless_keyframes_fail_with_a_reason_with_loop_closure(tmp_path):
    scene = scene_from_images(tmp_path, _textureless())
    cfg = fast_config(keyframes={"min_keyframes": 4}, quality={"indoor": {"enabled": False}},
                      sfm={"loop_closure": True, "max_num_features": 512})
    run_stages(scene, cfg, "keyframes")
    with pytest.raises(StageFailed) as ei:
        run_stages(scene, cfg, "sfm", start="sfm")
    _assert_failed_cleanly(scene, ei.value)
    assert "internal error" not in str(ei.value)


def test_qc_thresholds_name_the_figure():
    qc = {"n_keyframes": 20, "n_registered": 10, "registered_share": 0.5, "mean_reprojection_error_px": 3.1,
          "mean_track_length": 2.1, "n_points": 50}
    with pytest.raises(StageFailed) as ei:
        check_qc(qc, SfmConfig())
    msg = str(ei.value)
    for part in ("registered 10/20", "50% < 60%", "reprojection error 3.10 px > 2.0", "track length 2.10 < 2.5",
                 "50 points < 200"):
        assert part in msg, msg
    check_qc(dict(qc, registered_share=0.9, n_registered=18, mean_reprojection_error_px=0.5,
                mean_track_length=4.0, n_points=900), SfmConfig())  # passes: no exception


# ---------------------------------------------------------------------------------------------------------
# pairing
# ---------------------------------------------------------------------------------------------------------
def test_sequential_pairs():
    assert sequential_pairs(4, 1, quadratic=False) == {(0, 1), (1, 2), (2, 3)}
    assert sequential_pairs(1, 5) == set()
    p = sequential_pairs(40, 3, quadratic=True)
    assert all(0 <= i < j < 40 for i, j in p)
    # every neighbour within the overlap, plus i + 4, 8, 16, 32 (powers of two beyond the overlap)
    expected = {(i, i + d) for i in range(40) for d in (1, 2, 3, 4, 8, 16, 32) if i + d < 40}
    assert p == expected
    assert (0, 5) not in p and (0, 32) in p and (7, 39) in p


def test_loop_pairs_finds_a_known_revisit():
    rng = np.random.default_rng(0)
    n = 20
    v = rng.normal(size=(n, 64))
    v[17] = v[2] + 0.05 * rng.normal(size=64)  # keyframe 17 sees the place of keyframe 2 again
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pairs = loop_pairs(v.astype(np.float32), k=1, min_gap=5)
    assert (2, 17) in pairs
    assert all(j - i >= 5 for i, j in pairs)
    # the revisit is the best partner of both ends, and nothing closer than min_gap is ever paired
    assert loop_pairs(v, k=1, min_gap=15) >= {(2, 17)}
    assert loop_pairs(v, k=1, min_gap=16) & {(2, 17)} == set()  # 15 apart: too close for min_gap=16
    assert loop_pairs(v, k=3, min_gap=16) <= {(i, j) for i in range(n) for j in range(i + 16, n)}
    assert loop_pairs(v, k=0, min_gap=5) == set() and loop_pairs(v, k=2, min_gap=n) == set()


def test_bow_vectors_retrieve_a_revisit_from_descriptors():
    """8 'places', each seen as noisy copies of 5 of 40 prototype descriptors; keyframe 6 revisits place 1."""
    rng = np.random.default_rng(3)
    prototypes = rng.integers(0, 256, size=(40, 128)).astype(np.float64)
    place_words = [rng.choice(40, size=5, replace=False) for _ in range(8)]
    place_words[6] = place_words[1]
    descs = [np.clip(prototypes[rng.choice(w, size=100)] + rng.normal(0, 6, (100, 128)), 0, 255).astype(np.uint8)
             for w in place_words]
    v = bow_vectors(descs, n_words=64, seed=0)
    assert v.shape[0] == 8 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    sim6 = v @ v[6]
    sim6[6] = -1
    assert int(np.argmax(sim6)) == 1
    assert sim6[1] > 0.9 and np.delete(sim6, [1, 6]).max() < 0.5
    assert (1, 6) in loop_pairs(v, k=1, min_gap=3)
