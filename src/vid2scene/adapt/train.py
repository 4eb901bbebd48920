"""The adaptation loop: a Prompt Depth Anything model adapted to scenes with SfM anchors, rendering consistency
and distillation to its frozen starting copy; checkpoints that load as the ``prompt_da`` depth backend.

Data per scene (:func:`load_views`): every registered keyframe resized to the model input (long side
``input_size``, multiples of 14, K scaled alike), its pose (SfM frame) and its anchors
(:mod:`.anchors`). A step takes ``batch_views`` consecutive keyframes of one scene (neighbours overlap).

Forward (:func:`predict`): each view's prompt is densified from a random ``prompt_share`` of its anchors (so
the anchor loss also scores anchors the model was not told), and the model predicts ``D_v`` (SfM units).

Objective (equations of each term in :mod:`.losses`)::

    L = w_anchor · L_anchor + w_render · L_render + w_distill · L_distill

* ``L_anchor``: the pixel-aligned points ``X̂ = T_v⁻¹ (D_v(uv) K⁻¹ [uv, 1])`` at every anchor of the batch
  against the anchors, after one Sim(3) per batch fitted without gradient (``anchor_alignment: sim3``) or
  none (``none``, the default). The prompted model's depth is already in SfM units and the known poses place
  it, so a Sim(3) fit only frees its scale to drift: on the synthetic rooms (``benchmarks/adapt_synthetic.py``)
  anchor-only adaptation with the fit made Chamfer on room B 81% worse while its anchor loss fell; without it
  26% better.
* ``L_render``: one view of the batch is the held-out target; the others are context. Their depth maps become
  pixel-aligned Gaussians (:func:`.render.gaussians_from_depth`, every ``gaussian_stride``-th pixel, colour =
  the pixel's) rendered at the target's known pose (:func:`.render.render`, at ``render_size``) and compared
  with the target image (L1 + SSIM where the render covers the target). The target's own depth is not used
  for its rendering; the role of target rotates over the batch from step to step. Held-out views are
  keyframes left out of the context (non-keyframes carry no pose in ``cameras.json``).
* ``L_distill``: log-depth L1 to the frozen starting model on the same inputs and prompts.

Adam, learning rate ``lr``, ``steps`` steps. :func:`save_checkpoint` writes ``save_pretrained`` files plus
``adapt.json`` (config, scenes, loss curve, seconds per step): the folder is a ``depth.prompt_da.model``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .. import io
from ..depth.prompt_da import densify_prompt, load_model, model_input_size, pixel_values, resolve_device, safe_prompt
from ..geometry import intrinsics_for_size
from ..scene import Scene
from . import losses as L
from .anchors import scene_anchors
from .render import gaussians_from_depth, render


class AdaptConfig(BaseModel):
    """Settings of :func:`adapt` (weights of the three terms, data sizes, optimiser)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(100, ge=0)
    lr: float = Field(1e-4, gt=0)
    batch_views: int = Field(4, ge=2, description="consecutive keyframes per step (1 target + context)")
    input_size: int = Field(112, ge=14, description="model input long side (pixels, → multiple of 14)")
    prompt_size: int = Field(32, ge=4, description="dense prompt long side")
    prompt_share: float = Field(0.7, gt=0, le=1, description="share of a view's anchors used as its prompt")
    w_anchor: float = Field(1.0, ge=0)
    w_render: float = Field(1.0, ge=0)
    w_distill: float = Field(0.2, ge=0, description="distillation to the frozen starting model (0 = off)")
    huber_delta: float = Field(0.05, gt=0)
    anchor_alignment: Literal["sim3", "none"] = Field("none", description="per-batch Sim(3) before the anchor "
                                                      "loss, or none (the model's depth is in SfM units already)")
    ssim_weight: float = Field(0.2, ge=0, le=1)
    render_size: int = Field(56, ge=8, description="long side of the target renders")
    gaussian_stride: int = Field(3, ge=1)
    sigma_px: float = Field(0.7, gt=0, description="Gaussian σ in context pixels (× stride)")
    opacity: float = Field(0.9, gt=0, lt=1)
    min_track_length: int = Field(3, ge=2)
    max_error_px: float = Field(1.5, gt=0)
    min_angle_deg: float = Field(2.0, ge=0)
    min_anchors: int = Field(8, ge=3, description="views with fewer anchors are skipped")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


@dataclass
class TrainView:
    """One keyframe at model-input size: ``rgb`` ``h×w×3`` uint8, ``K`` 3×3 for it, ``cam_from_world`` 4×4
    (SfM frame), anchors ``uv`` ``N×2`` (pixels of this size), ``xyz`` ``N×3``, ``z`` ``N``; ``depth``: an
    optional true depth ``h×w`` (SfM units) for supervised fitting."""

    scene: str
    source_frame: int
    rgb: np.ndarray
    K: np.ndarray
    cam_from_world: np.ndarray
    uv: np.ndarray
    xyz: np.ndarray
    z: np.ndarray
    depth: np.ndarray | None = None


