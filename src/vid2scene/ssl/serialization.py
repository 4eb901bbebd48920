"""Space-filling-curve serialisation of voxel grids (Point Transformer V3's point order).

A point's voxel ``(x, y, z)`` (non-negative int64 grid coordinates) maps to a code on a 3-D curve of ``depth``
bits per axis; sorting points by ``(batch << 3·depth) | code`` puts nearby voxels next to each other, which is
what patch attention groups. Four orders, as PTv3 uses them:

* ``"z"``: Morton (z-order) code, bits interleaved with x as the most significant bit of each triple;
* ``"z-trans"``: the same on the transposed coordinates ``(y, x, z)``;
* ``"hilbert"``: the 3-D Hilbert curve (Skilling's transpose algorithm, "Programming the Hilbert curve",
  AIP Conf. Proc. 707, 2004), consecutive codes are face-adjacent voxels;
* ``"hilbert-trans"``: Hilbert on ``(y, x, z)``.

Every ``encode`` has an exact ``decode`` (tested round-trips). Plain integer tensor arithmetic, any device.
"""

from __future__ import annotations

import torch

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16  # bits per axis: 3·16 = 48 bits of code, leaving 15 bits for the batch index in an int64


def _check(grid: torch.Tensor, depth: int) -> torch.Tensor:
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"grid coordinates must be N×3, got {tuple(grid.shape)}")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in 1..{MAX_DEPTH}, got {depth}")
    g = grid.long()
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= (1 << depth)):
        raise ValueError(f"grid coordinates must lie in [0, 2**{depth})")
    return g


def z_encode(grid: torch.Tensor, depth: int) -> torch.Tensor:
    """Morton code (int64, N) of ``N×3`` non-negative voxel coordinates below ``2**depth``."""
    g = _check(grid, depth)
    code = torch.zeros(len(g), dtype=torch.long, device=g.device)
    for b in range(depth):
        for axis in range(3):
            code |= ((g[:, axis] >> b) & 1) << (3 * b + 2 - axis)
    return code


def z_decode(code: torch.Tensor, depth: int) -> torch.Tensor:
    """Inverse of :func:`z_encode`: ``N×3`` int64 voxel coordinates."""
    code = code.long()
    g = torch.zeros(len(code), 3, dtype=torch.long, device=code.device)
    for b in range(depth):
        for axis in range(3):
            g[:, axis] |= ((code >> (3 * b + 2 - axis)) & 1) << b
    return g


def hilbert_encode(grid: torch.Tensor, depth: int) -> torch.Tensor:
    """3-D Hilbert index (int64, N) of ``N×3`` non-negative voxel coordinates below ``2**depth``."""
    x = [c.clone() for c in _check(grid, depth).unbind(1)]
    m = 1 << (depth - 1)
    q = m
    while q > 1:  # inverse undo of the excess work
        p = q - 1
        for i in range(3):
            hit = (x[i] & q) != 0
            t = (x[0] ^ x[i]) & p
            x0_hit = x[0] ^ p
            if i == 0:
                x[0] = torch.where(hit, x0_hit, x[0])  # t = 0 when i == 0
                continue
            x[0] = torch.where(hit, x0_hit, x[0] ^ t)
            x[i] = torch.where(hit, x[i], x[i] ^ t)
        q >>= 1
    for i in range(1, 3):  # Gray encode
        x[i] = x[i] ^ x[i - 1]
    t = torch.zeros_like(x[0])
    q = m
    while q > 1:
        t = torch.where((x[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x = [xi ^ t for xi in x]
    code = torch.zeros_like(x[0])  # the "transpose" form, bits interleaved, x[0] most significant
    for b in range(depth):
        for i in range(3):
            code |= ((x[i] >> b) & 1) << (3 * b + 2 - i)
    return code


def hilbert_decode(code: torch.Tensor, depth: int) -> torch.Tensor:
    """Inverse of :func:`hilbert_encode`: ``N×3`` int64 voxel coordinates."""
    code = code.long()
    x = [torch.zeros_like(code) for _ in range(3)]
    for b in range(depth):
        for i in range(3):
            x[i] |= ((code >> (3 * b + 2 - i)) & 1) << b
    n = 2 << (depth - 1)
    t = x[2] >> 1  # Gray decode
    for i in (2, 1):
        x[i] = x[i] ^ x[i - 1]
    x[0] = x[0] ^ t
    q = 2
    while q != n:  # undo the excess work
        p = q - 1
        for i in (2, 1, 0):
            hit = (x[i] & q) != 0
            if i == 0:
                x[0] = torch.where(hit, x[0] ^ p, x[0])
                continue
            t = (x[0] ^ x[i]) & p
            x[0] = torch.where(hit, x[0] ^ p, x[0] ^ t)
            x[i] = torch.where(hit, x[i], x[i] ^ t)
        q <<= 1
    return torch.stack(x, 1)


_TRANSPOSE = [1, 0, 2]


def encode(grid: torch.Tensor, order: str, depth: int) -> torch.Tensor:
    """Code (int64, N) of ``N×3`` voxel coordinates on curve ``order`` (one of :data:`ORDERS`)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; one of {ORDERS}")
    g = grid[:, _TRANSPOSE] if order.endswith("-trans") else grid
    return (hilbert_encode if order.startswith("hilbert") else z_encode)(g, depth)


def decode(code: torch.Tensor, order: str, depth: int) -> torch.Tensor:
    """Inverse of :func:`encode`: ``N×3`` int64 voxel coordinates."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; one of {ORDERS}")
    g = (hilbert_decode if order.startswith("hilbert") else z_decode)(code, depth)
    return g[:, _TRANSPOSE] if order.endswith("-trans") else g


def grid_depth(grid: torch.Tensor) -> int:
    """Bits per axis needed for ``grid`` (at least 1)."""
    top = int(grid.max()) if grid.numel() else 0
    depth = max(top.bit_length(), 1)
    if depth > MAX_DEPTH:
        raise ValueError(f"grid extent {top} needs {depth} bits per axis (at most {MAX_DEPTH})")
    return depth


def serialize(grid: torch.Tensor, batch: torch.Tensor, orders: tuple[str, ...] = ORDERS,
              depth: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort keys and permutations of a batched voxel set, one row per order.

    Args:
        grid: ``N×3`` int64 non-negative voxel coordinates.
        batch: ``N`` int64 sample index (points of one sample stay contiguous in every order).
        orders: curve names from :data:`ORDERS`.
        depth: bits per axis (default: :func:`grid_depth`).

    Returns:
        ``(code, order, inverse)``, each ``len(orders)×N`` int64: ``code`` the keys
        ``(batch << 3·depth) | curve code``, ``order[k]`` the permutation sorting by them and ``inverse[k]`` its
        inverse (``order[k][inverse[k]] == arange(N)``).
    """
    depth = grid_depth(grid) if depth is None else depth
    codes = torch.stack([(batch.long() << (3 * depth)) | encode(grid, o, depth) for o in orders])
    order = torch.argsort(codes, dim=1, stable=True)
    inverse = torch.empty_like(order)
    inverse.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return codes, order, inverse
