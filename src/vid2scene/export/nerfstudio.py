"""nerfstudio ``transforms.json`` export.

Convention converted to: nerfstudio/instant-ngp style **camera-to-world** 4×4 matrices with **OpenGL camera
axes** (x right, y up, z backward). From our OpenCV ``cam_from_world``::

    transform_matrix = inverse(cam_from_world) @ diag(1, -1, -1, 1)

The world frame is left as it is (SfM frame, or the gravity-aligned metric frame once ``layout`` has run);
``"vid2scene"`` in the file says which. Distortion: COLMAP ``SIMPLE_RADIAL``/``RADIAL`` parameters are
written as nerfstudio's ``OPENCV`` model (``k1``, ``k2``, ``p1 = p2 = 0``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import write_json
from ..scene import CameraFrame

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
