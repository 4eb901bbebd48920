"""``sfm.backend: poses`` — known camera poses in, points triangulated with them.

A trajectory from elsewhere (a GPU SLAM run, a phone's AR session, a motion-capture rig) is imported, each
keyframe gets the pose of its timestamp (TUM) or image name (COLMAP model), and the keyframes' matched
features are triangulated with those poses held fixed (``pycolmap.triangulate_points``, COLMAP's point
triangulator: multi-view triangulation, then bundle adjustment of the points only).

Formats:

* TUM RGB-D text (Sturm et al. 2012): one line per pose, ``timestamp tx ty tz qx qy qz qw``, the camera-to-world
  transform (camera centre and orientation in the trajectory's world frame); ``#`` lines are comments.
  Camera axes are OpenCV's (x right, y down, z forward) unless ``camera_axes: opengl``.
* A COLMAP model folder (``cameras``, ``images`` ``.bin`` or ``.txt``): ``cam_from_world`` per image name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import StageFailed
from ..scene import Scene, frame_name

_OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


class PosesOptions(BaseModel):
    """Options of ``sfm.backend: poses`` (section ``sfm.poses``)."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(None, description="TUM text file or COLMAP model folder")
    format: Literal["auto", "tum", "colmap"] = "auto"
    camera_axes: Literal["opencv", "opengl"] = Field("opencv", description="TUM camera axes")
    match_by: Literal["timestamp", "source_frame"] = Field(
        "timestamp", description="TUM: first column is seconds (timestamp) or the video frame index")
    time_offset_s: float = Field(0.0, description="added to the trajectory's timestamps")
    max_time_diff_s: float = Field(0.05, gt=0, description="largest gap to the nearest trajectory timestamp")


def quat_to_matrix(qx: float, qy: float, qz: float, qw: float) -> np.ndarray:
    """3×3 rotation of a unit quaternion (Hamilton convention, scalar last as in TUM files)."""
    q = np.array([qw, qx, qy, qz], np.float64)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(R: np.ndarray) -> tuple[float, float, float, float]:
    """(qx, qy, qz, qw) of a 3×3 rotation (scipy's ``Rotation.as_quat``, scalar last)."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(np.asarray(R, np.float64)).as_quat()
    return tuple(float(v) for v in q)  # type: ignore[return-value]


def read_tum(path: str | Path, camera_axes: str = "opencv") -> tuple[np.ndarray, np.ndarray]:
    """A TUM trajectory: (timestamps ``N`` float64, ``N×4×4`` float64 ``cam_from_world``, OpenCV axes).

    Raises:
        StageFailed: the file is missing or a line does not have 8 numbers.
    """
    p = Path(path)
    if not p.is_file():
        raise StageFailed("sfm", f"poses: no trajectory file {p}")
    ts, poses = [], []
    for k, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        v = line.replace(",", " ").split()
        if len(v) != 8:
            raise StageFailed("sfm", f"poses: {p.name} line {k}: expected 'timestamp tx ty tz qx qy qz qw'")
        t, tx, ty, tz, qx, qy, qz, qw = map(float, v)
        c2w = np.eye(4)
        c2w[:3, :3] = quat_to_matrix(qx, qy, qz, qw)
        c2w[:3, 3] = [tx, ty, tz]
        if camera_axes == "opengl":
            c2w = c2w @ _OPENGL_FROM_OPENCV
        ts.append(t)
        poses.append(np.linalg.inv(c2w))
    if not poses:
        raise StageFailed("sfm", f"poses: {p.name} holds no pose")
    return np.asarray(ts), np.asarray(poses)


def write_tum(path: str | Path, timestamps, cam_from_world) -> None:
    """Write ``N`` poses (``N×4×4`` ``cam_from_world``, OpenCV axes) as a TUM trajectory (camera-to-world)."""
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for t, T in zip(timestamps, cam_from_world):
        c2w = np.linalg.inv(np.asarray(T, np.float64))
        q = matrix_to_quat(c2w[:3, :3])
        lines.append(" ".join(f"{v:.9f}" for v in (float(t), *c2w[:3, 3], *q)))
    Path(path).write_text("\n".join(lines) + "\n")


def read_colmap(path: str | Path) -> tuple[dict[str, np.ndarray], dict | None]:
    """A COLMAP model: ``({image name: 4×4 cam_from_world}, {"K": 3×3, "width", "height"} of the first camera
    or None)``.

    Raises:
        StageFailed: the folder holds no readable model.
    """
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(path))
    except Exception as e:  # noqa: BLE001 - pycolmap raises plain RuntimeError/ValueError on bad input
        raise StageFailed("sfm", f"poses: no COLMAP model in {path} ({type(e).__name__})") from e
    out = {}
    for im in rec.images.values():
        if im.has_pose:
            T = np.eye(4)
            T[:3] = np.asarray(im.cam_from_world().matrix())
            out[im.name] = T
    cam = None
    if rec.cameras:
        c = next(iter(rec.cameras.values()))
        cam = {"K": np.asarray(c.calibration_matrix(), np.float64), "width": c.width, "height": c.height}
    return out, cam


def keyframe_poses(keyframes: list[dict], options: PosesOptions) -> tuple[dict[str, np.ndarray], dict | None]:
    """``({keyframe name: cam_from_world}, camera or None)`` for the keyframes the trajectory covers.

    Raises:
        StageFailed: no ``path`` given, or the trajectory cannot be read.
    """
    if not options.path:
        raise StageFailed("sfm", "poses backend: set sfm.poses.path to a TUM file or a COLMAP model folder")
    p = Path(options.path)
    fmt = options.format if options.format != "auto" else ("colmap" if p.is_dir() else "tum")
    names = [frame_name(k["source_frame"]) for k in keyframes]
    if fmt == "colmap":
        poses, cam = read_colmap(p)
        by_frame = {}
        for nm, T in poses.items():
            digits = "".join(ch for ch in Path(nm).stem if ch.isdigit())
            if digits:
                by_frame[int(digits)] = T
        out = {}
        for nm, k in zip(names, keyframes):
            T = poses.get(nm)
            out[nm] = T if T is not None else by_frame.get(int(k["source_frame"]))
        return {k: v for k, v in out.items() if v is not None}, cam
    ts, poses = read_tum(p, options.camera_axes)
    ts = ts + options.time_offset_s
    out = {}
    for nm, k in zip(names, keyframes):
        key = float(k["source_frame"]) if options.match_by == "source_frame" else float(k["timestamp_s"])
        i = int(np.argmin(np.abs(ts - key)))
        tol = 0.5 if options.match_by == "source_frame" else options.max_time_diff_s
        if abs(ts[i] - key) <= tol:
            out[nm] = poses[i]
    return out, None


def _write_text_model(folder: Path, db_path: Path, poses: dict[str, np.ndarray]) -> None:
    """A COLMAP text model (cameras, images with the given poses, no points) using the database's ids."""
    import pycolmap

    db = pycolmap.Database.open(str(db_path))
    try:
        cams = db.read_all_cameras()
        images = db.read_all_images()
    finally:
        db.close()
    folder.mkdir(parents=True, exist_ok=True)
    cam_lines = [f"{c.camera_id} {c.model.name} {c.width} {c.height} " + " ".join(f"{p:.12g}" for p in c.params)
                 for c in cams]
    (folder / "cameras.txt").write_text("\n".join(cam_lines) + "\n")
    img_lines = []
    for im in images:
        T = poses.get(im.name)
        if T is None:
            continue
        qx, qy, qz, qw = matrix_to_quat(T[:3, :3])
        tx, ty, tz = T[:3, 3]
        img_lines.append(f"{im.image_id} {qw:.12g} {qx:.12g} {qy:.12g} {qz:.12g} {tx:.12g} {ty:.12g} {tz:.12g} "
                         f"{im.camera_id} {im.name}")
        img_lines.append("")
    (folder / "images.txt").write_text("\n".join(img_lines) + "\n")
    (folder / "points3D.txt").write_text("")


