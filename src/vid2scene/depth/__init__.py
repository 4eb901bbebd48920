"""``depth`` stage: a dense depth map per registered keyframe, anchored on the sparse SfM points.

Writes ``depth/NNNNNN.npz`` (NNNNNN = source frame, six digits) for every *registered* keyframe through
``Scene.write_depth`` (atomic); unregistered keyframes get no file. Each file holds:

* ``depth_sfm`` — float32 H×W (the keyframe's size), depth along the camera z axis in **SfM units** (the SfM
  frame's arbitrary scale), 0 = unknown. It is never rewritten: ``Scene.depth(sf, frame="world")`` gives
  metres once ``layout`` has stored ``world_from_sfm``.
* ``confidence`` — float32 0..1 (0 where ``depth_sfm`` is 0). Multi-view matches that passed the geometric
  check score ≳ 0.3; depths filled from the sparse points score ``fill_confidence`` (0.1 by default).

Recipe (backend ``mvs``, the CPU reference; see :mod:`vid2scene.depth.mvs`):

1. Sparse priors: the SfM points each keyframe observes (``Scene.reconstruction()``), projected with its
   pose and K → per-frame depth range (2nd–98th percentile widened by ``depth_margin``).
2. Source views: up to ``mvs.n_views`` keyframes sharing SfM points with the reference, scored by
   triangulation angle at the shared points (no tiny baselines, no very wide ones).
3. Plane-sweep stereo with ZNCC at working resolution (long side ``max_size``), best-k aggregation,
   winner-take-all + parabola refinement.
4. Geometric consistency: each depth is reprojected into its source views and kept if it agrees with at
   least ``mvs.min_consistent_views`` of their depth maps within ``mvs.consistency_rel_tol`` (relative).
5. Weak pixels (untextured, or a flat cost curve) left without depth are filled by interpolating the sparse
   depths (``fill_weak="sparse"``) at low confidence, or left 0 (``"none"``).
6. Upsampling to the keyframe size (bilinear inside smooth regions, nearest across depth edges).

Backends (registry :data:`BACKENDS`, plugin shape of :mod:`vid2scene.stage`): ``mvs`` (default, offline),
``mono`` (a local monocular depth model aligned to the sparse depths; :mod:`vid2scene.depth.mono`) and
``prompt_da`` (Prompt Depth Anything prompted with the sparse SfM depths, metric in the SfM frame, filtered across
views like ``mvs``; :mod:`vid2scene.depth.prompt_da`), each with its own config section:
``depth: {backend: prompt_da, prompt_da: {model: PATH|HF_ID|tiny}}``. Lens distortion is ignored (see
:mod:`vid2scene.depth.base`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import geometry, parallel, progress
from ..errors import StageFailed
from ..scene import CameraFrame, Scene
from ..stage import StageResult, known_backend, make_backend
from ..stage import backend_status as _backend_status
from .base import (DepthBackend, Sparse, SparseSet, View, depth_range, project_sparse, sparse_fill,
                   sparse_observations, upsample, working_grey, working_scale, working_size)
from .mono import MonoBackend, MonoOptions, align_scale_shift
from .mvs import MVSBackend, MVSOptions
from .prompt_da import PromptDABackend

NAME = "depth"
OUTPUTS = ["depth"]

BACKENDS: dict[str, type] = {
    "mvs": MVSBackend,
    "mono": MonoBackend,
    "prompt_da": PromptDABackend,
}

__all__ = ["NAME", "OUTPUTS", "BACKENDS", "Config", "run", "backend_status", "align_scale_shift"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str = Field("mvs", description=f"depth estimator: one of {', '.join(BACKENDS)}")
    max_size: int = Field(320, ge=64, le=4096, description="working resolution: long side in pixels")
    depth_margin: float = Field(0.3, ge=0, description="relative margin around the sparse depth percentiles")
    min_sparse_points: int = Field(10, ge=3, description="fewer sparse points in a view: use the scene's "
                                   "median depth range for it")
    fill_weak: Literal["sparse", "none"] = Field("sparse", description="weak pixels without depth: "
                                                 "interpolate the sparse SfM depths, or leave 0")
    fill_confidence: float = Field(0.1, ge=0, le=1, description="confidence given to sparse-filled depths")
    min_track_length: int = Field(2, ge=2, description="SfM points with shorter tracks are not used as priors")
    workers: int | None = Field(None, ge=1, description="threads over keyframes for a thread-safe backend (mvs); "
                                "None = $VID2SCENE_WORKERS or the available cores (vid2scene.parallel)")
    mvs: MVSOptions = Field(default_factory=MVSOptions, description="options of the mvs backend")
    mono: MonoOptions = Field(default_factory=MonoOptions, description="options of the mono backend")
    prompt_da: PromptDABackend.Options = Field(default_factory=PromptDABackend.Options,
                                               description="options of the prompt_da backend")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        return known_backend(v, BACKENDS, "depth")


def backend_status() -> dict[str, str]:
    """``{name: "installed" | "not installed: <how to install>"}`` for every registered backend."""
    return _backend_status(BACKENDS)


@dataclass
class Estimates:
    """Per view at working resolution: depth (SfM units), confidence, weak-pixel mask, source views."""

    depths: list[np.ndarray]
    confs: list[np.ndarray]
    weaks: list[np.ndarray]
    sources: list[list[int]]


# ---------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------
def run(scene: Scene, config: Config) -> StageResult:
    """Estimate and write a depth map (SfM units) per registered keyframe.

    Raises:
        StageFailed: ``sfm`` has not completed, no registered keyframes, a keyframe image is missing, no
            COLMAP model, or no keyframe observes enough sparse SfM points to bound the depth range.
        BackendNotInstalled: the chosen backend's package or model is missing.
    """
    scene.require("sfm")
    t0 = time.perf_counter()
    cams = scene.cameras()
    frames = [c for c in cams if c.registered]
    if not frames:
        raise StageFailed(NAME, f"no registered keyframes (0/{len(cams)} in cameras.json)")
    backend = make_backend(NAME, BACKENDS, config)
    priors, views = load_views(scene, frames, config)
    ranges = depth_ranges(priors.sparse, config)
    est = estimate(backend, views, priors, ranges, config)
    qc = dense_qc(views, priors.sparse, est)
    n_filled = fill_weak(est, priors.sparse, config)
    final_cov = write_depth_maps(scene, views, est, config.workers)
    return summarise(qc, config, cams, views, est, n_filled, final_cov, time.perf_counter() - t0)


def load_views(scene: Scene, frames: list[CameraFrame], config: Config) -> tuple[SparseSet, list[View]]:
    """The registered keyframes at working resolution and the SfM points each observes (SfM frame).

    Raises:
        StageFailed: a keyframe image is missing, or there is no COLMAP model.
    """
    rec = scene.reconstruction()
    obs = sparse_observations(rec, min_track_length=config.min_track_length)
    xyz_of = {pid: np.asarray(p.xyz, np.float64) for pid, p in rec.points3D.items()}
    views: list[View] = []
    priors = SparseSet([], xyz_of, [])
    for i, f in enumerate(progress.track(frames, "depth: loading keyframes")):
        s = working_scale(f.width, f.height, config.max_size)
        K = geometry.scale_intrinsics(f.K, s)
        size = working_size(f.width, f.height, s)
        grey = working_grey(scene.keyframe_image(f.source_frame, (f.width, f.height)), size)
        views.append(View(index=i, frame=f, load_rgb=partial(scene.keyframe_image, f.source_frame), scale=s,
                          grey=grey, K=K))
        ids = obs.get(f.name, np.zeros(0, np.int64))
        priors.observed.append(ids)
        xyz = np.stack([xyz_of[p] for p in ids]) if len(ids) else np.zeros((0, 3))
        priors.sparse.append(project_sparse(f, K, xyz, ids, size))
    return priors, views


def depth_ranges(sparse: list[Sparse], config: Config) -> list[tuple[float, float]]:
    """Per view, the depth bounds from its sparse points; views with fewer than ``min_sparse_points`` get the
    median bounds of the others.

    Raises:
        StageFailed: no view has enough sparse points.
    """
    ranges = [depth_range(sp.z, config.depth_margin) if len(sp) >= config.min_sparse_points else None
              for sp in sparse]
    known = [r for r in ranges if r is not None]
    if not known:
        raise StageFailed(NAME, f"no keyframe observes ≥ {config.min_sparse_points} sparse SfM points; "
                                "cannot bound the depth range")
    fallback = (float(np.median([r[0] for r in known])), float(np.median([r[1] for r in known])))
    return [r or fallback for r in ranges]


def estimate(backend: DepthBackend, views: list[View], priors: SparseSet, ranges: list[tuple[float, float]],
             config: Config) -> Estimates:
    """The backend's depth of every view (source selection, per-view estimate, cross-view filter).

    A backend with ``thread_safe = True`` (``mvs``) estimates the views on :func:`vid2scene.parallel.map_ordered`
    threads (``config.workers``); the others one view at a time. The result does not depend on the number of
    workers."""
    sources = backend.select_sources(views, priors)
    workers = view_workers(backend, config, len(views))

    def one(i: int):
        return backend.estimate(views[i], [views[j] for j in sources[i]], priors.sparse[i], ranges[i])

    depths, confs, weaks = [], [], []
    results = parallel.map_ordered(one, range(len(views)), workers)
    for d, c, wk in progress.track(results, f"depth: {config.backend}", total=len(views)):
        depths.append(d)
        confs.append(c)
        weaks.append(wk)
    with progress.bar("depth: consistency", total=None):
        depths, confs = backend.filter(views, sources, depths, confs)
    return Estimates(depths, confs, weaks, sources)


def view_workers(backend: DepthBackend, config: Config, n_views: int) -> int:
    """Workers for the per-view steps: :func:`vid2scene.parallel.worker_count` for a thread-safe backend, else 1."""
    if not getattr(backend, "thread_safe", False):
        return 1
    return parallel.worker_count(config.workers, n_views)


def dense_qc(views: list[View], sparse: list[Sparse], est: Estimates) -> dict:
    """Dense coverage and the relative error against the sparse depths, before any fill (the dense estimate
    itself)."""
    rel_errs, coverage = [], []
    for i in range(len(views)):
        sp, d = sparse[i], est.depths[i]
        if len(sp):
            h, w = d.shape
            u = np.clip(sp.uv[:, 0].astype(int), 0, w - 1)
            vv = np.clip(sp.uv[:, 1].astype(int), 0, h - 1)
            ds = d[vv, u]
            m = ds > 0
            rel_errs.append(np.abs(ds[m] - sp.z[m]) / sp.z[m])
        coverage.append(float((d > 0).mean()))
    rel = np.concatenate(rel_errs) if rel_errs else np.zeros(0)
    return {"coverage_dense": round(float(np.mean(coverage)), 4),
            "sparse_checked": int(len(rel)),
            "sparse_median_rel_error": round(float(np.median(rel)), 4) if len(rel) else None,
            "sparse_share_within_5pct": round(float((rel < 0.05).mean()), 4) if len(rel) else None}


def fill_weak(est: Estimates, sparse: list[Sparse], config: Config) -> int:
    """Fill weak pixels left without depth from the sparse depths (``fill_weak="sparse"``) at
    ``fill_confidence``, in place; returns the number of filled pixels. Views run on
    :func:`vid2scene.parallel.map_ordered` threads (``config.workers``; NumPy / SciPy only)."""
    if config.fill_weak != "sparse":
        return 0

    def one(i: int) -> tuple[np.ndarray, np.ndarray, int]:
        d = est.depths[i]
        hole = (d == 0) & est.weaks[i]
        fill = sparse_fill(sparse[i], d.shape, hole)
        got = fill > 0
        return (np.where(got, fill, d).astype(np.float32),
                np.where(got, config.fill_confidence, est.confs[i]).astype(np.float32), int(got.sum()))

    n_filled = 0
    with progress.bar("depth: sparse fill", total=None):
        for i, (d, c, n) in enumerate(parallel.map_ordered(one, range(len(est.depths)), config.workers)):
            est.depths[i], est.confs[i] = d, c
            n_filled += n
    return n_filled


def write_depth_maps(scene: Scene, views: list[View], est: Estimates, workers: int | None = None) -> list[float]:
    """Upsample every view to its keyframe size and write ``depth/NNNNNN.npz`` (``depth_sfm``); remove a
    previous run's map of a keyframe that is no longer registered. Returns the final coverage per view.
    Views are upsampled and written (compressed) on :func:`vid2scene.parallel.map_ordered` threads."""
    wanted = {v.frame.source_frame for v in views}
    for sf in scene.depth_frames():
        if sf not in wanted:
            scene.depth_path(sf).unlink()

    def one(i: int) -> float:
        v = views[i]
        d, c = upsample(est.depths[i], est.confs[i], v.frame.width, v.frame.height)
        scene.write_depth(v.frame.source_frame, d, c)
        return float((d > 0).mean())

    with progress.bar("depth: writing", total=None):
        return list(parallel.map_ordered(one, range(len(views)), workers))


def summarise(qc_dense: dict, config: Config, cams: list[CameraFrame], views: list[View], est: Estimates,
              n_filled: int, final_cov: list[float], seconds: float) -> StageResult:
    """The stage's QC figures, warnings and summary line."""
    f0 = views[0].frame
    qc = {"backend": config.backend, "n_keyframes": len(cams), "n_registered": len(views),
          "n_depth_maps": len(final_cov), "world": "sfm",
          "working_size": list(working_size(f0.width, f0.height, views[0].scale)),
          "mean_source_views": round(float(np.mean([len(s) for s in est.sources])), 2),
          "coverage_dense": qc_dense["coverage_dense"],
          "coverage_final": round(float(np.mean(final_cov)), 4),
          "filled_share": round(n_filled / max(sum(d.size for d in est.depths), 1), 4),
          **{k: qc_dense[k] for k in ("sparse_checked", "sparse_median_rel_error", "sparse_share_within_5pct")},
          "seconds_per_keyframe": round(seconds / len(views), 3)}
    warnings = []
    if qc["coverage_dense"] < 0.2:
        warnings.append(f"low dense coverage ({100 * qc['coverage_dense']:.0f}% of pixels)")
    summary = (f"{len(final_cov)} depth maps ({config.backend}, SfM units), dense coverage "
               f"{100 * qc['coverage_dense']:.0f}% (+{100 * qc['filled_share']:.0f}% filled from sparse), "
               f"median error vs SfM points {100 * (qc['sparse_median_rel_error'] or 0):.1f}%, "
               f"{qc['seconds_per_keyframe']:.2f} s/keyframe")
    return StageResult(qc=qc, summary=summary, warnings=warnings)
