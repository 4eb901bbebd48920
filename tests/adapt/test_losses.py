"""Anchor selection and the adaptation losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vid2scene.adapt import anchors as A
from vid2scene.adapt import losses as L
from vid2scene.geometry import apply_transform
from tests.fixtures.adapt_rooms import random_sim3, room_scene


@pytest.mark.parametrize("seed", range(5))
def test_anchor_loss_is_zero_for_a_consistent_point_map_under_any_sim3(seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (200, 3))
    S = random_sim3(seed + 100)
    pts = torch.tensor(apply_transform(S, X), requires_grad=True)
    loss = L.anchor_loss(pts, torch.tensor(X))
    assert float(loss.detach()) < 1e-12
    noisy = pts.detach() + 0.05 * torch.randn(200, 3, dtype=torch.float64)
    noisy.requires_grad_(True)
    bad = L.anchor_loss(noisy, torch.tensor(X))
    assert float(bad.detach()) > 1e-5
    bad.backward()
    assert torch.isfinite(noisy.grad).all() and float(noisy.grad.abs().sum()) > 0


def test_huber_and_ssim():
    r = torch.tensor([0.0, 0.01, 0.05, 0.2])
    assert L.huber(r, 0.05).tolist() == pytest.approx([0, 0.5e-4, 1.25e-3, 0.05 * (0.2 - 0.025)])
    x = torch.rand(12, 10, 3)
    assert L.ssim(x, x).min() == pytest.approx(1.0, abs=1e-5)
    m = torch.ones(12, 10, dtype=torch.bool)
    assert float(L.photometric_loss(x, x, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.photometric_loss(x, 1 - x, m)) > 0.1
    d = torch.rand(5, 5) + 1
    assert float(L.distillation_loss(d, d)) == 0.0
    assert float(L.distillation_loss(2 * d, d)) == pytest.approx(np.log(2), rel=1e-5)


def test_sample_at_pixel_centres():
    img = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    uv = torch.tensor([[0.5, 0.5], [3.5, 2.5], [1.0, 0.5]])
    assert L.sample_at(img, uv).tolist() == pytest.approx([0.0, 11.0, 0.5], abs=1e-5)


def test_triangulation_angle():
    c = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.9, 0.1, 0]])
    assert A.triangulation_angle_deg(np.zeros(3), c) == pytest.approx(90.0)
    assert A.triangulation_angle_deg(np.zeros(3), c[:1]) == 0.0


def test_scene_anchors_filter_tracks_errors_angles(tmp_path):
    case = room_scene(tmp_path / "room", n=6, w=48, h=36, n_points=60)
    rec = case.scene.reconstruction()
    anchors = A.scene_anchors(case.scene)
    assert sorted(anchors) == list(range(6))
    ids = set(np.concatenate([a.point_ids for a in anchors.values()]).tolist())
    assert ids and all(rec.points3D[i].track.length() >= 3 for i in ids)
    for sf, a in anchors.items():
        T = case.poses[sf]
        Xw = apply_transform(np.linalg.inv(case.sfm_from_world), a.xyz)
        zc = (Xw @ T[:3, :3].T + T[:3, 3])[:, 2]
        assert a.depth == pytest.approx(zc * 0.5, rel=1e-6)           # SfM units = 0.5 per metre
        assert case.true_depth[sf][a.uv[:, 1].astype(int), a.uv[:, 0].astype(int)] == pytest.approx(zc, rel=0.03)
    strict = A.scene_anchors(case.scene, max_error_px=0.4)
    assert sum(len(a) for a in strict.values()) == 0
    wide = A.scene_anchors(case.scene, min_angle_deg=60.0)
    assert sum(len(a) for a in wide.values()) < sum(len(a) for a in anchors.values())


def test_anchor_loss_without_alignment_sees_a_scale_drift():
    X = np.random.default_rng(0).uniform(1, 3, (100, 3))
    a = torch.tensor(X)
    assert float(L.anchor_loss(a.clone(), a, align="none")) == 0.0
    assert float(L.anchor_loss(1.1 * a, a, align="none")) > 1e-3       # scale drift is penalised
    assert float(L.anchor_loss(1.1 * a, a, align="sim3")) < 1e-12      # the Sim(3) fit absorbs it