def load_views(scene: Scene, config: AdaptConfig) -> list[TrainView]:
    """The registered keyframes of ``scene`` with ≥ ``min_anchors`` anchors, in keyframe order.

    Raises:
        StageFailed: no COLMAP model / cameras / keyframe images.
    """
    anchors = scene_anchors(scene, config.min_track_length, config.max_error_px, config.min_angle_deg)
    views = []
    for cam in scene.cameras("sfm"):
        a = anchors.get(cam.source_frame)
        if not cam.registered or a is None or len(a) < config.min_anchors:
            continue
        size = model_input_size(cam.width, cam.height, config.input_size)
        sx, sy = size[0] / cam.width, size[1] / cam.height
        views.append(TrainView(str(scene.root), cam.source_frame, scene.keyframe_image(cam.source_frame, size),
                               intrinsics_for_size(cam.K, (cam.width, cam.height), size), cam.cam_from_world,
                               a.uv * [sx, sy], a.xyz, a.depth))
    return views


def _prompts(views: list[TrainView], config: AdaptConfig, rng: np.random.Generator | None) -> np.ndarray:
    out = []
    for v in views:
        h, w = v.rgb.shape[:2]
        idx = np.arange(len(v.z))
        if rng is not None and config.prompt_share < 1:
            idx = rng.choice(len(v.z), max(4, int(round(config.prompt_share * len(v.z)))), replace=False)
        s = config.prompt_size / max(w, h)
        p = densify_prompt(v.uv[idx], v.z[idx], (w, h), (max(2, round(w * s)), max(2, round(h * s))))
        out.append(safe_prompt(p)[None])
    return np.stack(out)


def predict(model, views: list[TrainView], config: AdaptConfig, rng: np.random.Generator | None = None,
            prompts: np.ndarray | None = None):
    """``B×h×w`` predicted depth tensor (SfM units) for same-size views; prompts from a random
    ``prompt_share`` of the anchors when ``rng`` is given, from all anchors otherwise. Returns (depth,
    prompts used)."""
    import torch

    dev = next(model.parameters()).device
    if prompts is None:
        prompts = _prompts(views, config, rng)
    x = torch.from_numpy(np.stack([pixel_values(v.rgb, v.rgb.shape[1::-1]) for v in views])).to(dev)
    d = model(pixel_values=x, prompt_depth=torch.from_numpy(prompts).to(dev)).predicted_depth
    return d, prompts


def anchor_term(depth, views: list[TrainView], delta: float, align: str = "sim3"):
    """``L_anchor`` of a batch: ``depth`` ``B×h×w`` tensor, views with anchors (see :mod:`.losses`)."""
    import torch

    pts, anc, zs = [], [], []
    for b, v in enumerate(views):
        dt, dev = depth.dtype, depth.device
        uv = torch.as_tensor(v.uv, dtype=dt, device=dev)
        d = L.sample_at(depth[b], uv)
        K = torch.as_tensor(v.K, dtype=dt, device=dev)
        T = torch.as_tensor(v.cam_from_world, dtype=dt, device=dev)
        xc = torch.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * d, (uv[:, 1] - K[1, 2]) / K[1, 1] * d, d], 1)
        pts.append((xc - T[:3, 3]) @ T[:3, :3])
        anc.append(torch.as_tensor(v.xyz, dtype=dt, device=dev))
        zs.append(torch.as_tensor(v.z, dtype=dt, device=dev))
    return L.anchor_loss(torch.cat(pts), torch.cat(anc), torch.cat(zs).median(), delta, align)


def render_term(depth, views: list[TrainView], target: int, config: AdaptConfig):
    """``L_render`` with ``views[target]`` held out and the other views as context (see :mod:`.losses`)."""
    import torch

    dt, dev = depth.dtype, depth.device
    g = {"means": [], "sigmas": [], "colors": [], "opacities": []}
    for b, v in enumerate(views):
        if b == target:
            continue
        img = torch.as_tensor(v.rgb, device=dev).to(dt) / 255.0
        gb = gaussians_from_depth(depth[b], img, torch.as_tensor(v.K, dtype=dt, device=dev),
                                  torch.as_tensor(v.cam_from_world, dtype=dt, device=dev),
                                  config.gaussian_stride, config.sigma_px, config.opacity)
        for k in g:
            g[k].append(gb[k])
    tv = views[target]
    h, w = tv.rgb.shape[:2]
    s = min(1.0, config.render_size / max(w, h))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    K = torch.as_tensor(intrinsics_for_size(tv.K, (w, h), size), dtype=dt, device=dev)
    out = render(torch.cat(g["means"]), torch.cat(g["sigmas"]), torch.cat(g["colors"]), torch.cat(g["opacities"]),
                 K, torch.as_tensor(tv.cam_from_world, dtype=dt, device=dev), size[0], size[1])
    import cv2

    tgt = torch.as_tensor(cv2.resize(tv.rgb, size, interpolation=cv2.INTER_AREA), device=dev).to(dt) / 255.0
    return L.photometric_loss(out["image"], tgt, out["alpha"] > 0.5, config.ssim_weight)


