"""nerfstudio ``transforms.json``: the ``nerfstudio`` exporter (a world-frame copy under ``SCENE/tasks/exports/nerfstudio/``).

Convention converted to: nerfstudio/instant-ngp style **camera-to-world** 4×4 matrices with **OpenGL camera
axes** (x right, y up, z backward). From our OpenCV ``cam_from_world``::

    transform_matrix = inverse(cam_from_world) @ diag(1, -1, -1, 1)

Frames: ``SCENE/transforms.json`` (written by ``sfm``) is in the SfM frame (arbitrary scale) and never rewritten;
the exporter writes the cameras in the world frame (:meth:`Scene.cameras` with ``frame="world"``: z up, floor
z = 0, metres). ``"vid2scene"."world"`` in each file names its frame. Distortion: COLMAP
``SIMPLE_RADIAL``/``RADIAL`` parameters are written as nerfstudio's ``OPENCV`` model (``k1``, ``k2``,
``p1 = p2 = 0``). ``file_path`` is relative to the file (``../../../frames/NNNNNN.jpg`` in the default folder).

Initial points: as nerfstudio's own COLMAP converter does, the file names a point cloud in ``ply_file_path``
(relative to the file): ``sparse_pc.ply``, the SfM points (``sparse_points.ply``) mapped into the same world frame
as the cameras, ``x y z`` float and ``red green blue`` uchar (nerfstudio reads it with Open3D and seeds
splatfacto's Gaussians with it instead of random points). A scene without sparse points gets no
``ply_file_path`` (``qc["n_points"] = 0``).
"""

from __future__ import annotations

import os
from pathlib import Path


from ..io import write_json, write_ply_points, write_transforms
from ..scene import WORLD, WORLD_NAME, Scene
from ..stage import StageResult
from .common import ExportConfig, export_dir, exports_rel

NAME = FORMAT = "nerfstudio"
OUTPUTS = [exports_rel(NAME)]
PLY_NAME = "sparse_pc.ply"


class Config(ExportConfig):
    """nerfstudio export options (``scene_name`` and the floor clean-up are unused: the file is always
    ``transforms.json``, the points are the SfM points)."""


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
    files, n_points = [str(path)], 0
    if scene.sparse_points_ply.is_file():
        pc = scene_inputs.load(scene.sparse_points, frame=WORLD)
        if len(pc.points):
            write_ply_points(d / PLY_NAME, pc.points, pc.colors,
                             comments=[f"frame: {WORLD_NAME}", "units: m", "source: vid2scene sfm sparse points"])
            doc["ply_file_path"] = PLY_NAME
            write_json(path, doc)
            files.append(str(d / PLY_NAME))
            n_points = len(pc.points)
    qc = {"format": FORMAT, "dir": str(d), "files": files, "n_frames": len(doc["frames"]),
          "n_points": n_points, "world": WORLD_NAME}
    return StageResult(qc=qc, summary=f"{len(doc['frames'])} world-frame cameras in {path}")
