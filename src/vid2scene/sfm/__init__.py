"""``sfm`` stage: structure-from-motion on the keyframes with pycolmap (COLMAP, Schönberger & Frahm 2016).

Video-aware recipe:

1. Local features on every keyframe (``features``: COLMAP SIFT, or learned XFeat / DISK from wheels, see
   :mod:`vid2scene.sfm.features`), cached per keyframe; one shared camera (``CameraMode.SINGLE``) whose focal
   length is estimated (or fixed from ``known_intrinsics``).
2. Pairing: for a video, sequential pairs (each keyframe with the next ``sequential_overlap``, plus quadratic
   overlap) **and** loop-closure candidates retrieved offline — a bag of visual words over the keyframes' own
   descriptors (k-means vocabulary, tf-idf, cosine similarity, Sivic & Zisserman 2003) — for keyframes at
   least ``loop_min_gap`` apart. Photos (``video.json`` kind ``images``) and short keyframe lists are matched
   exhaustively (all pairs): they are not a sequence.
3. Matches are verified by COLMAP's two-view geometry (RANSAC on E / F / H) in the database, then mapped:
   COLMAP incremental mapping (or GLOMAP-style ``global_mapping``), bundle adjustment with focal length and
   radial distortion refined. The largest model is kept; other models' images are retried by continuing
   incremental registration from the largest model.
4. Loop closures are checked against the model (:func:`vid2scene.sfm.diagnose.check_loops`: epipolar and
   scale consistency); inconsistent ones are dropped, reported, and the model is mapped again without them.
5. Optionally (``refine_all_frames``) the usable non-keyframes are registered against the model as extra
   constraints, points re-triangulated and a final global bundle adjustment run; only keyframes are output.
6. Keyframes far blurrier than the rest (``exclude_blurred_below``) are left out of mapping. Every
   unregistered keyframe gets a reason (:mod:`vid2scene.sfm.diagnose`). Quality checks: registered
   share, mean reprojection error (px), mean track length, number of points. Below thresholds the stage
   raises :class:`StageFailed` instead of writing a poor model as success.

``backend: poses`` skips mapping: it imports a trajectory (TUM text or a COLMAP model,
:mod:`vid2scene.sfm.poses`) and triangulates the matched features with those fixed poses.

Writes ``sfm/`` (COLMAP binary model), ``cameras.json`` (DESIGN.md schema, OpenCV axes, SfM frame; unregistered
frames carry ``reason`` and ``figures``), ``sparse_points.ply`` (SfM frame) and ``transforms.json`` (nerfstudio,
OpenGL axes; see :mod:`vid2scene.export.nerfstudio`). The feature cache lives in ``cache/sfm_features/``.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import geometry, progress
from ..errors import InputError, StageFailed
from ..scene import CameraFrame, Scene, frame_name, write_cameras_with_reasons
from ..stage import StageResult, known_backend, make_backend
from . import diagnose
from .features import BACKENDS as FEATURES
from .features import DiskFeatures, SiftFeatures, XFeatFeatures, match_into_database, verify_pairs, write_features
from .poses import PosesOptions

NAME = "sfm"
OUTPUTS = ["sfm", "cameras.json", "sparse_points.ply", "transforms.json"]
#: Feature cache folder (relative to the scene); not an output, so a re-run keeps it.
FEATURE_CACHE = "cache/sfm_features"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["colmap", "poses"] = Field("colmap", description="colmap: map the keyframes; poses: "
                                                "import a trajectory and triangulate with it")
    poses: PosesOptions = PosesOptions()
    features: str = Field("sift", description="local features: sift | xfeat | disk")
    sift: SiftFeatures.Options = SiftFeatures.Options()
    xfeat: XFeatFeatures.Options = XFeatFeatures.Options()
    disk: DiskFeatures.Options = DiskFeatures.Options()
    feature_cache: bool = Field(True, description="keep features per keyframe in cache/sfm_features/")
    mask_people: bool = Field(False, description="leave out the keypoints inside detect's person boxes (a moving "
                              "person is not the static scene SfM assumes). Off by default: the detector also "
                              "finds people in posters and photos, and on the HoloLens walk their keypoints are "
                              "the best-textured ones of its worst-constrained stretch (ATE 6.5 -> 26.7 cm with "
                              "masking; the sample clip 4.45 -> 3.83 cm). Two-view RANSAC already rejects most "
                              "matches on people who move")
    people_box_margin: float = Field(0.05, ge=0, le=1, description="person boxes grown by this share of their "
                                     "size on each side before dropping keypoints")
    camera_model: Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"] = "SIMPLE_RADIAL"
    known_intrinsics: list[float] | None = Field(
        None, min_length=4, max_length=4, description="fx, fy, cx, cy in source-image pixels; None = estimate")
    max_num_features: int = Field(2048, ge=256)
    sequential_overlap: int = Field(8, ge=1)
    quadratic_overlap: bool = True
    pairing: Literal["auto", "sequential", "exhaustive"] = Field(
        "auto", description="auto: exhaustive for photos (video kind 'images') and short keyframe lists, else "
        "sequential + loop closures")
    exhaustive_below: int = Field(30, ge=0, description="match all pairs when there are at most this many "
                                  "keyframes")
    exhaustive_max_images: int = Field(200, ge=2, description="photos (video kind 'images'): all pairs up to "
                                       "this many; beyond, retrieval pairs only")
    loop_closure: bool = True
    loop_candidates: int = Field(5, ge=0, description="retrieved loop-closure partners per keyframe")
    loop_min_gap: int = Field(15, ge=2, description="keyframes apart for a pair to count as a loop candidate")
    loop_min_inliers: int = Field(15, ge=15, description="two-view inliers a loop-closure pair needs")
    loop_min_inlier_ratio: float = Field(0.0, ge=0, lt=1, description="inlier ratio a loop-closure pair needs")
    loop_check: bool = Field(True, description="check loop closures against the model; drop inconsistent ones")
    verify_max_error_px: float = Field(4.0, gt=0, description="RANSAC epipolar error in two-view verification")
    verify_max_trials: int = Field(2000, ge=100, description="RANSAC trials at most in two-view verification "
                                   "(COLMAP: 10000); a pair that cannot verify runs them all")
    mapper: Literal["incremental", "global"] = "incremental"
    ba_global_max_refinements: int = Field(2, ge=1, description="rounds of global bundle adjustment, filtering "
                                           "and re-triangulation each time the model has grown (COLMAP: 5); "
                                           "later rounds change little: on the 60-s fwd+bwd walk 2 rounds map "
                                           "in 80 s instead of 92-98 s at the same ATE")
    mapper_options: dict[str, float | int | bool] = Field(
        default_factory=dict, description="extra pycolmap IncrementalPipelineOptions / GlobalPipelineOptions "
        "attributes, e.g. {ba_global_frames_ratio: 1.4, 'mapper.abs_pose_max_error': 8}; applied after "
        "vid2scene's own settings")
    init_min_tri_angle_deg: float = Field(16.0, gt=0, description="triangulation angle (deg) the initial pair "
                                          "of incremental mapping needs (COLMAP's default)")
    restart_init_min_tri_angle_deg: float = Field(
        8.0, gt=0, description="the first restart (see multi_start_attempts) lets COLMAP pick its initial pair "
        "again with this smaller angle: two nearby keyframes of one stretch of video rather than two far-apart "
        "ones that a loop closure joins")
    first_mapping_stop_share: float = Field(
        0.5, gt=0, le=1, description="the first incremental mapping builds no further model once one holds this "
        "share of the keyframes (1: COLMAP's behaviour, up to 50 models). A later model could only be larger by "
        "taking over most of the rest; the others seeded restarts only, and are mapped when the restart at the "
        "smaller angle falls short")
    multi_start_attempts: int = Field(3, ge=0, description="mapping restarts inside other models when the "
                                      "largest registers fewer than multi_start_below of the keyframes")
    multi_start_below: float = Field(0.95, ge=0, le=1)
    merge_passes: int = Field(3, ge=0, description="continuation passes that register frames left out of the "
                              "largest model")
    refine_principal_point: Literal["never", "final", "always"] = Field(
        "final", description="estimate cx, cy: never; in one final bundle adjustment of the finished model "
        "(kept only if cx, cy stay within 10% of the image centre); or throughout mapping")
    refine_all_frames: bool = Field(False, description="register usable non-keyframes as extra constraints, "
                                    "re-triangulate, final global bundle adjustment")
    refine_stride: int = Field(1, ge=1, description="every n-th usable non-keyframe is used by refine_all_frames")
    reason_min_inliers: int = Field(30, ge=1, description="verified inliers below which a frame has few_matches")
    reason_min_tri_angle_deg: float = Field(1.0, ge=0, description="triangulation angle below which a frame's "
                                            "pairs are low_parallax")
    exclude_blurred_below: float = Field(0.1, ge=0, le=1, description="keyframes sharper than this share of "
                                         "the keyframes' median sharpness only are left out of mapping (reason "
                                         "blurred): their poses would be guesses")
    reason_blur_rel: float = Field(0.35, ge=0, le=1, description="sharpness share of the keyframes' median "
                                   "below which a frame is blurred")
    num_threads: int = Field(-1, description="-1 = all cores")
    seed: int = 0
    min_registered_share: float = Field(0.6, ge=0, le=1)
    max_reprojection_error_px: float = Field(2.0, gt=0)
    min_mean_track_length: float = Field(2.5, ge=2)
    min_points: int = Field(200, ge=0)

    @field_validator("features")
    @classmethod
    def _known_features(cls, v: str) -> str:
        return known_backend(v, FEATURES, "sfm features")


def backend_status() -> dict[str, str]:
    """``{"features=<name>": "installed" | "not installed: …"}`` for ``vid2scene stages`` (the mapping
    backends colmap and poses need nothing beyond pycolmap)."""
    from ..stage import backend_status as status

    return {"colmap": "installed", "poses": "installed",
            **{f"features={k}": v for k, v in status(FEATURES).items()}}


# ---------------------------------------------------------------------------------------------------------
# pairing
# ---------------------------------------------------------------------------------------------------------
def sequential_pairs(n: int, overlap: int, quadratic: bool = True) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of keyframe indices ``j = i+1 .. i+overlap`` (plus ``i + 2^k`` when
    ``quadratic``), as COLMAP's sequential matcher forms them."""
    pairs = set()
    for i in range(n):
        for d in range(1, overlap + 1):
            if i + d < n:
                pairs.add((i, i + d))
        if quadratic:
            k = 1
            while i + (1 << k) < n and k < 20:
                if (1 << k) > overlap:
                    pairs.add((i, i + (1 << k)))
                k += 1
    return pairs


