"""Why a keyframe is not in the model, and whether a loop closure is consistent with it.

:func:`unregistered_reasons` gives every unregistered keyframe one reason (``cameras.json`` ``reason`` and
``figures``), checked in this order:

* ``other_model`` — the mapper placed it, but in a model other than the one kept (a separate piece of the walk).
* ``blurred`` — its sharpness (variance of the Laplacian, Pech-Pacheco et al. 2000) is below
  ``blur_rel`` × the median sharpness of the keyframes, or ``quality`` called it blurry.
* ``few_matches`` — no neighbour shares at least ``min_inliers`` verified (two-view) inlier matches with it.
* ``low_parallax`` — it has verified neighbours, but the triangulation angle of every verified pair is below
  ``min_tri_angle_deg`` (pure rotation or a standing camera: nothing to triangulate from).
* ``rejected_by_mapper`` — enough matches and parallax, but the mapper's absolute-pose RANSAC or its bundle
  adjustment did not accept it.

:func:`check_loops` compares each verified loop-closure pair (keyframes far apart in time) with the model:
the model's relative pose must explain the pair's inlier matches (Sampson error, Hartley & Zisserman 2004,
eq. 11.9) and the depth of the points the pair triangulates must agree with the depth of the model's points
in the same view (scale consistency). A loop that verifies two-view but contradicts the model (repeated
structure indoors: two identical doors) is reported and its matches are dropped before mapping again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REASONS = ("blurred", "few_matches", "low_parallax", "rejected_by_mapper", "other_model")


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (``H×W×3`` uint8 RGB); higher is sharper."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pair_figures(db_path: Path, names: list[str]) -> dict[str, dict[str, dict]]:
    """Per image name, its matched partners ``{partner: {"matches": raw, "inliers": verified,
    "tri_angle_deg": angle or None}}`` from a COLMAP database."""
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    out: dict[str, dict[str, dict]] = {nm: {} for nm in names}
    try:
        by_id = {im.image_id: im.name for im in db.read_all_images()}
        raw = {}
        pair_ids, mats = db.read_all_matches()
        for pid, m in zip(pair_ids, mats):
            i1, i2 = pycolmap.pair_id_to_image_pair(pid)
            raw[(i1, i2)] = len(m)
        tv_ids, tvgs = db.read_two_view_geometries()
        ver = {}
        for pid, g in zip(tv_ids, tvgs):
            i1, i2 = pycolmap.pair_id_to_image_pair(pid)
            ver[(i1, i2)] = (len(g.inlier_matches), float(np.degrees(g.tri_angle)) if g.tri_angle >= 0 else None)
        for (i1, i2), n in raw.items():
            a, b = by_id.get(i1), by_id.get(i2)
            if a is None or b is None:
                continue
            inl, ang = ver.get((i1, i2), (0, None))
            fig = {"matches": int(n), "inliers": int(inl), "tri_angle_deg": None if ang is None else round(ang, 2)}
            out.setdefault(a, {})[b] = fig
            out.setdefault(b, {})[a] = fig
    finally:
        db.close()
    return out


def match_graph_groups(pairs: dict[str, dict[str, dict]], names: list[str], min_inliers: int = 15) -> list[int]:
    """Sizes of the connected groups of the verified match graph, largest first.

    ``pairs``: :func:`pair_figures`; two images are linked when their pair has at least ``min_inliers``
    verified inliers. No mapper can place images of different groups in one model, so the largest group bounds
    the registered share from above: when it is small, the images overlap too little (photos taken far apart,
    fast turns between sparse frames), which the stage's failure reason then says.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    index = {nm: i for i, nm in enumerate(names)}
    rows, cols = [], []
    for a, partners in pairs.items():
        for b, fig in partners.items():
            if a in index and b in index and fig["inliers"] >= min_inliers:
                rows.append(index[a])
                cols.append(index[b])
    n = len(names)
    if n == 0:
        return []
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return sorted(np.bincount(labels).tolist(), reverse=True)


