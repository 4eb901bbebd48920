"""The Gaussian-splatting renderer: a single Gaussian's footprint, gradients against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vid2scene.adapt import render as R


def _K(f=100.0, cx=32.0, cy=24.0, dtype=torch.float64):
    return torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1.0]], dtype=dtype)


def test_single_gaussian_renders_at_its_pixel_with_its_footprint():
    K, T = _K(), torch.eye(4, dtype=torch.float64)
    mean = torch.tensor([[0.1, -0.05, 2.0]], dtype=torch.float64)
    sigma = torch.tensor([0.06], dtype=torch.float64)
    out = R.render(mean, sigma, torch.ones(1, 3, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                   K, T, 64, 48, eps2d=0.3)
    a = out["alpha"].numpy()
    assert a.max() == pytest.approx(0.5, abs=0.01)
    vs, us = np.mgrid[0:48, 0:64] + 0.5
    w = a / a.sum()
    mu = np.array([(w * us).sum(), (w * vs).sum()])
    assert mu == pytest.approx([37.0, 21.5], abs=1e-3)           # f·x/z + c
    cov = np.array([[(w * (us - mu[0]) ** 2).sum(), (w * (us - mu[0]) * (vs - mu[1])).sum()],
                    [(w * (us - mu[0]) * (vs - mu[1])).sum(), (w * (vs - mu[1]) ** 2).sum()]])
    x, y, z, f, s = 0.1, -0.05, 2.0, 100.0, 0.06
    J = np.array([[f / z, 0, -f * x / z ** 2], [0, f / z, -f * y / z ** 2]])
    expected = s ** 2 * J @ J.T + 0.3 * np.eye(2)
    assert cov == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert np.sqrt(cov[0, 0]) == pytest.approx(np.sqrt(0.3 + (s * f / z) ** 2 * (1 + (x / z) ** 2)), rel=1e-3)
    assert out["image"].numpy()[..., 0] == pytest.approx(a)
    assert (out["depth"].numpy() / np.maximum(a, 1e-12))[21, 37] == pytest.approx(2.0)
    # behind the camera: nothing
    back = R.render(-mean, sigma, torch.ones(1, 3, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                    K, T, 64, 48)
    assert float(back["alpha"].abs().max()) == 0.0


def test_front_to_back_compositing_occludes():
    K, T = _K(100.0, 31.5, 23.5), torch.eye(4, dtype=torch.float64)  # the axis hits pixel (31, 23)'s centre
    means = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # far first in the list
    cols = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    out = R.render(means, torch.tensor([0.05, 0.02], dtype=torch.float64), cols,
                   torch.tensor([0.99, 0.99], dtype=torch.float64), K, T, 64, 48)
    c = out["image"][23, 31].numpy()
    assert c[1] > 0.95 and c[0] < 0.05


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    K = _K(12.0, 3.5, 2.5)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, 3] = torch.tensor([0.05, -0.02, 0.1], dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0, 1.0], [0.05, 0.03, 1.3], [-0.06, 0.02, 1.6]], dtype=torch.float64,
                         requires_grad=True)
    sig = torch.tensor([0.05, 0.07, 0.06], dtype=torch.float64, requires_grad=True)
    col = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    op = torch.tensor([0.6, 0.5, 0.7], dtype=torch.float64, requires_grad=True)

    def f(mu, s, c, o):
        out = R.render(mu, s, c, o, K, T, 7, 5, chunk=11)
        return out["image"], out["depth"], out["alpha"]

    assert torch.autograd.gradcheck(f, (means, sig, col, op), eps=1e-6, atol=1e-3, rtol=1e-3)


def test_depth_to_render_gradients_match_finite_differences():
    torch.manual_seed(1)
    K = _K(4.0, 1.5, 1.5)
    depth = (1.0 + 0.1 * torch.rand(3, 3, dtype=torch.float64)).requires_grad_(True)
    img = torch.rand(3, 3, 1, dtype=torch.float64)
    T_tgt = torch.eye(4, dtype=torch.float64)
    T_tgt[:3, 3] = torch.tensor([0.08, 0.0, 0.0], dtype=torch.float64)

    def f(d):
        g = R.gaussians_from_depth(d, img, K, torch.eye(4, dtype=torch.float64), sigma_px=0.8)
        return R.render(g["means"], g["sigmas"], g["colors"], g["opacities"], K, T_tgt, 3, 3)["image"]

    assert torch.autograd.gradcheck(f, (depth,), eps=1e-6, atol=1e-3, rtol=1e-3)


def test_gaussians_from_depth_back_project_pixel_centres():
    K = _K(10.0, 2.0, 1.5, torch.float32)
    d = torch.full((3, 4), 2.0)
    g = R.gaussians_from_depth(d, torch.zeros(3, 4, 3), K, torch.eye(4), stride=1)
    assert g["means"].shape == (12, 3)
    assert g["means"][0].tolist() == pytest.approx([(0.5 - 2.0) / 10 * 2, (0.5 - 1.5) / 10 * 2, 2.0])
    assert float(g["sigmas"][0]) == pytest.approx(0.7 * 2.0 / 10)