def bow_vectors(descriptors: list[np.ndarray], n_words: int = 256, sample: int = 40000,
                seed: int = 0) -> np.ndarray:
    """tf-idf bag-of-visual-words vectors, L2-normalised, one row per image (``N×n_words`` float32).

    ``descriptors``: per image an ``M_i×128`` SIFT descriptor array (uint8 or float). The vocabulary is
    k-means (SciPy ``kmeans2``) on a random sample of all descriptors — a per-scene vocabulary, so no
    pre-trained tree has to be downloaded.
    """
    from scipy.cluster.vq import kmeans2, vq

    rng = np.random.default_rng(seed)
    nonempty = [d for d in descriptors if len(d)]
    if not nonempty:
        return np.zeros((len(descriptors), 1), np.float32)
    allx = np.concatenate(nonempty).astype(np.float32)
    allx /= np.linalg.norm(allx, axis=1, keepdims=True) + 1e-9
    k = int(min(n_words, max(8, len(allx) // 50)))
    samp = allx[rng.choice(len(allx), size=min(sample, len(allx)), replace=False)]
    import warnings

    with warnings.catch_warnings():  # an empty cluster is harmless here: that word just never occurs
        warnings.simplefilter("ignore", UserWarning)
        centroids, _ = kmeans2(samp, k, iter=10, minit="points", seed=seed)  # "++" init is ~50x slower
    hist = np.zeros((len(descriptors), k), np.float32)
    for i, d in enumerate(descriptors):
        if len(d):
            x = d.astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-9
            words, _ = vq(x, centroids)
            hist[i] = np.bincount(words, minlength=k)
    df = (hist > 0).sum(0)
    idf = np.log(len(descriptors) / np.maximum(df, 1))
    v = (hist / np.maximum(hist.sum(1, keepdims=True), 1)) * idf
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-9)


def loop_pairs(vectors: np.ndarray, k: int, min_gap: int) -> set[tuple[int, int]]:
    """For each image, its ``k`` most similar images (cosine on ``vectors``) at least ``min_gap`` apart."""
    n = len(vectors)
    if k <= 0 or n <= min_gap:
        return set()
    sim = vectors @ vectors.T
    idx = np.arange(n)
    sim[np.abs(idx[:, None] - idx[None, :]) < min_gap] = -np.inf
    pairs = set()
    for i in range(n):
        for j in np.argsort(-sim[i])[:k]:
            if np.isfinite(sim[i, j]) and sim[i, j] > 0:
                pairs.add((min(i, int(j)), max(i, int(j))))
    return pairs


# ---------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------
def reader_options_for(config: Config, scale: float):
    """COLMAP image-reader options: the camera model, or fixed PINHOLE ``known_intrinsics`` scaled from source
    to working pixels by ``scale``."""
    import pycolmap

    ro = pycolmap.ImageReaderOptions()
    if config.known_intrinsics:
        fx, fy, cx, cy = config.known_intrinsics
        K = geometry.scale_intrinsics(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64), scale)
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        ro.camera_model = "PINHOLE"
        ro.camera_params = f"{fx},{fy},{cx},{cy}"
    else:
        ro.camera_model = config.camera_model
    return ro


def _qc(rec, n_keyframes: int, names: list[str] | None = None) -> dict:
    """The model's QC figures (registered keyframes and share, reprojection error px, track length, points)."""
    if names is None:
        n_reg = rec.num_reg_images()
    else:
        wanted = set(names)
        n_reg = sum(1 for im in rec.images.values() if im.has_pose and im.name in wanted)
    return {"n_keyframes": n_keyframes, "n_registered": n_reg,
            "registered_share": round(n_reg / max(n_keyframes, 1), 4),
            "mean_reprojection_error_px": round(float(rec.compute_mean_reprojection_error()), 4),
            "mean_track_length": round(float(rec.compute_mean_track_length()), 3),
            "n_points": rec.num_points3D()}


def run(scene: Scene, config: Config) -> StageResult:
    """Reconstruct the keyframes; write the model, ``cameras.json``, ``sparse_points.ply``, ``transforms.json``.

    Raises:
        StageFailed: ``keyframes`` has not completed; no model; the poses backend's trajectory cannot be read
            or covers too few keyframes; or the kept model fails the QC thresholds (registered share,
            reprojection error, track length, points) — the reason names the figure and the threshold.
            Nothing is written then (the work folder is removed).
        BackendNotInstalled: the chosen ``features`` backend's wheel is missing (the reason says how to
            install it).
    """
    import pycolmap

    scene.require("keyframes")
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 3  # COLMAP logs (even ERROR lines for models it drops) would drown the bars
    try:
        return _run(scene, config)
    finally:
        pycolmap.logging.minloglevel = level


def _run(scene: Scene, config: Config) -> StageResult:
    kf = scene.keyframes()
    keyframes = kf["keyframes"]
    names = [frame_name(k["source_frame"]) for k in keyframes]
    for stale in scene.root.glob(".sfm_work.*"):  # left by a run that was killed mid-stage
        shutil.rmtree(stale, ignore_errors=True)
    video = scene.video_info()
    scale = float(video.get("scale_working_from_source", 1.0))
    config = _intrinsics_after_crop(config, kf["crop"], scale)
    cache_dir = scene.root / FEATURE_CACHE if config.feature_cache else None
    work = Path(tempfile.mkdtemp(prefix=".sfm_work.", dir=scene.root))
    warnings: list[str] = []
    try:
        size = (int(kf["width"]), int(kf["height"]))
        sharp = keyframe_sharpness(scene, names)
        med = float(np.median(list(sharp.values()))) if sharp else 0.0
        excluded = {nm for nm, v in sharp.items() if med > 0 and v < config.exclude_blurred_below * med}
        mapped = [nm for nm in names if nm not in excluded]
        if config.backend == "poses":
            from . import poses

            rec, info = poses.triangulate_with_poses(work, scene, [k for k, nm in zip(keyframes, names)
                                                                   if nm not in excluded], mapped, config, scale,
                                                     size, cache_dir)
        else:
            people = people_boxes(scene, keyframes, names, size) if config.mask_people else None
            rec, info = reconstruct(work, scene.frames_dir, mapped, config, scale, max(size), size,
                                    kind=video.get("kind", "video"), cache_dir=cache_dir, exclude_boxes=people)
            if config.refine_all_frames:
                from . import refine

                rec, rinfo = refine.all_frames(work, scene, rec, names, config, scale, size, cache_dir)
                info["refine"] = rinfo
                warnings += rinfo.pop("warnings", [])
        qc = _qc(rec, len(names), names)
        fstats = info.get("feature_stats")
        if fstats and "people" in fstats:
            qc["people"] = fstats.pop("people")
        qc.update({"n_models": info.get("n_models", 1), "n_pairs": info.get("n_pairs", 0),
                   "n_loop_pairs": info.get("n_loop_pairs", 0), "pairing": info.get("pairing"),
                   "features": config.features, "feature_cache": fstats,
                   "mapper": config.mapper if config.backend == "colmap" else "poses", "camera": _camera_qc(rec)})
        if info.get("loops_dropped"):
            qc["loops_dropped"] = info["loops_dropped"]
            warnings.append(f"dropped {len(info['loops_dropped'])} loop closure(s) inconsistent with the model "
                            "(repeated structure?)" + ("; mapped again without them" if info.get("remapped") else
                                                       "; the model had not used them"))
        if "refine" in info:
            qc["refine"] = info["refine"]
        try:
            check_qc(qc, config)
        except StageFailed as e:
            hint = overlap_hint(work / "database.db", mapped)
            raise StageFailed(NAME, str(e).removeprefix(f"{NAME}: ") + hint) from None
        registered = {im.name for im in rec.images.values() if im.has_pose}
        reasons = keyframe_reasons(scene, work / "database.db", names, registered, info.get("other_model", set()),
                                   config, sharp)
        for nm in excluded:
            reasons[nm]["figures"]["excluded_from_mapping"] = True
        if reasons:
            counts: dict[str, int] = {}
            for r in reasons.values():
                counts[r["reason"]] = counts.get(r["reason"], 0) + 1
            qc["unregistered_reasons"] = counts
        _write_outputs(scene, rec, keyframes, names, reasons)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return StageResult(qc=qc, warnings=warnings,
                       summary=f"{qc['n_registered']}/{len(names)} keyframes registered in one model "
                       f"({qc['n_models']} model(s) before merging), {qc['n_points']} points, reprojection "
                       f"{qc['mean_reprojection_error_px']:.2f} px, track length {qc['mean_track_length']:.1f}")


def people_boxes(scene: Scene, keyframes: list[dict], names: list[str], size: tuple[int, int]
                 ) -> dict[str, list[list[float]]]:
    """``{keyframe image name: person boxes [x0, y0, x1, y1]}`` in keyframe pixels (``size`` = (w, h)) from
    ``detect``'s records (keyframes without people, or a scene without ``detect``, are absent)."""
    out = {}
    for k, nm in zip(keyframes, names):
        boxes = scene.people_boxes(int(k["source_frame"]), size)
        if boxes:
            out[nm] = boxes
    return out


def overlap_hint(db_path: Path, names: list[str]) -> str:
    """A clause for the failure reason when the verified match graph itself is split
    (:func:`vid2scene.sfm.diagnose.match_graph_groups`): ``"; the largest group of keyframes linked by
    verified matches holds 12/38 (9 groups): they overlap too little for one model"``, or ``""``."""
    if not db_path.is_file() or not names:
        return ""
    groups = diagnose.match_graph_groups(diagnose.pair_figures(db_path, names), names)
    if not groups or groups[0] >= 0.9 * len(names):
        return ""
    return (f"; the largest group of keyframes linked by verified matches holds {groups[0]}/{len(names)} "
            f"({len(groups)} groups): they overlap too little for one model (far-apart photos or fast turns "
            "between sparse frames)")


def keyframe_sharpness(scene: Scene, names: list[str]) -> dict[str, float]:
    """Variance of the Laplacian of each keyframe image (:func:`vid2scene.sfm.diagnose.sharpness`)."""
    import cv2

    sharp = {}
    for nm in names:
        img = cv2.imread(str(scene.frames_dir / nm), cv2.IMREAD_GRAYSCALE)
        if img is not None:
            sharp[nm] = diagnose.sharpness(img)
    return sharp


def keyframe_reasons(scene: Scene, db_path: Path, names: list[str], registered: set[str], other_model: set[str],
                     config: Config, sharp: dict[str, float]) -> dict[str, dict]:
    """:func:`vid2scene.sfm.diagnose.unregistered_reasons` for the keyframes, with their sharpness ``sharp``
    and the ``quality`` stage's blurry verdicts."""
    if all(nm in registered for nm in names):
        return {}
    blurry = set()
    try:
        blurry = {frame_name(f["source_frame"]) for f in scene.quality().get("frames", [])
                  if f.get("reason") == "blurry"}
    except (StageFailed, OSError, ValueError):
        pass
    pairs = diagnose.pair_figures(db_path, names) if db_path.is_file() else {}
    return diagnose.unregistered_reasons(names, registered, other_model, pairs, sharp, blurry,
                                         blur_rel=config.reason_blur_rel, min_inliers=config.reason_min_inliers,
                                         min_tri_angle_deg=config.reason_min_tri_angle_deg)


def feature_backend(config: Config):
    """The ``features`` backend built from its options section.

    Raises:
        BackendNotInstalled: its wheel is missing (the reason says how to install it).
    """
    return make_backend(NAME, FEATURES, config, name=config.features)


def reconstruct(work: Path, image_dir: Path, names: list[str], config: Config, scale: float,
                max_image_size: int, size: tuple[int, int] | None = None, *, kind: str = "video",
                cache_dir: Path | None = None, exclude_boxes: dict[str, list[list[float]]] | None = None):
    """Features, pairs, matching and mapping of the images ``names`` in ``image_dir``, with scratch files in
    ``work`` (the database is ``work/database.db``). ``size``: (width, height) px of the images.
    ``exclude_boxes``: per image name, boxes (image pixels) whose keypoints are left out (people).

    Returns (the kept ``pycolmap.Reconstruction``, info dict: ``n_models``, ``n_pairs``, ``n_loop_pairs``,
    ``pairing`` ("sequential" | "exhaustive" | "retrieval"), ``feature_stats``, ``other_model`` (names placed
    only in models not kept), ``loops_checked``, ``loops_dropped``).

    Raises:
        StageFailed: the mapper made no model with a registered image.
        BackendNotInstalled: the features backend is missing.
    """
    backend = feature_backend(config)
    db_path, feats, fstats = prepare_database(work, image_dir, names, config, scale, max_image_size, backend,
                                              cache_dir, exclude_boxes)
    seq, loops, pairing = image_pairs(names, [feats[nm].descriptors for nm in names], config, kind)
    size = size or (max_image_size, max_image_size)
    groups = {"sequential": (seq, 15, 0.0), "loop": (loops, config.loop_min_inliers, config.loop_min_inlier_ratio)}
    match_pairs(db_path, work, names, groups, config, backend=backend, feats=feats, size=size)
    info = {"n_pairs": len(seq | loops), "n_loop_pairs": len(loops), "pairing": pairing, "feature_stats": fstats}
    models_dir = work / "models"
    models_dir.mkdir()
    rec, n_models, other = map_images(db_path, image_dir, models_dir, config, names)
    if rec is not None and config.loop_check and loops:
        checked = diagnose.check_loops(rec, db_path, [(names[i], names[j]) for i, j in sorted(loops)])
        bad = [c for c in checked if not c["ok"]]
        info["loops_checked"] = len(checked)
        if bad:
            info["loops_dropped"] = bad
            diagnose.drop_pairs(db_path, [tuple(c["pair"]) for c in bad])
            info["remapped"] = any(c["used_by_model"] for c in bad)
            if info["remapped"]:  # the model was built on a false loop: map again without it
                shutil.rmtree(models_dir)
                models_dir.mkdir()
                rec, n_models, other = map_images(db_path, image_dir, models_dir, config, names,
                                                  label=f"without {len(bad)} false loop(s): ")
    if rec is None or rec.num_reg_images() == 0:
        raise StageFailed(NAME, f"no model: COLMAP could not initialise from {len(names)} keyframes "
                                "(too little texture or parallax)")
    info.update({"n_models": n_models, "other_model": other})
    return rec, info


def prepare_database(work: Path, image_dir: Path, names: list[str], config: Config, scale: float,
                     max_image_size: int, backend=None, cache_dir: Path | None = None,
                     exclude_boxes: dict[str, list[list[float]]] | None = None):
    """A new COLMAP database ``work/database.db`` with one shared camera and the features of ``names``
    (without the keypoints inside ``exclude_boxes``, ``{name: [[x0, y0, x1, y1], ...]}`` image pixels, grown
    by ``config.people_box_margin``).

    Returns (database path, ``{name: Features}``, ``{"n_cached", "n_extracted"}``).
    """
    backend = backend or feature_backend(config)
    db_path = work / "database.db"
    key = None
    if cache_dir is not None:
        from .features import cache_key

        opts = {"max_num_features": config.max_num_features} if backend.name == "sift" else {}
        key = cache_dir / cache_key(backend, {"max_image_size": max_image_size, **opts})
    feats, stats = write_features(db_path, image_dir, names, backend, reader_options_for(config, scale), config,
                                  max_image_size, key, exclude_boxes, config.people_box_margin)
    return db_path, feats, stats


def _intrinsics_after_crop(config: Config, crop: dict, scale: float) -> Config:
    """``config`` with ``known_intrinsics`` (source pixels) moved by the letterbox crop of the keyframes."""
    if not config.known_intrinsics or not (crop["left"] or crop["top"]):
        return config
    fx, fy, cx, cy = config.known_intrinsics
    return config.model_copy(update={"known_intrinsics": [fx, fy, cx - crop["left"] / scale,
                                                          cy - crop["top"] / scale]})


def image_pairs(names: list[str], descriptors: list[np.ndarray], config: Config,
                kind: str = "video") -> tuple[set, set, str]:
    """(pairs, loop-closure pairs not among them, pairing mode) of keyframe indices ``i < j``.

    * ``exhaustive`` — every pair, when ``kind == "images"`` (photos are not a sequence) and there are at most
      ``exhaustive_max_images``, or when there are at most ``exhaustive_below`` keyframes;
    * ``retrieval`` — photos beyond that: each image with its ``sequential_overlap + loop_candidates`` most
      similar images by :func:`bow_vectors` on ``descriptors`` (per image ``M_i×D``);
    ``pairing`` ``sequential`` / ``exhaustive`` forces a mode.

    * ``sequential`` — :func:`sequential_pairs`, plus loop pairs retrieved with :func:`bow_vectors` when
      ``loop_closure`` is on.
    """
    n = len(names)
    if config.pairing == "sequential":
        kind = "video"
    exhaustive = (kind == "images" and n <= config.exhaustive_max_images) or n <= config.exhaustive_below
    if config.pairing == "exhaustive" or (config.pairing == "auto" and exhaustive):
        return {(i, j) for i in range(n) for j in range(i + 1, n)}, set(), "exhaustive"
    if kind == "images":
        k = config.sequential_overlap + config.loop_candidates
        return loop_pairs(bow_vectors(descriptors, seed=config.seed), k, 1), set(), "retrieval"
    seq = sequential_pairs(n, config.sequential_overlap, config.quadratic_overlap)
    if not (config.loop_closure and config.loop_candidates > 0 and n > config.loop_min_gap):
        return seq, set(), "sequential"
    loops = loop_pairs(bow_vectors(descriptors, seed=config.seed), config.loop_candidates, config.loop_min_gap)
    return seq, loops - seq, "sequential"


def verification_options(config: Config, min_inliers: int, min_ratio: float):
    import pycolmap

    vo = pycolmap.TwoViewGeometryOptions()
    vo.min_num_inliers = min_inliers
    vo.min_inlier_ratio = min_ratio
    vo.ransac.max_error = config.verify_max_error_px
    vo.ransac.max_num_trials = config.verify_max_trials
    vo.ransac.random_seed = config.seed
    return vo


def match_pairs(db_path: Path, work: Path, names: list[str], groups: dict[str, tuple[set, int, float]],
                config: Config, backend=None, feats: dict | None = None, size: tuple[int, int] = (0, 0)) -> None:
    """Match and verify each group of pairs, ``{label: (pairs, min_inliers, min_inlier_ratio)}``, into the
    database: SIFT with COLMAP's matcher, learned features with their backend's matcher (raw matches
    written, then COLMAP's two-view verification).

    Loop candidates can be verified more strictly than sequential pairs (repeated structure indoors can
    verify a false loop); on hololens_office, 60 inliers / 0.3 ratio rejected the true revisits too and
    registration fell from 99% to 51%, so the defaults are COLMAP's ordinary verification for both and false
    loops are caught afterwards against the model (:func:`vid2scene.sfm.diagnose.check_loops`).
    """
    import pycolmap

    learned = backend is not None and getattr(backend, "learned", False)
    mo = pycolmap.FeatureMatchingOptions()
    mo.num_threads = config.num_threads
    for label, (pairs_set, min_inl, min_ratio) in groups.items():
        if not pairs_set:
            continue
        pairs_txt = work / f"pairs_{label}.txt"
        pairs_txt.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in sorted(pairs_set)))
        vo = verification_options(config, min_inl, min_ratio)
        if learned:
            sizes = {nm: size for nm in names}
            match_into_database(db_path, names, pairs_set, backend, feats, sizes, label)
            with progress.bar(f"sfm: verifying {len(pairs_set)} {label} pairs", total=None):
                verify_pairs(db_path, pairs_txt, vo)
            continue
        po = pycolmap.ImportedPairingOptions()
        po.match_list_path = pairs_txt
        with progress.bar(f"sfm: matching {len(pairs_set)} {label} pairs", total=None):
            pycolmap.match_image_pairs(db_path, matching_options=mo, pairing_options=po,
                                       verification_options=vo, device=pycolmap.Device.cpu)


