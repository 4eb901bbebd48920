"""Point Transformer V3 encoder (Sonata-style, encoder only) in plain PyTorch.

The structure follows PTv3 (Wu et al., CVPR 2024) as Sonata and LAM3C use it:

* **embedding**: a submanifold convolution (``embed_kernel``³ over a voxel hash) + LayerNorm + GELU, then the
  mask token replaces the features of masked points;
* **stages** ``0..S-1``: stage ``s > 0`` starts with grid pooling (stride 2: linear projection, ``scatter_reduce``
  max over the coarser voxel, coordinates averaged), then ``depths[s]`` blocks;
* **block**: conditional positional encoding (submanifold 3×3×3 convolution + linear + LayerNorm, residual),
  then pre-norm serialised patch attention and an MLP, each residual with drop-path. Block ``i`` of a stage
  uses serialisation order ``i mod 4`` (z, z-trans, hilbert, hilbert-trans; shuffled per forward in training);
  patches of ``patch_size`` consecutive points of one sample attend to each other through
  ``scaled_dot_product_attention`` (which uses the flash / memory-efficient kernels on CUDA by itself). Samples
  are padded to a multiple of the patch size by repeating points of their previous patch, as PTv3 does.

Normalisation is LayerNorm throughout (PTv3 uses BatchNorm in the embedding and pooling; LayerNorm keeps a
batch of one scene and teacher inference independent of batch statistics).

Features leave the encoder as one :class:`Point` per stage; :func:`upcast` concatenates the features of all
coarser stages onto a finer one through the pooling clusters (Sonata's multi-level features: what the heads
and the linear probe read). Units: coordinates in metres (view frame), grid coordinates in voxels of
``grid_size·2**s`` metres at stage ``s``.

spconv and flash-attn are not used: the sparse convolution is an explicit kernel map (``searchsorted`` over
sorted voxel keys) with one ``index_add_`` per kernel offset, so forward and backward run on any device.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from .serialization import ORDERS, serialize


class BackboneConfig(BaseModel):
    """PTv3 encoder hyper-parameters (one entry per stage in the tuples)."""

    model_config = ConfigDict(extra="forbid")

    in_channels: int = 9          # coord (3) + colour (3) + normal (3)
    embed_kernel: int = 5
    depths: tuple[int, ...] = (3, 3, 3, 12, 3)
    channels: tuple[int, ...] = (48, 96, 192, 384, 512)
    heads: tuple[int, ...] = (3, 6, 12, 24, 32)
    patch_size: int = 1024
    mlp_ratio: float = 4.0
    drop_path: float = 0.3
    orders: tuple[str, ...] = ORDERS
    shuffle_orders: bool = True
    grid_size: float = 0.02


#: Named configurations: ``base`` is LAM3C's / Sonata's Base encoder, ``tiny`` is for tests and CPU smoke runs.
BACKBONES = {
    "base": BackboneConfig(),
    "tiny": BackboneConfig(embed_kernel=3, depths=(1, 1, 1, 1, 1), channels=(16, 32, 48, 64, 96),
                           heads=(1, 2, 3, 4, 6), patch_size=128, drop_path=0.0),
}


@dataclass(eq=False)
class Point:
    """A batched point set at one resolution.

    ``coord`` ``N×3`` float (metres), ``grid`` ``N×3`` int64 non-negative voxel coordinates, ``batch`` ``N`` int64
    sample index (sorted, samples contiguous), ``feat`` ``N×C``; ``origin`` ``N×3`` float positions before
    augmentation (carried for cross-view matching, averaged by pooling). ``parent``/``cluster``: the finer
    point set this one was pooled from and, per parent point, the index of its voxel here.
    """

    coord: torch.Tensor
    grid: torch.Tensor
    batch: torch.Tensor
    feat: torch.Tensor
    origin: torch.Tensor | None = None
    voxel_size: float = 0.02
    parent: "Point | None" = None
    cluster: torch.Tensor | None = None
    order: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.coord)

    @property
    def counts(self) -> torch.Tensor:
        """Points per sample (int64)."""
        return torch.bincount(self.batch, minlength=int(self.batch.max()) + 1 if len(self.batch) else 0)

    def serialize(self, orders: tuple[str, ...], shuffle: bool = False) -> None:
        """Compute ``order``/``inverse`` (``len(orders)×N``); ``shuffle`` permutes the orders (torch RNG)."""
        _, order, inverse = serialize(self.grid, self.batch, orders)
        if shuffle:
            perm = torch.randperm(len(orders))
            order, inverse = order[perm.to(order.device)], inverse[perm.to(order.device)]
        self.order, self.inverse = order, inverse


# ---- sparse convolution over a voxel hash ----------------------------------------------------------------------

def kernel_map(grid: torch.Tensor, batch: torch.Tensor, kernel: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Submanifold kernel map: for each of the ``kernel³`` offsets (x slowest, z fastest, −r..r), the pairs
    ``(out_idx, in_idx)`` (int64) with ``grid[in_idx] == grid[out_idx] + offset`` in the same sample."""
    if kernel % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {kernel}")
    r = kernel // 2
    g = grid.long() + r
    ext = int(g.max()) + r + 1 if len(g) else 1
    b = batch.long()

    def key(gg: torch.Tensor) -> torch.Tensor:
        return ((b * ext + gg[:, 0]) * ext + gg[:, 1]) * ext + gg[:, 2]

    skey, sidx = torch.sort(key(g))
    n = len(g)
    allidx = torch.arange(n, device=g.device)
    offs = [o for o in itertools.product(range(-r, r + 1), repeat=3)]
    others = [o for o in offs if o != (0, 0, 0)]
    if not others:
        return [(allidx, allidx)]
    nk = torch.cat([key(g + torch.tensor(o, device=g.device)) for o in others])  # one search for all offsets
    pos = torch.searchsorted(skey, nk).clamp_(max=max(n - 1, 0))
    hit = (skey[pos] == nk).reshape(len(others), n)
    src = sidx[pos].reshape(len(others), n)
    maps, k = [], 0
    for o in offs:
        if o == (0, 0, 0):
            maps.append((allidx, allidx))
            continue
        maps.append((allidx[hit[k]], src[k][hit[k]]))
        k += 1
    return maps


