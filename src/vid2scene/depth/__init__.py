"""``depth`` stage: a dense depth map per registered keyframe, anchored on the sparse SfM points.

Writes ``depth/NNNNNN.npz`` (NNNNNN = source frame, six digits) for every *registered* keyframe, atomically
(temporary name in ``depth/``, then ``os.replace``); unregistered keyframes get no file. Each file holds:

* ``depth_m`` — float32 H×W (the keyframe's size), depth along the camera z axis, 0 = unknown. Despite the
  name, at this stage the values are in **SfM units** (the SfM frame's arbitrary scale): ``world = "sfm"``
  and ``scale_applied = 1.0``. A later stage that finds the metric scale (``layout``) multiplies
  ``depth_m`` by its factor and records the total in ``scale_applied`` / sets ``world``, so rescaling is
  idempotent (rescale by ``new_scale / scale_applied``).
* ``confidence`` — float32 0..1 (0 where ``depth_m`` is 0). Multi-view matches that passed the geometric
  check score ≳ 0.3; depths filled from the sparse points score ``fill_confidence`` (0.1 by default).
* ``scale_applied`` — float64 scalar; ``world`` — string scalar (``"sfm"``).

Recipe (backend ``mvs``, the CPU reference; see :mod:`vid2scene.depth.mvs`):

1. Sparse priors: the SfM points each keyframe observes (``pycolmap.Reconstruction``), projected with its
   pose and K → per-frame depth range (2nd–98th percentile widened by ``depth_margin``).
2. Source views: up to ``n_views`` keyframes sharing SfM points with the reference, scored by triangulation
   angle at the shared points (no tiny baselines, no very wide ones).
3. Plane-sweep stereo with ZNCC at working resolution (long side ``max_size``), best-k aggregation,
   winner-take-all + parabola refinement.
4. Geometric consistency: each depth is reprojected into its source views and kept if it agrees with at
   least ``min_consistent_views`` of their depth maps within ``consistency_rel_tol`` (relative).
5. Weak pixels (untextured, or a flat cost curve) left without depth are filled by interpolating the sparse
   depths (``fill_weak="sparse"``) at low confidence, or left 0 (``"none"``).
6. Upsampling to the keyframe size (bilinear inside smooth regions, nearest across depth edges).

Backends (registry :data:`BACKENDS`): ``mvs`` (default, offline) and ``mono`` (a local monocular depth
model aligned to the sparse depths; :mod:`vid2scene.depth.mono`). Lens distortion is ignored (see
:mod:`vid2scene.depth.base`).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import progress
from ..errors import BackendNotInstalled, StageFailed
from ..scene import Scene, frame_name
from ..stage import StageResult, known_backend
from ..stage import backend_status as _backend_status
from .base import (Sparse, View, consistency_count, depth_range, load_grey, project_sparse, scaled_K,
                   select_sources, sparse_fill, sparse_observations, upsample, working_scale, working_size,
                   write_depth)
from .mono import MonoBackend, align_scale_shift
from .mvs import MVSBackend

NAME = "depth"
OUTPUTS = ["depth"]

BACKENDS: dict[str, type] = {
    "mvs": MVSBackend,
    "mono": MonoBackend,
}

__all__ = ["NAME", "OUTPUTS", "BACKENDS", "Config", "run", "backend_status", "depth_path", "load_depth",
           "align_scale_shift"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str = Field("mvs", description=f"depth estimator: one of {', '.join(BACKENDS)}")
    max_size: int = Field(320, ge=64, le=4096, description="working resolution: long side in pixels")
    n_views: int = Field(5, ge=1, le=12, description="mvs: source views per reference keyframe")
    min_angle_deg: float = Field(1.0, ge=0, description="mvs: triangulation angles below this count for "
                                 "nothing when choosing source views (tiny baselines)")
    best_angle_deg: float = Field(5.0, gt=0, description="mvs: preferred triangulation angle at shared SfM "
                                  "points when choosing source views")
    n_planes: int = Field(64, ge=8, le=512, description="mvs: depth planes (uniform in inverse depth)")
    window: int = Field(7, ge=3, le=21, description="mvs: ZNCC window (odd, pixels at working resolution)")
    best_k: int = Field(3, ge=1, description="mvs: mean of the k best source-view costs per plane")
    depth_margin: float = Field(0.3, ge=0, description="relative margin around the sparse depth percentiles")
    min_sparse_points: int = Field(10, ge=3, description="fewer sparse points in a view: use the scene's "
                                   "median depth range for it")
    min_texture: float = Field(0.01, ge=0, description="mvs: grey std (0..1) in the window below which a "
                               "pixel is untextured (weak)")
    min_confidence: float = Field(0.1, ge=0, le=1, description="mvs: matches below this confidence are dropped")
    geometric_filter: bool = Field(True, description="mvs: keep depths consistent with neighbouring views")
    min_consistent_views: int = Field(2, ge=1, description="mvs: views a depth must agree with")
    consistency_rel_tol: float = Field(0.05, gt=0, description="mvs: relative depth error for agreement "
                                       "(hololens_office: 1.5% / 3% / 5% -> coverage 41% / 49% / 53%, AbsRel at GT "
                                       "scale 0.063 / 0.063 / 0.065)")
    fill_weak: Literal["sparse", "none"] = Field("sparse", description="weak pixels without depth: "
                                                 "interpolate the sparse SfM depths, or leave 0")
    fill_confidence: float = Field(0.1, ge=0, le=1, description="confidence given to sparse-filled depths")
    min_track_length: int = Field(2, ge=2, description="SfM points with shorter tracks are not used as priors")
    model_path: str | None = Field(None, description="mono: local folder of a transformers depth model "
                                   "(e.g. Depth Anything V2)")
    seed: int = 0

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        return known_backend(v, BACKENDS, "depth")

    @field_validator("window")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("window must be odd")
        return v


def backend_status() -> dict[str, str]:
    """``{name: "installed" | "not installed: <how to install>"}`` for every registered backend."""
    return _backend_status(BACKENDS)


def depth_path(scene: Scene, source_frame: int):
    return scene.root / "depth" / frame_name(source_frame, ".npz")


def load_depth(scene: Scene, source_frame: int) -> dict:
    """One keyframe's depth file as a dict (``depth_m``, ``confidence``, ``scale_applied``, ``world``)."""
    with np.load(depth_path(scene, source_frame)) as z:
        d = {k: z[k] for k in z.files}
    d["scale_applied"] = float(d["scale_applied"])
    d["world"] = str(d["world"])
    return d