def _camera_qc(rec) -> dict:
    cam = next(iter(rec.cameras.values()))
    return {"model": str(cam.model.name), "params": [round(float(p), 4) for p in cam.params],
            "width": cam.width, "height": cam.height}


def apply_mapper_options(opts, options: dict) -> None:
    """Set ``options`` (``{"name": value}``, ``"mapper.name"`` for the nested mapper options) on a pycolmap
    pipeline options object ``opts``.

    Raises:
        InputError: an attribute the options object does not have, or a value of the wrong type.
    """
    for key, value in options.items():
        *path, attr = key.split(".")
        target = opts
        for part in path:
            target = getattr(target, part, None)
        if target is None or attr.startswith("_") or not hasattr(target, attr):
            raise InputError(f"sfm.mapper_options: {type(opts).__name__} has no option {key!r}")
        try:
            setattr(target, attr, type(getattr(target, attr))(value))
        except (TypeError, ValueError) as e:
            raise InputError(f"sfm.mapper_options: bad value {value!r} for {key!r}: {e}") from e


def map_images(db_path: Path, image_dir: Path, out_dir: Path, config: Config, names: list[str], label: str = ""):
    """Run the mapper; return (largest reconstruction after trying to register the rest, number of models,
    names of images placed only in models other than the one kept). Each step (first mapping, restarts,
    continuation, principal-point adjustment) has its own progress bar, so the speed benchmark's profile
    times them apart; ``label`` prefixes the bars (e.g. ``"again without 2 false loop(s): "``)."""
    import pycolmap

    if config.mapper == "global":
        opts = pycolmap.GlobalPipelineOptions()
        opts.num_threads = config.num_threads
        opts.random_seed = config.seed
        apply_mapper_options(opts, config.mapper_options)
        with progress.bar(f"sfm: {label}global mapping", total=None):
            models = pycolmap.global_mapping(db_path, image_dir, out_dir, opts)
    else:
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = config.num_threads
        opts.random_seed = config.seed
        opts.extract_colors = True
        opts.ba_refine_principal_point = config.refine_principal_point == "always"
        opts.mapper.init_min_tri_angle = config.init_min_tri_angle_deg
        if config.known_intrinsics:
            opts.ba_refine_focal_length = False
            opts.ba_refine_principal_point = False
            opts.ba_refine_extra_params = False
        opts.image_names = names
        opts.ba_global_max_refinements = config.ba_global_max_refinements
        apply_mapper_options(opts, config.mapper_options)
        with progress.bar(f"sfm: {label}incremental mapping", total=None):
            models, cut_short = first_mapping(db_path, image_dir, out_dir, opts, config.first_mapping_stop_share)
    if not models:
        return None, 0, set()
    best = max(models.values(), key=lambda r: r.num_reg_images())
    n_models = len(models)
    placed = {im.name for m in models.values() for im in m.images.values() if im.has_pose}
    if config.mapper == "incremental":
        best = _complete_model(db_path, image_dir, out_dir, opts, models, best, names, config, label, cut_short)
    if config.refine_principal_point == "final" and not config.known_intrinsics:
        with progress.bar("sfm: principal-point bundle adjustment", total=None):
            best = refine_principal_point(best)
    best.extract_colors_for_all_images(str(image_dir))
    kept = {im.name for im in best.images.values() if im.has_pose}
    return best, n_models, placed - kept


