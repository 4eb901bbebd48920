"""``prompt_da`` backend: Prompt Depth Anything prompted with the keyframe's projected SfM depths.

Model: ``transformers``' ``PromptDepthAnythingForDepthEstimation``, from a local folder (``save_pretrained``
layout, e.g. a checkpoint written by ``vid2scene adapt``), a Hugging Face id (downloaded only when
``HF_HUB_OFFLINE`` is unset; with it set, only the local cache is used), or ``"tiny"`` — a small randomly
initialised model for smoke runs (its depths mean nothing). GPU when present (``device: auto``).

Per keyframe (working resolution ``w×h``, from the depth stage):

1. Prompt: the sparse SfM depths ``z_k`` at pixels ``uv_k`` (:class:`~vid2scene.depth.base.Sparse`) densified
   on a ``prompt_size`` grid — linear interpolation of inverse depth inside their convex hull, nearest sparse
   depth outside (:func:`densify_prompt`). The model min–max normalises the prompt and maps its output back
   to the prompt's range, so the depth comes out in the prompt's units: SfM units.
2. Image: RGB resized (bilinear) to the model input (long side ``input_size``, both sides multiples of 14),
   ImageNet-normalised; several keyframes per forward pass (``batch_size``) through :meth:`predict_batch`.
3. Output resized (bilinear) to ``w×h``; depths outside ``[0.5·lo, 2·hi]`` of the stage's sparse depth range
   are dropped. Confidence is uniform per frame: ``0.3 + 0.4·q`` with ``q`` the share of the frame's sparse
   points the depth reproduces within 10% — above fusion's default threshold, below a multi-view match.

Source views are chosen and the depths filtered across views exactly as for ``mvs``
(:func:`~vid2scene.depth.base.neighbour_sources`, :func:`~vid2scene.depth.base.consistency_filter`), so fusion
treats every backend alike; the estimate itself ignores the source views. Fewer than ``min_prompt_points``
sparse points: no depth for that frame.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..errors import BackendNotInstalled
from ..stage import Options as BackendOptions
from .base import Sparse, SparseSet, View, consistency_filter, neighbour_sources

HINT = ("not installed: pip install torch transformers; set depth.prompt_da.model to a local Prompt Depth "
        "Anything folder, a Hugging Face id, or 'tiny'")
PATCH = 14
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def tiny_config():
    """A ``PromptDepthAnythingConfig`` with a 4-layer, 32-wide DINOv2 backbone (~160k parameters)."""
    from transformers import PromptDepthAnythingConfig

    return PromptDepthAnythingConfig(
        backbone_config=dict(model_type="dinov2", image_size=98, hidden_size=32, num_hidden_layers=4,
                             num_attention_heads=2, intermediate_size=64, patch_size=PATCH,
                             out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
        reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)


def resolve_device(device: str) -> str:
    """``"cuda"`` for ``auto`` when a GPU is visible, else ``"cpu"``; explicit names pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: str, device: str = "cpu", seed: int = 0):
    """A Prompt Depth Anything model in eval mode on ``device``.

    ``spec``: ``"tiny"`` (random, seeded), a local folder (``from_pretrained``, never downloads), or a Hugging
    Face id (``local_files_only`` when ``HF_HUB_OFFLINE`` is set).

    Raises:
        BackendNotInstalled: the folder / id cannot be loaded.
    """
    import torch
    from transformers import PromptDepthAnythingForDepthEstimation

    if spec == "tiny":
        torch.manual_seed(seed)
        model = PromptDepthAnythingForDepthEstimation(tiny_config())
    else:
        local = Path(spec).is_dir()
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        try:
            model = PromptDepthAnythingForDepthEstimation.from_pretrained(spec, local_files_only=local or offline)
        except (OSError, ValueError) as e:
            raise BackendNotInstalled(f"depth backend 'prompt_da' cannot load model {spec!r}: {e}") from e
    return model.to(device).eval()


