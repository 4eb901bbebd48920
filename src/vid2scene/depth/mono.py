"""``mono`` backend: a monocular depth model (e.g. Depth Anything V2) aligned to the sparse SfM depths.

The model (``transformers``' ``AutoModelForDepthEstimation`` + ``AutoImageProcessor``) is loaded from the
local folder ``depth.mono.model_path``; nothing is downloaded. Its output is treated as relative *inverse* depth
(disparity up to an unknown scale and shift, as Depth Anything / MiDaS predict) and aligned per frame to the
sparse SfM depths observed by that keyframe: ``1/z ≈ s·pred + t``, fitted by :func:`align_scale_shift`
(RANSAC on point pairs, then IRLS with Huber weights, least squares in inverse depth). Pixels where
``s·pred + t ≤ 0`` get depth 0. Confidence is uniform per frame: the inlier share of the fit, halved (a
monocular prior is never as trustworthy as a multi-view match).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from pydantic import Field

from ..errors import BackendNotInstalled
from ..stage import Options
from .base import Sparse, SparseSet, View

HINT = "not installed: pip install transformers; set depth.mono.model_path to a local Depth Anything V2 folder"


def align_scale_shift(pred: np.ndarray, target: np.ndarray, *, iters: int = 200, rel_thresh: float = 0.1,
                      huber: float = 0.05, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Robust fit of ``target ≈ s·pred + t`` (both 1-D; target = sparse inverse depth).

    RANSAC over random pairs (residual threshold ``rel_thresh`` × median |target|), then IRLS with Huber
    weights (threshold ``huber`` × median |target|) on the inliers. Returns ``(s, t, inlier mask)``.

    Raises:
        ValueError: fewer than 2 finite samples.
    """
    pred = np.asarray(pred, np.float64).ravel()
    target = np.asarray(target, np.float64).ravel()
    ok = np.isfinite(pred) & np.isfinite(target)
    if ok.sum() < 2:
        raise ValueError("need at least 2 samples to fit scale and shift")
    x, y = pred[ok], target[ok]
    scale_y = float(np.median(np.abs(y))) or 1.0
    thr = rel_thresh * scale_y
    rng = np.random.default_rng(seed)
    best_inl, best_n = np.ones(len(x), bool), -1
    n = len(x)
    if n > 2:
        i = rng.integers(0, n, size=iters)
        j = rng.integers(0, n, size=iters)
        dx = x[i] - x[j]
        good = np.abs(dx) > 1e-12
        s_c = np.where(good, (y[i] - y[j]) / np.where(good, dx, 1), 0)
        t_c = y[i] - s_c * x[i]
        res = np.abs(s_c[:, None] * x[None] + t_c[:, None] - y[None])  # iters × n
        counts = np.where(good, (res < thr).sum(1), -1)
        b = int(np.argmax(counts))
        best_n = counts[b]
        if best_n >= 2:
            best_inl = res[b] < thr
    s, t = _irls(x[best_inl], y[best_inl], huber * scale_y)
    inl_all = np.zeros(len(pred), bool)
    inl_all[np.flatnonzero(ok)] = np.abs(s * x + t - y) < thr
    return float(s), float(t), inl_all


def _irls(x: np.ndarray, y: np.ndarray, delta: float, iters: int = 10) -> tuple[float, float]:
    A = np.stack([x, np.ones_like(x)], 1)
    w = np.ones_like(x)
    sol = np.array([1.0, 0.0])
    for _ in range(iters):
        sw = np.sqrt(w)
        sol, *_ = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)
        r = np.abs(A @ sol - y)
        w = np.where(r <= delta, 1.0, delta / np.maximum(r, 1e-12))
    return float(sol[0]), float(sol[1])


class MonoOptions(Options):
    """``depth.mono`` section."""

    model_path: str | None = Field(None, description="local folder of a transformers depth model (e.g. Depth "
                                   "Anything V2)")
    seed: int = Field(0, description="seed of the RANSAC scale/shift alignment")


class MonoBackend:
    """A monocular depth model per keyframe, aligned to the sparse SfM depths (single view: no sources, no
    cross-view filter)."""

    name = "mono"
    Options = MonoOptions

    def __init__(self, options: MonoOptions):
        """Load the model from ``options.model_path``.

        Raises:
            BackendNotInstalled: transformers is missing or ``model_path`` is not a folder.
        """
        ok, hint = self.is_installed()
        if not ok:
            raise BackendNotInstalled(f"depth backend 'mono' {hint}")
        if not options.model_path or not Path(options.model_path).is_dir():
            raise BackendNotInstalled(f"depth backend 'mono' {HINT} (model_path={options.model_path!r} is not a "
                                      "folder)")
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.options = options
        self.torch = torch
        self.processor = AutoImageProcessor.from_pretrained(options.model_path, local_files_only=True)
        self.model = AutoModelForDepthEstimation.from_pretrained(options.model_path, local_files_only=True).eval()
        self.seed = options.seed

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("transformers") is None:
            return False, HINT
        return True, "installed"

    def predict(self, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Relative inverse depth for an RGB image, resized to ``size`` = (w, h)."""
        import cv2

        with self.torch.no_grad():
            inputs = self.processor(images=rgb, return_tensors="pt")
            out = self.model(**inputs).predicted_depth  # 1×h'×w'
        pred = out[0].float().cpu().numpy()
        return cv2.resize(pred, size, interpolation=cv2.INTER_LINEAR)

    def select_sources(self, views: list[View], priors: SparseSet) -> list[list[int]]:
        """No source views: the model works on one image."""
        return [[] for _ in views]

    def filter(self, views: list[View], sources: list[list[int]], depths: list[np.ndarray],
               confs: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """No cross-view filter (unchanged)."""
        return depths, confs

    def estimate(self, ref: View, sources: list[View], sparse: Sparse,
                 depth_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(depth, confidence, weak) of ``ref`` at working resolution; see :class:`.base.DepthBackend`."""
        h, w = ref.shape
        zero = np.zeros((h, w), np.float32)
        pred = self.predict(ref.load_rgb(), (w, h))
        if len(sparse) < 3:
            return zero, zero, np.zeros((h, w), bool)
        u = np.clip(sparse.uv[:, 0].astype(int), 0, w - 1)
        v = np.clip(sparse.uv[:, 1].astype(int), 0, h - 1)
        s, t, inl = align_scale_shift(pred[v, u], 1.0 / sparse.z, seed=self.seed)
        inv = s * pred + t
        lo, hi = depth_range
        with np.errstate(divide="ignore"):
            depth = np.where(inv > 0, 1.0 / inv, 0.0)
        depth = np.where((depth >= 0.5 * lo) & (depth <= 2.0 * hi), depth, 0.0).astype(np.float32)
        conf = np.where(depth > 0, 0.5 * inl.mean(), 0).astype(np.float32)
        return depth, conf, np.zeros((h, w), bool)