def _let_other_threads_run() -> None:
    """Release the GIL for a moment (``time.sleep(0)`` does), so that waiting Python threads run."""
    time.sleep(0)


def first_mapping(db_path: Path, image_dir: Path, out_dir: Path, opts, stop_share: float) -> tuple[dict, bool]:
    """COLMAP's incremental mapping of the database, stopped before a further model once one model holds
    ``stop_share`` of ``opts.image_names``; returns (``{index: pycolmap.Reconstruction}``, whether it stopped
    early). ``stop_share`` 1 runs ``pycolmap.incremental_mapping`` unchanged (up to ``max_num_models``).

    COLMAP maps models one after another until every image is in one or the initial pairs run out; on the sample
    clip the first mapping built 5 models (3, 10, 79, 48, 42 keyframes) in 23 s, where the 79 was the largest
    and the last two only seeded restarts. The stop is taken in the pipeline's end-of-model callback by turning
    off ``multiple_models`` on a copy of ``opts`` (``opts`` itself is not modified).
    """
    import pycolmap

    n = len(opts.image_names)
    if stop_share >= 1 or n == 0:
        return pycolmap.incremental_mapping(db_path, image_dir, out_dir, opts), False
    run_opts = copy.deepcopy(opts)
    run_opts.image_path = str(image_dir)
    manager = pycolmap.ReconstructionManager()
    database = pycolmap.Database.open(str(db_path))
    try:
        pipeline = pycolmap.IncrementalPipeline(run_opts, database, manager)
        stopped = []

        def end_of_model():
            sizes = [manager.get(i).num_reg_images() for i in range(manager.size())]
            if sizes and max(sizes) >= stop_share * n and pipeline.options.multiple_models:
                pipeline.options.multiple_models = False
                stopped.append(max(sizes))

        pipeline.add_callback(pycolmap.IncrementalPipelineCallback.LAST_IMAGE_REG_CALLBACK, end_of_model)
        # IncrementalPipeline.run holds the GIL throughout (pycolmap.incremental_mapping releases it): without a
        # pause at each registered image, a stage running beside sfm in a thread (detect) stalls for the whole
        # mapping, 7 s on the sample clip, 18 s on the HoloLens walk, though mapping leaves a core idle.
        pipeline.add_callback(pycolmap.IncrementalPipelineCallback.NEXT_IMAGE_REG_CALLBACK, _let_other_threads_run)
        pipeline.run()
    finally:
        database.close()
    models = {i: manager.get(i) for i in range(manager.size())}
    complete = sum(m.num_reg_images() for m in models.values()) >= n - 1
    return models, bool(stopped) and not complete


