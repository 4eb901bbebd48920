"""The scene folder: it owns every asset — paths, typed loaders and writers, frames, the manifest.

Layout and schemas follow DESIGN.md ("The scene folder") and docs/architecture.md. Stages never spell an asset's
path nor parse another stage's files: they read and write through :class:`Scene`, which is backed by
:mod:`vid2scene.io` (all PLY/JSON/NPZ/image code, atomic writes).

Frames. Assets written before ``layout`` (cameras, sparse points, depth maps, mesh, video point cloud) are in the
SfM frame (arbitrary scale) and are never rewritten. ``layout`` stores the Sim(3) ``world_from_sfm`` once, in
``layout.json``; the loaders take ``frame="sfm" | "world"`` and apply it when the caller asks for the metric,
z-up world frame (``geometry.apply_transform`` for points, ``geometry.transform_pose`` for cameras, the scale
for depth). Assets written after ``layout`` (instances, scene graph, tasks) are in the world frame.

Frame naming: ``NNNNNN`` is the 0-based *source* frame index in decode order (for an image folder, the
position in sorted-name order), zero-padded to six digits.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import __version__, geometry
from .errors import InputError, StageFailed
from . import io

#: Serialises manifest read-modify-writes of stages running in threads of one process.
_MANIFEST_LOCK = threading.RLock()

Frame = Literal["sfm", "world"]
SFM: Frame = "sfm"
WORLD: Frame = "world"
#: The world frame's name as written in files and the manifest's conventions.
WORLD_NAME = "gravity_z_up_metric"


CONVENTIONS = {
    "camera_axes": "opencv (x right, y down, z forward)",
    "transforms": "dst_from_src 4x4 homogeneous, composed right to left (cam_from_world)",
    "frame_names": "NNNNNN = 0-based source frame index in decode order",
    "images": "H x W x 3 uint8 RGB",
    "frames": "sfm (arbitrary scale) for cameras/sparse points/depth/mesh/points; world (z up, floor z = 0, "
              "metres) = world_from_sfm (layout.json) applied on load; instances and later in world",
}

# ---- asset paths, relative to the scene folder (stages' OUTPUTS name these) ------------------------------
MANIFEST_JSON = "manifest.json"
VIDEO_JSON = "video.json"
FRAMES_ALL = "frames_all"
SHOTS_JSON = "shots.json"
QUALITY_JSON = "quality.json"
KEYFRAMES_JSON = "keyframes.json"
FRAMES = "frames"
DETECTIONS = "detections"
SFM_DIR = "sfm"
CAMERAS_JSON = "cameras.json"
SPARSE_POINTS_PLY = "sparse_points.ply"
TRANSFORMS_JSON = "transforms.json"
DEPTH = "depth"
MESH_PLY = "mesh.ply"
POINTS_PLY = "points.ply"
LAYOUT_JSON = "layout.json"
INSTANCES_JSON = "instances.json"
SCENE_GRAPH_JSON = "scene_graph.json"
TASKS = "tasks"
REPORT_HTML = "report.html"
LOGS = "logs"
SUBSCENES = "subscenes"
#: The lock file of a scene folder held by a running ``run`` (:class:`SceneLock`).
LOCK = ".vid2scene.lock"
#: Top-level entries of a scene folder that vid2scene writes (everything :meth:`Scene.clear` may remove).
WRITTEN = frozenset({MANIFEST_JSON, VIDEO_JSON, FRAMES_ALL, SHOTS_JSON, QUALITY_JSON, KEYFRAMES_JSON, FRAMES,
                     DETECTIONS, SFM_DIR, CAMERAS_JSON, SPARSE_POINTS_PLY, TRANSFORMS_JSON, DEPTH, MESH_PLY,
                     POINTS_PLY, LAYOUT_JSON, INSTANCES_JSON, SCENE_GRAPH_JSON, TASKS, REPORT_HTML, LOGS,
                     SUBSCENES, ".sfm.tmp"})


def is_written(name: str) -> bool:
    """Whether a top-level entry ``name`` of a scene folder is one vid2scene writes (:data:`WRITTEN`, or an
    in-progress temporary ``.NAME.tmp.*`` of :func:`vid2scene.io.atomic_path`)."""
    return name in WRITTEN or (name.startswith(".") and ".tmp" in name)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved; symlinks followed)."""
    try:
        p, f = path.expanduser().resolve(), folder.expanduser().resolve()
    except OSError:
        return False
    return p == f or f in p.parents


