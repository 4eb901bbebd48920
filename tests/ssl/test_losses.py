"""LAM3C losses and the Sonata objective: exact values on hand-built inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vid2scene.ssl.losses import (distillation_loss, huber, knn, laplacian_smoothing_loss, laplacian_weight,
                                  nearest_match, noise_consistency_loss, sinkhorn_knopp)

# six points on a line (m): neighbours at 0.02-0.05 m, a pair 0.20 m away (beyond the 0.08 m cut), an isolated one
X = [0.0, 0.02, 0.05, 0.11, 0.30, 0.33]
Z = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.4], [1.5, 0.0], [2.0, 2.0], [2.0, 2.1]]


def _hand_laplacian(xs, zs, k, cut, delta):
    """The loss written out point by point with plain Python floats."""
    n = len(xs)
    dists = [sorted(abs(xs[i] - xs[j]) for j in range(n)) for i in range(n)]
    kth = sorted(d[k - 1] for d in dists)
    med = kth[(n - 1) // 2]  # torch.median: the lower of the two middle values
    sigma2 = math.sqrt(med) ** 2
    terms = []
    for i in range(n):
        order = sorted(range(n), key=lambda j: (abs(xs[i] - xs[j]), j))[:k]
        num = den = 0.0
        for j in order:
            d = abs(xs[i] - xs[j])
            if j == i or d >= cut:
                continue
            w = math.exp(-d * d / sigma2)
            r = math.dist(zs[i], zs[j])
            h = 0.5 * r * r if r <= delta else delta * (r - 0.5 * delta)
            num += w * h
            den += w
        if den > 0:
            terms.append(num / den)
    return sum(terms) / len(terms)


def _line(xs):
    return torch.tensor([[x, 0.0, 0.0] for x in xs], dtype=torch.float64)


def test_laplacian_matches_hand_computation():
    coord, z = _line(X), torch.tensor(Z, dtype=torch.float64)
    got = laplacian_smoothing_loss(coord, z, k=3, cut=0.08, delta=0.5)
    want = _hand_laplacian(X, Z, 3, 0.08, 0.5)
    assert float(got) == pytest.approx(want, rel=1e-12)
    # by hand: 3rd-neighbour distances (self included) .05 .03 .05 .09 .19 .22 → median (lower) .05 = σ²;
    # edges cut: 3–1 (.09 m), 4–3, 5–3; w = exp(−d²/.05). Point terms: L0 = (e(.02)·.045 + e(.05)·.125)/(e(.02)
    # + e(.05)) = .084160, L1 = .062413, L2 = .102140, L3 = huber(√1.6) = .5(√1.6 − .25) = .507456 (linear part),
    # L4 = L5 = .1²/2 = .005; mean = .1276947
    assert want == pytest.approx(0.1276946978, abs=1e-9)
    assert float(got) == pytest.approx(0.1276946978229853, rel=1e-12)


def test_laplacian_cut_self_edges_and_degree_normalisation():
    coord = _line([0.0, 0.05, 0.5])  # the third point has no edge below 0.08 m: excluded from the mean
    z = torch.tensor([[0.0], [0.2], [100.0]], dtype=torch.float64)
    got = laplacian_smoothing_loss(coord, z, k=3, cut=0.08, delta=0.5)
    assert float(got) == pytest.approx(0.5 * 0.2 ** 2, rel=1e-12)  # one edge each way, w / w = 1
    # scaling all weights (σ) does not change a single-edge point's term: degree normalisation
    assert float(laplacian_smoothing_loss(coord * 1.5, z, k=3, cut=0.2, delta=0.5)) == pytest.approx(0.02)


def test_laplacian_zero_for_constant_embeddings_and_finite_gradient():
    g = torch.Generator().manual_seed(0)
    coord = torch.rand(200, 3, generator=g) * 0.5
    z = torch.ones(200, 8, requires_grad=True)
    loss = laplacian_smoothing_loss(coord, z, k=24)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_laplacian_mean_per_sample_then_batch():
    a, b = _line(X), _line([0.0, 0.05, 0.5])
    za = torch.tensor(Z, dtype=torch.float64)
    zb = torch.tensor([[0.0, 0.0], [0.2, 0.0], [100.0, 0.0]], dtype=torch.float64)
    batch = torch.tensor([0] * 6 + [1] * 3)
    got = laplacian_smoothing_loss(torch.cat([a, b]), torch.cat([za, zb]), batch, k=3)
    want = 0.5 * (_hand_laplacian(X, Z, 3, 0.08, 0.5) + 0.02)
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_huber():
    r = torch.tensor([0.0, 0.25, 0.5, 2.0])
    assert torch.allclose(huber(r, 0.5), torch.tensor([0.0, 0.03125, 0.125, 0.875]))


def test_consistency_is_two_minus_two_cos_and_ignores_far_pairs():
    s_coord = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]])
    t_coord = torch.tensor([[0.1, 0, 0], [1.3, 0, 0], [5.5, 0, 0]])  # the third is 0.5 m away: no pair
    zero = torch.zeros(3, dtype=torch.long)
    si, ti = nearest_match(s_coord, t_coord, zero, zero, 0.32)
    assert si.tolist() == [0, 1] and ti.tolist() == [0, 1]
    s = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]], requires_grad=True)
    t = torch.tensor([[2.0, 2.0], [0.0, -1.0], [-1.0, -1.0]])
    got = noise_consistency_loss(s, t, si, ti)
    cos = [1 / math.sqrt(2), -1.0]
    assert float(got.detach()) == pytest.approx(np.mean([2 - 2 * c for c in cos]), rel=1e-6)
    got.backward()
    assert s.grad[2].abs().sum() == 0  # the unmatched point gets no gradient
    assert float(noise_consistency_loss(s, t, si[:0], ti[:0])) == 0.0


def test_nearest_match_stays_within_sample():
    s = torch.tensor([[0.0, 0, 0], [0.0, 0, 0]])
    t = torch.tensor([[0.01, 0, 0], [0.2, 0, 0]])
    si, ti = nearest_match(s, t, torch.tensor([0, 1]), torch.tensor([0, 1]), 0.32)
    assert ti.tolist() == [0, 1]


def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 16, generator=g)
    q = sinkhorn_knopp(logits, 0.1, iters=3)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)  # every sample a distribution
    q = sinkhorn_knopp(logits, 0.1, iters=300)
    assert torch.allclose(q.sum(0), torch.full((16,), 64 / 16), atol=1e-3)  # balanced prototypes
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)


def test_sinkhorn_one_iteration_by_hand():
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    T = 0.5
    p = torch.exp(logits / T).t()
    p = p / p.sum()
    p = p / p.sum(1, keepdim=True) / 2
    p = p / p.sum(0, keepdim=True) / 3
    assert torch.allclose(sinkhorn_knopp(logits, T, iters=1), (p * 3).t(), atol=1e-6)


def test_distillation_loss_is_cross_entropy():
    s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    got = distillation_loss(s, q, torch.tensor([0, 1]), torch.tensor([1, 0]), 0.1)
    lp = torch.log_softmax(s / 0.1, -1)
    want = -0.5 * (float(lp[0, 2]) + 0.5 * float(lp[1, 0]) + 0.5 * float(lp[1, 1]))
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_laplacian_weight_schedule():
    assert laplacian_weight(0, 1000) == pytest.approx(2e-4)
    assert laplacian_weight(50, 1000) == pytest.approx(0.5 * (2e-4 + 3e-3))
    assert laplacian_weight(100, 1000) == pytest.approx(3e-3)
    assert laplacian_weight(550, 1000) == pytest.approx(0.5 * (3e-3 + 1.5e-3))
    assert laplacian_weight(1000, 1000) == pytest.approx(1.5e-3)


def test_knn_includes_self_and_pads_small_samples():
    x = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]])
    d, j = knn(x, 4)
    assert j[0].tolist() == [0, 1, 2, -1] and math.isinf(float(d[0, 3]))
    assert torch.allclose(d[2, :3], torch.tensor([0.0, 2.0, 3.0]))
