"""PTv3 encoder pieces against direct computations, and the whole encoder's shapes and gradient flow."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tests.fixtures.ssl_rooms import make_room
from vid2scene.ssl.backbone import (BACKBONES, GridPool, GridUnpool, Point, PTv3, SerializedAttention, SubMConv3d,
                                    kernel_map, patch_padding, point_to_level, upcast)
from vid2scene.ssl.data import Sample, collate, eval_view


def _point(grid, feat, batch=None):
    grid = torch.as_tensor(grid, dtype=torch.long)
    batch = torch.zeros(len(grid), dtype=torch.long) if batch is None else torch.as_tensor(batch)
    return Point(coord=grid.float() * 0.02, grid=grid, batch=batch, feat=feat, origin=grid.float() * 0.02)


def test_submconv_equals_dense_conv3d_at_active_sites():
    g = torch.Generator().manual_seed(0)
    occ = torch.rand(6, 5, 4, generator=g) < 0.5
    grid = torch.nonzero(occ)
    x = torch.randn(len(grid), 3, generator=g)
    conv = SubMConv3d(3, 4, 3)
    out = conv(x, _point(grid, x))
    dense = torch.zeros(1, 3, 6, 5, 4)
    dense[0, :, grid[:, 0], grid[:, 1], grid[:, 2]] = x.t()
    w = conv.weight.reshape(3, 3, 3, 3, 4).permute(4, 3, 0, 1, 2)  # (kx, ky, kz, in, out) → (out, in, kx, ky, kz)
    ref = F.conv3d(dense, w, conv.bias, padding=1)[0][:, grid[:, 0], grid[:, 1], grid[:, 2]].t()
    assert torch.allclose(out, ref, atol=1e-5)


def test_kernel_map_matches_brute_force_and_respects_batches():
    g = torch.Generator().manual_seed(1)
    grid = torch.randint(0, 4, (40, 3), generator=g)
    batch = torch.randint(0, 2, (40,), generator=g)
    key = torch.unique(torch.cat([batch[:, None], grid], 1), dim=0)
    batch, grid = key[:, 0], key[:, 1:]
    maps = kernel_map(grid, batch, 3)
    offs = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    for (o, i), off in zip(maps, offs):
        want = {(p, q) for p in range(len(grid)) for q in range(len(grid))
                if batch[p] == batch[q] and (grid[q] - grid[p]).tolist() == list(off)}
        assert set(zip(o.tolist(), i.tolist())) == want


def test_patch_padding_repeats_previous_patch():
    pad, unpad = patch_padding(torch.tensor([5, 3]), 3)
    # sample 0: 5 points → 6 slots, the 6th repeats slot 3 (point 2); sample 1: exactly one patch
    assert pad.tolist() == [0, 1, 2, 3, 4, 2, 5, 6, 7]
    assert unpad.tolist() == [0, 1, 2, 3, 4, 6, 7, 8]


def test_attention_equals_per_patch_softmax():
    torch.manual_seed(0)
    n = 10
    grid = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)], 1)
    x = torch.randn(n, 4)
    pt = _point(grid, x)
    pt.serialize(("z",))
    attn = SerializedAttention(4, 2, 4, 0)
    out = attn(x, pt)
    qkv = attn.qkv(x).reshape(n, 3, 2, 2)
    order = pt.order[0].tolist()
    patches = [order[0:4], order[4:8], order[8:10] + order[6:8]]  # the last patch padded from the previous one
    ref = torch.zeros(n, 4)
    for p in patches:
        q, k, v = qkv[p, 0], qkv[p, 1], qkv[p, 2]  # K×H×d
        a = torch.softmax(torch.einsum("khd,jhd->hkj", q, k) / 2 ** 0.5, -1)
        o = torch.einsum("hkj,jhd->khd", a, v).reshape(len(p), 4)
        for r, idx in enumerate(p[:4] if p is not patches[2] else p[:2]):
            ref[idx] = o[r]
    assert torch.allclose(out, attn.proj(ref), atol=1e-5)


def test_grid_pool_max_and_unpool_gather():
    grid = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 0, 0], [3, 1, 0], [0, 0, 0]])
    batch = torch.tensor([0, 0, 0, 0, 1])
    x = torch.randn(5, 3)
    pool = GridPool(3, 2)
    coarse = pool(_point(grid, x, batch))
    assert coarse.cluster.tolist() == [0, 0, 1, 1, 2] and coarse.grid.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]
    f = pool.proj(x)
    want = torch.stack([torch.maximum(f[0], f[1]), torch.maximum(f[2], f[3]), f[4]])
    assert torch.allclose(coarse.feat, pool.act(pool.norm(want)), atol=1e-6)
    assert torch.allclose(coarse.coord[0], (grid[0] + grid[1]).float() * 0.01)
    fine = GridUnpool(2, 3, 5)(coarse)
    assert fine.feat.shape == (5, 5)


def _room_point(n_max=6000):
    r = make_room(3, density=60)
    s = Sample(r["coord"], r["color"].astype(np.float32), r["normal"])
    v, _ = eval_view(s, 0.02)
    keep = np.arange(min(n_max, len(v.coord)))
    v.coord, v.origin, v.color, v.normal, v.grid = (a[keep] for a in (v.coord, v.origin, v.color, v.normal, v.grid))
    return collate([v, v], 0.02)


def test_ptv3_tiny_forward_backward_shapes_and_gradients():
    torch.manual_seed(0)
    net = PTv3("tiny")
    net.train()
    pt = _room_point()
    mask = torch.rand(len(pt)) < 0.5
    levels = net(pt, mask)
    cfg = BACKBONES["tiny"]
    assert len(levels) == len(cfg.channels)
    sizes = [len(p) for p in levels]
    assert sizes[0] == len(pt) and all(a >= b for a, b in zip(sizes, sizes[1:]))
    for p, c in zip(levels, cfg.channels):
        assert p.feat.shape == (len(p), c)
        assert int(p.batch.max()) == 1
    feat = upcast(levels, 0)
    assert feat.shape == (len(pt), sum(cfg.channels))
    idx = point_to_level(levels, 2)
    assert idx.shape == (len(pt),) and int(idx.max()) < sizes[2]
    (feat ** 2).mean().backward()
    for name, prm in net.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name
    assert net.mask_token.grad.abs().sum() > 0


def test_ptv3_eval_is_per_sample_and_deterministic():
    torch.manual_seed(0)
    net = PTv3("tiny").eval()
    pt = _room_point(3000)
    with torch.no_grad():
        f = upcast(net(pt), 0)
    n = len(pt) // 2
    assert torch.allclose(f[:n], f[n:], atol=1e-4)  # the two identical samples do not interact
