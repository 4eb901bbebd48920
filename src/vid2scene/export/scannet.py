"""ScanNet v2 style export: ``<out>/scans/<id>/`` with ``<id>_vh_clean_2.ply``, ``<id>_vh_clean_2.0.010000.segs.json``,
``<id>.aggregation.json``, ``<id>_vh_clean_2.labels.ply`` and ``<id>.txt``, plus the split lists
``<out>/scannetv2_{train,val,test}.txt``.

Convention converted to: ScanNet's scan files as read by ScanNet's own scripts and by Pointcept's
``preprocess_scannet.py`` (mesh vertices ↔ ``segIndices`` ↔ ``segGroups``):

* Names: Pointcept's ``main()`` globs ``<dataset_root>/scans*/scene*`` and sorts scenes into train / val / test
  by its split lists (a scene in neither is an unlabelled test scene), so the folder and file prefix ``<id>``
  follows ScanNet's pattern ``sceneNNNN_NN``: ``scannet_id`` when given, else derived from the scene id by a
  stable hash (numbers 1000–9999, above ScanNet's 0000–0806; give ``scannet_id`` when exporting many scenes into
  one dataset, to rule out collisions). Our scene id is kept in ``<id>.txt`` (``vid2sceneSceneId = …``). The
  scene is added to ``scannetv2_<split>.txt`` (``split``, default ``train``) in ``out`` (existing entries kept);
  Pointcept reads its split lists from its own ``meta_data`` folder, so append these lines there.

* Geometry: the scene's mesh in our world frame (:meth:`Scene.mesh` with ``frame="world"``: metres, z up,
  floor z = 0). ScanNet's raw
  scans are not axis-aligned (the ``axisAlignment`` in ``<id>.txt`` aligns them); ours already are, so
  ``<id>.txt`` records the identity. Vertices carry ``x y z`` float and ``red green blue alpha`` uchar.
* Segments: ScanNet over-segments its meshes with a graph-based segmentator. We write a deterministic
  over-segmentation instead: vertices grouped by (owner, ``segment_cell_m`` voxel cell), where the owner is the
  instance that claims the vertex (``instances.json`` ``vertex_ids``; a vertex claimed twice goes to the higher
  score), else the floor / a wall / the ceiling from ``layout.json``'s planes, else background. Segments never
  straddle two objects, so every object is an exact union of segments. ``segIndices[i]`` is vertex i's segment.
* Aggregation: one ``segGroup`` per instance (``id = objectId = `` our instance id) with ``label`` = the ScanNet
  raw category from the packaged table (``label_map_nyu40.json``: COCO → ScanNet raw category → NYU40), then one
  group each for the floor, the ceiling and every wall plane, with instance ids after the instances — as
  ScanNet's own annotation gives its floor and walls object ids (Pointcept copies ``group["id"]`` into
  ``instance.npy`` for every group, structure included; :func:`group_ids`).
* Floor noise: mesh vertices below the floor are snapped onto it or dropped first
  (:func:`~vid2scene.export.common.clean_below_floor`, ``below_floor``).
* ``_vh_clean_2.labels.ply``: per-vertex ``label`` (ushort) = NYU40 id, 0 = unannotated (ScanNet's convention).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ..errors import InputError
from ..io import atomic_path, read_json, read_ply_mesh, read_ply_records, write_json, write_ply_records
from ..scene import WORLD_NAME, Scene
from ..stage import StageResult
from ..tasks import common as scene_inputs
from .common import (STRUCTURE_NONE, ExportConfig, export_dir, export_inputs, exports_rel, map_label, scene_id,
                     structure_label, structure_owner, vertex_owner)

NAME = FORMAT = "scannet"
OUTPUTS = [exports_rel(NAME)]
SEGS_SUFFIX = "_vh_clean_2.0.010000.segs.json"
PLY_COMMENTS = [f"frame: {WORLD_NAME}", "units: m", "source: vid2scene scannet export"]
SCANNET_ID = re.compile(r"scene\d{4}_\d{2}")
SPLITS = ("train", "val", "test")


class Config(ExportConfig):
    """ScanNet export options (metres)."""

    segment_cell_m: float = Field(0.5, gt=0, description="voxel cell of the over-segmentation")
    structure_tol_m: float = Field(0.05, gt=0, description="distance to a layout plane that labels a vertex")
    scannet_id: str | None = Field(None, description="folder / file prefix sceneNNNN_NN (default: derived from "
                                                     "the scene id)")
    split: Literal["train", "val", "test"] = Field("train", description="split list the scene is added to")

    @field_validator("scannet_id")
    @classmethod
    def _scannet_pattern(cls, v: str | None) -> str | None:
        if v is not None and not SCANNET_ID.fullmatch(v):
            raise ValueError(f"must look like scene0000_00, got {v!r}")
        return v


def scannet_name(sid: str) -> str:
    """A ScanNet-pattern name ``sceneNNNN_NN`` for our scene id: a stable hash (SHA-1) mapped to scene numbers
    1000–9999 and scan numbers 00–99."""
    h = int(hashlib.sha1(sid.encode("utf-8")).hexdigest()[:12], 16)
    return f"scene{1000 + h % 9000:04d}_{(h // 9000) % 100:02d}"


def _exported_id(info_txt: Path) -> str | None:
    """Our scene id recorded in an exported ``<id>.txt`` (``vid2sceneSceneId``), None when absent."""
    if not info_txt.is_file():
        return None
    for line in info_txt.read_text().splitlines():
        key, _, val = line.partition(" = ")
        if key == "vid2sceneSceneId":
            return val.strip()
    return None


def add_to_split(out: Path, name: str, split: str) -> Path:
    """Add ``name`` to ``out/scannetv2_<split>.txt`` (one scene per line, sorted, no duplicates; the name is
    removed from the other two lists) and return that file."""
    for sp in SPLITS:
        f = out / f"scannetv2_{sp}.txt"
        names = set(f.read_text().split()) if f.is_file() else set()
        names = (names | {name}) if sp == split else (names - {name})
        if sp == split or f.is_file():
            with atomic_path(f) as tmp:
                tmp.write_text("".join(n + "\n" for n in sorted(names)))
    return out / f"scannetv2_{split}.txt"


def vertex_labels(scene: Scene, verts: np.ndarray, structure_tol_m: float = 0.05,
                  instances: list[dict] | None = None) -> tuple[np.ndarray, dict, int]:
    """(per-vertex owner code — instance id ≥ 0, or a :func:`structure_owner` code < 0 —, ``{code: label
    record}`` for every code present except −1, number of vertices claimed by two instances) for the world-frame
    mesh vertices ``verts`` (``V×3``). ``instances``: the records whose ``vertex_ids`` index ``verts`` (default:
    the scene's ``instances.json``)."""
    if instances is None:
        instances = scene_inputs.instances_doc(scene)["instances"]
    owner, contested = vertex_owner(instances, len(verts))
    struct = structure_owner(verts, scene_inputs.layout(scene, required=False), structure_tol_m)
    free = owner < 0
    owner[free] = struct[free]
    labels = {int(d["id"]): dict(map_label(d["label"]), coco_label=d["label"]) for d in instances}
    for code in np.unique(owner[owner < STRUCTURE_NONE]):
        labels[int(code)] = structure_label(int(code))
    return owner, labels, contested


def oversegment(verts: np.ndarray, owner: np.ndarray, cell_m: float) -> np.ndarray:
    """Segment index per vertex (``int64``, 0..S−1): unique (owner, voxel cell of size ``cell_m``) pairs."""
    cell = np.floor(np.asarray(verts) / cell_m).astype(np.int64)
    cols = np.concatenate([np.asarray(owner, dtype=np.int64)[:, None], cell], axis=1)
    cols -= cols.min(axis=0)
    key = np.ravel_multi_index(cols.T, tuple(int(m) + 1 for m in cols.max(axis=0)))  # one int64 per vertex
    _, seg = np.unique(key, return_inverse=True)
    return seg.reshape(-1).astype(np.int64)


def vertex_records(verts: np.ndarray, cols: np.ndarray | None, nyu40: np.ndarray | None = None) -> np.ndarray:
    """ScanNet PLY vertex records: ``x y z`` float32, ``red green blue alpha`` uint8 (grey 128 without colours)
    and, when ``nyu40`` (``V`` ints) is given, ``label`` ushort."""
    n = len(verts)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    v = np.zeros(n, dtype=fields + ([("label", "<u2")] if nyu40 is not None else []))
    v["x"], v["y"], v["z"] = np.asarray(verts).T.astype(np.float32)
    c = cols if cols is not None else np.full((n, 3), 128, np.uint8)
    v["red"], v["green"], v["blue"], v["alpha"] = c[:, 0], c[:, 1], c[:, 2], 255
    if nyu40 is not None:
        v["label"] = nyu40
    return v


def nyu40_per_vertex(owner: np.ndarray, labels: dict) -> np.ndarray:
    """``V`` int64 NYU40 id of each vertex's owner (0 = unannotated, ScanNet's convention)."""
    codes = np.array(sorted(labels), dtype=np.int64)
    nyu = np.array([labels[int(k)]["nyu40_id"] for k in codes], dtype=np.int64)
    out = np.zeros(len(owner), np.int64)
    has = owner != STRUCTURE_NONE
    out[has] = nyu[np.searchsorted(codes, owner[has])]
    return out


def group_ids(labels: dict) -> dict[int, int]:
    """``{owner code: ScanNet object id}``: an instance keeps its id; the floor, the ceiling and the walls (in
    that order) get the ids after the largest instance id."""
    codes = sorted(labels)
    inst_codes = [k for k in codes if k >= 0]
    struct_codes = sorted((k for k in codes if k < STRUCTURE_NONE), reverse=True)  # floor, ceiling, walls
    nxt = (max(inst_codes) + 1) if inst_codes else 0
    out = {int(k): int(k) for k in inst_codes}
    for j, k in enumerate(struct_codes):
        out[int(k)] = nxt + j
    return out


def seg_groups(owner: np.ndarray, seg: np.ndarray, labels: dict) -> list[dict]:
    """ScanNet ``segGroups``: one per instance (id = instance id), then floor / ceiling / walls (ids after them,
    :func:`group_ids`)."""
    ids = group_ids(labels)
    groups = []
    for k, gid in sorted(ids.items(), key=lambda kv: kv[1]):
        segs = np.unique(seg[owner == k])
        rec = labels[int(k)]
        groups.append({"id": gid, "objectId": gid, "segments": segs.tolist(), "label": rec["scannet_raw_category"],
                       "vid2scene": {"source": "instance" if k >= 0 else "layout", "coco_label": rec.get("coco_label"),
                                     "nyu40_id": rec["nyu40_id"]}})
    return groups


def run(scene: Scene, config: Config | None = None) -> StageResult:
    """Write the ScanNet files of ``scene`` into ``config.out`` (default ``SCENE/tasks/exports/scannet/``);
    ``qc`` lists the files and counts.

    Raises:
        InputError: no mesh / instances.json / world frame, a ``vertex_ids`` entry out of range, or the ScanNet
            name is already used in ``out`` by another scene.
    """
    cfg = config or Config()
    scene = scene_inputs.scene_of(scene)
    mesh, instances, floor_qc = export_inputs(scene, cfg)
    verts, tris = mesh.vertices, mesh.triangles
    owner, labels, contested = vertex_labels(scene, verts, cfg.structure_tol_m, instances)
    seg = oversegment(verts, owner, cfg.segment_cell_m)
    our_id = scene_id(scene, cfg.scene_name)
    sid = cfg.scannet_id or scannet_name(our_id)
    root = export_dir(scene, FORMAT, cfg.out)
    d = root / "scans" / sid
    held = _exported_id(d / f"{sid}.txt")
    if held is not None and held != our_id:
        raise InputError(f"{d} already holds scene {held!r} (ScanNet name {sid} derived for {our_id!r} too); "
                         "give scannet_id to choose another name")
    d.mkdir(parents=True, exist_ok=True)
    n = len(verts)
    names = [f"{sid}_vh_clean_2.ply", f"{sid}{SEGS_SUFFIX}", f"{sid}.aggregation.json",
             f"{sid}_vh_clean_2.labels.ply", f"{sid}.txt"]
    write_ply_records(d / names[0], vertex_records(verts, mesh.colors), tris, PLY_COMMENTS)
    write_ply_records(d / names[3], vertex_records(verts, mesh.colors, nyu40_per_vertex(owner, labels)), tris,
                      PLY_COMMENTS)
    write_json(d / names[1], {"params": {"kThresh": "0.01", "segMinVerts": "20", "minPoints": "0",
                                         "maxPoints": "0", "thinThresh": "0", "flatThresh": "0",
                                         "minLength": "0", "maxLength": "0",
                                         "vid2scene_method": f"owner x {cfg.segment_cell_m} m voxel cell"},
                              "sceneId": sid, "segIndices": seg.tolist()}, indent=None)
    groups = seg_groups(owner, seg, labels)
    write_json(d / names[2], {"sceneId": f"scannet.{sid}", "appId": "vid2scene.export.scannet",
                              "segGroups": groups, "segmentsFile": f"scannet.{sid}{SEGS_SUFFIX}"})
    with atomic_path(d / names[4]) as tmp:
        tmp.write_text("axisAlignment = " + " ".join(f"{x:g}" for x in np.eye(4).ravel()) + "\n"
                       f"numVertices = {n}\nnumFaces = {len(tris)}\nsceneType = unknown\n"
                       f"vid2sceneSceneId = {our_id}\n")
    split_file = add_to_split(root, sid, cfg.split)
    n_inst = sum(1 for k in labels if k >= 0)
    qc = {"format": FORMAT, "dir": str(d), "scene_id": sid, "vid2scene_scene_id": our_id, "split": cfg.split,
          "files": [str(d / x) for x in names] + [str(split_file)],
          "n_segments": int(seg.max() + 1) if n else 0, "n_groups": len(groups),
          "n_instances": n_inst, "contested_vertices": contested, **floor_qc}
    return StageResult(qc=qc, summary=f"{qc['n_segments']} segments, {len(groups)} groups in {d}")


def read_scannet(folder: str | Path, sid: str | None = None) -> dict:
    """Read one exported scan folder back (``sid``: the file prefix, default the folder's name):
    ``{"vertices": N×3, "colors": N×3 uint8, "triangles": M×3, "seg_indices": N, "groups": [{"id", "label",
    "vertex_ids": sorted int64 array}], "nyu40": N uint16, "info": {key: value text of <id>.txt}}``."""
    folder = Path(folder)
    sid = sid or folder.name
    verts, tris, cols, _ = read_ply_mesh(folder / f"{sid}_vh_clean_2.ply")
    seg = np.asarray(read_json(folder / f"{sid}{SEGS_SUFFIX}")["segIndices"], dtype=np.int64)
    agg = read_json(folder / f"{sid}.aggregation.json")
    groups = [{"id": g["id"], "label": g["label"],
               "vertex_ids": np.flatnonzero(np.isin(seg, np.asarray(g["segments"], dtype=np.int64)))}
              for g in agg["segGroups"]]
    labels = read_ply_records(folder / f"{sid}_vh_clean_2.labels.ply")["label"]
    info = dict(line.split(" = ", 1) for line in (folder / f"{sid}.txt").read_text().splitlines() if " = " in line)
    return {"vertices": verts, "colors": cols, "triangles": tris, "seg_indices": seg, "groups": groups,
            "nyu40": np.asarray(labels), "info": info}
