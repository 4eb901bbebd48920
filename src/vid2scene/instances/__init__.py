"""``instances`` stage: class-agnostic 3D segments of the fused mesh + multi-view 2D detections → objects.

Schema of ``instances.json``: docs/schemas.md (world frame ``gravity_z_up_metric``, metres; ``vertex_ids``
index the vertices of ``mesh.ply``, which ``Scene.mesh(frame="world")`` keeps in file order). Every input is
read through :class:`~vid2scene.scene.Scene` in the world frame. Method (after SceneVerse++'s 2D→3D view
consensus, with ScanNet's mesh segmentator for the 3D part):

1. Geometry (:mod:`.segmentation`): vertices within ``plane_margin_m`` of a layout plane (floor z = 0, the
   ceiling plane, each wall plane) are removed; what is left is the "object" part of the mesh.
2. Over-segmentation (:mod:`.segmentation`): Felzenszwalb–Huttenlocher graph segmentation (IJCV 2004) on the
   mesh's edge graph with ScanNet's weights (Dai et al. 2017, ``Segmentator``): ``w = 1 − n_a·n_b``, squared
   for convex edges; segments smaller than ``seg_min_vertices`` are then joined to a neighbour.
3. Multi-view consensus (:mod:`.consensus`), per registered keyframe with detections: the segments' vertices
   are projected (pinhole K, OpenCV axes); a vertex is visible if in front of the camera, inside the image and
   not behind the mesh's own surface there (ray casting of the whole mesh, planes included, at ``work_size``;
   the keyframe's depth map is the fallback where no ray hits). A segment with at least
   ``min_visible_vertices`` visible vertices is *seen*; it is *assigned* to the smallest detection box that
   holds ≥ ``min_inside`` of its visible vertices (box grown by ``box_margin_rel``) and whose foreground depth
   (25th percentile of the ray-cast depth in the box) is not far in front of the segment (median depth ≤
   ``(1 + depth_band_rel)·d_fg + depth_band_m``), i.e. not background seen through the box.
4. Segments assigned in fewer than ``min_segment_support`` of the views that see them (or in fewer than two
   views) are dropped. Groups of segments are merged while they fall in the *same* detection at least twice
   and in at least ``merge_ratio`` of the views that see both and assign at least one.
5. Per instance, per view the detection holding most of its vertices votes ``score`` for its label; the
   label is the vote winner, the supporting views those whose detection has that label; instances with
   fewer than ``min_views`` supporting views are dropped, where a view supports the instance only if the box
   of its projected visible vertices has IoU ≥ ``min_view_iou`` with the detection. Same-label instances
   closer than ``dup_gap_m`` that fall in the same detection at least as often as in two different ones are
   merged (an object seen from two sides). Segments farther than ``cluster_gap_m`` from the largest spatial
   cluster of their instance are dropped first (a stray piece of a neighbour that sat in the box).
6. Box (:mod:`.boxes`): gravity-aligned — yaw and horizontal size from the minimum-area rectangle of the xy
   footprint (outliers beyond 3 MAD dropped), z from the 1st–99th percentile, snapped to the floor when
   within ``floor_snap_m``. Local x is the longer horizontal side, ``yaw_rad`` in [−π/2, π/2).
7. Scale (:mod:`.scale`): object-size priors of confident instances give a second metric scale estimate,
   recorded next to the layout scale and their combination under ``"scale"``; the scene is not rescaled.
8. Optional captions (:mod:`.labellers`): the labeller backend ``captioner`` (``none`` or ``openai``, an
   OpenAI-compatible chat endpoint) describes the best crop of each instance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import progress
from ..geometry import MeshRaycaster
from ..scene import INSTANCES_JSON, WORLD_NAME, CameraFrame, Scene
from ..stage import StageResult, backend_status as _backend_status
from .boxes import box_fields, oriented_box
from .config import Config
from .consensus import (Candidate, consensus, keep_largest_cluster, label_votes, merge_duplicates,
                        supporting_views, view_assignments)
from .labellers import BACKENDS, caption_instances
from .maskers import MASKERS
from .masks import find_instances_masks
from .scale import SIZE_PRIORS, object_scale
from .segmentation import (Segments, large_vertical_planes, layout_plane_mask, segment_objects,
                           unit_vertex_normals)

NAME = "instances"
OUTPUTS = [INSTANCES_JSON]


def backend_status() -> dict[str, str]:
    """``{labeller or masker: "installed" | "not installed: …" | "no weights: …"}`` of :data:`BACKENDS` and
    :data:`~.maskers.MASKERS` (for ``vid2scene stages``; maskers prefixed ``masker:``)."""
    return _backend_status(BACKENDS) | {f"masker:{k}": v for k, v in _backend_status(MASKERS).items()}


@dataclass
class Views:
    """Per-view tables of the registered keyframes, indexed ``[view, segment]``: ``vis`` int32 visible vertices,
    ``asg`` int64 detection index (−1 none), ``bbox`` float32 ``[x0, y0, x1, y1]`` of the visible vertices;
    ``frames`` the cameras (world frame) and ``dets`` each view's detection list."""

    vis: np.ndarray
    asg: np.ndarray
    bbox: np.ndarray
    frames: list[CameraFrame]
    dets: list[list[dict]]


