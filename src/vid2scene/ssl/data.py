"""Pre-training samples and views.

Sources: a **scene folder** (``points.ply`` + ``layout.json``: the cleaned video point cloud read through
:class:`vid2scene.scene.Scene` in the world frame), a **Pointcept folder** (``coord.npy``, ``color.npy``,
``normal.npy`` …, what ``vid2scene export --format pointcept`` and Pointcept's ScanNet preprocessing write) or
any folder holding such folders (a dataset built by ``vid2scene build``); :func:`find_sources` expands them.

A :class:`Sample` holds ``coord`` ``N×3`` float32 (world frame: metres, z up), ``color`` ``N×3`` float32 0..255,
``normal`` ``N×3`` float32 unit, optionally ``segment`` ``N`` int64 (−1 ignore). :func:`clean` applies RoomTours'
clean-up (statistical outlier removal, voxel down-sampling, PCA normals where missing).

:func:`make_views` draws Sonata's multi-crop views with LAM3C's augmentations; :func:`collate` batches views
into a :class:`vid2scene.ssl.backbone.Point`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from scipy.spatial import cKDTree

from .backbone import Point


@dataclass
class Sample:
    """One scene's points (see the module docstring for shapes and units)."""

    coord: np.ndarray
    color: np.ndarray
    normal: np.ndarray
    segment: np.ndarray | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.coord)

    def subset(self, idx: np.ndarray) -> "Sample":
        return Sample(self.coord[idx], self.color[idx], self.normal[idx],
                      None if self.segment is None else self.segment[idx], self.name)


class CleanConfig(BaseModel):
    """RoomTours clean-up: SOR (``sor_k`` neighbours, ``sor_std`` std ratio, at most ``sor_max_share`` removed),
    voxel down-sampling to ``voxel`` metres, ``normal_k``-neighbour PCA normals where the source has none."""

    model_config = ConfigDict(extra="forbid")

    sor_k: int = 50
    sor_std: float = 4.0
    sor_max_share: float = 0.01
    voxel: float = 0.013
    normal_k: int = 32


class ViewConfig(BaseModel):
    """Multi-crop views and augmentations (Sonata's generator with LAM3C's settings)."""

    model_config = ConfigDict(extra="forbid")

    global_views: int = 2
    local_views: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    max_points: int = 65536
    rotate_z: float = float(np.pi)
    rotate_xy: float = float(np.pi / 64)
    scale: tuple[float, float] = (0.9, 1.1)
    flip: float = 0.5
    jitter_sigma: float = 0.005
    jitter_clip: float = 0.02
    color_jitter: float = 0.05      # std of the per-channel colour shift, as a share of 255
    brightness: float = 0.2         # brightness / contrast factors drawn in 1 ± this
    grid_size: float = 0.02


def is_pointcept(folder: Path) -> bool:
    return (folder / "coord.npy").is_file()


def is_scene(folder: Path) -> bool:
    return (folder / "points.ply").is_file()


def find_sources(paths: list[str | Path]) -> list[Path]:
    """Scene / Pointcept folders under ``paths`` (each path itself or, recursively, its sub-folders), sorted;
    folders inside a scene folder (its exports) are skipped. Raises FileNotFoundError if a path does not exist
    or nothing usable is found."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if is_pointcept(p) or is_scene(p):
            out.append(p)
            continue
        found = sorted({f.parent for pat in ("coord.npy", "points.ply") for f in p.rglob(pat)})
        scenes = {f for f in found if is_scene(f)}
        # a scene's own exports (SCENE/tasks/exports/pointcept/<id>/) are the same scene: keep the scene only
        out.extend(f for f in found if not any(a in scenes for a in f.parents))
    if not out:
        raise FileNotFoundError(f"no scene folder (points.ply) or Pointcept folder (coord.npy) in {paths}")
    return sorted(dict.fromkeys(out))


def load_sample(folder: str | Path, label_key: str = "segment20") -> Sample:
    """Read one source folder into a :class:`Sample` (world frame; scene folders need ``layout.json``).
    Raises FileNotFoundError / vid2scene.errors.StageFailed when assets are missing."""
    folder = Path(folder)
    if is_pointcept(folder):
        coord = np.load(folder / "coord.npy").astype(np.float32)
        n = len(coord)
        color = (np.load(folder / "color.npy").astype(np.float32) if (folder / "color.npy").is_file()
                 else np.full((n, 3), 128, np.float32))
        normal = (np.load(folder / "normal.npy").astype(np.float32) if (folder / "normal.npy").is_file()
                  else np.zeros((n, 3), np.float32))
        seg = np.load(folder / f"{label_key}.npy").astype(np.int64) if (folder / f"{label_key}.npy").is_file() else None
        return Sample(coord, color, normal, seg, folder.name)
    if is_scene(folder):
        from ..scene import Scene

        pc = Scene(folder).points(frame="world")
        n = len(pc.points)
        color = (pc.colors.astype(np.float32) if pc.colors is not None else np.full((n, 3), 128, np.float32))
        normal = (pc.normals.astype(np.float32) if pc.normals is not None else np.zeros((n, 3), np.float32))
        return Sample(pc.points.astype(np.float32), color, normal, None, folder.name)
    raise FileNotFoundError(f"{folder} holds neither points.ply nor coord.npy")


def statistical_outliers(coord: np.ndarray, k: int, std: float, max_share: float) -> np.ndarray:
    """Boolean ``N`` mask of outliers: mean distance to the ``k`` nearest neighbours above mean + ``std``·sd,
    limited to the ``max_share`` of points with the largest mean distance."""
    n = len(coord)
    if n <= k:
        return np.zeros(n, bool)
    d, _ = cKDTree(coord).query(coord, k=k + 1)
    md = d[:, 1:].mean(1)
    out = md > md.mean() + std * md.std()
    cap = int(np.floor(max_share * n))
    if out.sum() > cap:
        keep_out = np.argsort(-md)[:cap]
        out = np.zeros(n, bool)
        out[keep_out] = True
    return out


def voxel_downsample(sample: Sample, voxel: float) -> Sample:
    """One point per ``voxel``-metre cell: mean position, colour and (renormalised) normal; the label of the
    cell's first point."""
    key = np.floor(sample.coord / voxel).astype(np.int64)
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    m = len(first)
    cnt = np.bincount(inv, minlength=m)[:, None].astype(np.float64)

    def mean(a: np.ndarray) -> np.ndarray:
        out = np.zeros((m, a.shape[1]), np.float64)
        np.add.at(out, inv, a)
        return out / cnt

    nrm = mean(sample.normal)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-8)
    seg = None if sample.segment is None else sample.segment[first]
    return Sample(mean(sample.coord).astype(np.float32), mean(sample.color).astype(np.float32),
                  nrm.astype(np.float32), seg, sample.name)