def _complete_model(db_path: Path, image_dir: Path, out_dir: Path, opts, models: dict, best, names: list[str],
                    config: Config, label: str = "", cut_short: bool = False):
    """Bring the largest model of the first incremental mapping to all keyframes, cheapest step first.

    1. Continuation passes (:func:`_register_rest`) from the largest model when it misses any keyframe.
    2. Only if that still leaves fewer than ``multi_start_below`` of the keyframes: restarts
       (:func:`_multi_start`, a whole new mapping each) from the first mapping's models, then continuation
       passes from the restart's model when it is the larger.

    Restarts used to come first. On the 60-s forward + backward walk the first mapping's 229/336 keyframes
    grew to 336/336 (5.29 cm) in 47 s of continuation, while the restarts before it took 108 s and found no
    larger model (336/336 at 5.29 cm after continuation either way). On the sample clip continuation cannot
    grow the first model (79 → 80 of 147, 5 s) and the restart at 8° maps 147/147 as before. Returns the
    largest model; the first mapping's ``models`` are not modified.
    """
    n = len(names)
    cont = best
    if best.num_reg_images() < n:
        with progress.bar(f"sfm: {label}continuation passes", total=None):
            cont = _register_rest(db_path, image_dir, out_dir, copy.deepcopy(opts), best, config.merge_passes,
                                  n_images=n)
    if cont.num_reg_images() >= config.multi_start_below * n:
        return cont
    with progress.bar(f"sfm: {label}mapping restarts ({best.num_reg_images()}/{n} in the largest model)",
                      total=None):
        restarted = _multi_start(db_path, image_dir, out_dir, opts, models, best, n, config, cut_short)
    if restarted is best or restarted.num_reg_images() <= cont.num_reg_images():
        return cont
    if restarted.num_reg_images() < n:
        with progress.bar(f"sfm: {label}continuation passes", total=None):
            restarted = _register_rest(db_path, image_dir, out_dir, copy.deepcopy(opts), restarted,
                                       config.merge_passes, tag="restart_", n_images=n)
    return max((cont, restarted), key=lambda r: r.num_reg_images())


