"""Figures of the semantic stages (detect, instances, scene_graph) on the real office walkthrough.

Runs on a *copy* of a complete reference scene (default /work/scenes/hololens: all stages through layout of
../shared/data/hololens_office.mp4) and prints one JSON object per line:

* ``{"figure": "instances_per_class", ...}`` — counts per label, and the 2D detections per class for context;
* ``{"figure": "agreement", ...}`` — share of instances whose projected 3D points agree with the 2D detections:
  (a) over the views that support the instance (``instances.json`` views, IoU of the projected box of its
  visible vertices with the supporting detection), an instance agrees when the median IoU ≥ ``--iou``;
  (b) over *all* registered keyframes that see it (≥ ``--min-visible`` of its vertices visible, occlusion by
  the mesh ray-cast), an instance agrees when in at least half of them some detection *of its label* has IoU ≥
  ``--iou`` with its projected box. (b) also counts views where the detector missed the object;
* ``{"figure": "time", ...}`` — seconds per stage and per keyframe; ``{"figure": "memory", ...}`` — peak RSS;
* ``{"figure": "scene_graph", ...}`` — relation counts;
* ``{"figure": "evidence", ...}`` — per label: instances next to the detections' keyframe count and most boxes
  in one keyframe (from ``instances.json`` meta), the labels in ≥ 5 keyframes without an instance (with the
  meta's reason) and the lower-bound shortfalls (labels in ≥ 3 keyframes with fewer instances than boxes in one
  keyframe);
* ``{"figure": "box_sizes", ...}`` — per label the box sizes against the size priors, the widest chair;
* ``{"figure": "stability", ...}`` — per-label counts of a second full pipeline run of the same video
  (``--second-scene``; its semantic stages re-run with this code) next to the first one's, and the labels that
  differ; without ``--second-scene``, of a second ``instances`` run on a copy of the first scene;
* ``{"figure": "targets", ...}`` — the issue's targets, each True / False.

It also writes ``report.html`` and ``top_down.png`` (the report's top-down view) into the copy.

Usage: ``PYTHONPATH=src python benchmarks/instances_hololens.py [--scene DIR] [--second-scene DIR] [--work DIR]
[--iou 0.5]`` (two full runs: ``vid2scene run ../shared/data/hololens_office.mp4 -o A`` and ``-o B``, then
``--scene A --second-scene B``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np


def emit(**kw):
    print(json.dumps(kw), flush=True)


def count_labels(instances: list[dict]) -> dict[str, int]:
    """``{label: number of instances}``."""
    out: dict[str, int] = {}
    for i in instances:
        out[i["label"]] = out.get(i["label"], 0) + 1
    return out


def second_run_counts(src: Path, work: Path, cfg) -> dict:
    """Per-label instance counts of another full pipeline run ``src`` (complete through layout), its
    ``detect``, ``instances`` and ``scene_graph`` re-run on a copy in ``work`` with this code: ``{"counts",
    "seconds" (instances stage), "scale" (its layout's metres per SfM unit)}``."""
    from vid2scene.pipeline import run_stage
    from vid2scene.scene import Scene
    from vid2scene.stage import stage_module

    m = Scene(src).read_manifest()
    if m["stages"].get("layout", {}).get("status") != "complete":
        raise SystemExit(f"{src} is not complete through layout yet")
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("detections", "instances.json", "scene_graph.json",
                                                             "tasks"))
    scene = Scene(work)
    stage_module("detect").run(scene, cfg.detect)
    t0 = time.perf_counter()
    run_stage(scene, "instances", cfg)
    secs = time.perf_counter() - t0
    run_stage(scene, "scene_graph", cfg)
    return {"counts": count_labels(scene.instances()["instances"]), "seconds": secs, "scale": scene.scale("world")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scene", default="/work/scenes/hololens")
    ap.add_argument("--work", default="/tmp/instances_hololens")
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--min-visible", type=float, default=0.3)
    ap.add_argument("--second-scene", default=None,
                    help="a second full pipeline run of the same video (complete through layout): the stability "
                         "figure compares the two runs' per-label counts")
    ap.add_argument("--gt", default="/work/shared/data/hololens_office", help="folder with poses.txt (GT)")
    args = ap.parse_args()

    from vid2scene import progress
    from vid2scene.config import PipelineConfig
    from vid2scene.geometry import MeshRaycaster, box_iou_2d, intrinsics_for_size, project
    from vid2scene.pipeline import peak_rss_mb, run_stage
    from vid2scene.report import instances_top_down, write_report
    from vid2scene.scene import Scene
    from vid2scene.stage import stage_module

    progress.set_enabled(False)
    src = Scene(args.scene)
    m = src.read_manifest()
    if m.get("status") != "complete" or m["stages"].get("layout", {}).get("status") != "complete":
        raise SystemExit(f"{args.scene} is not complete through layout yet")
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src.root, work, ignore=shutil.ignore_patterns("detections", "instances.json", "scene_graph.json"))
    scene = Scene(work)
    cfg = PipelineConfig()
    frames = [f for f in scene.cameras(frame="world") if f.registered]
    n_kf = len(scene.keyframe_ids())
    secs = {}
    for name in ("detect", "instances", "scene_graph"):
        t0 = time.perf_counter()
        # detect runs before sfm: through run_stage it would mark sfm..layout stale, so call it directly
        res = stage_module(name).run(scene, cfg.detect) if name == "detect" else run_stage(scene, name, cfg)
        secs[name] = time.perf_counter() - t0
        emit(figure="stage", stage=name, summary=res.summary, warnings=res.warnings, qc=res.qc)
    inst = scene.instances()
    instances = inst["instances"]
    det_per_class: dict[str, int] = {}
    dets = {f.source_frame: scene.detections(f.source_frame) for f in frames}
    for d in dets.values():
        for o in (d or {}).get("detections", []):
            det_per_class[o["label"]] = det_per_class.get(o["label"], 0) + 1
    per_class: dict[str, int] = {}
    for i in instances:
        per_class[i["label"]] = per_class.get(i["label"], 0) + 1
    emit(figure="instances_per_class", n_instances=len(instances), per_class=dict(sorted(per_class.items())),
         detections_per_class=dict(sorted(det_per_class.items())), n_keyframes=n_kf, n_registered=len(frames))

    # (a) supporting views
    med = [float(np.median([v["iou"] for v in i["views"]])) for i in instances]
    share_a = float(np.mean([x >= args.iou for x in med])) if med else None
    # (b) every view that sees the instance
    mesh = scene.mesh(frame="world")
    V, F = mesh.vertices, mesh.triangles
    ray = MeshRaycaster(V, F)
    ws = cfg.instances.work_size
    seen_views = {i["id"]: [] for i in instances}
    for f in frames:
        s = ws / max(f.width, f.height)
        w, h = round(f.width * s), round(f.height * s)
        K = intrinsics_for_size(f.K, (f.width, f.height), (w, h))
        zref = ray.depth(K, f.cam_from_world, w, h)
        for i in instances:
            P = V[np.asarray(i["vertex_ids"])]
            uv, z = project(P, f.K, f.cam_from_world)
            inimg = (z > 0.05) & (uv[:, 0] >= 0) & (uv[:, 0] < f.width) & (uv[:, 1] >= 0) & (uv[:, 1] < f.height)
            if inimg.sum() < args.min_visible * len(P):
                continue
            px = np.clip((uv[inimg, 0] * s).astype(int), 0, w - 1)
            py = np.clip((uv[inimg, 1] * s).astype(int), 0, h - 1)
            vis = z[inimg] <= zref[py, px] * 1.05 + 0.04
            if vis.sum() < args.min_visible * len(P):
                continue
            q = uv[inimg][vis]
            box = [float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())]
            cands = [o for o in (dets.get(f.source_frame) or {}).get("detections", []) if o["label"] == i["label"]]
            best = max((box_iou_2d(box, o["bbox_xyxy"]) for o in cands), default=0.0)
            seen_views[i["id"]].append(best)
    agree_b = [np.mean(np.asarray(v) >= args.iou) >= 0.5 for v in seen_views.values() if v]
    per_view_b = [x for v in seen_views.values() for x in v]
    sup_ious = [v["iou"] for i in instances for v in i["views"]]
    emit(figure="agreement", iou_threshold=args.iou,
         supporting_views={"share_of_instances_median_iou_ge_thr": share_a,
                           "share_of_views_iou_ge_thr": float(np.mean(np.asarray(sup_ious) >= args.iou))
                           if sup_ious else None, "n_views": len(sup_ious),
                           "median_iou_per_instance": [round(x, 3) for x in med]},
         all_views_that_see_it={"min_visible_share": args.min_visible,
                                "share_of_instances_agreeing_in_half_their_views":
                                    float(np.mean(agree_b)) if agree_b else None,
                                "share_of_views_with_matching_detection":
                                    float(np.mean(np.asarray(per_view_b) >= args.iou)) if per_view_b else None,
                                "n_instance_views": len(per_view_b),
                                "instances_never_seen_by_this_test": sum(1 for v in seen_views.values() if not v)})
    emit(figure="time", seconds=secs | {"total": sum(secs.values())}, n_keyframes=n_kf, n_registered=len(frames),
         seconds_per_keyframe={k: round(v / max(n_kf, 1), 4) for k, v in secs.items()})
    emit(figure="memory", peak_rss_mb=round(peak_rss_mb(), 1), mesh_vertices=int(len(V)))
    g = scene.scene_graph()
    counts: dict[str, int] = {}
    for r in g["relations"]:
        counts[r["predicate"]] = counts.get(r["predicate"], 0) + 1
    emit(figure="scene_graph", n_objects=len(g["objects"]), relations=counts, scale=inst["scale"] | {"objects": None})
    # ground truth: metres per SfM unit from the HoloLens poses (camera-centre distances, GT vs SfM)
    gt_dir = Path(args.gt)
    if (gt_dir / "poses.txt").is_file():
        T = np.loadtxt(gt_dir / "poses.txt").reshape(-1, 4, 4)
        s_layout = scene.scale("world")
        c_w = np.array([f.center_in_world for f in frames])
        c_gt = np.array([T[f.source_frame][:3, 3] for f in frames])
        i, j = np.triu_indices(len(frames), 1)
        d_w, d_gt = np.linalg.norm(c_w[i] - c_w[j], axis=1), np.linalg.norm(c_gt[i] - c_gt[j], axis=1)
        far = d_gt > 0.5
        true_s = s_layout * float(np.median(d_gt[far] / d_w[far]))
        sc = inst["scale"]
        emit(figure="scale_vs_ground_truth", true_metres_per_sfm_unit=round(true_s, 4),
             layout=sc["layout_metres_per_sfm_unit"], object_prior=sc["object_prior_metres_per_sfm_unit"],
             combined=sc["combined"], layout_error=round(sc["layout_metres_per_sfm_unit"] / true_s - 1, 4),
             object_prior_error=None if sc["object_prior_metres_per_sfm_unit"] is None else
             round(sc["object_prior_metres_per_sfm_unit"] / true_s - 1, 4),
             combined_error=round(sc["combined"] / true_s - 1, 4), objects=sc["objects"])
    meta = inst.get("meta", {}).get("per_label", {})
    per_label = {lab: {"instances": m["instances"], "keyframes": m["keyframes"],
                       "max_in_one_keyframe": m["max_in_one_keyframe"],
                       "max_separate_in_one_keyframe": m.get("max_separate_in_one_keyframe"),
                       "detections": m["detections"]}
                 for lab, m in sorted(meta.items(), key=lambda kv: -kv[1]["keyframes"])}
    missing = {lab: m["note"] for lab, m in meta.items() if m["keyframes"] >= 5 and m["instances"] == 0}
    short = {lab: [m["instances"], m["max_in_one_keyframe"]] for lab, m in meta.items()
             if m["keyframes"] >= 3 and m["instances"] < m["max_in_one_keyframe"]}
    short_sep = {lab: [m["instances"], m.get("max_separate_in_one_keyframe")] for lab, m in meta.items()
                 if m["keyframes"] >= 3 and m["instances"] < (m.get("max_separate_in_one_keyframe") or 0)}
    emit(figure="evidence", per_label=per_label, labels_ge5_keyframes_without_instance=missing,
         lower_bound_shortfalls_instances_vs_max_boxes=short,
         lower_bound_shortfalls_instances_vs_max_separate_boxes=short_sep)
    from vid2scene.instances.boxes import box_dimension
    from vid2scene.instances.scale import SIZE_PRIORS

    sizes: dict[str, list] = {}
    for i in instances:
        pr = SIZE_PRIORS.get(i["label"])
        sizes.setdefault(i["label"], []).append(
            {"size_m": i["box"]["size"], **({"prior": {"dimension": pr[0], "m": pr[1], "sigma": pr[2]},
                                             "measured": round(box_dimension(i["box"], pr[0]), 3)} if pr else {})})
    chair_w = [max(i["box"]["size"][:2]) for i in instances if i["label"] == "chair"]
    emit(figure="box_sizes", per_label=sizes, widest_chair_m=max(chair_w) if chair_w else None,
         chairs_wider_than_1_2m=sum(w > 1.2 for w in chair_w))
    # per-label counts of a second, independent full pipeline run of the same video (its own poses, depth,
    # mesh and layout: SfM is multi-threaded and not bit-identical), its semantic stages re-run with this code
    if args.second_scene:
        stab = second_run_counts(Path(args.second_scene), Path(str(work) + "_second"), cfg)
        note = f"two full pipeline runs: {args.scene} and {args.second_scene}"
    else:
        work2 = Path(str(work) + "_run2")
        if work2.exists():
            shutil.rmtree(work2)
        shutil.copytree(work, work2, ignore=shutil.ignore_patterns("instances.json", "scene_graph.json", "tasks"))
        t0 = time.perf_counter()
        run_stage(Scene(work2), "instances", cfg)
        stab = {"counts": count_labels(Scene(work2).instances()["instances"]), "seconds": time.perf_counter() - t0,
                "scale": None}
        note = ("no --second-scene: two instances runs on two copies of one scene (detections and poses shared), "
                "not two full pipeline runs")
    c2 = stab["counts"]
    labs = sorted(set(per_class) | set(c2))
    two_equal = all(per_class.get(k, 0) == c2.get(k, 0) for k in labs)
    emit(figure="stability", labels=labs, run1=[per_class.get(k, 0) for k in labs],
         run2=[c2.get(k, 0) for k in labs], per_label={k: [per_class.get(k, 0), c2.get(k, 0)] for k in labs},
         differing={k: [per_class.get(k, 0), c2.get(k, 0)] for k in labs if per_class.get(k, 0) != c2.get(k, 0)},
         equal=two_equal, n_instances=[len(instances), sum(c2.values())],
         layout_scale=[scene.scale("world"), stab["scale"]], seconds_run2=round(stab["seconds"], 2), note=note)
    share_views = float(np.mean(np.asarray(sup_ious) >= args.iou)) if sup_ious else 0.0
    n_q = None
    emit(figure="targets",
         instances_ge_max_boxes_for_labels_in_ge3_keyframes=not short,
         instances_ge_max_separate_boxes_for_labels_in_ge3_keyframes=not short_sep,
         chair_ge5=per_class.get("chair", 0) >= 5, couch_ge2=per_class.get("couch", 0) >= 2,
         dining_table_ge2=per_class.get("dining table", 0) >= 2,
         every_label_in_ge5_keyframes_has_instance=not missing,
         every_label_in_ge5_keyframes_has_instance_or_a_reason=all(bool(r) for r in missing.values()),
         no_chair_wider_than_1_2m=not any(w > 1.2 for w in chair_w),
         supporting_instance_views_matched_ge_70pct=share_views >= 0.7,
         all_views_that_see_an_instance_matched_ge_70pct=bool(per_view_b) and
         float(np.mean(np.asarray(per_view_b) >= args.iou)) >= 0.7, two_runs_equal=two_equal,
         two_runs_are_full_pipeline_runs=bool(args.second_scene),
         detect_plus_instances_s_per_keyframe=round((secs["detect"] + secs["instances"]) / max(n_kf, 1), 4),
         questions="see benchmarks/tasks_hololens.py", n_questions=n_q)
    write_report(scene)
    import cv2

    layout = scene.layout()
    pts = scene.points(frame="world").points
    pts = pts[(pts[:, 2] > 0.1) & (pts[:, 2] < 2.0)]
    img = instances_top_down(instances, layout["room"]["polygon_xy"], pts,
                             np.array([f.center_in_world for f in frames]), size=900)
    cv2.imwrite(str(work / "top_down.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    emit(figure="files", report=str(work / "report.html"), top_down=str(work / "top_down.png"))


if __name__ == "__main__":
    main()
