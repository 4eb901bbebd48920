"""The scene folder: paths of every asset, the manifest, stage status, and typed loaders.

Layout and schemas follow DESIGN.md ("The scene folder"). Stages never parse another stage's files ad hoc:
they go through the loaders here. All writes are atomic (:mod:`vid2scene.io`).

Frame naming: ``NNNNNN`` is the 0-based *source* frame index in decode order (for an image folder, the
position in sorted-name order), zero-padded to six digits.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError, StageFailed
from .io import read_json, write_json

MANIFEST = "manifest.json"

CONVENTIONS = {
    "camera_axes": "opencv (x right, y down, z forward)",
    "transforms": "dst_from_src 4x4 homogeneous, composed right to left (cam_from_world)",
    "frame_names": "NNNNNN = 0-based source frame index in decode order",
    "images": "H x W x 3 uint8 RGB",
}


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


class Scene:
    """A scene folder on disk. Cheap to construct; nothing is read until asked for."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- paths -----------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    frames_all_dir = property(lambda self: self.root / "frames_all")
    frames_dir = property(lambda self: self.root / "frames")
    sfm_dir = property(lambda self: self.root / "sfm")
    video_json = property(lambda self: self.root / "video.json")
    shots_json = property(lambda self: self.root / "shots.json")
    quality_json = property(lambda self: self.root / "quality.json")
    keyframes_json = property(lambda self: self.root / "keyframes.json")
    cameras_json = property(lambda self: self.root / "cameras.json")
    sparse_points_ply = property(lambda self: self.root / "sparse_points.ply")
    transforms_json = property(lambda self: self.root / "transforms.json")
    report_html = property(lambda self: self.root / "report.html")

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # ---- manifest --------------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        if not self.exists():
            raise InputError(f"not a scene folder (no {MANIFEST}): {self.root}")
        try:
            return read_json(self.manifest_path)
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"unreadable {self.manifest_path}: {e}") from e

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest_path, manifest)

    def update_manifest(self, fn) -> dict:
        m = self.read_manifest()
        fn(m)
        self.write_manifest(m)
        return m

    @classmethod
    def create(cls, root: str | Path, source: dict, overwrite: bool = False) -> "Scene":
        """Open or create the scene folder for ``source`` (``{"path", "kind", "sha256", "size_bytes"}``).

        Raises:
            InputError: the folder holds a scene made from another input (different sha256) and
                ``overwrite`` is False, or the path exists and is not a scene folder and is not empty.
        """
        scene = cls(root)
        if scene.exists():
            old = scene.read_manifest().get("source", {})
            if old.get("sha256") != source.get("sha256"):
                if not overwrite:
                    raise InputError(f"{scene.root} holds a scene made from another input ({old.get('path')}); "
                                     "choose another output folder or pass --overwrite")
                scene.clear()
            else:
                if source.get("path") and old.get("path") != source["path"]:  # same content, moved or renamed
                    scene.update_manifest(lambda m: m["source"].update(path=source["path"]))
                return scene
        elif scene.root.exists() and any(scene.root.iterdir()):
            # Never empty a folder that is not a scene, even with --overwrite (it could be a home folder).
            raise InputError(f"{scene.root} exists, is not empty and is not a scene folder; "
                             "choose another output folder")
        scene.root.mkdir(parents=True, exist_ok=True)
        scene.write_manifest({
            "vid2scene_version": __version__, "created": now_iso(), "source": source,
            "conventions": dict(CONVENTIONS, world="sfm"), "world_from_sfm": None,
            "status": "incomplete", "failure": None, "stages": {}, "qc": {},
        })
        return scene

    def clear(self) -> None:
        """Remove everything in the folder (only called on an explicit ``--overwrite``)."""
        for p in self.root.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

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

    # ---- loaders ---------------------------------------------------------------------------------------
    def load_video_info(self) -> dict:
        return read_json(self.video_json)

    def load_frame_index(self) -> list[FrameRecord]:
        """Frames kept by ``ingest``, in decode order."""
        d = read_json(self.frames_all_dir / "index.json")
        return [FrameRecord(int(f["source_frame"]), float(f["timestamp_s"])) for f in d["frames"]]

    def frame_path(self, source_frame: int) -> Path:
        return self.frames_all_dir / frame_name(source_frame)

    def keyframe_path(self, source_frame: int) -> Path:
        return self.frames_dir / frame_name(source_frame)

    def read_frame(self, source_frame: int) -> np.ndarray:
        """A decoded frame at working resolution, ``H×W×3`` uint8 RGB."""
        import cv2

        bgr = cv2.imread(str(self.frame_path(source_frame)), cv2.IMREAD_COLOR)
        if bgr is None:
            raise StageFailed("ingest", f"missing or unreadable frame {self.frame_path(source_frame)}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def load_shots(self) -> dict:
        return read_json(self.shots_json)

    def load_quality(self) -> dict:
        return read_json(self.quality_json)

    def load_keyframes(self) -> dict:
        return read_json(self.keyframes_json)

    def load_cameras(self) -> list[CameraFrame]:
        d = read_json(self.cameras_json)
        return [CameraFrame.from_json(f) for f in d["frames"]]

    def load_reconstruction(self):
        """The COLMAP model in ``sfm/`` as a ``pycolmap.Reconstruction`` (SfM frame)."""
        import pycolmap

        return pycolmap.Reconstruction(str(self.sfm_dir))

    def load_sparse_points(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``sparse_points.ply``: (``N×3`` points_in_world float64, ``N×3`` uint8 RGB)."""
        from .io import read_ply_points

        return read_ply_points(self.sparse_points_ply)
