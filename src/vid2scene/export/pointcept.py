"""Pointcept-style scene folder of ``.npy`` arrays (``<out>/<scene_id>/coord.npy`` …).

Convention converted to: what Pointcept's ScanNet preprocessing (``pointcept/datasets/preprocessing/scannet/
preprocess_scannet.py``) saves per scene, one row per mesh vertex:

=================  ========  =====================================================================================
file               dtype     content
=================  ========  =====================================================================================
``coord.npy``      float32   N×3 positions, our gravity-aligned metric world (metres, z up, floor z = 0)
``color.npy``      uint8     N×3 RGB 0..255 (as Pointcept saves ScanNet colours)
``normal.npy``     float32   N×3 unit vertex normals, area-weighted face normals summed per vertex (Pointcept's
                             ``vertex_normal``)
``segment20.npy``  int64     index 0..19 into the ScanNet20 benchmark classes (VALID_CLASS_IDS_20), −1 ignore
``segment200.npy`` int64     index 0..199 into the ScanNet200 classes (VALID_CLASS_IDS_200), −1 ignore
``segment.npy``    int64     = ``segment20`` (the key Pointcept's generic ``DefaultDataset`` reads)
``instance.npy``   int64     ScanNet object id of the vertex's group, as Pointcept copies ``group["id"]``: our
                             ``instances.json`` id for objects, the ids after them for the floor, the ceiling and
                             each wall (:func:`.scannet.group_ids`); −1 none
=================  ========  =====================================================================================

Semantic labels come from the same owners as the ScanNet export: instances (COCO label → NYU40 via the packaged
table), then floor / walls / ceiling from ``layout.json``'s planes; other vertices are −1 (ignore). Running
Pointcept's preprocessing on the ScanNet export of the same scene gives the same arrays. Mesh vertices below the
floor are snapped onto it or dropped first (:func:`~vid2scene.export.common.clean_below_floor`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from ..io import atomic_path
from ..scene import Scene
from ..stage import StageResult
from ..tasks import common as scene_inputs
from .common import STRUCTURE_NONE, ExportConfig, export_dir, export_inputs, exports_rel, scene_id
from .scannet import group_ids, vertex_labels

NAME = FORMAT = "pointcept"
OUTPUTS = [exports_rel(NAME)]
ARRAYS = ("coord", "color", "normal", "segment20", "segment200", "segment", "instance")


class Config(ExportConfig):
    """Pointcept export options (metres)."""

    structure_tol_m: float = Field(0.05, gt=0, description="distance to a layout plane that labels a vertex")


def vertex_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """``N×3`` float32 unit vertex normals: sum over incident triangles of (face normal × face area)."""
    v = np.asarray(verts, dtype=np.float64)
    t = np.asarray(tris, dtype=np.int64)
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]]) * 0.5  # unit normal × area
    nv = np.zeros_like(v)
    for k in range(3):
        np.add.at(nv, t[:, k], fn)
    return (nv / (np.linalg.norm(nv, axis=1, keepdims=True) + 1e-8)).astype(np.float32)


def point_arrays(verts: np.ndarray, cols: np.ndarray | None, tris: np.ndarray, owner: np.ndarray,
                 labels: dict) -> dict[str, np.ndarray]:
    """The arrays of the module table from the world-frame mesh and the per-vertex owners of
    :func:`.scannet.vertex_labels`."""
    n = len(verts)
    seg20 = np.full(n, -1, dtype=np.int64)
    seg200 = np.full(n, -1, dtype=np.int64)
    for code, rec in labels.items():
        m = owner == code
        seg20[m] = rec["scannet20_index"]
        seg200[m] = rec["scannet200_index"]
    inst = np.full(n, -1, dtype=np.int64)
    for code, gid in group_ids(labels).items():
        inst[owner == code] = gid
    return {"coord": verts.astype(np.float32),
            "color": (cols if cols is not None else np.full((n, 3), 128)).astype(np.uint8),
            "normal": vertex_normals(verts, tris), "segment20": seg20, "segment200": seg200,
            "segment": seg20.copy(), "instance": inst}


def run(scene: Scene, config: Config | None = None) -> StageResult:
    """Write the arrays into ``<out>/<scene_id>/`` (default ``out``: ``SCENE/tasks/exports/pointcept/``);
    ``qc`` lists the files and counts.

    Raises:
        InputError: no mesh / instances.json / world frame, or a ``vertex_ids`` entry out of range.
    """
    cfg = config or Config()
    scene = scene_inputs.scene_of(scene)
    mesh, instances, floor_qc = export_inputs(scene, cfg)
    owner, labels, contested = vertex_labels(scene, mesh.vertices, cfg.structure_tol_m, instances)
    arrays = point_arrays(mesh.vertices, mesh.colors, mesh.triangles, owner, labels)
    d = export_dir(scene, FORMAT, cfg.out) / scene_id(scene, cfg.scene_name)
    d.mkdir(parents=True, exist_ok=True)
    for k, a in arrays.items():
        with atomic_path(d / f"{k}.npy") as tmp:
            np.save(tmp, a)
    n, inst = len(mesh.vertices), arrays["instance"]
    qc = {"format": FORMAT, "dir": str(d), "files": [str(d / f"{k}.npy") for k in arrays], "n_points": n,
          "labelled_share": round(float((owner != STRUCTURE_NONE).mean()) if n else 0.0, 4),
          "n_instances": int(sum(1 for k in labels if k >= 0)), "n_groups": int(len(np.unique(inst[inst >= 0]))),
          "contested_vertices": contested, **floor_qc}
    return StageResult(qc=qc, summary=f"{n} points, {qc['n_instances']} instances in {d}")


def read_pointcept(folder: str | Path) -> dict[str, np.ndarray]:
    """The arrays of one exported scene folder, by name."""
    folder = Path(folder)
    return {k: np.load(folder / f"{k}.npy") for k in ARRAYS if (folder / f"{k}.npy").is_file()}
