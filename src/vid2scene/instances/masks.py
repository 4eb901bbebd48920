"""The ``masks`` method of the ``instances`` stage: per-view detection masks lifted to 3D and clustered across
views (:mod:`.lifting`), then checked against the detections and explained per label.

World frame (z up, floor z = 0, metres) throughout; points are the object vertices of ``mesh.ply``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .. import progress
from ..geometry import MeshRaycaster, box_iou_2d
from ..scene import CameraFrame, Scene
from .boxes import box_fields, oriented_box
from .scale import MAX_FOOTPRINT_M
from .consensus import surface_depth, visible_vertices
from .lifting import (SURFACE_LABELS, ViewData, ViewMask, cluster_masks, group_points, grow_unseen,
                      largest_component, projected_box, remove_support, sort_masks, view_masks)

#: Tables: what chairs stand around. A chair's (or any non-surface object's) box never holds a table's centre.
TABLE_LABELS = frozenset({"dining table", "table", "desk", "coffee table"})

#: Most rejected candidates listed per label in the meta.
MAX_REJECTED_LISTED = 20


def lift_views(scene: Scene, mesh, obj_idx: np.ndarray, frames: list[CameraFrame], dets: dict,
               config) -> list[ViewData]:
    """:func:`~.lifting.view_masks` of every registered keyframe (occlusion by the mesh ray-cast at
    ``work_size``, the keyframe's world-frame depth map where no ray hits), with the 2D masks of the
    configured ``masker`` (:mod:`.maskers`) when it is not ``none``.

    Raises:
        BackendNotInstalled: the masker's packages or weights are missing.
    """
    from .. import stage
    from .maskers import MASKERS

    P = mesh.vertices[obj_idx]
    ray = MeshRaycaster(mesh.vertices, mesh.triangles)
    have_depth = set(scene.depth_frames())
    masker = None if config.masker == "none" else stage.make_backend("instances", MASKERS, config, config.masker)
    out = []
    with progress.bar("instances: views", total=len(frames)) as bar:
        for v, f in enumerate(frames):
            d = (dets.get(f.source_frame) or {}).get("detections", [])
            if not d:
                out.append(ViewData(np.zeros(0, np.int64), []))
                bar.advance()
                continue
            fb = scene.depth(f.source_frame, frame="world").depth if f.source_frame in have_depth else None
            zref = surface_depth(f, ray, fb, config.work_size)
            vis_idx, uvv, zv = visible_vertices(f, P, zref, config)
            pm = None
            if masker is not None:
                pm = masker.masks(scene.keyframe_image(f.source_frame, (f.width, f.height)),
                                  [o["bbox_xyxy"] for o in d])
            out.append(view_masks(v, f, d, vis_idx, uvv, zv, config, pm))
            bar.advance()
    return out


def relaxed(config):
    """The looser thresholds of the second pass for a label seen in ≥ ``relax_min_keyframes`` keyframes whose
    masks formed no group of ``min_views``: two views suffice, weaker consistency links and smaller overlaps."""
    return config.model_copy(update={"min_views": 2, "merge_score": 0.35, "merge_score_low": 0.25,
                                     "link_min_points": 5, "min_view_iou": 0.1, "min_instance_points": 15})


def _strength(c: dict) -> tuple:
    return (-len(c["masks"]) * float(np.mean([m.score for m in c["masks"]])), c["masks"][0].frame, c["label"])


def find_instances_masks(scene: Scene, mesh, obj_idx: np.ndarray, normals: np.ndarray, frames: list[CameraFrame],
                         dets: dict, config, qc: dict) -> tuple[list[dict], dict]:
    """Instances (records without ``id``, unsorted) and the per-label meta of the ``masks`` method.

    Adds ``n_masks`` / ``n_groups`` to ``qc``. Meta per label: ``detections``, ``keyframes``,
    ``max_in_one_keyframe``, ``max_separate_in_one_keyframe`` (:func:`separate_boxes`), ``masks``, ``groups``, ``instances``, ``rejected`` (≤ 20 of ``{"views", "points",
    "reason"}``), ``n_rejected`` and ``note`` (why the label has fewer instances than the evidence asks, or
    None).
    """
    P = mesh.vertices[obj_idx]
    n_pts = len(P)
    vdata = lift_views(scene, mesh, obj_idx, frames, dets, config)
    vis = [vd.vis for vd in vdata]
    masks = sort_masks([m for vd in vdata for m in vd.masks])
    qc["n_masks"] = len(masks)
    rejected: dict[str, list[dict]] = {}  # filled by the last pass

    def reject(label: str, n_views: int, n_points: int, reason: str) -> None:
        rejected.setdefault(label, []).append({"views": n_views, "points": n_points, "reason": reason})

    labels = sorted({m.label for m in masks})
    n_kf = {lab: len({m.view for m in masks if m.label == lab}) for lab in labels}
    relaxed_cfg = relaxed(config)
    # pass 1: every label at the default thresholds, a label seen often whose masks form no group of
    # min_views at the looser ones; pass 2 (hysteresis): labels seen often that still have no instance
    # are tried again at the looser thresholds, everything else unchanged
    loose = {lab for lab in labels if n_kf[lab] >= config.relax_min_keyframes
             and not any(len(g) >= config.min_views
                         for g in cluster_masks([m for m in masks if m.label == lab], vis, n_pts, len(frames),
                                                config))}
    for attempt in range(2):
        rejected.clear()
        cands = build_candidates(masks, labels, loose, relaxed_cfg, P, normals, vis, n_pts, len(frames), config,
                                 reject)
        accepted = accept_candidates(cands, config, reject)
        out = finalise(accepted, P, normals, obj_idx, frames, vis, dets, config, reject)
        have = {r["label"] for r in out}
        missing = {lab for lab in labels if n_kf[lab] >= config.relax_min_keyframes and lab not in have} - loose
        if attempt or not missing:
            break
        loose |= missing
    qc["n_groups"] = len(cands)
    qc["relaxed_labels"] = sorted(loose)
    meta = label_meta(frames, dets, masks, cands, out, rejected, vdata)
    for lab in loose:
        if lab in meta:
            meta[lab]["relaxed_thresholds"] = True
    return out, meta


def build_candidates(masks: list[ViewMask], labels: list[str], loose: set, relaxed_cfg, P: np.ndarray,
                     normals: np.ndarray, vis: list[np.ndarray], n_pts: int, n_views: int, config,
                     reject) -> list[dict]:
    """Mask groups per label (:func:`~.lifting.cluster_masks`; the labels in ``loose`` at ``relaxed_cfg``)
    with their consistent points (share ≥ ``point_share``, support layers removed), strongest first; groups
    of fewer than ``min_views`` keyframes are rejected."""
    cands = []
    for lab in labels:
        lm = [m for m in masks if m.label == lab]
        cfg = relaxed_cfg if lab in loose else config
        for g in cluster_masks(lm, vis, n_pts, n_views, cfg):
            gm = [lm[i] for i in g]
            if len(gm) < cfg.min_views:
                reject(lab, len(gm), 0, f"masks in {len(gm)} keyframe(s) < min_views={cfg.min_views}")
                continue
            pts, share = group_points(list(range(len(gm))), gm, vis, n_pts)
            keep = share >= cfg.point_share
            pts, share = pts[keep], share[keep]
            if len(pts):  # clean the group before it is compared with others (a chair's box holds table top)
                ok, _ = remove_support(P[pts], normals[pts], cfg, lab)
                pts, share = pts[ok], share[ok]
            cands.append({"label": lab, "masks": gm, "pts": pts, "share": share, "cfg": cfg})
    cands.sort(key=_strength)
    return cands


def accept_candidates(cands: list[dict], config, reject) -> list[dict]:
    """The candidates kept as instance seeds, strongest first: too few points, redundant with stronger
    same-label groups (a box over several objects), a duplicate of one (no shared view) or the same points as
    a stronger group of another label (a mislabel; its votes join that group), or nested in a stronger group of
    another label, neither of them a support surface (:data:`~.lifting.SURFACE_LABELS`: a "cup" box on a
    plant's pot; a cup on a table, or a table among chairs, stays) are rejected. Point-set containment is near
    0 or 1 for most pairs, far from its threshold, so the decision is the same between two reconstructions."""
    accepted: list[dict] = []
    for c in cands:
        if len(c["pts"]) < c["cfg"].min_instance_points:
            reject(c["label"], len(c["masks"]), len(c["pts"]),
                   f"{len(c['pts'])} consistent points < min_instance_points={c['cfg'].min_instance_points}")
            continue
        inter = [(a, len(np.intersect1d(a["pts"], c["pts"], assume_unique=True)))
                 for a in accepted if a["label"] == c["label"]]
        same = [(a, k / len(c["pts"])) for a, k in inter]
        if inter and len(np.intersect1d(c["pts"], np.concatenate([a["pts"] for a, _ in inter]))) \
                >= 0.85 * len(c["pts"]):
            reject(c["label"], len(c["masks"]), len(c["pts"]),
                   "redundant: ≥ 85 % of its points are held by stronger same-label groups (a box over several)")
            continue
        dup = next((a for a, ov in same if ov >= 0.6
                    and not {m.view for m in a["masks"]} & {m.view for m in c["masks"]}), None)
        if dup is not None:
            dup["absorbed"].append(c)
            reject(c["label"], len(c["masks"]), len(c["pts"]), "duplicate of a stronger same-label group")
            continue
        host = None
        for a in accepted:
            if a["label"] == c["label"]:
                continue
            ov = len(np.intersect1d(a["pts"], c["pts"], assume_unique=True))
            if ov >= config.label_overlap * (len(a["pts"]) + len(c["pts"]) - ov):  # IoU of the point sets
                host = a
                break
        if host is None:
            host = next((a for a in accepted if c["label"] not in SURFACE_LABELS
                         and a["label"] != c["label"] and a["label"] not in SURFACE_LABELS
                         and len(np.intersect1d(a["pts"], c["pts"], assume_unique=True))
                         >= config.nested_share * len(c["pts"])), None)
            if host is not None:
                host["absorbed"].append(c)
                reject(c["label"], len(c["masks"]), len(c["pts"]),
                       f"part of a stronger '{host['label']}' group (≥ {config.nested_share:.0%} of its points "
                       "lie in it, and nothing stands inside that object)")
                continue
        if host is not None:
            host["absorbed"].append(c)
            reject(c["label"], len(c["masks"]), len(c["pts"]), f"same object as a stronger '{host['label']}' group")
            continue
        c = {**c, "absorbed": []}
        accepted.append(c)
    return accepted


def assign_points(groups: list[dict], P: np.ndarray, margin: float = 0.15) -> np.ndarray:
    """``len(P)`` int64 owner (index into ``groups``, −1 none) of every point: the group holding it with the
    highest share; where other groups come within ``margin`` of that share (the seam of two touching chairs),
    the one whose core (its points of share ≥ 0.9 that no other group holds, ≤ 2000 of them) is nearest; then each group *nested* in a
    larger one (≥ 80 % of its points held by it: a cup on a table, whose box holds the cup) takes back all its
    points from that one."""
    from scipy.spatial import cKDTree

    n_points = len(P)
    best = np.full(n_points, -1.0)
    held = np.zeros(n_points, np.int32)
    for c in groups:
        np.maximum.at(best, c["pts"], c["share"])
        held[c["pts"]] += 1
    owner = np.full(n_points, -1, np.int64)
    dist = np.full(n_points, np.inf)
    for k, c in enumerate(groups):
        ok = c["share"] >= best[c["pts"]] - margin
        p = c["pts"][ok]
        core = c["pts"][(c["share"] >= 0.9) & (held[c["pts"]] == 1)]
        core = core if len(core) >= 10 else c["pts"]
        core = core[:: max(1, len(core) // 2000)]
        d = cKDTree(P[core]).query(P[p], k=1)[0] if len(p) else np.zeros(0)
        top = c["share"][ok] >= best[p] - 1e-9
        d = np.where(top & (owner[p] < 0), -1.0, d)  # the top share alone: no contest yet
        closer = d < dist[p]
        owner[p[closer]] = k
        dist[p[closer]] = np.maximum(d[closer], 0.0)
    order = sorted(range(len(groups)), key=lambda k: (-len(groups[k]["pts"]), k))
    for k in reversed(order):  # smallest first
        c = groups[k]
        for h in order:
            big = groups[h]
            if h == k or len(big["pts"]) <= len(c["pts"]):
                continue
            inter = np.intersect1d(c["pts"], big["pts"], assume_unique=True)
            if len(inter) >= 0.8 * len(c["pts"]):
                p = c["pts"][owner[c["pts"]] == h]
                owner[p] = k
    return owner


def in_footprint(xyz, box: dict) -> bool:
    """Whether the world point ``xyz`` lies inside the gravity-aligned ``box``'s footprint (xy only)."""
    c, sz, yaw = box["center"], box["size"], box["yaw_rad"]
    dx, dy = xyz[0] - c[0], xyz[1] - c[1]
    u = dx * np.cos(yaw) + dy * np.sin(yaw)
    v = -dx * np.sin(yaw) + dy * np.cos(yaw)
    return abs(u) <= sz[0] / 2 and abs(v) <= sz[1] / 2


def centres_held(box: dict, others: list[dict]) -> list[str]:
    """Sorted labels of the instance records ``others`` whose box centre lies in the footprint of ``box`` (a
    gravity-aligned box, world frame). A non-surface box that holds the centre of a table (:data:`TABLE_LABELS`:
    a chair box over a small table), two other objects' centres, or — cut to a plausible footprint by
    :func:`footprint_core` — held one before the cut, is one box over several objects. A table's centre lies
    well inside such a box (12–30 cm from its border on the HoloLens walk), so the table test gives the same
    answer on two reconstructions; a neighbour's centre may lie near the border, so two are needed."""
    return sorted(o["label"] for o in others if in_footprint(o["box"]["center"], box))


def finalise(groups: list[dict], P: np.ndarray, normals: np.ndarray, obj_idx: np.ndarray, frames, vis, dets,
             config, reject) -> list[dict]:
    """Instance records of the accepted groups: exclusive points (:func:`assign_points`), the largest spatial
    component, support removal, growth into unseen points (:func:`~.lifting.grow_unseen`), the label check of
    :func:`fitting_label`, the footprint check (:func:`footprint_core` for a slight overshoot), then the view
    check of :func:`instance_record`; a group that fails, or (weakest first) a non-surface instance whose box
    spans other instances (:func:`centres_held`), is rejected and the points are re-assigned among the others
    (until none fails)."""
    alive = list(groups)
    sinks: list[dict] = []  # rejected as one box over several objects: they keep their points, output nothing
    seen = np.zeros(len(P), bool)
    for v in vis:
        seen[v] = True
    unseen = np.flatnonzero(~seen)
    while True:
        owner = assign_points(alive + sinks, P)
        out, failed, kept = [], [], []
        uncut: dict[int, dict] = {}  # id(record) -> box before footprint_core cut it
        for k, c0 in enumerate(alive):
            pts = np.flatnonzero(owner == k)
            if len(pts):
                pts = pts[largest_component(P[pts], config.cluster_gap_m)]
                keep, _ = remove_support(P[pts], normals[pts], config, c0["label"])
                pts = grow_unseen(pts[keep], P, np.setdiff1d(unseen, np.flatnonzero(owner >= 0), assume_unique=True),
                                  config.unseen_gap_m)
            c = fitting_label(c0, pts, P, config)
            rec, why = instance_record(c, pts, P, obj_idx, frames, vis, dets, c.get("cfg", config))
            if rec is None and why.startswith("box footprint") and len(pts):
                # one object bridged to a neighbour or a wall: its largest component at half the gap
                sub = pts[largest_component(P[pts], config.cluster_gap_m / 2)]
                rec, why2 = instance_record(c, sub, P, obj_idx, frames, vis, dets, c.get("cfg", config))
                if rec is None and why2.startswith("box footprint"):
                    core = footprint_core(sub, P, c["label"], config)
                    if core is not None:
                        rec, _ = instance_record(c, core, P, obj_idx, frames, vis, dets, c.get("cfg", config))
                        if rec is not None:
                            uncut[id(rec)] = box_fields(oriented_box(P[sub], config.floor_snap_m))["box"]
                why = why if rec is None else None
            if rec is None:
                failed.append((c0, len(pts), why))
            else:
                out.append(rec)
                kept.append(c0)
        if not failed:  # weakest first: a box over the centres of two stronger same-label boxes is their union
            for k in range(len(out) - 1, -1, -1):
                inside = [o for o in out[:k] if o["label"] == out[k]["label"]
                          and in_footprint(o["box"]["center"], out[k]["box"])]
                if len(inside) >= 2:
                    failed.append((kept[k], out[k]["n_points"], f"box holds the centres of {len(inside)} stronger "
                                   "same-label instances (one box over several objects)"))
                    break
                if out[k]["label"] in SURFACE_LABELS:
                    continue  # a table's box holds what stands on and around it
                held = centres_held(uncut.get(id(out[k]), out[k]["box"]), [o for o in out if o is not out[k]])
                if len(held) >= (1 if id(out[k]) in uncut else 2) or set(held) & TABLE_LABELS:
                    # cut to its core but spanning another object before the cut, or holding two objects' centres
                    when = " before the footprint cut" if id(out[k]) in uncut else ""
                    failed.append((kept[k], out[k]["n_points"], f"box{when} holds the centres of {len(held)} other "
                                   f"instance(s) ({', '.join(held)}): one box over several objects"))
                    break
        if not failed:
            return out
        for c, n, why in failed:
            reject(c["label"], len(c["masks"]), n, why)
        gone = {id(c) for c, _, _ in failed}
        sinks += [c for c, _, why in failed if "one box over several objects" in why]
        alive = [c for c in alive if id(c) not in gone]


def footprint_core(pts: np.ndarray, P: np.ndarray, label: str, config) -> np.ndarray | None:
    """The points of an instance whose box overshoots its label's largest plausible footprint ``L =
    footprint_tolerance × MAX_FOOTPRINT_M[label]`` by less than the factor ``footprint_band`` (a chair that took
    in a piece of the table beside it): those within ``L / 2`` of the points' median along each axis of their
    box (sorted indices into ``P``, world frame); None when the overshoot is larger (one box over several
    objects) or the label has no limit.

    Between two reconstructions of one video the footprint of such an instance moves by tens of centimetres
    (which neighbour pieces it takes in), so rejecting at ``L`` would keep it in one run and drop it in the
    other; cutting it to its core keeps it in both, with a plausible box, and only a clear overshoot rejects.
    :func:`finalise` still rejects a cut instance whose box before the cut held the centre of another instance
    (a chair box over a small table and its chairs): an object's centre lies well inside or well outside such
    a box, so that test has a margin of half an object.
    """
    lim = MAX_FOOTPRINT_M.get(label)
    if lim is None or len(pts) < 3:
        return None
    L = config.footprint_tolerance * lim
    box = oriented_box(P[pts], config.floor_snap_m)
    if max(box["size"][:2]) > config.footprint_band * L:
        return None
    yaw = box["yaw_rad"]
    axes = np.array([[np.cos(yaw), np.sin(yaw)], [-np.sin(yaw), np.cos(yaw)]])
    uv = P[pts, :2] @ axes.T
    med = np.median(uv, axis=0)
    keep = np.all(np.abs(uv - med) <= 0.98 * L / 2, axis=1)  # 2 % inside L: the cut box passes the limit
    return pts[keep] if keep.sum() >= 3 else None


def fitting_label(c: dict, pts: np.ndarray, P: np.ndarray, config) -> dict:
    """``c``, or — when its box's footprint exceeds :data:`~.scale.MAX_FOOTPRINT_M` of its label and a group of
    another label it absorbed fits — that label's view of the same points (its masks become the views; the
    votes stay pooled)."""
    lim = MAX_FOOTPRINT_M.get(c["label"])
    if lim is None or len(pts) < 3 or not c.get("absorbed"):
        return c
    box = oriented_box(P[pts], config.floor_snap_m)
    foot = max(box["size"][:2])
    if foot <= lim:
        return c
    alts = sorted({a["label"] for a in c["absorbed"] if foot <= MAX_FOOTPRINT_M.get(a["label"], np.inf)})
    if not alts:
        return c
    masks = {lab: [m for a in c["absorbed"] if a["label"] == lab for m in a["masks"]] for lab in alts}
    lab = max(alts, key=lambda k: (sum(m.score for m in masks[k]), k))
    rest = [a for a in c["absorbed"] if a["label"] != lab] + [{**c, "absorbed": []}]
    return {**c, "label": lab, "masks": masks[lab], "absorbed": rest,
            "relabelled_from": (c["label"], round(foot, 3))}


def instance_record(c: dict, pts: np.ndarray, P: np.ndarray, obj_idx: np.ndarray, frames: list[CameraFrame],
                    vis: list[np.ndarray], dets: dict, config) -> tuple[dict | None, str | None]:
    """(``instances.json`` record without ``id``, None) of a group, or (None, reason it was dropped)."""
    if len(pts) < config.min_instance_points:
        return None, f"{len(pts)} points left after exclusive assignment < min_instance_points"
    projected = []
    for m in sorted(c["masks"], key=lambda m: m.frame):
        vp = pts[np.isin(pts, vis[m.view], assume_unique=True)]
        if len(vp) < config.min_visible_vertices:
            continue
        proj = projected_box(P[vp], frames[m.view])
        if proj is None:
            continue
        projected.append((m, proj, box_iou_2d(proj, m.bbox), len(vp)))
    views = [v for v in projected if v[2] >= config.min_view_iou]
    # A group at the edge of min_views must not hinge on one view's IoU crossing the cut (it moves with cm-level
    # pose differences between runs): it also stands when its projected views frame it on average.
    framed_on_average = (len(projected) >= config.min_views
                         and float(np.mean([v[2] for v in projected])) >= config.min_view_iou)
    if len(views) < config.min_views and not framed_on_average:
        return None, (f"{len(views)} keyframe(s) whose box frames the points (IoU ≥ {config.min_view_iou}) "
                      f"< min_views={config.min_views}, and their mean IoU is below it too")
    if not views:
        return None, f"no keyframe's box frames the points (IoU ≥ {config.min_view_iou})"
    votes: Counter = Counter()
    for g in [c] + c.get("absorbed", []):
        for m in g["masks"]:
            votes[m.label] += m.score
    fr = [frames[m.view] for m, *_ in views]
    box = oriented_box(P[pts], config.floor_snap_m)
    lim = MAX_FOOTPRINT_M.get(c["label"])
    if lim is not None and max(box["size"][:2]) > config.footprint_tolerance * lim:
        return None, (f"box footprint {max(box['size'][:2]):.2f} m > {config.footprint_tolerance} × the largest "
                      f"plausible {c['label']} ({lim} m) and no other voted label fits (one box over several "
                      "objects)")
    recs = [{"frame": m.frame, "bbox_xyxy": m.bbox, "score": round(m.score, 4),
             "projected_bbox_xyxy": [round(x, 1) for x in proj], "iou": round(iou, 3),
             "visible_share": round(nv / len(pts), 3)} for m, proj, iou, nv in views]
    return {"label": c["label"], "score": round(float(np.mean([m.score for m, *_ in views])), 4),
            "n_views": len(views),
            "label_votes": {k: round(x, 3) for k, x in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))},
            "vertex_ids": obj_idx[pts].tolist(), "n_points": int(len(pts)), **box_fields(box),
            "first_frame": fr[0].source_frame, "last_frame": fr[-1].source_frame,
            "first_timestamp_s": round(fr[0].timestamp_s, 4), "last_timestamp_s": round(fr[-1].timestamp_s, 4),
            "views": recs, "caption": None,
            **({"relabelled_from": {"label": c["relabelled_from"][0], "footprint_m": c["relabelled_from"][1]}}
               if "relabelled_from" in c else {})}, None