class SubMConv3d(nn.Module):
    """Submanifold 3-D convolution: ``out[i] = bias + Σ_k W_k · x[j]`` over the voxels ``j = i + offset_k``
    present in the same sample. Weight ``kernel³×C_in×C_out``. Input/output ``N×C``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, bias: bool = True):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(kernel ** 3, c_in, c_out))
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (c_in * kernel ** 3)))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None

    #: largest gathered ``N × kernel³ × C_in`` tensor (elements) for the one-matmul path; above it, one
    #: ``index_add`` per kernel offset (less memory, more kernel launches)
    dense_limit: int = 1 << 26

    def forward(self, x: torch.Tensor, point: Point) -> torch.Tensor:
        key = f"kmap{self.kernel}"
        if key not in point.cache:
            point.cache[key] = kernel_map(point.grid, point.batch, self.kernel)
        kmap = point.cache[key]
        k3, c_in, c_out = self.weight.shape
        if len(x) * k3 * c_in <= self.dense_limit:
            nkey = f"nbr{self.kernel}"
            if nkey not in point.cache:  # N×k³ neighbour table, N (a zero row) where the voxel is empty
                nbr = torch.full((len(x), k3), len(x), dtype=torch.long, device=x.device)
                for k, (o, i) in enumerate(kmap):
                    nbr[o, k] = i
                point.cache[nkey] = nbr.reshape(-1)
            xp = torch.cat([x, x.new_zeros(1, c_in)])
            g = xp.index_select(0, point.cache[nkey]).reshape(len(x), k3 * c_in)
            out = g @ self.weight.reshape(k3 * c_in, c_out)
        else:
            out = x.new_zeros(len(x), c_out)
            for k, (o, i) in enumerate(kmap):
                if len(o):
                    out = out.index_add(0, o, torch.index_select(x, 0, i) @ self.weight[k])
        return out if self.bias is None else out + self.bias


# ---- attention ---------------------------------------------------------------------------------------------------

def patch_padding(counts: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padding of sorted, sample-contiguous points to whole patches.

    Args:
        counts: points per sample (int64), each ≥ ``patch`` or the patch is shrunk by the caller.
        patch: patch size K.

    Returns:
        ``(pad, unpad)``: ``pad`` (``P·K``) index of the sorted point in each padded slot (slots beyond a sample's
        count repeat the points one patch earlier), ``unpad`` (``N``) the padded slot of each sorted point.
    """
    dev = counts.device
    padded = (counts + patch - 1) // patch * patch
    start = torch.cumsum(counts, 0) - counts
    pstart = torch.cumsum(padded, 0) - padded
    slot_sample = torch.repeat_interleave(torch.arange(len(counts), device=dev), padded)
    local = torch.arange(int(padded.sum()), device=dev) - pstart[slot_sample]
    src = torch.where(local < counts[slot_sample], local, local - patch)
    pad = start[slot_sample] + src
    point_sample = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
    unpad = torch.arange(int(counts.sum()), device=dev) - start[point_sample] + pstart[point_sample]
    return pad, unpad


