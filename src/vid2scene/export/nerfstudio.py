"""nerfstudio ``transforms.json``: the writer (used by ``sfm`` for the SfM-frame file at the scene root) and the
``nerfstudio`` exporter (a world-frame copy under ``SCENE/tasks/exports/nerfstudio/``).

Convention converted to: nerfstudio/instant-ngp style **camera-to-world** 4×4 matrices with **OpenGL camera
axes** (x right, y up, z backward). From our OpenCV ``cam_from_world``::

    transform_matrix = inverse(cam_from_world) @ diag(1, -1, -1, 1)

Frames: ``SCENE/transforms.json`` (written by ``sfm``) is in the SfM frame (arbitrary scale) and never rewritten;
the exporter writes the cameras in the world frame (:meth:`Scene.cameras` with ``frame="world"``: z up, floor
z = 0, metres). ``"vid2scene"."world"`` in each file names its frame. Distortion: COLMAP
``SIMPLE_RADIAL``/``RADIAL`` parameters are written as nerfstudio's ``OPENCV`` model (``k1``, ``k2``,
``p1 = p2 = 0``). ``file_path`` is relative to the file (``../../../frames/NNNNNN.jpg`` in the default folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import write_json
from ..scene import WORLD_NAME, CameraFrame, Scene
from ..stage import StageResult
from .common import ExportConfig, export_dir, exports_rel

NAME = FORMAT = "nerfstudio"
OUTPUTS = [exports_rel(NAME)]
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def c2w_opengl(cam_from_world: np.ndarray) -> np.ndarray:
    """4×4 OpenGL-axes camera-to-world matrix from a 4×4 OpenCV ``cam_from_world``."""
    return np.linalg.inv(np.asarray(cam_from_world, dtype=np.float64)) @ OPENCV_TO_OPENGL


def cam_from_world_from_opengl(c2w_gl: np.ndarray) -> np.ndarray:
    """Inverse of :func:`c2w_opengl` (used to read a transforms.json back)."""
    return np.linalg.inv(np.asarray(c2w_gl, dtype=np.float64) @ OPENCV_TO_OPENGL)


def write_transforms(path: str | Path, frames: list[CameraFrame], image_dir: str = "frames",
                     distortion: dict | None = None, world: str = "sfm") -> dict:
    """Write registered ``frames`` as a nerfstudio ``transforms.json``; returns the written dict.

    Args:
        frames: keyframe cameras (unregistered ones are skipped); one shared intrinsics is assumed.
        image_dir: folder of the images, relative to the file.
        distortion: ``{"model": COLMAP model name, "params": [...]}`` as in ``cameras.json``.
        world: name of the world frame of the poses ("sfm" or "gravity_z_up_metric").
    """
    reg = [f for f in frames if f.registered]
    if not reg:
        raise ValueError("no registered frames to export")
    K = reg[0].K
    k1 = k2 = 0.0
    if distortion and distortion.get("model") in ("SIMPLE_RADIAL", "RADIAL"):
        params = distortion["params"]
        k1 = float(params[3])
        k2 = float(params[4]) if distortion["model"] == "RADIAL" else 0.0
    out = {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": int(reg[0].width), "h": int(reg[0].height), "k1": k1, "k2": k2, "p1": 0.0, "p2": 0.0,
        "vid2scene": {"camera_axes": "opengl (x right, y up, z back)", "matrices": "camera-to-world",
                      "world": world, "converted_from": "opencv cam_from_world"},
        "frames": [{"file_path": f"{image_dir}/{f.name}", "transform_matrix": c2w_opengl(f.cam_from_world).tolist(),
                    "source_frame": f.source_frame} for f in reg],
    }
    write_json(path, out)
    return out


class Config(ExportConfig):
    """nerfstudio export options (``scene_name`` is unused: the file is always ``transforms.json``)."""


def run(scene: Scene, config: Config | None = None) -> StageResult:
    """Write ``<out>/transforms.json`` (default ``out``: ``SCENE/tasks/exports/nerfstudio/``) with the registered
    keyframes' cameras in the world frame; ``qc`` lists the file and the number of frames.

    Raises:
        InputError: no cameras.json, no world frame (``layout`` not run), or no registered keyframe.
    """
    from ..errors import InputError
    from ..tasks import common as scene_inputs  # not at import time: sfm imports this module for the writer

    cfg = config or Config()
    scene = scene_inputs.scene_of(scene)
    cams = scene_inputs.cameras(scene)
    if not cams:
        raise InputError(f"{scene.cameras_json} has no registered keyframes")
    cams = sorted(cams, key=lambda c: c.source_frame)
    d = export_dir(scene, FORMAT, cfg.out)
    image_dir = Path(os.path.relpath(scene.frames_dir.resolve(), d.resolve())).as_posix()
    path = d / "transforms.json"
    doc = write_transforms(path, cams, image_dir=image_dir, distortion=scene_inputs.load(scene.camera_distortion),
                           world=WORLD_NAME)
    qc = {"format": FORMAT, "dir": str(d), "files": [str(path)], "n_frames": len(doc["frames"]),
          "world": WORLD_NAME}
    return StageResult(qc=qc, summary=f"{len(doc['frames'])} world-frame cameras in {path}")