def run(scene: Scene, config: Config) -> StageResult:
    """Objects of the scene → ``instances.json`` (world frame).

    Raises:
        StageFailed: ``layout`` or ``detect`` has not completed, or the mesh, cameras or layout are missing
            or unreadable (the stage to run is named).
        BackendNotInstalled: a labeller is configured that cannot be used (no server URL).
        StageFailed: the labeller's server refused or stayed unreachable.
    """
    scene.require("layout")
    scene.require("detect")
    t0 = time.perf_counter()
    layout = scene.layout()
    mesh = scene.mesh(frame="world")
    frames = sorted((f for f in scene.cameras(frame="world") if f.registered), key=lambda f: f.source_frame)
    dets = {f.source_frame: scene.detections(f.source_frame) for f in frames}
    n_dets = sum(len(d["detections"]) for d in dets.values() if d)
    obj_idx = np.flatnonzero(layout_plane_mask(mesh.vertices, layout, config.plane_margin_m))
    qc: dict = {"n_vertices": len(mesh.vertices), "n_object_vertices": int(len(obj_idx)), "n_detections": n_dets,
                "n_views": len(frames)}
    warnings = [w for w in [nothing_to_do(n_dets, frames, obj_idx)] if w]
    instances: list[dict] = []
    meta: dict = {}
    if not warnings and config.method == "masks":
        normals = unit_vertex_normals(mesh)
        if config.extra_wall_min_width_m > 0:  # walls the layout does not hold (partitions, a missed wall)
            wall, planes = large_vertical_planes(mesh.vertices[obj_idx], normals[obj_idx],
                                                 config.extra_wall_min_width_m, config.extra_wall_min_height_m)
            obj_idx = obj_idx[~wall]
            qc.update({"n_extra_wall_planes": len(planes), "n_extra_wall_vertices": int(wall.sum())})
        instances, meta = find_instances_masks(scene, mesh, obj_idx, normals[obj_idx], frames, dets, config, qc)
        instances = number_instances(instances)
        warnings += evidence_warnings(meta)
    elif not warnings:
        instances = find_instances(scene, mesh, obj_idx, frames, dets, config, qc)
        if not instances:
            warnings.append("detections found but no instance reached min_views supporting keyframes")
    lscale = layout.get("scale", {})
    scale = object_scale(instances, lscale.get("metres_per_sfm_unit"), lscale.get("sigma"), config)
    if config.captioner != "none" and instances:
        caption_instances(scene, instances, config)
    detector = next((d["detector"] for d in dets.values() if d), None)
    scene.write_instances({"frame": WORLD_NAME, "units": "m", "geometry": "mesh.ply",
                           "n_vertices": int(len(mesh.vertices)), "detector": detector, "instances": instances,
                           "scale": scale, "meta": {"method": config.method, "per_label": meta}})
    return stage_result(instances, scale, qc, warnings, time.perf_counter() - t0)


def number_instances(instances: list[dict]) -> list[dict]:
    """Records sorted by ``n_views × score`` (then label, then box centre: independent of discovery order) and
    numbered from 0."""
    out = sorted(instances, key=lambda d: (-round(d["n_views"] * d["score"], 6), d["label"],
                                           tuple(d["box"]["center"])))
    return [{"id": i, **d} for i, d in enumerate(out)]


def evidence_warnings(meta: dict) -> list[str]:
    """One warning per label detected in ≥ 5 keyframes that has no instance (the meta's reason quoted)."""
    return [f"'{lab}' detected in {m['keyframes']} keyframes but no instance: {m['note']}"
            for lab, m in meta.items() if m["keyframes"] >= 5 and m["instances"] == 0]


def nothing_to_do(n_dets: int, frames: list, obj_idx: np.ndarray) -> str | None:
    """The warning when there is nothing to find instances in (None when there is)."""
    if n_dets == 0:
        return "no detections in any keyframe: no instances"
    if not frames:
        return "no registered keyframes: no instances"
    if len(obj_idx) == 0:
        return "no mesh vertices left after removing the layout planes: no instances"
    return None


def find_instances(scene: Scene, mesh, obj_idx: np.ndarray, frames: list[CameraFrame], dets: dict,
                   config: Config, qc: dict) -> list[dict]:
    """Segment the object vertices, assign segments in every view, group them and build the instance
    records; adds ``n_segments`` / ``n_supported_segments`` to ``qc``."""
    with progress.bar("instances: segments", total=None):
        segments = segment_objects(mesh.vertices, unit_vertex_normals(mesh), mesh.triangles, obj_idx,
                                   config.seg_k, config.seg_min_vertices)
    views = assign_views(scene, MeshRaycaster(mesh.vertices, mesh.triangles), segments, frames, dets, config)
    group = consensus(views.vis, views.asg, config, segments.sizes)
    qc.update({"n_segments": segments.n_seg, "n_supported_segments": int((group >= 0).sum())})
    return build_instances(group, segments, views, config)