def refine_principal_point(rec, max_offset: float = 0.1):
    """One global bundle adjustment that also refines the principal point (cx, cy) of every camera.

    Incremental mapping keeps cx, cy at the image centre (unstable while the model is small); once the
    model is complete, many views constrain them (on hololens_office the estimate moved to within 1.5 px of
    the calibrated value and ATE fell by ~15%). The result is kept only if cx, cy stay within
    ``max_offset`` × the image size of the centre and the mean reprojection error does not grow; otherwise the
    input model is returned unchanged.
    """
    import pycolmap

    refined = pycolmap.Reconstruction(rec)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_principal_point = True
    opts.print_summary = False
    with progress.quiet_native_info_logs():
        pycolmap.bundle_adjustment(refined, opts)
    for cam in refined.cameras.values():
        cx, cy = cam.principal_point_x, cam.principal_point_y
        if abs(cx - cam.width / 2) > max_offset * cam.width or abs(cy - cam.height / 2) > max_offset * cam.height:
            return rec
    if refined.compute_mean_reprojection_error() > rec.compute_mean_reprojection_error() * 1.05:
        return rec
    return refined


def _multi_start(db_path: Path, image_dir: Path, out_dir: Path, opts, models: dict, best, n_images: int,
                 config: Config, cut_short: bool = False):
    """Re-run incremental mapping initialised inside the next-largest models when the largest is too small.

    COLMAP starts from the best-connected image pair; on walkthrough video the model it grows can stop at a
    fast turn (pure rotation: no new triangulations, too few 2D–3D inliers), while a model started on the
    other side of the turn may grow across it (on the sample clip: 79/147 keyframes from the default
    start, 147/147 from a start inside the third model). Up to ``multi_start_attempts`` restarts: the first
    lets COLMAP choose its initial pair again under a smaller triangulation angle
    (``restart_init_min_tri_angle_deg``; COLMAP's 16° picks, on video, two keyframes far apart, and on the
    sample clip a pair that only loop closures join: a 79-keyframe model 1.4 m off the truth; at 8° one
    mapping registers 147/147 at 4.5 cm), the others are initialised with two keyframes from the middle of
    another model; the largest model wins. When the first mapping was ``cut_short`` (see
    :func:`first_mapping`) and the restart at the smaller angle falls short, the first mapping is run to its end
    first, to start the further restarts inside its other models.
    """
    import pycolmap

    if config.multi_start_attempts > 0 and best.num_reg_images() < config.multi_start_below * n_images:
        default_angle = opts.mapper.init_min_tri_angle
        opts.mapper.init_min_tri_angle = config.restart_init_min_tri_angle_deg
        out = out_dir / "restart_angle"
        out.mkdir()
        res = pycolmap.incremental_mapping(db_path, image_dir, out, opts)
        opts.mapper.init_min_tri_angle = default_angle
        cand = max(res.values(), key=lambda r: r.num_reg_images()) if res else None
        if cand is not None and cand.num_reg_images() > best.num_reg_images():
            best = cand
            models = {**models, "restart_angle": cand}
    if best.num_reg_images() < config.multi_start_below * n_images and cut_short:
        # the first mapping stopped early: map all its models so the restarts below can start inside them
        out = out_dir / "all_models"
        out.mkdir()
        res = pycolmap.incremental_mapping(db_path, image_dir, out, opts)
        if res:
            models = {**models, **{f"all_{k}": m for k, m in res.items()}}
            cand = max(res.values(), key=lambda r: r.num_reg_images())
            if cand.num_reg_images() > best.num_reg_images():
                best = cand
    others = sorted((m for m in models.values() if m is not best), key=lambda r: -r.num_reg_images())
    for k, m in enumerate(others[: max(config.multi_start_attempts - 1, 0)]):
        if best.num_reg_images() >= config.multi_start_below * n_images:
            break
        ids = sorted(m.reg_image_ids())
        if len(ids) < 3:
            continue
        mid = len(ids) // 2
        opts.init_image_id1, opts.init_image_id2 = ids[mid], ids[min(mid + 2, len(ids) - 1)]
        out = out_dir / f"restart_{k}"
        out.mkdir()
        res = pycolmap.incremental_mapping(db_path, image_dir, out, opts)
        cand = max(res.values(), key=lambda r: r.num_reg_images()) if res else None
        if cand is not None and cand.num_reg_images() > best.num_reg_images():
            best = cand
    opts.init_image_id1 = opts.init_image_id2 = -1
    return best