def frame_name(source_frame: int, ext: str = ".jpg") -> str:
    """File name of a frame: ``frame_name(123) == "000123.jpg"``."""
    return f"{int(source_frame):06d}{ext}"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class FrameRecord:
    """One decoded frame kept by ``ingest`` (``frames_all/index.json``)."""

    source_frame: int
    timestamp_s: float

    @property
    def name(self) -> str:
        return frame_name(self.source_frame)


@dataclass
class CameraFrame:
    """One keyframe's camera (``cameras.json`` entry).

    ``K`` is 3×3 float64 in pixels of the keyframe image; ``cam_from_world`` is 4×4 float64 mapping world
    points to OpenCV camera coordinates, or None when the keyframe was not registered.
    """

    name: str
    source_frame: int
    timestamp_s: float
    width: int
    height: int
    K: np.ndarray
    cam_from_world: np.ndarray | None

    @property
    def registered(self) -> bool:
        return self.cam_from_world is not None

    @property
    def center_in_world(self) -> np.ndarray:
        """Camera centre in world coordinates (3,), ``C = -R^T t``."""
        if self.cam_from_world is None:
            raise ValueError(f"{self.name} is not registered")
        R, t = self.cam_from_world[:3, :3], self.cam_from_world[:3, 3]
        return -R.T @ t

    def to_json(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "source_frame": self.source_frame,
                             "timestamp_s": round(float(self.timestamp_s), 6),
                             "width": self.width, "height": self.height, "K": np.asarray(self.K).tolist(),
                             "registered": self.registered}
        if self.cam_from_world is not None:
            d["cam_from_world"] = np.asarray(self.cam_from_world).tolist()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CameraFrame":
        pose = d.get("cam_from_world") if d.get("registered", "cam_from_world" in d) else None
        return cls(name=d["name"], source_frame=int(d["source_frame"]), timestamp_s=float(d["timestamp_s"]),
                   width=int(d["width"]), height=int(d["height"]), K=np.asarray(d["K"], dtype=np.float64),
                   cam_from_world=None if pose is None else np.asarray(pose, dtype=np.float64))


@dataclass
class PointCloud:
    """A point set: ``points`` ``N×3`` float64, ``colors`` ``N×3`` uint8 RGB or None, ``normals`` ``N×3``
    float64 unit vectors or None; ``frame`` names the frame the coordinates are in."""

    points: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None
    frame: Frame = SFM

    def __len__(self) -> int:
        return len(self.points)

    def transformed(self, dst_from_src: np.ndarray, frame: Frame) -> "PointCloud":
        """A copy mapped by a Sim(3) (normals rotated, not scaled)."""
        n = None if self.normals is None else geometry.rotate_normals(dst_from_src, self.normals)
        return PointCloud(geometry.apply_transform(dst_from_src, self.points), self.colors, n, frame)


@dataclass
class Mesh:
    """A triangle mesh: ``vertices`` ``V×3`` float64, ``triangles`` ``F×3`` int64, ``colors`` ``V×3`` uint8 or
    None, ``normals`` ``V×3`` float64 or None, in ``frame``."""

    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None
    frame: Frame = SFM

    def transformed(self, dst_from_src: np.ndarray, frame: Frame) -> "Mesh":
        """A copy mapped by a Sim(3) (normals rotated, not scaled)."""
        n = None if self.normals is None else geometry.rotate_normals(dst_from_src, self.normals)
        return Mesh(geometry.apply_transform(dst_from_src, self.vertices), self.triangles, self.colors, n, frame)

    def to_open3d(self):
        """An ``open3d.geometry.TriangleMesh`` copy (colours as float 0..1)."""
        o3d = io.open3d()
        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(self.vertices, np.float64)),
                                      o3d.utility.Vector3iVector(np.asarray(self.triangles, np.int32)))
        if self.colors is not None:
            m.vertex_colors = o3d.utility.Vector3dVector(np.asarray(self.colors, np.float64) / 255.0)
        if self.normals is not None:
            m.vertex_normals = o3d.utility.Vector3dVector(np.asarray(self.normals, np.float64))
        return m

    @classmethod
    def from_open3d(cls, mesh, frame: Frame = SFM) -> "Mesh":
        """From an ``open3d.geometry.TriangleMesh`` (float colours converted to uint8)."""
        cols = None
        if mesh.has_vertex_colors():
            cols = np.clip(np.round(np.asarray(mesh.vertex_colors) * 255.0), 0, 255).astype(np.uint8)
        nrm = np.asarray(mesh.vertex_normals, np.float64) if mesh.has_vertex_normals() else None
        return cls(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int64), cols, nrm, frame)