def pca_normals(coord: np.ndarray, k: int) -> np.ndarray:
    """``N×3`` float32 unit normals: smallest PCA axis of the ``k`` nearest neighbours, oriented towards the
    cloud's centroid (indoor surfaces face the room)."""
    k = min(k, len(coord))
    _, idx = cKDTree(coord).query(coord, k=k)
    nb = coord[idx] - coord[idx].mean(1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", nb, nb)
    _, vec = np.linalg.eigh(cov)
    nrm = vec[:, :, 0]
    flip = np.einsum("ni,ni->n", nrm, coord.mean(0) - coord) < 0
    nrm[flip] *= -1
    return nrm.astype(np.float32)


def clean(sample: Sample, cfg: CleanConfig | None = None) -> Sample:
    """RoomTours clean-up (:class:`CleanConfig`). Returns a new :class:`Sample`."""
    cfg = cfg or CleanConfig()
    s = sample.subset(np.flatnonzero(~statistical_outliers(sample.coord, cfg.sor_k, cfg.sor_std, cfg.sor_max_share)))
    if cfg.voxel > 0:
        s = voxel_downsample(s, cfg.voxel)
    if not np.any(np.linalg.norm(s.normal, axis=1) > 0.5):
        s.normal = pca_normals(s.coord, cfg.normal_k)
    return s


# ---- views ------------------------------------------------------------------------------------------------------

@dataclass
class View:
    """One augmented crop: ``coord`` (view frame, metres, centred), ``origin`` (world frame, before
    augmentation), ``color`` 0..255, ``normal``, ``grid`` int64 voxel coordinates (≥ 0), ``segment`` or None."""

    coord: np.ndarray
    origin: np.ndarray
    color: np.ndarray
    normal: np.ndarray
    grid: np.ndarray
    segment: np.ndarray | None = None


def crop(sample: Sample, center: np.ndarray, scale: float, max_points: int) -> np.ndarray:
    """Indices of the ``min(scale·N, max_points)`` points nearest to ``center``."""
    n = max(1, min(int(round(scale * len(sample))), max_points, len(sample)))
    d = np.sum((sample.coord - center) ** 2, axis=1)
    return np.argpartition(d, n - 1)[:n] if n < len(sample) else np.arange(len(sample))


def rotation(rz: float, rx: float, ry: float) -> np.ndarray:
    cz, sz, cx, sx, cy, sy = np.cos(rz), np.sin(rz), np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry)
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return Rz @ Ry @ Rx


def grid_sample(coord: np.ndarray, grid_size: float, rng: np.random.Generator | None) -> tuple[np.ndarray,
                                                                                            np.ndarray]:
    """One point per ``grid_size`` voxel (a random one with ``rng``, else the first):
    ``(indices, grid N×3 int64 ≥ 0)``."""
    g = np.floor(coord / grid_size).astype(np.int64)
    g -= g.min(0)
    perm = rng.permutation(len(g)) if rng is not None else np.arange(len(g))
    _, first = np.unique(g[perm], axis=0, return_index=True)
    idx = np.sort(perm[first])
    return idx, g[idx]