def separate_boxes(boxes: list, nested: float = 0.8) -> int:
    """How many of one label's boxes in one keyframe are separate objects: the size of the largest set of boxes
    none of which lies mostly inside another (intersection ≥ ``nested`` of the smaller box's area: a
    detector's second, enclosing box of the same object), greedily from the smallest box."""
    bs = sorted((list(map(float, b)) for b in boxes), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    kept: list[list[float]] = []
    for b in bs:
        ab = max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)
        if all(max(0.0, min(b[2], k[2]) - max(b[0], k[0])) * max(0.0, min(b[3], k[3]) - max(b[1], k[1]))
               < nested * min(ab, (k[2] - k[0]) * (k[3] - k[1])) for k in kept):
            kept.append(b)
    return len(kept)


def label_meta(frames: list[CameraFrame], dets: dict, masks: list[ViewMask], cands: list[dict], out: list[dict],
               rejected: dict[str, list[dict]], vdata: list[ViewData]) -> dict:
    """Per-label evidence and outcome (see :func:`find_instances_masks`)."""
    n_det, n_kf, kmax, ksep = Counter(), Counter(), Counter(), Counter()
    for f in frames:
        fd = (dets.get(f.source_frame) or {}).get("detections", [])
        c = Counter(d["label"] for d in fd)
        for lab, k in c.items():
            n_det[lab] += k
            n_kf[lab] += 1
            kmax[lab] = max(kmax[lab], k)
            ksep[lab] = max(ksep[lab], separate_boxes([d["bbox_xyxy"] for d in fd if d["label"] == lab]))
    n_masks = Counter(m.label for m in masks)
    n_groups = Counter(c["label"] for c in cands)
    n_inst = Counter(i["label"] for i in out)
    no_mask = Counter()
    for f, vd in zip(frames, vdata):
        d = (dets.get(f.source_frame) or {}).get("detections", [])
        for j, _ in vd.rejected:
            no_mask[d[j]["label"]] += 1
    meta = {}
    for lab in sorted(n_det):
        rej = rejected.get(lab, [])
        note = None
        if n_inst[lab] < ksep[lab]:
            reasons = Counter(r["reason"].split(" <")[0].split(" (")[0] if "<" in r["reason"] else r["reason"]
                              for r in rej)
            top = "; ".join(f"{k} ×{v}" for k, v in reasons.most_common(3)) or "no consistent mask groups"
            note = (f"{n_inst[lab]} instance(s) for up to {ksep[lab]} separate boxes in one keyframe: "
                    f"{no_mask[lab]} detection(s) without a mask; {top}")
        meta[lab] = {"detections": int(n_det[lab]), "keyframes": int(n_kf[lab]), "max_in_one_keyframe": int(kmax[lab]),
                     "max_separate_in_one_keyframe": int(ksep[lab]),
                     "masks": int(n_masks[lab]), "detections_without_mask": int(no_mask[lab]),
                     "groups": int(n_groups[lab]), "instances": int(n_inst[lab]), "n_rejected": len(rej),
                     "rejected": rej[:MAX_REJECTED_LISTED], "note": note}
    return meta