def assign_views(scene: Scene, ray: MeshRaycaster, segments: Segments, frames: list[CameraFrame], dets: dict,
                 config: Config) -> Views:
    """:func:`~.consensus.view_assignments` of every registered keyframe (world-frame depth as the ray-cast
    fallback where the keyframe has a depth map)."""
    have_depth = set(scene.depth_frames())
    vis, bbox, asg, det_lists = [], [], [], []
    with progress.bar("instances: views", total=len(frames)) as bar:
        for f in frames:
            d = (dets.get(f.source_frame) or {}).get("detections", [])
            fb = scene.depth(f.source_frame, frame="world").depth if f.source_frame in have_depth else None
            r = view_assignments(f, d, segments.vertices, segments.seg, segments.n_seg, ray, fb, config)
            vis.append(r["vis"])
            bbox.append(r["bbox"])
            asg.append(r["assign"])
            det_lists.append(d)
            bar.advance()
    return Views(np.stack(vis), np.stack(asg), np.stack(bbox), list(frames), det_lists)


def build_instances(group: np.ndarray, segments: Segments, views: Views, config: Config) -> list[dict]:
    """Instance records (docs/schemas.md) from segment groups: label votes, each group's largest spatial
    cluster, duplicate merging, supporting views, boxes; sorted by ``n_views × score`` and numbered."""
    V, seg, sizes = segments.vertices, segments.seg, np.bincount(segments.seg, minlength=views.vis.shape[1])

    def vote(segs: np.ndarray) -> Candidate:
        return label_votes(segs, views.asg, sizes, views.dets)

    groups = [np.flatnonzero(group == g) for g in range(int(group.max()) + 1)] if (group >= 0).any() else []
    cands = [c for c in map(vote, groups) if c.label is not None]
    for k, c in enumerate(cands):
        kept = keep_largest_cluster(c, V, seg, sizes, config.cluster_gap_m)
        if len(kept) < len(c.segs):
            cands[k] = vote(kept)
    cands = [c for c in cands if c.label is not None]
    cands = merge_duplicates(cands, V, seg, config.dup_gap_m, vote)
    out = [r for r in (instance_record(c, segments, views, config) for c in cands) if r is not None]
    out.sort(key=lambda d: (-d["n_views"] * d["score"], d["label"]))
    return [{"id": i, **d} for i, d in enumerate(out)]


def instance_record(cand: Candidate, segments: Segments, views: Views, config: Config) -> dict | None:
    """The ``instances.json`` record (without ``id``) of one candidate, or None when fewer than ``min_views``
    views support it."""
    support = {v: t for v, t in cand.per_view.items() if t[1] == cand.label}
    if len(support) < config.min_views:
        return None
    vmask = np.isin(segments.seg, cand.segs)
    n_pts = int(vmask.sum())
    recs, support = supporting_views(cand, views.vis, views.bbox, n_pts, views.frames, views.dets,
                                     config.min_view_iou)
    if len(recs) < config.min_views:
        return None
    fr = [views.frames[v] for v in sorted(support)]
    return {"label": cand.label, "score": round(float(np.mean([t[2] for t in support.values()])), 4),
            "n_views": len(support),
            "label_votes": {k: round(x, 3) for k, x in sorted(cand.votes.items(), key=lambda kv: -kv[1])},
            "vertex_ids": segments.obj_idx[vmask].tolist(), "n_points": n_pts,
            **box_fields(oriented_box(segments.vertices[vmask], config.floor_snap_m)),
            "first_frame": fr[0].source_frame, "last_frame": fr[-1].source_frame,
            "first_timestamp_s": round(fr[0].timestamp_s, 4), "last_timestamp_s": round(fr[-1].timestamp_s, 4),
            "views": recs, "caption": None}


def stage_result(instances: list[dict], scale: dict, qc: dict, warnings: list[str], seconds: float) -> StageResult:
    """QC figures (per-class counts, time per keyframe, both scales) and the one-line summary."""
    per_class: dict[str, int] = {}
    for i in instances:
        per_class[i["label"]] = per_class.get(i["label"], 0) + 1
    qc.update({"n_instances": len(instances), "per_class": dict(sorted(per_class.items())),
               "seconds_per_keyframe": round(seconds / max(qc["n_views"], 1), 4),
               "object_prior_metres_per_sfm_unit": scale["object_prior_metres_per_sfm_unit"],
               "layout_metres_per_sfm_unit": scale["layout_metres_per_sfm_unit"]})
    summary = f"{len(instances)} instances" + (": " + ", ".join(f"{v} {k}" for k, v in sorted(per_class.items()))
                                              if per_class else "")
    return StageResult(qc=qc, summary=summary, warnings=warnings)


__all__ = ["NAME", "OUTPUTS", "Config", "run", "BACKENDS", "SIZE_PRIORS", "backend_status", "build_instances",
           "object_scale"]
