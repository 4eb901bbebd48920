"""SceneVerse++ style scene folder: ``mesh.ply``, ``camera_info.json``, ``metadata.json``, ``data_info.json``.

Convention converted to: the scene folders of the SceneVerse++ release as read by its code (sv-pp/SceneVersepp:
``scripts/view_camera_poses.py`` for cameras, ``PQ3d/data_process/svpp/generate_dataset.py`` and
``Spatiallm/data_generation/svpp/generate_layout.py`` for instances, ``scripts/extract_images.py`` for frames):

* ``mesh.ply``: the scene's mesh in our world frame (``mesh.ply`` of the scene folder, which is in the SfM
  frame, mapped by ``world_from_sfm``; vertex order kept, so ``point_ids`` index it) — **z up**, metres, floor
  z = 0 (SceneVerse++'s loaders take the minimum z as the floor, i.e. z up; so vertices below the floor are
  snapped onto it or dropped first, :func:`~vid2scene.export.common.clean_below_floor`, and ``point_ids``
  index the cleaned mesh).
* ``camera_info.json``: ``{"intrinsic": {"w", "h", "fx", "fy", "cx", "cy"}, "extrinsic": {"<frame>": 4×4}}``;
  the extrinsics are **world-to-camera** (our ``cam_from_world``, OpenCV axes: x right, y down, z forward —
  the axes SceneVerse++'s frustum drawing assumes), keyed by the source frame index as a decimal string (they
  sort numerically). One shared intrinsic (the first registered keyframe's, in keyframe pixels); when keyframes
  differ, each frame's own K is also kept under ``"vid2scene"."intrinsic_per_frame"``. Unregistered keyframes
  are left out.
* ``metadata.json``: ``{"<instance id>": {"point_ids": [mesh vertex indices], "pred_class_name": ScanNet raw
  category, "pred_class_id": its ScanNet id (scannetv2-labels.combined.tsv ``id``)}}`` — the fields SceneVerse++'s
  code reads; it maps ``pred_class_name`` through the ScanNet tsv (so we write ScanNet raw categories, from the
  packaged table) and skips ``pred_class_id == -1``. Extra fields we add: ``coco_label``, ``score``,
  ``nyu40_id``, ``bbox`` (``center``, ``size``, ``yaw_rad``, metres/radians).
* ``data_info.json``: ``{"data_frames": [source frame indices]}``, the frames ``extract_images.py`` would cut
  from the video into ``images/NNNNNN.png``; our keyframes are ``SCENE/frames/NNNNNN.jpg``.

Field names we could not find in SceneVerse++'s public code (everything under ``"vid2scene"``, the extra
metadata fields) are our own choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_json, write_json, write_ply_mesh
from ..scene import WORLD_NAME, CameraFrame, Scene
from ..stage import StageResult
from ..tasks import common as scene_inputs
from .common import ExportConfig, export_dir, export_inputs, exports_rel, map_label, scene_id

NAME = FORMAT = "sceneverse"
OUTPUTS = [exports_rel(NAME)]
FILES = ("mesh.ply", "camera_info.json", "metadata.json", "data_info.json")


class Config(ExportConfig):
    """SceneVerse++ export options (only the common ones)."""


def camera_info(cams: list[CameraFrame]) -> tuple[dict, bool]:
    """(``camera_info.json`` dict, whether every keyframe shares one intrinsic) of registered world-frame
    cameras sorted by source frame."""
    K0, c0 = cams[0].K, cams[0]
    intrinsic = {"w": int(c0.width), "h": int(c0.height), "fx": float(K0[0, 0]), "fy": float(K0[1, 1]),
                 "cx": float(K0[0, 2]), "cy": float(K0[1, 2])}
    same = all(np.allclose(c.K, K0) and (c.width, c.height) == (c0.width, c0.height) for c in cams)
    extra = {"extrinsic_type": "world_to_camera", "camera_axes": "opencv (x right, y down, z forward)",
             "world": WORLD_NAME, "units": "m", "frame_keys": "source frame",
             "image_names": {str(c.source_frame): c.name for c in cams}}
    if not same:
        extra["intrinsic_per_frame"] = {str(c.source_frame): {"w": c.width, "h": c.height, "K": c.K.tolist()}
                                        for c in cams}
    return {"intrinsic": intrinsic, "extrinsic": {str(c.source_frame): c.cam_from_world.tolist() for c in cams},
            "vid2scene": extra}, same


def metadata(instances: list[dict]) -> dict:
    """``metadata.json``: per instance id (string), its mesh vertex ids and ScanNet class (module docstring)."""
    meta = {}
    for i in sorted(instances, key=lambda x: int(x["id"])):
        m = map_label(i["label"])
        rec = {"point_ids": [int(v) for v in i.get("vertex_ids", [])], "pred_class_name": m["scannet_raw_category"],
               "pred_class_id": int(m["scannet_id"]), "coco_label": i["label"], "score": i.get("score"),
               "nyu40_id": m["nyu40_id"]}
        if i.get("box"):
            rec["bbox"] = {k: i["box"][k] for k in ("center", "size", "yaw_rad")}
        meta[str(int(i["id"]))] = rec
    return meta


def run(scene: Scene, config: Config | None = None) -> StageResult:
    """Write ``<out>/<scene_id>/{mesh.ply, camera_info.json, metadata.json, data_info.json}`` (default ``out``:
    ``SCENE/tasks/exports/sceneverse/``); ``qc`` lists the files and counts.

    Raises:
        InputError: no mesh, instances.json, cameras or world frame, or no registered keyframe.
    """
    cfg = config or Config()
    scene = scene_inputs.scene_of(scene)
    mesh, inst, floor_qc = export_inputs(scene, cfg)
    cams = sorted(scene_inputs.cameras(scene), key=lambda c: c.source_frame)
    if not cams:
        raise InputError(f"{scene.cameras_json} has no registered keyframes")
    d = export_dir(scene, FORMAT, cfg.out) / scene_id(scene, cfg.scene_name)
    d.mkdir(parents=True, exist_ok=True)
    write_ply_mesh(d / "mesh.ply", mesh.vertices, mesh.triangles, mesh.colors, mesh.normals,
                   comments=[f"frame: {WORLD_NAME}", "units: m", "source: vid2scene sceneverse export"])
    info, same = camera_info(cams)
    write_json(d / "camera_info.json", info)
    meta = metadata(inst)
    write_json(d / "metadata.json", meta, indent=None)
    write_json(d / "data_info.json", {"data_frames": [c.source_frame for c in cams]})
    qc = {"format": FORMAT, "dir": str(d), "files": [str(d / x) for x in FILES],
          "n_cameras": len(cams), "n_instances": len(meta), "shared_intrinsic": same, **floor_qc}
    return StageResult(qc=qc, summary=f"{len(cams)} cameras, {len(meta)} instances in {d}")


def read_camera_info(path: str | Path) -> tuple[dict, dict[int, np.ndarray]]:
    """(intrinsic dict, ``{source frame: 4×4 cam_from_world}``) from a ``camera_info.json``."""
    d = read_json(path)
    return d["intrinsic"], {int(k): np.asarray(v, dtype=np.float64) for k, v in d["extrinsic"].items()}