@dataclass
class DepthMap:
    """One keyframe's depth map: ``depth`` ``H×W`` float32 z-depth along the camera axis (0 = unknown) in the
    units of ``frame`` (SfM units, or metres in the world frame), ``confidence`` ``H×W`` float32 0..1 and any
    extra arrays the depth backend stored (``extras``)."""

    source_frame: int
    depth: np.ndarray
    confidence: np.ndarray
    frame: Frame = SFM
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class Scene:
    """A scene folder on disk. Cheap to construct; nothing is read until asked for.

    Every asset has a typed loader and (for the stage that owns it) a writer here. Loaders of assets that a
    stage has not written raise :class:`StageFailed` naming the stage to run (``require``-style), except
    the per-keyframe ``detections``/``people_boxes`` which return None / empty when absent.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._world_from_sfm: np.ndarray | None = None

    # ---- paths -----------------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        """Absolute path of an asset named by its relative path (one of this module's constants)."""
        return self.root / rel

    manifest_path = property(lambda self: self.root / MANIFEST_JSON)
    frames_all_dir = property(lambda self: self.root / FRAMES_ALL)
    frames_dir = property(lambda self: self.root / FRAMES)
    sfm_dir = property(lambda self: self.root / SFM_DIR)
    depth_dir = property(lambda self: self.root / DEPTH)
    detections_dir = property(lambda self: self.root / DETECTIONS)
    tasks_dir = property(lambda self: self.root / TASKS)
    logs_dir = property(lambda self: self.root / LOGS)
    video_json = property(lambda self: self.root / VIDEO_JSON)
    shots_json = property(lambda self: self.root / SHOTS_JSON)
    quality_json = property(lambda self: self.root / QUALITY_JSON)
    keyframes_json = property(lambda self: self.root / KEYFRAMES_JSON)
    cameras_json = property(lambda self: self.root / CAMERAS_JSON)
    sparse_points_ply = property(lambda self: self.root / SPARSE_POINTS_PLY)
    transforms_json = property(lambda self: self.root / TRANSFORMS_JSON)
    mesh_ply = property(lambda self: self.root / MESH_PLY)
    points_ply = property(lambda self: self.root / POINTS_PLY)
    layout_json = property(lambda self: self.root / LAYOUT_JSON)
    instances_json = property(lambda self: self.root / INSTANCES_JSON)
    scene_graph_json = property(lambda self: self.root / SCENE_GRAPH_JSON)
    report_html = property(lambda self: self.root / REPORT_HTML)

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def has(self, rel: str) -> bool:
        """Whether the asset at ``rel`` (file or non-empty folder) is present."""
        p = self.root / rel
        return p.is_file() or (p.is_dir() and any(p.iterdir()))

    # ---- manifest --------------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        """The manifest (a JSON object with at least ``source``, ``stages``, ``qc``, ``status``).

        Raises:
            InputError: no manifest, or it is unreadable, not JSON, or not an object (``--overwrite``
                rebuilds the scene then).
        """
        if not self.exists():
            raise InputError(f"not a scene folder (no {MANIFEST_JSON}): {self.root}")
        try:
            m = io.read_json(self.manifest_path)
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise InputError(f"unreadable {self.manifest_path}: {e}; pass --overwrite to rebuild the scene") from e
        if not isinstance(m, dict) or not isinstance(m.get("stages", {}), dict) \
                or not isinstance(m.get("source", {}), dict) or not isinstance(m.get("qc", {}), dict):
            raise InputError(f"corrupt {self.manifest_path}: not a vid2scene manifest object; pass --overwrite "
                             "to rebuild the scene")
        m.setdefault("stages", {})
        m.setdefault("qc", {})
        m.setdefault("source", {})
        return m

    def manifest_readable(self) -> bool:
        """Whether the manifest exists and is a readable manifest object."""
        try:
            self.read_manifest()
        except InputError:
            return False
        return True

    def write_manifest(self, manifest: dict) -> None:
        io.write_json(self.manifest_path, manifest)

    def update_manifest(self, fn) -> dict:
        """Read the manifest, apply ``fn(manifest)`` and write it back, under a process-wide lock (two stages
        can run at once in threads: :func:`vid2scene.pipeline.run_pipeline` overlaps ``detect`` and ``sfm``)."""
        with _MANIFEST_LOCK:
            m = self.read_manifest()
            fn(m)
            self.write_manifest(m)
            return m

    @classmethod
    def create(cls, root: str | Path, source: dict, overwrite: bool = False) -> "Scene":
        """Open or create the scene folder for ``source`` (``{"path", "kind", "sha256", "size_bytes"}``).

        With ``overwrite``, a scene made from another input, or one whose manifest is corrupt, is cleared
        first (:meth:`clear`: only what vid2scene wrote is removed).

        Raises:
            InputError: the folder holds a scene made from another input (different sha256), or a corrupt
                manifest, and ``overwrite`` is False; the path exists and is not a scene folder and is not
                empty; with ``overwrite``, the input lies inside the folder to be cleared.
        """
        scene = cls(root)
        src_path = source.get("path")
        if overwrite and src_path and _inside(Path(src_path), scene.root) and scene.exists():
            raise InputError(f"refusing --overwrite: the input {src_path} lies inside the scene folder "
                             f"{scene.root}; move it out or choose another output folder")
        if scene.exists():
            if not scene.manifest_readable():
                if not overwrite:
                    scene.read_manifest()  # raises the reason
                scene.clear()
            else:
                old = scene.read_manifest().get("source", {})
                if old.get("sha256") != source.get("sha256"):
                    if not overwrite:
                        raise InputError(f"{scene.root} holds a scene made from another input ({old.get('path')}); "
                                         "choose another output folder or pass --overwrite")
                    scene.clear()
                else:
                    if src_path and old.get("path") != src_path:  # same content, moved or renamed
                        scene.update_manifest(lambda m: m["source"].update(path=src_path))
                    return scene
        elif scene.root.exists() and any(p.name != LOCK for p in scene.root.iterdir()):
            # Never empty a folder that is not a scene, even with --overwrite (it could be a home folder).
            raise InputError(f"{scene.root} exists, is not empty and is not a scene folder; "
                             "choose another output folder")
        scene.root.mkdir(parents=True, exist_ok=True)
        scene.write_manifest({
            "vid2scene_version": __version__, "created": now_iso(), "source": source,
            "conventions": dict(CONVENTIONS), "world_from_sfm": None,
            "status": "incomplete", "failure": None, "stages": {}, "qc": {},
        })
        return scene

    def clear(self) -> None:
        """Remove what vid2scene wrote in the folder (the entries of :data:`WRITTEN` and in-progress
        temporaries); anything else — a user's own file — stays. Only called on an explicit ``--overwrite``."""
        for p in self.root.iterdir():
            if p.name == LOCK or not is_written(p.name):
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def lock(self) -> "SceneLock":
        """A :class:`SceneLock` on this folder (use as a context manager)."""
        return SceneLock(self.root)

    # ---- stage status ----------------------------------------------------------------------------------
    def stage_info(self, stage: str) -> dict:
        return self.read_manifest().get("stages", {}).get(stage, {})

    def stage_status(self, stage: str) -> str | None:
        """``"complete"``, ``"running"`` (started, never finished: crashed), ``"failed"`` or None."""
        return self.stage_info(stage).get("status")

    def is_complete(self, stage: str) -> bool:
        return self.stage_status(stage) == "complete"

    def require(self, stage: str) -> None:
        """Raise StageFailed unless ``stage`` is complete (used by stages to check their inputs)."""
        if not self.is_complete(stage):
            raise StageFailed(stage, f"stage '{stage}' has not completed in {self.root}; run it first")

    def _read(self, rel: str, stage: str) -> Any:
        p = self.root / rel
        if not p.is_file():
            raise StageFailed(stage, f"{rel} is missing in {self.root}; run '{stage}' first")
        try:
            return io.read_json(p)
        except (OSError, json.JSONDecodeError) as e:
            raise StageFailed(stage, f"unreadable {p}: {e}") from e

    # ---- ingest ----------------------------------------------------------------------------------------
    def video_info(self) -> dict:
        """``video.json``: fps, duration_s, width, height, rotation_deg, n_frames, codec."""
        return self._read(VIDEO_JSON, "ingest")

    def write_video_info(self, info: dict) -> None:
        io.write_json(self.video_json, info)

    def frame_index(self) -> list[FrameRecord]:
        """Frames kept by ``ingest``, in decode order."""
        d = self._read(f"{FRAMES_ALL}/index.json", "ingest")
        return [FrameRecord(int(f["source_frame"]), float(f["timestamp_s"])) for f in d["frames"]]

    def write_frame_index(self, frames: list[dict]) -> None:
        """``frames_all/index.json`` from ``[{"source_frame", "timestamp_s"}]`` in decode order."""
        io.write_json(self.frames_all_dir / "index.json", {"frames": frames})

    def frame_path(self, source_frame: int) -> Path:
        return self.frames_all_dir / frame_name(source_frame)

    def frame_image(self, source_frame: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """A decoded frame (``frames_all/``) as ``H×W×3`` uint8 RGB, resized to ``size = (w, h)`` if given.

        Raises:
            StageFailed: the frame file is missing or unreadable.
        """
        try:
            return io.read_image_rgb(self.frame_path(source_frame), size)
        except OSError as e:
            raise StageFailed("ingest", str(e)) from e


    # ---- shots, quality, keyframes ----------------------------------------------------------------------
    def shots(self) -> dict:
        return self._read(SHOTS_JSON, "shots")

    def write_shots(self, doc: dict) -> None:
        io.write_json(self.shots_json, doc)

    def quality(self) -> dict:
        return self._read(QUALITY_JSON, "quality")

    def write_quality(self, doc: dict) -> None:
        io.write_json(self.quality_json, doc, indent=None)

    def keyframes(self) -> dict:
        """``keyframes.json``: ``{"keyframes": [{"source_frame", "timestamp_s", ...}], ...}``."""
        return self._read(KEYFRAMES_JSON, "keyframes")

    def keyframe_ids(self) -> list[int]:
        """Source-frame indices of the keyframes, in order."""
        return [int(k["source_frame"]) for k in self.keyframes()["keyframes"]]

    def write_keyframes(self, doc: dict) -> None:
        io.write_json(self.keyframes_json, doc)

    def keyframe_path(self, source_frame: int) -> Path:
        return self.frames_dir / frame_name(source_frame)

    def keyframe_image(self, source_frame: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """A keyframe (``frames/NNNNNN.jpg``) as ``H×W×3`` uint8 RGB, resized (area) to ``size = (w, h)``.

        Raises:
            StageFailed: the keyframe file is missing or unreadable.
        """
        try:
            return io.read_image_rgb(self.keyframe_path(source_frame), size)
        except OSError as e:
            raise StageFailed("keyframes", str(e)) from e

    # ---- detections ------------------------------------------------------------------------------------
    def detections_path(self, source_frame: int) -> Path:
        return self.detections_dir / frame_name(source_frame, ".json")

    def detections(self, source_frame: int) -> dict | None:
        """``detections/NNNNNN.json`` of one keyframe (docs/schemas.md), or None when there is none:
        ``{"frame", "width", "height", "detector", "detections": [{"label", "score", "bbox_xyxy", ...}],
        "people": [{"score", "bbox_xyxy"}]}``, boxes in keyframe pixels."""
        p = self.detections_path(source_frame)
        return io.read_json(p) if p.is_file() else None

    def detection_frames(self) -> list[int]:
        """Source frames that have a detections record, sorted."""
        return [int(p.stem) for p in io.finished_files(self.detections_dir, "*.json")] \
            if self.detections_dir.is_dir() else []

    def write_detections(self, source_frame: int, record: dict) -> None:
        io.write_json(self.detections_path(source_frame), record)

    def people_boxes(self, source_frame: int, size: tuple[int, int] | None = None) -> list[list[float]]:
        """Person boxes ``[x0, y0, x1, y1]`` of one keyframe from ``detect`` (empty when none were found or
        ``detect`` has not run), scaled to an image of ``size = (w, h)`` when given."""
        d = self.detections(source_frame)
        if not d:
            return []
        boxes = [list(map(float, p["bbox_xyxy"])) for p in d.get("people", [])]
        if size is not None and boxes:
            sx, sy = size[0] / float(d["width"]), size[1] / float(d["height"])
            boxes = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]
        return boxes

    # ---- frames ----------------------------------------------------------------------------------------
    def world_from_sfm(self) -> np.ndarray | None:
        """The Sim(3) ``world_from_sfm`` (4×4 float64) that ``layout`` stored in ``layout.json``, or None."""
        if self._world_from_sfm is None and self.layout_json.is_file():
            T = io.read_json(self.layout_json).get("world_from_sfm")
            self._world_from_sfm = None if T is None else np.asarray(T, np.float64)
        return None if self._world_from_sfm is None else self._world_from_sfm.copy()

    @staticmethod
    def _check_frame(frame: str) -> None:
        if frame not in (SFM, WORLD):
            raise ValueError(f"unknown frame {frame!r}; use 'sfm' or 'world'")

    def _to_frame(self, frame: Frame) -> np.ndarray | None:
        """``frame_from_sfm`` (None for the SfM frame itself). Raises StageFailed / ValueError."""
        self._check_frame(frame)
        if frame == SFM:
            return None
        T = self.world_from_sfm()
        if T is None:
            raise StageFailed("layout", f"the world frame needs world_from_sfm from layout.json in {self.root}; "
                                        "run 'layout' first")
        return T

    def scale(self, frame: Frame = WORLD) -> float:
        """Units of ``frame`` per SfM unit (metres per SfM unit for the world frame; 1 for the SfM frame)."""
        return geometry.sim3_scale(self._to_frame(frame))

    # ---- sfm -------------------------------------------------------------------------------------------
    def cameras(self, frame: Frame = SFM) -> list[CameraFrame]:
        """Every keyframe's camera (``cameras.json``) with ``cam_from_world`` mapping points of ``frame``.

        Raises:
            StageFailed: no ``cameras.json`` (run ``sfm``), or ``frame="world"`` before ``layout``.
        """
        self._check_frame(frame)
        d = self._read(CAMERAS_JSON, "sfm")
        frames = [CameraFrame.from_json(f) for f in d["frames"]]
        T = self._to_frame(frame)
        if T is not None:
            for f in frames:
                if f.cam_from_world is not None:
                    f.cam_from_world = geometry.transform_pose(f.cam_from_world, T)
        return frames

    def camera_distortion(self) -> dict | None:
        """``{"model", "params"}`` of the COLMAP camera model in ``cameras.json`` (None if not recorded)."""
        return self._read(CAMERAS_JSON, "sfm").get("distortion")

    def write_cameras(self, frames: list[CameraFrame], distortion: dict | None = None) -> None:
        """``cameras.json`` in the SfM frame (``sfm`` only; never rewritten by later stages)."""
        doc: dict[str, Any] = {"convention": "opencv", "world": SFM}
        if distortion is not None:
            doc["distortion"] = distortion
        doc["frames"] = [f.to_json() for f in frames]
        io.write_json(self.cameras_json, doc)

    def write_transforms(self, frames: list[CameraFrame], distortion: dict | None = None) -> dict:
        """``transforms.json``: the registered SfM-frame cameras for nerfstudio (OpenGL axes, camera-to-world;
        :func:`vid2scene.io.write_transforms`), images in ``frames/``. Written by ``sfm``; never rewritten."""
        return io.write_transforms(self.transforms_json, frames, image_dir=FRAMES, distortion=distortion, world=SFM)

    def reconstruction(self):
        """The COLMAP model in ``sfm/`` as a ``pycolmap.Reconstruction`` (SfM frame)."""
        import pycolmap

        if not (self.sfm_dir / "images.bin").is_file() and not (self.sfm_dir / "images.txt").is_file():
            raise StageFailed("sfm", f"no COLMAP model in {self.sfm_dir}; run 'sfm' first")
        return pycolmap.Reconstruction(str(self.sfm_dir))


    def sparse_points(self, frame: Frame = SFM) -> PointCloud:
        """``sparse_points.ply``: the SfM points (``N×3``) and colours, in ``frame``."""
        self._check_frame(frame)
        if not self.sparse_points_ply.is_file():
            raise StageFailed("sfm", f"{SPARSE_POINTS_PLY} is missing in {self.root}; run 'sfm' first")
        p, c, _ = io.read_ply_points(self.sparse_points_ply)
        return self._in_frame(PointCloud(p, c, None, SFM), frame)

    def write_sparse_points(self, points: np.ndarray, colors: np.ndarray | None) -> None:
        io.write_ply_points(self.sparse_points_ply, points, colors, comments=["frame: sfm", "source: vid2scene sfm"])

    def _in_frame(self, obj, frame: Frame):
        T = self._to_frame(frame)
        return obj if T is None else obj.transformed(T, frame)

    # ---- depth -----------------------------------------------------------------------------------------
    def depth_path(self, source_frame: int) -> Path:
        return self.depth_dir / frame_name(source_frame, ".npz")

    def depth_frames(self) -> list[int]:
        """Source frames that have a finished depth map, sorted."""
        return [int(p.stem) for p in io.finished_files(self.depth_dir, "*.npz")] if self.depth_dir.is_dir() else []

    def depth(self, source_frame: int, frame: Frame = SFM) -> DepthMap:
        """One keyframe's depth map in the units of ``frame`` (``depth/NNNNNN.npz`` holds ``depth_sfm``).

        Raises:
            StageFailed: the depth map is missing or unreadable, or ``frame="world"`` before ``layout``.
        """
        self._check_frame(frame)
        p = self.depth_path(source_frame)
        try:
            z = io.read_npz(p)
        except (OSError, ValueError) as e:
            raise StageFailed("depth", f"missing or unreadable depth map {p}: {e}") from e
        d = np.asarray(z.pop("depth_sfm"), np.float32)
        conf = np.asarray(z.pop("confidence"), np.float32) if "confidence" in z else np.ones_like(d)
        d = np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)
        s = self.scale(frame)
        if s != 1.0:
            d *= np.float32(s)
        return DepthMap(int(source_frame), d, conf, frame, z)

    def write_depth(self, source_frame: int, depth_sfm: np.ndarray, confidence: np.ndarray,
                    **extras: np.ndarray) -> None:
        """``depth/NNNNNN.npz``: ``depth_sfm`` (``H×W`` float32 z-depth, SfM units, 0 = unknown),
        ``confidence`` (``H×W`` float32 0..1) and the backend's extra arrays."""
        io.write_npz(self.depth_path(source_frame), depth_sfm=np.asarray(depth_sfm, np.float32),
                     confidence=np.asarray(confidence, np.float32), **extras)

    # ---- fusion ----------------------------------------------------------------------------------------
    def mesh(self, frame: Frame = SFM) -> Mesh:
        """``mesh.ply`` (TSDF surface, written in the SfM frame) in ``frame``."""
        self._check_frame(frame)
        if not self.mesh_ply.is_file():
            raise StageFailed("fusion", f"{MESH_PLY} is missing in {self.root}; run 'fusion' first")
        v, t, c, n = io.read_ply_mesh(self.mesh_ply)
        return self._in_frame(Mesh(v, t, c, n, SFM), frame)

    def write_mesh(self, mesh: Mesh) -> None:
        if mesh.frame != SFM:
            raise ValueError("mesh.ply is written in the SfM frame")
        io.write_ply_mesh(self.mesh_ply, mesh.vertices, mesh.triangles, mesh.colors, mesh.normals,
                          comments=["frame: sfm", "source: vid2scene fusion"])

    def points(self, frame: Frame = SFM) -> PointCloud:
        """``points.ply`` (the cleaned video point cloud, written in the SfM frame) in ``frame``."""
        self._check_frame(frame)
        if not self.points_ply.is_file():
            raise StageFailed("fusion", f"{POINTS_PLY} is missing in {self.root}; run 'fusion' first")
        p, c, n = io.read_ply_points(self.points_ply)
        return self._in_frame(PointCloud(p, c, n, SFM), frame)

    def write_points(self, cloud: PointCloud) -> None:
        if cloud.frame != SFM:
            raise ValueError("points.ply is written in the SfM frame")
        io.write_ply_points(self.points_ply, cloud.points, cloud.colors, normals=cloud.normals,
                            comments=["frame: sfm", "source: vid2scene fusion"])

    # ---- layout and later (world frame) ----------------------------------------------------------------
    def layout(self) -> dict:
        """``layout.json`` (world frame, metres; holds ``world_from_sfm``)."""
        return self._read(LAYOUT_JSON, "layout")

    def write_layout(self, doc: dict) -> None:
        """``layout.json``; ``doc["world_from_sfm"]`` (4×4) is the one stored copy of the Sim(3). The manifest
        records it too, for ``info`` and the dataset index."""
        io.write_json(self.layout_json, doc)
        self._world_from_sfm = None
        T = doc.get("world_from_sfm")

        def mark(m: dict) -> None:
            m["world_from_sfm"] = None if T is None else np.asarray(T).tolist()
            m.setdefault("conventions", {}).update(world=WORLD_NAME, world_units="m",
                                                   world_axes="z up (against gravity), floor at z = 0")

        if self.exists():
            self.update_manifest(mark)

    def instances(self) -> dict:
        """``instances.json`` (world frame): ``{"frame", "units", "instances": [...], ...}``."""
        return self._read(INSTANCES_JSON, "instances")

    def write_instances(self, doc: dict) -> None:
        io.write_json(self.instances_json, doc, indent=None)

    def scene_graph(self) -> dict:
        return self._read(SCENE_GRAPH_JSON, "scene_graph")

    def write_scene_graph(self, doc: dict) -> None:
        io.write_json(self.scene_graph_json, doc)

    def task_path(self, rel: str) -> Path:
        """Path of a task asset under ``tasks/`` (folders created on write by :mod:`vid2scene.io`)."""
        return self.tasks_dir / rel


class SceneLock:
    """An exclusive lock on a scene folder: the file ``.vid2scene.lock`` holding ``{"pid", "host", "started"}``,
    created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems), removed on release.

    A lock left by a process that no longer runs on this host (crash, kill -9) is stale and taken over; a lock
    held by a live process, or by another host (whose processes cannot be checked), makes :meth:`acquire`
    raise :class:`InputError` naming the holder. Use as ``with Scene(root).lock(): ...``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / LOCK
        self.held = False

    @staticmethod
    def _alive(pid: int) -> bool:
        import os

        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        try:  # a zombie (exited, not yet reaped: an orphan in a container without an init) is not alive
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True

    def holder(self) -> dict | None:
        """The lock file's content (``{"pid", "host", "started"}``; ``{}`` when unreadable), None when absent."""
        try:
            d = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    def _stale(self, d: dict) -> bool:
        import socket

        if not d:  # unreadable: a writer died between create and write, or garbage; stale after a minute
            try:
                return _dt.datetime.now().timestamp() - self.path.stat().st_mtime > 60
            except FileNotFoundError:
                return True
        return d.get("host") == socket.gethostname() and not self._alive(int(d.get("pid", -1)))

    def acquire(self) -> "SceneLock":
        """Take the lock (creating the folder's parents as needed).

        Raises:
            InputError: another live run holds the folder (the message names its PID, host and start time).
            OSError: the folder cannot be created or written.
        """
        import os
        import socket

        self.root.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                d = self.holder()
                if d is None:
                    continue
                if self._stale(d):
                    self.path.unlink(missing_ok=True)
                    continue
                who = f"PID {d.get('pid', '?')} on host {d.get('host', '?')} since {d.get('started', '?')}" \
                    if d else "a process whose lock file is being written"
                raise InputError(f"scene folder {self.root} is in use by another vid2scene run ({who}); wait for "
                                 f"it to finish, or delete {self.path} if that run is gone")
            with os.fdopen(fd, "w") as f:
                f.write(body)
            self.held = True
            return self
        raise InputError(f"cannot lock scene folder {self.root}: the lock file {self.path} keeps changing")

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "SceneLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

# --- why a keyframe is unregistered, recorded next to its camera in cameras.json ----------------------------
def write_cameras_with_reasons(scene: Scene, frames: list[CameraFrame], distortion: dict | None,
                               unregistered: dict[str, dict]) -> None:
    """``cameras.json`` as :meth:`Scene.write_cameras` writes it, plus, on each unregistered frame named in
    ``unregistered``, its ``reason`` (str) and ``figures`` (dict) (``{name: {"reason", "figures"}}``)."""
    doc: dict[str, Any] = {"convention": "opencv", "world": SFM}
    if distortion is not None:
        doc["distortion"] = distortion
    doc["frames"] = []
    for f in frames:
        d = f.to_json()
        if not f.registered and f.name in unregistered:
            d["reason"] = unregistered[f.name]["reason"]
            d["figures"] = unregistered[f.name].get("figures", {})
        doc["frames"].append(d)
    io.write_json(scene.cameras_json, doc)


def unregistered_reasons(scene: Scene) -> dict[str, dict]:
    """``{name: {"reason", "figures"}}`` of the unregistered keyframes in ``cameras.json`` that carry a reason.

    Raises:
        StageFailed: no ``cameras.json`` (run ``sfm``).
    """
    d = scene._read(CAMERAS_JSON, "sfm")
    return {f["name"]: {"reason": f["reason"], "figures": f.get("figures", {})}
            for f in d["frames"] if not f.get("registered", True) and "reason" in f}