def unregistered_reasons(names: list[str], registered: set[str], other_models: set[str],
                         pairs: dict[str, dict[str, dict]], sharp: dict[str, float], quality_blurry: set[str],
                         *, blur_rel: float = 0.35, min_inliers: int = 30,
                         min_tri_angle_deg: float = 1.0) -> dict[str, dict]:
    """``{name: {"reason": one of REASONS, "figures": {...}}}`` for every name not in ``registered``.

    ``pairs``: :func:`pair_figures`; ``sharp``: :func:`sharpness` per name; ``quality_blurry``: names the
    ``quality`` stage called blurry. Figures: ``best_inliers`` (most verified inliers with any partner),
    ``n_verified_partners`` (partners with at least ``min_inliers``), ``max_tri_angle_deg`` over those,
    ``sharpness`` and ``sharpness_rel`` (to the keyframes' median), and ``neighbours``: the raw / verified
    match counts to the keyframes just before and after it.
    """
    med = float(np.median([v for v in sharp.values()])) if sharp else 0.0
    index = {nm: i for i, nm in enumerate(names)}
    out = {}
    for nm in names:
        if nm in registered:
            continue
        partners = pairs.get(nm, {})
        best = max((p["inliers"] for p in partners.values()), default=0)
        good = {b: p for b, p in partners.items() if p["inliers"] >= min_inliers}
        angles = [p["tri_angle_deg"] for p in good.values() if p["tri_angle_deg"] is not None]
        i = index[nm]
        nbrs = {}
        for j in (i - 1, i + 1):
            if 0 <= j < len(names):
                p = partners.get(names[j], {"matches": 0, "inliers": 0})
                nbrs[names[j]] = {"matches": p["matches"], "inliers": p["inliers"]}
        s = sharp.get(nm)
        rel = None if s is None or med <= 0 else s / med
        figures = {"best_inliers": int(best), "n_verified_partners": len(good),
                   "max_tri_angle_deg": round(max(angles), 2) if angles else None,
                   "sharpness": None if s is None else round(s, 1),
                   "sharpness_rel": None if rel is None else round(rel, 3), "neighbours": nbrs}
        if nm in other_models:
            reason = "other_model"
        elif nm in quality_blurry or (rel is not None and rel < blur_rel):
            reason = "blurred"
        elif not good:
            reason = "few_matches"
        elif angles and max(angles) < min_tri_angle_deg:
            reason = "low_parallax"
        else:
            reason = "rejected_by_mapper"
        out[nm] = {"reason": reason, "figures": figures}
    return out


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def check_loops(rec, db_path: Path, loop_pairs: list[tuple[str, str]], *, max_sampson_px: float = 4.0,
                min_consistent: float = 0.5, max_depth_ratio: float = 2.0,
                min_baseline_ratio: float = 0.02) -> list[dict]:
    """Check verified loop-closure pairs ``(name_a, name_b)`` against a model ``rec`` (pycolmap
    Reconstruction) and the two-view inliers in the database ``db_path``.

    For each pair with both images registered: the share of inlier matches whose Sampson distance (px) under
    the model's relative pose (fundamental matrix from the model's poses and intrinsics) is below
    ``max_sampson_px`` must be at least ``min_consistent``, and, where image a's inlier keypoints have 3D points
    in the model, the median ratio of their depth triangulated from the pair with the model's poses to the
    model point's depth must be within ``max_depth_ratio`` (scale consistency). The depth check needs
    parallax: when the model puts the two cameras closer than ``min_baseline_ratio`` × the median depth of
    those points (a revisit from the same spot, e.g. walking back along the same path), triangulation from the
    pair is degenerate and only the epipolar check applies (``depth_ratio`` None, ``baseline_ratio`` given).
    Returns one record per checked pair: ``{"pair": [a, b], "inliers", "consistent_share", "depth_ratio",
    "baseline_ratio", "used_by_model"`` (inlier matches that join one 3D point in both images), ``"ok": bool}``.
    """
    import pycolmap

    by_name = {im.name: im for im in rec.images.values() if im.has_pose}
    db = pycolmap.Database.open(str(db_path))
    out = []
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        for a, b in loop_pairs:
            if a not in by_name or b not in by_name or not db.exists_two_view_geometry(ids[a], ids[b]):
                continue
            g = db.read_two_view_geometry(ids[a], ids[b])
            m = np.asarray(g.inlier_matches).reshape(-1, 2)
            if len(m) == 0:
                continue
            ka = np.asarray(db.read_keypoints(ids[a]))[:, :2].astype(np.float64)
            kb = np.asarray(db.read_keypoints(ids[b]))[:, :2].astype(np.float64)
            xa, xb = ka[m[:, 0]], kb[m[:, 1]]
            ia, ib = by_name[a], by_name[b]
            Ka = np.asarray(rec.cameras[ia.camera_id].calibration_matrix())
            Kb = np.asarray(rec.cameras[ib.camera_id].calibration_matrix())
            Ta, Tb = np.eye(4), np.eye(4)
            Ta[:3] = np.asarray(ia.cam_from_world().matrix())
            Tb[:3] = np.asarray(ib.cam_from_world().matrix())
            T = Tb @ np.linalg.inv(Ta)  # b_from_a
            R, t = T[:3, :3], T[:3, 3]
            F = np.linalg.inv(Kb).T @ _skew(t / (np.linalg.norm(t) + 1e-12)) @ R @ np.linalg.inv(Ka)
            ha = np.c_[xa, np.ones(len(xa))]
            hb = np.c_[xb, np.ones(len(xb))]
            Fx = ha @ F.T
            Ftx = hb @ F
            num = np.sum(hb * Fx, axis=1) ** 2
            den = Fx[:, 0] ** 2 + Fx[:, 1] ** 2 + Ftx[:, 0] ** 2 + Ftx[:, 1] ** 2
            sampson = np.sqrt(num / np.maximum(den, 1e-12))
            consistent = float(np.mean(sampson < max_sampson_px))
            # scale: depth of the pair's points triangulated with the model's poses against the depth of the
            # model's own 3D points at the same keypoints of image a
            ok_pts = sampson < max_sampson_px
            depth_ratio, used = None, 0
            pts_a = ia.points2D
            pts_b = ib.points2D
            model_z, tri_idx = [], []
            na, nb = len(pts_a), len(pts_b)  # keypoints added after mapping have no model observation
            for k, (ma, mb) in enumerate(m):
                if int(ma) >= na:
                    continue
                pa = pts_a[int(ma)]
                if pa.has_point3D():
                    if (int(mb) < nb and pts_b[int(mb)].has_point3D()
                            and pts_b[int(mb)].point3D_id == pa.point3D_id):
                        used += 1
                    if ok_pts[k]:
                        X = rec.points3D[pa.point3D_id].xyz
                        model_z.append((Ta[:3, :3] @ X + Ta[:3, 3])[2])
                        tri_idx.append(k)
            baseline_ratio = None
            if tri_idx:
                centre_a = -Ta[:3, :3].T @ Ta[:3, 3]
                centre_b = -Tb[:3, :3].T @ Tb[:3, 3]
                zpos = np.asarray(model_z)[np.asarray(model_z) > 0]
                if len(zpos):
                    baseline_ratio = float(np.linalg.norm(centre_a - centre_b) / np.median(zpos))
            if len(tri_idx) >= 5 and (baseline_ratio is None or baseline_ratio >= min_baseline_ratio):
                import cv2

                sel = np.asarray(tri_idx)
                Pa, Pb = Ka @ Ta[:3], Kb @ Tb[:3]
                X = cv2.triangulatePoints(Pa, Pb, (xa[sel] - 0.5).T, (xb[sel] - 0.5).T)
                X = (X[:3] / X[3]).T
                za = (X @ Ta[:3, :3].T + Ta[:3, 3])[:, 2]
                zm = np.asarray(model_z)
                good = (za > 0) & (zm > 0)
                if good.sum() >= 5:
                    depth_ratio = float(np.median(za[good] / zm[good]))
            ok = consistent >= min_consistent and (
                depth_ratio is None or 1 / max_depth_ratio <= depth_ratio <= max_depth_ratio)
            out.append({"pair": [a, b], "inliers": int(len(m)), "consistent_share": round(consistent, 3),
                        "depth_ratio": None if depth_ratio is None else round(depth_ratio, 3),
                        "baseline_ratio": None if baseline_ratio is None else round(baseline_ratio, 4),
                        "used_by_model": int(used), "ok": bool(ok)})
    finally:
        db.close()
    return out


def drop_pairs(db_path: Path, pairs: list[tuple[str, str]]) -> None:
    """Remove the matches and two-view geometry of image pairs ``(name_a, name_b)`` from the database."""
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        for a, b in pairs:
            if db.exists_two_view_geometry(ids[a], ids[b]):
                db.delete_two_view_geometry(ids[a], ids[b])
            if db.exists_matches(ids[a], ids[b]):
                db.delete_matches(ids[a], ids[b])
    finally:
        db.close()