def run(scene: Scene, config: Config) -> StageResult:
    """Estimate and write a depth map per registered keyframe.

    Raises:
        StageFailed: no registered keyframes, or no usable sparse SfM points.
        BackendNotInstalled: the chosen backend's package or model is missing.
    """
    scene.require("sfm")
    cls = BACKENDS[config.backend]
    ok, hint = cls.is_installed()
    if not ok:
        raise BackendNotInstalled(f"depth backend '{config.backend}' {hint}")
    t0 = time.perf_counter()
    from ..layout import sfm_cameras

    # Always the SfM frame (from the COLMAP model): after ``layout``, cameras.json is metric and z-up, but
    # depth is computed against the SfM points, and a re-run of this stage must not mix the two frames.
    cams = sfm_cameras(scene)[0]
    frames = [c for c in cams if c.registered]
    if not frames:
        raise StageFailed(NAME, f"no registered keyframes (0/{len(cams)} in cameras.json)")
    backend = cls(config)
    rec = scene.load_reconstruction()
    obs = sparse_observations(rec, min_track_length=config.min_track_length)
    xyz_of = {pid: np.asarray(p.xyz, np.float64) for pid, p in rec.points3D.items()}

    views: list[View] = []
    sparse: list[Sparse] = []
    observed: list[np.ndarray] = []
    for i, f in enumerate(progress.track(frames, "depth: loading keyframes")):
        s = working_scale(f.width, f.height, config.max_size)
        K = scaled_K(f.K, s)
        path = scene.keyframe_path(f.source_frame)
        try:
            grey = load_grey(path, f.width, f.height, s)
        except OSError as e:
            raise StageFailed(NAME, str(e)) from e
        views.append(View(index=i, frame=f, path=path, scale=s, grey=grey, K=K))
        ids = obs.get(f.name, np.zeros(0, np.int64))
        observed.append(ids)
        xyz = np.stack([xyz_of[p] for p in ids]) if len(ids) else np.zeros((0, 3))
        sparse.append(project_sparse(f, K, xyz, ids, working_size(f.width, f.height, s)))
    ranges = [depth_range(sp.z, config.depth_margin) if len(sp) >= config.min_sparse_points else None
              for sp in sparse]
    known = [r for r in ranges if r is not None]
    if not known:
        raise StageFailed(NAME, f"no keyframe observes ≥ {config.min_sparse_points} sparse SfM points; "
                                "cannot bound the depth range")
    fallback = (float(np.median([r[0] for r in known])), float(np.median([r[1] for r in known])))
    ranges = [r or fallback for r in ranges]

    centers = np.stack([f.center_in_world for f in frames])
    sources = [select_sources(i, centers, observed, xyz_of, config.n_views, config.min_angle_deg,
                              config.best_angle_deg) if backend.uses_sources else [] for i in range(len(views))]

    depths, confs, weaks = [], [], []
    for i, v in enumerate(progress.track(views, f"depth: {config.backend}")):
        d, c, wk = backend.estimate(v, [views[j] for j in sources[i]], sparse[i], ranges[i])
        depths.append(d)
        confs.append(c)
        weaks.append(wk)

    if backend.uses_sources and config.geometric_filter:
        filtered = []
        for i, v in enumerate(views):
            src = sources[i]
            if not src:
                filtered.append((np.zeros_like(depths[i]), np.zeros_like(confs[i])))
                continue
            cnt = consistency_count(v, depths[i], [views[j] for j in src], [depths[j] for j in src],
                                    config.consistency_rel_tol)
            keep = cnt >= min(config.min_consistent_views, len(src))
            c = confs[i] * (0.5 + 0.5 * np.minimum(1.0, cnt / max(len(src) - 1, 1)))
            filtered.append((np.where(keep, depths[i], 0).astype(np.float32),
                             np.where(keep, c, 0).astype(np.float32)))
        depths = [d for d, _ in filtered]
        confs = [c for _, c in filtered]

    # QC against the sparse priors (before any fill: measures the dense estimate itself)
    rel_errs, coverage, n_filled, n_written = [], [], 0, 0
    for i, v in enumerate(views):
        sp, d = sparse[i], depths[i]
        if len(sp):
            h, w = d.shape
            u = np.clip(sp.uv[:, 0].astype(int), 0, w - 1)
            vv = np.clip(sp.uv[:, 1].astype(int), 0, h - 1)
            ds = d[vv, u]
            m = ds > 0
            rel_errs.append(np.abs(ds[m] - sp.z[m]) / sp.z[m])
        coverage.append(float((d > 0).mean()))
        if config.fill_weak == "sparse":
            hole = (depths[i] == 0) & weaks[i]
            fill = sparse_fill(sp, d.shape, hole)
            got = fill > 0
            n_filled += int(got.sum())
            depths[i] = np.where(got, fill, d).astype(np.float32)
            confs[i] = np.where(got, config.fill_confidence, confs[i]).astype(np.float32)

    out_dir = scene.root / "depth"
    out_dir.mkdir(exist_ok=True)
    wanted = {depth_path(scene, f.source_frame).name for f in frames}
    for stale in out_dir.glob("*.npz"):  # a previous run's file for a keyframe no longer registered
        if stale.name not in wanted:
            stale.unlink()
    final_cov = []
    for i, v in enumerate(views):
        f = v.frame
        d, c = upsample(depths[i], confs[i], f.width, f.height)
        final_cov.append(float((d > 0).mean()))
        write_depth(depth_path(scene, f.source_frame), d, c, scale_applied=np.float64(1.0), world=np.array("sfm"))
        n_written += 1

    seconds = time.perf_counter() - t0
    rel = np.concatenate(rel_errs) if rel_errs else np.zeros(0)
    qc = {"backend": config.backend, "n_keyframes": len(cams), "n_registered": len(frames),
          "n_depth_maps": n_written, "world": "sfm",
          "working_size": list(working_size(frames[0].width, frames[0].height, views[0].scale)),
          "mean_source_views": round(float(np.mean([len(s) for s in sources])), 2),
          "coverage_dense": round(float(np.mean(coverage)), 4),
          "coverage_final": round(float(np.mean(final_cov)), 4),
          "filled_share": round(n_filled / max(sum(d.size for d in depths), 1), 4),
          "sparse_checked": int(len(rel)),
          "sparse_median_rel_error": round(float(np.median(rel)), 4) if len(rel) else None,
          "sparse_share_within_5pct": round(float((rel < 0.05).mean()), 4) if len(rel) else None,
          "seconds_per_keyframe": round(seconds / len(frames), 3)}
    warnings = []
    if qc["coverage_dense"] < 0.2:
        warnings.append(f"low dense coverage ({100 * qc['coverage_dense']:.0f}% of pixels)")
    summary = (f"{n_written} depth maps ({config.backend}, SfM units), dense coverage "
               f"{100 * qc['coverage_dense']:.0f}% (+{100 * qc['filled_share']:.0f}% filled from sparse), "
               f"median error vs SfM points {100 * (qc['sparse_median_rel_error'] or 0):.1f}%, "
               f"{qc['seconds_per_keyframe']:.2f} s/keyframe")
    return StageResult(qc=qc, summary=summary, warnings=warnings)