def _register_rest(db_path: Path, image_dir: Path, out_dir: Path, opts, best, passes: int, tag: str = "",
                   n_images: int = 0):
    """Continue incremental registration from the largest model to pull in the frames it left out.

    Frames of the smaller models (split off at fast turns, where consecutive keyframes share few inliers)
    get further chances once the largest model holds more structure. Continuation passes accept a camera
    pose with fewer 2D–3D inliers (15 instead of 30, inlier ratio 0.15 instead of 0.25): a frame is only
    added *to* the existing model, so a weak pose cannot start a separate, wrongly scaled model. Passes
    repeat while they register more frames, and stop once the model holds all ``n_images`` (when given).
    ``opts`` is modified (pass a copy); ``tag`` prefixes the passes' folders in ``out_dir``.
    """
    import pycolmap

    opts.multiple_models = False
    opts.mapper.abs_pose_min_num_inliers = 15
    opts.mapper.abs_pose_min_inlier_ratio = 0.15
    for k in range(passes):
        start = out_dir / f"{tag}start_{k}"
        start.mkdir()
        best.write(start)
        cont = out_dir / f"{tag}continued_{k}"
        cont.mkdir()
        more = pycolmap.incremental_mapping(db_path, image_dir, cont, opts, input_path=start)
        cand = max(more.values(), key=lambda r: r.num_reg_images()) if more else None
        if cand is None or cand.num_reg_images() <= best.num_reg_images():
            break
        best = cand
        if n_images and best.num_reg_images() >= n_images:
            break  # complete: another pass would only repeat the global refinement (6.5 s on the 60-s input)
    return best