class SerializedAttention(nn.Module):
    """Multi-head self-attention inside patches of one serialisation order. ``N×C`` → ``N×C``."""

    def __init__(self, channels: int, heads: int, patch: int, order_index: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.heads, self.patch, self.order_index = heads, patch, order_index
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, point: Point) -> torch.Tensor:
        counts = point.counts
        k = int(min(self.patch, int(counts[counts > 0].min())))
        key = f"pad{k}"
        if key not in point.cache:
            point.cache[key] = patch_padding(counts, k)
        pad, unpad = point.cache[key]
        s = self.order_index % point.order.shape[0]
        order, inverse = point.order[s], point.inverse[s]
        n, c = x.shape
        h = self.heads
        gather = order[pad]
        slot = torch.empty_like(inverse)  # padded slot of each point in input order
        slot[order] = unpad
        qkv = self.qkv(x).index_select(0, gather).reshape(-1, k, 3, h, c // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # P×H×K×d
        out = out.transpose(1, 2).reshape(-1, c).index_select(0, slot)
        return self.proj(out)


class DropPath(nn.Module):
    """Stochastic depth per sample row (rows are points; the whole residual branch is dropped per point)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = (torch.rand(len(x), 1, device=x.device) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """CPE → attention → MLP, pre-norm residual."""

    def __init__(self, channels: int, heads: int, patch: int, order_index: int, mlp_ratio: float,
                 drop_path: float):
        super().__init__()
        self.cpe_conv = SubMConv3d(channels, channels, 3)
        self.cpe_linear = nn.Linear(channels, channels)
        self.cpe_norm = nn.LayerNorm(channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = SerializedAttention(channels, heads, patch, order_index)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
        self.drop = DropPath(drop_path)

    def forward(self, point: Point) -> Point:
        x = point.feat
        x = x + self.cpe_norm(self.cpe_linear(self.cpe_conv(x, point)))
        x = x + self.drop(self.attn(self.norm1(x), point))
        x = x + self.drop(self.mlp(self.norm2(x)))
        point.feat = x
        return point


# ---- pooling -----------------------------------------------------------------------------------------------------

def scatter_mean(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Per-segment mean of ``src`` rows (``N×D``) by ``index`` (``N`` int64) into ``size×D``."""
    out = src.new_zeros(size, src.shape[1]).index_add_(0, index, src)
    cnt = torch.bincount(index, minlength=size).clamp_(min=1).to(src.dtype)
    return out / cnt[:, None]


def grid_pool_index(grid: torch.Tensor, batch: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """Clusters of a stride-``stride`` grid pooling: ``(cluster (N), coarse grid M×3, coarse batch M)``; coarse
    voxels are ordered by (batch, x, y, z)."""
    g = torch.div(grid.long(), stride, rounding_mode="floor")
    ext = int(g.max()) + 1 if len(g) else 1
    key = ((batch.long() * ext + g[:, 0]) * ext + g[:, 1]) * ext + g[:, 2]
    ukey, cluster = torch.unique(key, return_inverse=True)
    cg = torch.stack([(ukey // ext // ext) % ext, (ukey // ext) % ext, ukey % ext], 1)
    return cluster, cg, ukey // (ext ** 3)


class GridPool(nn.Module):
    """Stride-2 grid pooling: ``Linear(C_in→C_out)``, max over each coarse voxel (``scatter_reduce``), LayerNorm,
    GELU; coordinates and origins averaged. Returns the coarse :class:`Point` (``parent``/``cluster`` set)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        self.proj = nn.Linear(c_in, c_out)
        self.norm = nn.LayerNorm(c_out)
        self.act = nn.GELU()

    def forward(self, point: Point) -> Point:
        cluster, cg, cb = grid_pool_index(point.grid, point.batch, self.stride)
        m = len(cg)
        f = self.proj(point.feat)
        pooled = f.new_zeros(m, f.shape[1]).scatter_reduce(0, cluster[:, None].expand_as(f), f, "amax",
                                                           include_self=False)
        return Point(coord=scatter_mean(point.coord, cluster, m), grid=cg, batch=cb,
                     feat=self.act(self.norm(pooled)),
                     origin=None if point.origin is None else scatter_mean(point.origin, cluster, m),
                     voxel_size=point.voxel_size * self.stride, parent=point, cluster=cluster)


class GridUnpool(nn.Module):
    """PTv3's decoder unpooling: ``proj(coarse.feat)[cluster] + proj_skip(fine.feat)`` (gather by the pooling
    cluster), LayerNorm + GELU each. Returns the fine :class:`Point` with the new features."""

    def __init__(self, c_coarse: int, c_skip: int, c_out: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(c_coarse, c_out), nn.LayerNorm(c_out), nn.GELU())
        self.proj_skip = nn.Sequential(nn.Linear(c_skip, c_out), nn.LayerNorm(c_out), nn.GELU())

    def forward(self, coarse: Point) -> Point:
        fine = coarse.parent
        fine.feat = self.proj(coarse.feat).index_select(0, coarse.cluster) + self.proj_skip(fine.feat)
        return fine


def upcast(levels: list[Point], level: int) -> torch.Tensor:
    """Multi-level features at stage ``level``: its own features concatenated with every coarser stage's,
    gathered through the pooling clusters. ``N_level × Σ_{s≥level} C_s``."""
    feat = levels[-1].feat
    for s in range(len(levels) - 2, level - 1, -1):
        feat = torch.cat([levels[s].feat, feat.index_select(0, levels[s + 1].cluster)], dim=1)
    return feat


def point_to_level(levels: list[Point], level: int) -> torch.Tensor:
    """Index (``N_0`` int64) of each input point's voxel at stage ``level``."""
    idx = torch.arange(len(levels[0]), device=levels[0].coord.device)
    for s in range(1, level + 1):
        idx = levels[s].cluster[idx]
    return idx


# ---- the encoder -------------------------------------------------------------------------------------------------

class PTv3(nn.Module):
    """Point Transformer V3 encoder. ``forward(point, mask=None)`` → one :class:`Point` per stage.

    ``point.feat`` is the ``N×in_channels`` input; ``mask`` (``N`` bool) selects points whose embedded features
    are replaced by the learnt mask token.
    """

    def __init__(self, config: BackboneConfig | str = "tiny"):
        super().__init__()
        cfg = BACKBONES[config] if isinstance(config, str) else config
        self.config = cfg
        n = len(cfg.depths)
        if not (len(cfg.channels) == len(cfg.heads) == n):
            raise ValueError("depths, channels and heads need one entry per stage")
        c = cfg.channels
        self.embed_conv = SubMConv3d(cfg.in_channels, c[0], cfg.embed_kernel)
        self.embed_norm = nn.LayerNorm(c[0])
        self.mask_token = nn.Parameter(torch.zeros(c[0]))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        dpr = torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist()
        self.pools = nn.ModuleList([GridPool(c[s - 1], c[s]) for s in range(1, n)])
        self.stages = nn.ModuleList()
        i = 0
        for s in range(n):
            self.stages.append(nn.ModuleList([
                Block(c[s], cfg.heads[s], cfg.patch_size, b, cfg.mlp_ratio, dpr[i + b]) for b in range(cfg.depths[s])]))
            i += cfg.depths[s]

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.config.channels)

    def level_channels(self, level: int) -> int:
        """Width of :func:`upcast` features at stage ``level``."""
        return sum(self.config.channels[level:])

    def forward(self, point: Point, mask: torch.Tensor | None = None) -> list[Point]:
        cfg = self.config
        shuffle = self.training and cfg.shuffle_orders
        x = F.gelu(self.embed_norm(self.embed_conv(point.feat, point)))
        if mask is not None:
            x = torch.where(mask[:, None], self.mask_token.to(x.dtype), x)
        point = dataclasses.replace(point, feat=x)
        levels = []
        for s, blocks in enumerate(self.stages):
            if s > 0:
                point = self.pools[s - 1](point)
            point.serialize(cfg.orders, shuffle)
            for blk in blocks:
                point = blk(point)
            levels.append(point)
        return levels
