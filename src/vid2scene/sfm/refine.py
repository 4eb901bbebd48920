"""All-frame refinement: the usable non-keyframes as extra constraints on the keyframe model.

Keyframes are a sparse subset of the video; the frames between them see the same structure from intermediate
viewpoints, which lengthens tracks and stiffens the bundle adjustment (the reason dense video SLAM beats
keyframe SfM on drift). After the keyframe model is mapped:

1. the frames ``quality`` kept (verdict ``ok``) that are not keyframes, every ``refine_stride``-th, get
   features (same backend, cached) in the same database, sharing the camera;
2. each is matched to the two keyframes around it and to the previous extra frame, verified two-view;
3. incremental mapping continues from the keyframe model (``input_path``): the extra frames are registered
   (absolute pose), points re-triangulated and merged, bundle adjustment run locally and globally;
4. a final global bundle adjustment over everything (Triggs et al. 2000), then the extra frames are
   de-registered so the output holds only keyframes — their refined poses and the points they see.

The refined model is kept only when it still registers every keyframe the input model had and its mean
reprojection error does not grow by more than 25% (or 0.2 px, whichever is more); otherwise the input model is
returned with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import progress
from ..scene import Scene, frame_name


def extra_frames(scene: Scene, keyframe_ids: list[int], stride: int) -> list[int]:
    """Source-frame indices of the usable non-keyframes (``quality`` verdict ``ok``), every ``stride``-th."""
    kf = set(keyframe_ids)
    try:
        frames = [f["source_frame"] for f in scene.quality()["frames"] if f.get("verdict") == "ok"]
    except Exception:  # noqa: BLE001 - no quality.json: every ingested frame
        frames = [r.source_frame for r in scene.frame_index()]
    cand = [int(f) for f in frames if int(f) not in kf]
    return cand[::stride]


def _link_images(work: Path, scene: Scene, names: list[str], extra: list[int], crop: dict) -> Path:
    """A folder with the keyframes (links) and the extra frames (links, or cropped copies when the keyframes
    are cropped), all named ``frame_name``."""
    import cv2

    d = work / "all_images"
    d.mkdir(exist_ok=True)
    for nm in names:
        if not (d / nm).exists():
            os.symlink((scene.frames_dir / nm).resolve(), d / nm)
    cropped = any(crop.get(k) for k in ("top", "bottom", "left", "right"))
    for sf in extra:
        nm = frame_name(sf)
        src = scene.frame_path(sf)
        if (d / nm).exists():
            continue
        if not cropped:
            os.symlink(src.resolve(), d / nm)
            continue
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        img = img[crop["top"]: h - crop["bottom"], crop["left"]: w - crop["right"]]
        cv2.imwrite(str(d / nm), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return d


def extra_pairs(keyframe_ids: list[int], extra: list[int]) -> set[tuple[str, str]]:
    """Pairs of image names: each extra frame with the keyframes just before and after it (two on each side)
    and with the previous extra frame."""
    import bisect

    kf = sorted(keyframe_ids)
    pairs = set()
    for k, sf in enumerate(extra):
        p = bisect.bisect_left(kf, sf)
        for j in (p - 2, p - 1, p, p + 1):
            if 0 <= j < len(kf):
                pairs.add((frame_name(kf[j]), frame_name(sf)))
        if k > 0:
            pairs.add((frame_name(extra[k - 1]), frame_name(sf)))
    return pairs


def all_frames(work: Path, scene: Scene, rec, names: list[str], config, scale: float, size: tuple[int, int],
               cache_dir: Path | None):
    """Refine the keyframe model ``rec`` (pycolmap Reconstruction mapped from ``work/database.db``) with the
    usable non-keyframes. Returns (model holding keyframes only, info dict: ``n_extra``,
    ``n_extra_registered``, ``reprojection_px_before``/``after``, ``kept``, ``warnings``)."""
    import pycolmap

    from . import reader_options_for, verification_options, feature_backend
    from .features import cache_key, match_into_database, verify_pairs, write_features

    kf = scene.keyframes()
    kf_ids = [int(k["source_frame"]) for k in kf["keyframes"]]
    extra = extra_frames(scene, kf_ids, config.refine_stride)
    info: dict = {"n_extra": len(extra), "warnings": []}
    if not extra:
        info["kept"] = False
        return rec, info
    img_dir = _link_images(work, scene, names, extra, kf["crop"])
    db_path = work / "database.db"
    backend = feature_backend(config)
    key = None
    if cache_dir is not None:
        opts = {"max_num_features": config.max_num_features} if backend.name == "sift" else {}
        key = cache_dir / cache_key(backend, {"max_image_size": max(size), **opts, "frames": "all"})
    extra_names = [frame_name(sf) for sf in extra]
    feats, _ = write_features(db_path, img_dir, extra_names, backend, reader_options_for(config, scale), config,
                              max(size), key)
    pairs = extra_pairs(kf_ids, extra)
    pairs_txt = work / "pairs_extra.txt"
    pairs_txt.write_text("".join(f"{a} {b}\n" for a, b in sorted(pairs)))
    vo = verification_options(config, 15, 0.0)
    if getattr(backend, "learned", False):
        kf_feats = _learned_keyframe_features(backend, img_dir, names, key, cache_dir, size, config)
        allf = {**kf_feats, **feats}
        order = sorted(set(names) | set(extra_names))
        idx = {nm: i for i, nm in enumerate(order)}
        ip = {(min(idx[a], idx[b]), max(idx[a], idx[b])) for a, b in pairs}
        match_into_database(db_path, order, ip, backend, allf, {nm: size for nm in order}, "extra")
        with progress.bar(f"sfm: verifying {len(pairs)} extra pairs", total=None):
            verify_pairs(db_path, pairs_txt, vo)
    else:
        mo = pycolmap.FeatureMatchingOptions()
        mo.num_threads = config.num_threads
        po = pycolmap.ImportedPairingOptions()
        po.match_list_path = pairs_txt
        with progress.bar(f"sfm: matching {len(pairs)} extra pairs", total=None):
            pycolmap.match_image_pairs(db_path, matching_options=mo, pairing_options=po, verification_options=vo,
                                       device=pycolmap.Device.cpu)
    start = work / "refine_start"
    start.mkdir(exist_ok=True)
    rec.write(str(start))
    out = work / "refine_out"
    out.mkdir(exist_ok=True)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = config.num_threads
    opts.random_seed = config.seed
    opts.multiple_models = False
    opts.extract_colors = False
    if config.known_intrinsics:
        opts.ba_refine_focal_length = opts.ba_refine_principal_point = opts.ba_refine_extra_params = False
    before = float(rec.compute_mean_reprojection_error())
    with progress.bar(f"sfm: registering {len(extra)} non-keyframes", total=None):
        models = pycolmap.incremental_mapping(db_path, img_dir, out, opts, input_path=start)
    if not models:
        info.update(kept=False)
        info["warnings"].append("all-frame refinement registered nothing; keyframe model kept")
        return rec, info
    full = max(models.values(), key=lambda r: r.num_reg_images())
    ba = pycolmap.BundleAdjustmentOptions()
    ba.print_summary = False
    ba.refine_principal_point = False
    if config.known_intrinsics:
        ba.refine_focal_length = ba.refine_extra_params = False
    with progress.bar("sfm: final global bundle adjustment", total=None):
        with progress.quiet_native_info_logs():
            pycolmap.bundle_adjustment(full, ba)
    extra_set = set(extra_names)
    n_extra_reg = sum(1 for im in full.images.values() if im.has_pose and im.name in extra_set)
    for im in list(full.images.values()):
        if im.name in extra_set and im.has_pose:
            full.deregister_frame(im.frame_id)
    kept_names = {im.name for im in full.images.values() if im.has_pose}
    had = {im.name for im in rec.images.values() if im.has_pose}
    after = float(full.compute_mean_reprojection_error())
    info.update({"n_extra_registered": n_extra_reg, "reprojection_px_before": round(before, 4),
                 "reprojection_px_after": round(after, 4)})
    if not had <= kept_names or after > max(1.25 * before, before + 0.2):
        info["kept"] = False
        info["warnings"].append(f"all-frame refinement lost keyframes or raised the reprojection error "
                                f"({before:.2f} → {after:.2f} px); keyframe model kept")
        return rec, info
    full.extract_colors_for_all_images(str(img_dir))
    info["kept"] = True
    return full, info


def _learned_keyframe_features(backend, img_dir: Path, names: list[str], key: Path | None, cache_dir: Path | None,
                               size: tuple[int, int], config) -> dict:
    """The keyframes' learned features (from the keyframe cache when there, else extracted again)."""
    from .features import read_image
    from .features import cache_key, load_cached

    kf_key = None
    if cache_dir is not None:
        kf_key = cache_dir / cache_key(backend, {"max_image_size": max(size)})
    out = {}
    for nm in names:
        f = load_cached(kf_key, nm, (img_dir / nm).resolve())
        out[nm] = f if f is not None else backend.extract(read_image(img_dir / nm))
    return out