def augment(s: Sample, cfg: ViewConfig, rng: np.random.Generator) -> View:
    """Rotate / scale / flip / jitter / colour-jitter then grid-sample one crop (``s`` already cropped)."""
    R = rotation(rng.uniform(-cfg.rotate_z, cfg.rotate_z), rng.uniform(-cfg.rotate_xy, cfg.rotate_xy),
                 rng.uniform(-cfg.rotate_xy, cfg.rotate_xy))
    flip = np.diag([-1.0 if rng.random() < cfg.flip else 1.0, -1.0 if rng.random() < cfg.flip else 1.0, 1.0])
    A = flip @ R
    sc = rng.uniform(*cfg.scale)
    c = s.coord.astype(np.float64)
    c = (c - c.mean(0)) @ A.T * sc
    c += np.clip(rng.normal(0, cfg.jitter_sigma, c.shape), -cfg.jitter_clip, cfg.jitter_clip)
    nrm = s.normal.astype(np.float64) @ A.T
    col = s.color.astype(np.float64)
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    ct = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    col = (col - col.mean()) * ct + col.mean() * b + rng.normal(0, cfg.color_jitter * 255, (1, 3))
    col = np.clip(col, 0, 255)
    idx, grid = grid_sample(c, cfg.grid_size, rng)
    c = c[idx]
    c -= (c.min(0) + c.max(0)) / 2
    return View(c.astype(np.float32), s.coord[idx].astype(np.float32), col[idx].astype(np.float32),
                nrm[idx].astype(np.float32), grid, None if s.segment is None else s.segment[idx])


def make_views(sample: Sample, cfg: ViewConfig, rng: np.random.Generator) -> tuple[list[View], list[View]]:
    """``(global_views, local_views)``: the first global crop around a random point of the scene, the other
    global crops around random points of the first (so that they overlap when ``max_points`` caps a large
    scene), local crops around random points of a random global crop; each independently augmented and
    grid-sampled."""
    globals_, locals_ = [], []
    gidx: list[np.ndarray] = []
    for _ in range(cfg.global_views):
        pool = gidx[0] if gidx else np.arange(len(sample))  # later globals are centred inside the first: overlap
        center = sample.coord[pool[rng.integers(len(pool))]]
        idx = crop(sample, center, rng.uniform(*cfg.global_scale), cfg.max_points)
        gidx.append(idx)
        globals_.append(augment(sample.subset(idx), cfg, rng))
    for _ in range(cfg.local_views):
        g = gidx[rng.integers(len(gidx))]
        center = sample.coord[g[rng.integers(len(g))]]
        idx = crop(sample, center, rng.uniform(*cfg.local_scale), cfg.max_points)
        locals_.append(augment(sample.subset(idx), cfg, rng))
    return globals_, locals_


def noisy(view: View, sigma: float, grid_size: float, rng: np.random.Generator) -> View:
    """The view with N(0, ``sigma``) noise on the coordinates only, grid-sampled again."""
    c = view.coord + rng.normal(0, sigma, view.coord.shape).astype(np.float32)
    idx, grid = grid_sample(c, grid_size, rng)
    return View(c[idx], view.origin[idx], view.color[idx], view.normal[idx], grid,
                None if view.segment is None else view.segment[idx])


def grid_mask(view: View, cell: float, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Sonata's grid masking: ``N`` bool, the points of a random ``ratio`` share of ``cell``-metre cells
    (cells over the view coordinates)."""
    key = np.floor((view.coord - view.coord.min(0)) / cell).astype(np.int64)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    m = int(inv.max()) + 1
    chosen = rng.permutation(m)[: int(round(ratio * m))]
    sel = np.zeros(m, bool)
    sel[chosen] = True
    return sel[inv]


def features(view: View) -> np.ndarray:
    """``N×9`` float32 input features: coord (m), colour scaled to [−1, 1], normal."""
    return np.concatenate([view.coord, view.color / 127.5 - 1.0, view.normal], axis=1).astype(np.float32)


def collate(views: list[View], grid_size: float, device: torch.device | str = "cpu") -> Point:
    """Batch views (one sample index per view, in order) into a :class:`Point` on ``device``."""
    def cat(attr: str) -> np.ndarray:
        return np.concatenate([getattr(v, attr) for v in views])

    batch = np.concatenate([np.full(len(v.coord), i, np.int64) for i, v in enumerate(views)])
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)  # noqa: E731
    return Point(coord=t(cat("coord"), torch.float32), grid=t(cat("grid"), torch.long), batch=t(batch, torch.long),
                 feat=t(np.concatenate([features(v) for v in views]), torch.float32),
                 origin=t(cat("origin"), torch.float32), voxel_size=grid_size)


def eval_view(sample: Sample, grid_size: float) -> tuple[View, np.ndarray]:
    """The whole sample, un-augmented (centred), grid-sampled with the first point per voxel, and the voxel of
    every sample point (``N`` int64 index into the view) for evaluating per point."""
    c = sample.coord.astype(np.float64)
    g = np.floor(c / grid_size).astype(np.int64)
    g -= g.min(0)
    _, first, inv = np.unique(g, axis=0, return_index=True, return_inverse=True)
    cc = c[first] - (c.min(0) + c.max(0)) / 2
    view = View(cc.astype(np.float32), sample.coord[first], sample.color[first], sample.normal[first], g[first],
                None if sample.segment is None else sample.segment[first])
    return view, inv.reshape(-1)
