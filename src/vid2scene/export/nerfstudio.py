"""nerfstudio ``transforms.json``: the ``nerfstudio`` exporter (a world-frame copy under ``SCENE/tasks/exports/nerfstudio/``).

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


from ..io import write_transforms
from ..scene import WORLD_NAME, Scene
from ..stage import StageResult
from .common import ExportConfig, export_dir, exports_rel

NAME = FORMAT = "nerfstudio"
OUTPUTS = [exports_rel(NAME)]
class Config(ExportConfig):
    """nerfstudio export options (``scene_name`` is unused: the file is always ``transforms.json``)."""


def run(scene: Scene, config: Config | None = None) -> StageResult:
    """Write ``<out>/transforms.json`` (default ``out``: ``SCENE/tasks/exports/nerfstudio/``) with the registered
    keyframes' cameras in the world frame; ``qc`` lists the file and the number of frames.

    Raises:
        InputError: no cameras.json, no world frame (``layout`` not run), or no registered keyframe.
    """
    from ..errors import InputError
    from ..tasks import common as scene_inputs

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