def model_input_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) with the aspect of ``width×height``, long side ≈ ``long_side``, both multiples of 14 (≥ 14)."""
    s = long_side / max(width, height)
    return (max(PATCH, int(round(width * s / PATCH)) * PATCH), max(PATCH, int(round(height * s / PATCH)) * PATCH))


def densify_prompt(uv: np.ndarray, z: np.ndarray, size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """Dense ``out_h×out_w`` float32 prompt from sparse depths ``z`` (``N``) at ``uv`` (``N×2`` pixels of an
    image of ``size = (w, h)``, pixel centres at +0.5): linear in inverse depth inside the convex hull, the
    nearest sample outside. Raises ValueError for no samples."""
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
    from scipy.spatial import QhullError

    if len(z) == 0:
        raise ValueError("no sparse depths to build a prompt from")
    ow, oh = out_size
    sx, sy = ow / size[0], oh / size[1]
    pts = np.asarray(uv, np.float64) * [sx, sy]
    gu, gv = np.meshgrid(np.arange(ow) + 0.5, np.arange(oh) + 0.5)
    q = np.stack([gu.ravel(), gv.ravel()], 1)
    inv = 1.0 / np.asarray(z, np.float64)
    out = np.full(len(q), np.nan)
    if len(z) >= 4:
        try:
            out = LinearNDInterpolator(pts, inv)(q)
        except QhullError:  # collinear samples
            pass
    miss = ~np.isfinite(out)
    if miss.any():
        out[miss] = NearestNDInterpolator(pts, inv)(q[miss])
    return (1.0 / out).reshape(oh, ow).astype(np.float32)


def pixel_values(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``3×h×w`` float32 ImageNet-normalised model input from an ``H×W×3`` uint8 RGB image, ``size = (w, h)``."""
    import cv2

    im = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    return ((im - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def safe_prompt(prompt: np.ndarray) -> np.ndarray:
    """The prompt with a non-zero range (the model divides by max − min): a constant prompt gets a 0.1%
    step in one corner."""
    p = np.asarray(prompt, np.float32).copy()
    if float(p.max() - p.min()) <= 1e-6 * max(float(p.max()), 1e-12):
        p[0, 0] *= 1.001
    return p


class PromptDABackend:
    """Depth backend ``prompt_da`` (see the module docstring)."""

    name = "prompt_da"

    class Options(BackendOptions):
        model: str = Field("tiny", description="local folder, Hugging Face id, or 'tiny' (random, smoke runs)")
        device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs")
        input_size: int = Field(518, ge=14, le=2044, description="model input: long side in pixels (→ ×14)")
        prompt_size: int = Field(192, ge=8, le=1024, description="dense prompt: long side in pixels")
        batch_size: int = Field(4, ge=1, le=64, description="keyframes per forward pass (predict_batch)")
        min_prompt_points: int = Field(4, ge=1, description="fewer sparse points in a frame: no depth")
        seed: int = 0
        n_views: int = Field(5, ge=1, le=12, description="source views per keyframe for the consistency filter")
        min_angle_deg: float = Field(1.0, ge=0, description="as depth.mvs.min_angle_deg (source choice)")
        best_angle_deg: float = Field(5.0, gt=0, description="as depth.mvs.best_angle_deg (source choice)")
        geometric_filter: bool = Field(True, description="keep depths consistent with neighbouring views")
        min_consistent_views: int = Field(2, ge=1, description="views a depth must agree with")
        consistency_rel_tol: float = Field(0.05, gt=0, description="relative depth error for agreement")

    def __init__(self, options: Any = None):
        ok, hint = self.is_installed()
        if not ok:
            raise BackendNotInstalled(f"depth backend 'prompt_da' {hint}")
        if options is None:
            options = self.Options()
        elif not isinstance(options, self.Options):  # a stage config carrying a ``prompt_da`` section
            options = getattr(options, "prompt_da", None) or self.Options()
        import torch

        self.torch = torch
        self.options = options
        self.device = resolve_device(options.device)
        self.model = load_model(options.model, self.device, options.seed)

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
            return False, HINT
        return True, "installed"

    def predict_batch(self, rgbs: list[np.ndarray], prompts: list[np.ndarray]) -> list[np.ndarray]:
        """Depth (prompt units) for same-size RGB images (``H×W×3`` uint8) and their dense prompts
        (``h'×w'`` float32, same size for all): ``h×w`` float32 at the model input size, in batches."""
        out = []
        o = self.options
        h, w = rgbs[0].shape[:2]
        size = model_input_size(w, h, o.input_size)
        for s in range(0, len(rgbs), o.batch_size):
            x = np.stack([pixel_values(im, size) for im in rgbs[s:s + o.batch_size]])
            p = np.stack([safe_prompt(pr)[None] for pr in prompts[s:s + o.batch_size]])
            with self.torch.no_grad():
                d = self.model(pixel_values=self.torch.from_numpy(x).to(self.device),
                               prompt_depth=self.torch.from_numpy(p).to(self.device)).predicted_depth
            out += list(d.float().cpu().numpy())
        return out

    def prompt_for(self, sparse, size: tuple[int, int]) -> np.ndarray | None:
        """The dense prompt of a frame of ``size = (w, h)`` from its sparse depths (None if too few)."""
        if len(sparse.z) < self.options.min_prompt_points:
            return None
        w, h = size
        s = self.options.prompt_size / max(w, h)
        return densify_prompt(sparse.uv, sparse.z, size, (max(2, round(w * s)), max(2, round(h * s))))

    def select_sources(self, views: list[View], priors: SparseSet) -> list[list[int]]:
        """Neighbouring views for the consistency filter (as ``mvs``)."""
        o = self.options
        return neighbour_sources(views, priors, o.n_views, o.min_angle_deg, o.best_angle_deg)

    def filter(self, views: list[View], sources: list[list[int]], depths: list[np.ndarray],
               confs: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Geometric consistency across views (as ``mvs``); unchanged with ``geometric_filter`` off."""
        o = self.options
        if not o.geometric_filter:
            return depths, confs
        return consistency_filter(views, sources, depths, confs, o.min_consistent_views, o.consistency_rel_tol)

    def estimate(self, ref: View, sources: list[View], sparse: Sparse,
                 depth_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth of one keyframe at working resolution (the depth stage's backend call).

        Args:
            ref: the reference view (:class:`~vid2scene.depth.base.View`: ``load_rgb()``, ``shape`` = (h, w)).
            sources: ignored (the stage's consistency filter uses them).
            sparse: ``sparse.uv`` (``N×2`` working pixels), ``sparse.z`` (``N`` SfM depths).
            depth_range: (lo, hi) SfM depth bounds of the frame.

        Returns:
            (depth ``h×w`` float32 SfM units, 0 = unknown; confidence ``h×w`` float32; weak ``h×w`` bool, all
            False).
        """
        import cv2

        h, w = ref.shape
        zero = np.zeros((h, w), np.float32)
        prompt = self.prompt_for(sparse, (w, h))
        if prompt is None:
            return zero, zero, np.zeros((h, w), bool)
        rgb = cv2.resize(ref.load_rgb(), (w, h), interpolation=cv2.INTER_AREA)
        d = cv2.resize(self.predict_batch([rgb], [prompt])[0], (w, h), interpolation=cv2.INTER_LINEAR)
        lo, hi = depth_range
        depth = np.where((d >= 0.5 * lo) & (d <= 2.0 * hi), d, 0).astype(np.float32)
        conf = np.where(depth > 0, self.frame_confidence(depth, sparse), 0).astype(np.float32)
        return depth, conf, np.zeros((h, w), bool)

    @staticmethod
    def frame_confidence(depth: np.ndarray, sparse) -> float:
        """``0.3 + 0.4·q``, ``q`` = share of sparse points with ``|d − z| ≤ 0.1 z``."""
        h, w = depth.shape
        u = np.clip(np.asarray(sparse.uv)[:, 0].astype(int), 0, w - 1)
        v = np.clip(np.asarray(sparse.uv)[:, 1].astype(int), 0, h - 1)
        z = np.asarray(sparse.z)
        q = float(np.mean(np.abs(depth[v, u] - z) <= 0.1 * z)) if len(z) else 0.0
        return 0.3 + 0.4 * q