def check_qc(qc: dict, config: Config) -> None:
    """Compare the model's QC figures with the thresholds of ``config``.

    Raises:
        StageFailed: "poor reconstruction: …" naming every figure below its threshold.
    """
    problems = []
    if qc["registered_share"] < config.min_registered_share:
        problems.append(f"registered {qc['n_registered']}/{qc['n_keyframes']} keyframes "
                        f"({100 * qc['registered_share']:.0f}% < {100 * config.min_registered_share:.0f}%)")
    if qc["mean_reprojection_error_px"] > config.max_reprojection_error_px:
        problems.append(f"mean reprojection error {qc['mean_reprojection_error_px']:.2f} px > "
                        f"{config.max_reprojection_error_px}")
    if qc["mean_track_length"] < config.min_mean_track_length:
        problems.append(f"mean track length {qc['mean_track_length']:.2f} < {config.min_mean_track_length}")
    if qc["n_points"] < config.min_points:
        problems.append(f"{qc['n_points']} points < {config.min_points}")
    if problems:
        raise StageFailed(NAME, "poor reconstruction: " + "; ".join(problems))


def camera_frames(rec, keyframes: list[dict], names: list[str]) -> list[CameraFrame]:
    """``CameraFrame`` per keyframe (registered or not) from a ``pycolmap.Reconstruction``.

    Unregistered keyframes carry the shared camera's K and ``cam_from_world=None``.
    """
    by_name = {im.name: im for im in rec.images.values()}
    cam = next(iter(rec.cameras.values()))
    K = np.asarray(cam.calibration_matrix(), dtype=np.float64)
    out = []
    for k, nm in zip(keyframes, names):
        im = by_name.get(nm)
        pose = None
        if im is not None and im.has_pose:
            pose = np.eye(4)
            pose[:3, :] = np.asarray(im.cam_from_world().matrix())
            K = np.asarray(rec.cameras[im.camera_id].calibration_matrix(), dtype=np.float64)
        out.append(CameraFrame(name=nm, source_frame=int(k["source_frame"]), timestamp_s=float(k["timestamp_s"]),
                               width=int(cam.width), height=int(cam.height), K=K.copy(), cam_from_world=pose))
    return out


def _write_outputs(scene: Scene, rec, keyframes: list[dict], names: list[str],
                   reasons: dict[str, dict] | None = None) -> None:
    """``sfm/`` (binary model, swapped in whole), ``cameras.json``, ``sparse_points.ply`` and
    ``transforms.json``, all in the SfM frame."""
    frames = camera_frames(rec, keyframes, names)
    cam = next(iter(rec.cameras.values()))
    tmp = scene.root / ".sfm.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    rec.write_binary(str(tmp)) if hasattr(rec, "write_binary") else rec.write(str(tmp))
    if scene.sfm_dir.exists():
        shutil.rmtree(scene.sfm_dir)
    tmp.rename(scene.sfm_dir)
    distortion = {"model": cam.model.name, "params": [float(p) for p in cam.params]}
    write_cameras_with_reasons(scene, frames, distortion, reasons or {})
    pts = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
    cols = np.array([p.color for p in rec.points3D.values()], dtype=np.uint8).reshape(-1, 3)
    scene.write_sparse_points(pts, cols)
    scene.write_transforms(frames, distortion)
