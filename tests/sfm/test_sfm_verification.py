"""Two-view verification options: the RANSAC trial cap still verifies a weak pair (a loop closure with a third
of its raw matches right), and the stage's options reach COLMAP's."""

from __future__ import annotations

import numpy as np
import pycolmap

import vid2scene.sfm as sfm
from vid2scene.sfm.features import verify_pairs

W, H, F = 640, 480, 500.0


def _weak_pair_database(tmp_path, n_true: int = 40, n_false: int = 80, seed: int = 3):
    """Database with two views of random points 2–6 m away, the second 0.5 m to the side and turned 10°:
    ``n_true`` correct raw matches and ``n_false`` random ones (inlier ratio 1/3)."""
    rng = np.random.default_rng(seed)
    pts = np.c_[rng.uniform(-2, 2, n_true), rng.uniform(-1.5, 1.5, n_true), rng.uniform(2, 6, n_true)]
    a = np.deg2rad(10)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    t = np.array([-0.5, 0.0, 0.1])
    K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]])

    def proj(X):
        x = X @ K.T
        return x[:, :2] / x[:, 2:]

    kp0 = np.vstack([proj(pts), rng.uniform([0, 0], [W, H], (n_false, 2))]).astype(np.float32)
    kp1 = np.vstack([proj(pts @ R.T + t), rng.uniform([0, 0], [W, H], (n_false, 2))]).astype(np.float32)
    kp1[:n_true] += rng.normal(0, 0.5, (n_true, 2)).astype(np.float32)
    tmp_path.mkdir(parents=True, exist_ok=True)
    db_path = tmp_path / "db.db"
    db = pycolmap.Database.open(str(db_path))
    cam = pycolmap.Camera(model="SIMPLE_RADIAL", width=W, height=H, params=[F, W / 2, H / 2, 0.0])
    cam_id = db.write_camera(cam)
    ids = []
    for name, kp in (("a.png", kp0), ("b.png", kp1)):
        im = pycolmap.Image(name=name, camera_id=cam_id)
        ids.append(db.write_image(im))
        db.write_keypoints(ids[-1], kp)
    n = n_true + n_false
    matches = np.c_[np.arange(n), np.r_[np.arange(n_true), n_true + rng.permutation(n_false)]].astype(np.uint32)
    db.write_matches(ids[0], ids[1], matches)
    db.close()
    (tmp_path / "pairs.txt").write_text("a.png b.png\n")
    return db_path, tmp_path / "pairs.txt", ids


def test_verification_options_carry_the_stage_options():
    vo = sfm.verification_options(sfm.Config(verify_max_trials=500, verify_max_error_px=3.0), 20, 0.1)
    assert vo.ransac.max_num_trials == 500 and vo.ransac.max_error == 3.0
    assert vo.min_num_inliers == 20 and vo.min_inlier_ratio == 0.1


def test_default_trial_cap_still_verifies_a_pair_with_one_third_inliers(tmp_path):
    """COLMAP's 10000 trials cost most on pairs that cannot verify; the stage's cap (2000) must still verify
    a weak true pair: 40 right raw matches among 120, five random scenes. (At 100–300 trials most of these
    pairs come out with 0–14 true inliers; at 10000, 38–40; at 2000, 30–40.)"""
    vo = sfm.verification_options(sfm.Config(), 15, 0.0)
    for scene_seed in range(5):
        db_path, txt, ids = _weak_pair_database(tmp_path / str(scene_seed), seed=scene_seed)
        verify_pairs(db_path, txt, vo)
        db = pycolmap.Database.open(str(db_path))
        geom = db.read_two_view_geometry(ids[0], ids[1])
        db.close()
        inl = np.asarray(geom.inlier_matches).reshape(-1, 2)
        assert len(inl), scene_seed
        # most of the 40 true matches; a few random ones fall within 4 px of an epipolar line
        assert (inl[:, 0] < 40).sum() >= 30 and (inl[:, 0] >= 40).sum() <= 10, (scene_seed, inl[:, 0])