def _batches(scenes_views: list[list[TrainView]], n: int, rng: np.random.Generator) -> list[TrainView]:
    views = scenes_views[int(rng.integers(len(scenes_views)))]
    n = min(n, len(views))
    start = int(rng.integers(0, len(views) - n + 1))
    return views[start:start + n]


def adapt(model, scenes_views: list[list[TrainView]], config: AdaptConfig, log=None) -> dict:
    """Adapt ``model`` in place (the objective of the module docstring). ``scenes_views``: per scene the
    output of :func:`load_views` (each with ≥ 2 views). Returns ``{"losses": [{"step", "total", "anchor",
    "render", "distill"}], "seconds_per_step"}``.

    Raises:
        ValueError: no scene has two usable views.
    """
    import torch

    scenes_views = [v for v in scenes_views if len(v) >= 2]
    if not scenes_views:
        raise ValueError("no scene has two keyframes with enough anchors to adapt on")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    frozen = copy.deepcopy(model).eval() if config.w_distill > 0 else None
    if frozen is not None:
        for p in frozen.parameters():
            p.requires_grad_(False)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    hist = []
    t0 = time.perf_counter()
    for step in range(config.steps):
        views = _batches(scenes_views, config.batch_views, rng)
        depth, prompts = predict(model, views, config, rng)
        terms = {"anchor": anchor_term(depth, views, config.huber_delta, config.anchor_alignment)
                           if config.w_anchor > 0 else None,
                 "render": render_term(depth, views, step % len(views), config) if config.w_render > 0 else None,
                 "distill": None}
        if frozen is not None:
            with torch.no_grad():
                d0, _ = predict(frozen, views, config, prompts=prompts)
            terms["distill"] = L.distillation_loss(depth, d0)
        weights = {"anchor": config.w_anchor, "render": config.w_render, "distill": config.w_distill}
        total = sum(weights[k] * v for k, v in terms.items() if v is not None)
        opt.zero_grad()
        total.backward()
        opt.step()
        rec = {"step": step, "total": float(total.detach())}
        rec.update({k: None if v is None else float(v.detach()) for k, v in terms.items()})
        hist.append(rec)
        if log is not None:
            log(rec)
    model.eval()
    return {"losses": hist, "seconds_per_step": (time.perf_counter() - t0) / max(config.steps, 1)}


def fit_depth(model, views: list[TrainView], steps: int, lr: float, config: AdaptConfig, log=None) -> dict:
    """Supervised fitting on true depth (``TrainView.depth``): ``mean |log D − log D*|`` over known pixels,
    anchors as prompts (a random ``prompt_share``). Used to build a "pre-trained" starting model in
    synthetic experiments. Returns ``{"losses": [...], "seconds_per_step"}``."""
    import torch

    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist, t0 = [], time.perf_counter()
    for step in range(steps):
        batch = _batches([views], config.batch_views, rng)
        depth, _ = predict(model, batch, config, rng)
        gt = torch.as_tensor(np.stack([v.depth for v in batch]), dtype=depth.dtype, device=depth.device)
        loss = L.distillation_loss(depth, gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        if log is not None:
            log({"step": step, "fit": hist[-1]})
    model.eval()
    return {"losses": hist, "seconds_per_step": (time.perf_counter() - t0) / max(steps, 1)}


def predict_all(model, views: list[TrainView], config: AdaptConfig) -> list[np.ndarray]:
    """Inference depth (all anchors as prompt, no gradient) per view: ``h×w`` float32 SfM units."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(views), config.batch_views):
            d, _ = predict(model, views[s:s + config.batch_views], config)
            out += list(d.float().cpu().numpy())
    return out


def save_checkpoint(model, out_dir: str | Path, meta: dict) -> Path:
    """``save_pretrained`` into ``out_dir`` plus ``adapt.json`` (``meta``). The folder loads as
    ``depth.prompt_da.model``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    io.write_json(out_dir / "adapt.json", meta)
    return out_dir


def run_adapt(scenes: list[str | Path], out_dir: str | Path, model_spec: str = "tiny",
              config: AdaptConfig | None = None, log=None) -> dict:
    """Load the model (``tiny`` / folder / HF id) and the scenes, adapt, write the checkpoint. Returns the
    summary written to ``adapt.json``.

    Raises:
        StageFailed: a scene lacks ``sfm`` outputs. BackendNotInstalled: the model cannot be loaded.
        ValueError: no usable views.
    """
    config = config or AdaptConfig()
    device = resolve_device(config.device)
    model = load_model(model_spec, device, config.seed)
    data = [load_views(Scene(s), config) for s in scenes]
    res = adapt(model, data, config, log)
    meta = {"model": model_spec, "scenes": [str(s) for s in scenes], "n_views": [len(d) for d in data],
            "config": config.model_dump(), "device": device, **res}
    save_checkpoint(model, out_dir, meta)
    return meta