def triangulate_with_poses(work: Path, scene: Scene, keyframes: list[dict], names: list[str], config, scale: float,
                           size: tuple[int, int], cache_dir: Path | None):
    """Features, pairs and verified matches as the ``colmap`` backend makes them, then points triangulated
    with the imported poses held fixed. Returns (``pycolmap.Reconstruction``, info dict).

    Intrinsics: ``known_intrinsics`` if given, else the COLMAP model's camera when its size is the keyframes'.

    Raises:
        StageFailed: no trajectory, no intrinsics, or fewer than two keyframes covered by it.
    """
    import pycolmap

    from . import image_pairs, match_pairs, prepare_database

    poses, cam = keyframe_poses(keyframes, config.poses)
    if len(poses) < 2:
        raise StageFailed("sfm", f"poses: the trajectory covers {len(poses)} of {len(names)} keyframes "
                                 "(check timestamps / time_offset_s / match_by)")
    if not config.known_intrinsics:
        if cam is None or (cam["width"], cam["height"]) != tuple(size):
            raise StageFailed("sfm", "poses backend needs sfm.known_intrinsics (fx, fy, cx, cy) unless the "
                                     "imported COLMAP model's camera has the keyframes' size")
        K = cam["K"]
        config = config.model_copy(update={"known_intrinsics": [K[0, 0] / scale, K[1, 1] / scale,
                                                                K[0, 2] / scale, K[1, 2] / scale]})
    db_path, feats, fstats = prepare_database(work, scene.frames_dir, names, config, scale, max(size), None,
                                              cache_dir)
    seq, loops, pairing = image_pairs(names, [feats[nm].descriptors for nm in names], config,
                                      scene.video_info().get("kind", "video"))
    groups = {"sequential": (seq | loops, 15, 0.0)}
    from . import feature_backend

    match_pairs(db_path, work, names, groups, config, backend=feature_backend(config), feats=feats, size=size)
    model_in = work / "poses_model"
    _write_text_model(model_in, db_path, poses)
    rec = pycolmap.Reconstruction(str(model_in))
    out = work / "triangulated"
    out.mkdir()
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = config.num_threads
    rec = pycolmap.triangulate_points(rec, db_path, scene.frames_dir, out, clear_points=True, options=opts,
                                      refine_intrinsics=False)
    rec.extract_colors_for_all_images(str(scene.frames_dir))
    info = {"n_models": 1, "n_pairs": len(seq | loops), "n_loop_pairs": len(loops), "pairing": pairing,
            "feature_stats": fstats, "n_imported_poses": len(poses)}
    return rec, info
