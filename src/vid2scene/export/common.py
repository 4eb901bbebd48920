"""What the exporters share: the scene's world-frame inputs, the packaged label table (COCO → ScanNet → NYU40),
per-vertex ownership (instances, then floor / walls / ceiling), the clean-up of mesh points below the floor, the
output folder and the base of every exporter's ``Config``.

Every input is read through :class:`~vid2scene.scene.Scene` in the world frame (z up, floor z = 0, metres) by
:mod:`vid2scene.tasks.common`; a missing one raises :class:`~vid2scene.errors.InputError` naming it.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..scene import Mesh, Scene, TASKS


class ExportConfig(BaseModel):
    """Options every exporter has: ``out`` (folder to write into; default ``SCENE/tasks/exports/<format>/``)
    and ``scene_name`` (file-name-safe id of the scene in the output; default the scene folder's name)."""

    model_config = ConfigDict(extra="forbid")
    out: Path | None = Field(None, description="output folder (default SCENE/tasks/exports/<format>/)")
    scene_name: str | None = Field(None, description="scene id in the output (default: the folder name)")
    below_floor: Literal["snap", "drop", "keep"] = Field(
        "snap", description="mesh vertices below the floor (z < 0): snap those within below_floor_band_m onto "
                            "it and drop deeper ones (snap), drop all of them (drop), or leave them (keep)")
    below_floor_band_m: float = Field(0.25, ge=0, description="depth below the floor still counted as floor noise")


def exports_rel(fmt: str) -> str:
    """``tasks/exports/<fmt>/``, an exporter's default output folder relative to the scene (its OUTPUTS)."""
    return f"{TASKS}/exports/{fmt}/"


def vertex_owner(instances: list[dict], n_vertices: int) -> tuple[np.ndarray, int]:
    """Per-vertex owning instance id (``int64``, −1 = none) and the number of vertices claimed by more than one
    instance (given to the instance with the highest ``score``, ties to the lower id)."""
    owner = np.full(n_vertices, -1, dtype=np.int64)
    best = np.full(n_vertices, -np.inf)
    claims = np.zeros(n_vertices, dtype=np.int32)
    for inst in sorted(instances, key=lambda d: int(d["id"])):
        ids = np.asarray(inst.get("vertex_ids", []), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n_vertices):
            raise InputError(f"instance {inst['id']}: vertex_ids outside mesh.ply's {n_vertices} vertices")
        s = float(inst.get("score", 0.0))
        claims[ids] += 1
        take = ids[s > best[ids]]
        owner[take] = int(inst["id"])
        best[take] = s
    return owner, int((claims > 1).sum())


@functools.lru_cache(maxsize=1)
def label_table() -> dict:
    """The packaged COCO → ScanNet raw category → NYU40 table (``label_map_nyu40.json``)."""
    return json.loads(resources.files("vid2scene.export").joinpath("label_map_nyu40.json").read_text())


def map_label(coco_label: str) -> dict:
    """``{"scannet_raw_category", "scannet_id", "nyu40_id", "nyu40_name"}`` for a COCO label (unknown →
    ``object`` / 40 otherprop), plus ``scannet20_index`` (0..19 into the ScanNet20 benchmark classes, −1 when
    the NYU40 class is not one of them) and ``scannet200_index`` (0..199, −1 likewise)."""
    t = label_table()
    d = dict(t["coco"].get(str(coco_label).strip().lower(), t["default"]))
    d.setdefault("nyu40_name", t["nyu40_names"][str(d["nyu40_id"])])
    ids20 = t["scannet20_nyu40_ids"]
    d["scannet20_index"] = ids20.index(d["nyu40_id"]) if d["nyu40_id"] in ids20 else -1
    ids200 = t["scannet200"]["ids"]
    d["scannet200_index"] = ids200.index(d["scannet_id"]) if d["scannet_id"] in ids200 else -1
    return d


def export_dir(scene: Scene, fmt: str, out: str | Path | None) -> Path:
    """Where an exporter writes (created): ``out`` or ``SCENE/tasks/exports/<fmt>/``."""
    d = Path(out) if out is not None else scene.path(exports_rel(fmt))
    d.mkdir(parents=True, exist_ok=True)
    return d


STRUCTURE_NONE, STRUCTURE_FLOOR, STRUCTURE_CEILING = -1, -2, -3  # wall j is -(4 + j)


def structure_owner(verts: np.ndarray, layout: dict | None, tol_m: float = 0.05) -> np.ndarray:
    """Per-vertex structural label from ``layout.json`` planes (``int64``): ``-2`` floor (|z| < tol),
    ``-3`` ceiling (within tol of the ceiling plane), ``-(4 + j)`` wall ``j`` (within tol of its plane
    ``n·x + d = 0`` and between floor and ceiling), ``-1`` none. The floor wins over walls, walls over the
    ceiling. Without a layout every vertex is ``-1``."""
    out = np.full(len(verts), STRUCTURE_NONE, dtype=np.int64)
    if not layout:
        return out
    v = np.asarray(verts, dtype=np.float64)
    ceil = layout.get("ceiling")
    if ceil:
        n, d = np.asarray(ceil["normal"], dtype=np.float64), float(ceil["d"])
        out[np.abs(v @ n + d) < tol_m] = STRUCTURE_CEILING
    top = float(((layout.get("room") or {}).get("height_m")) or np.inf)
    for j, w in reversed(list(enumerate(layout.get("walls") or []))):
        n, d = np.asarray(w["normal"], dtype=np.float64), float(w["d"])
        out[(np.abs(v @ n + d) < tol_m) & (v[:, 2] > tol_m) & (v[:, 2] < top - tol_m)] = -(4 + j)
    out[np.abs(v[:, 2]) < tol_m] = STRUCTURE_FLOOR
    return out


def structure_name(code: int) -> str:
    """ScanNet raw category of a :func:`structure_owner` code (``floor``, ``ceiling``, ``wall``)."""
    return {STRUCTURE_FLOOR: "floor", STRUCTURE_CEILING: "ceiling"}.get(int(code), "wall")


def structure_label(code: int) -> dict:
    """:func:`map_label`-style record for a structure code (NYU40 1 wall, 2 floor, 22 ceiling)."""
    raw = structure_name(code)
    t = label_table()
    nyu = {"wall": 1, "floor": 2, "ceiling": 22}[raw]
    ids200 = t["scannet200"]["ids"]
    sid = dict(zip(t["scannet200"]["labels"], ids200))[raw]
    ids20 = t["scannet20_nyu40_ids"]
    return {"scannet_raw_category": raw, "scannet_id": sid, "nyu40_id": nyu, "nyu40_name": t["nyu40_names"][str(nyu)],
            "scannet20_index": ids20.index(nyu) if nyu in ids20 else -1, "scannet200_index": ids200.index(sid)}


def scene_id(scene: Scene, given: str | None = None) -> str:
    """A file-name-safe scene id: ``given`` or the scene folder's name."""
    s = given or scene.root.resolve().name or "scene"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def clean_below_floor(mesh: Mesh, instances: list[dict], mode: str = "snap",
                      band_m: float = 0.25) -> tuple[Mesh, list[dict], dict]:
    """Remove the floor noise below the fitted floor of a world-frame mesh (z up, floor z = 0, metres).

    Dense fusion leaves a layer of floor points a few centimetres below the fitted plane (depth noise on a
    surface seen at a grazing angle) and some deeper outliers. Consumers read the lowest point as the floor
    (SceneVerse++ puts z = 0 at the mesh's minimum) or label by distance to the plane, so they are cleaned:

    * ``"snap"``: vertices with ``−band_m ≤ z < 0`` are moved onto the floor (``z = 0``; labelled floor by
      :func:`structure_owner`), vertices with ``z < −band_m`` are dropped;
    * ``"drop"``: every vertex with ``z < 0`` is dropped;
    * ``"keep"``: nothing changes.

    Dropping a vertex drops the triangles that use it; the kept vertices keep their order, and each instance's
    ``vertex_ids`` are re-indexed (dropped ones removed), so the instances still index the returned mesh.

    Args:
        mesh: world-frame mesh (``vertices`` ``V×3``).
        instances: ``instances.json`` records (not modified; copies are returned).
        mode: ``"snap"``, ``"drop"`` or ``"keep"``.
        band_m: depth below the floor counted as floor noise (metres, ``"snap"`` only).

    Returns:
        (cleaned mesh, instance records with re-indexed ``vertex_ids``, ``{"below_floor": mode,
        "n_snapped", "n_dropped", "min_z_before_m", "min_z_after_m"}``).

    Raises:
        InputError: an unknown ``mode``, or an instance's ``vertex_ids`` outside the mesh.
    """
    if mode not in ("snap", "drop", "keep"):
        raise InputError(f"below_floor must be snap, drop or keep, got {mode!r}")
    v = np.array(mesh.vertices, dtype=np.float64, copy=True)
    n = len(v)
    z = v[:, 2] if n else np.zeros(0)
    stats = {"below_floor": mode, "n_snapped": 0, "n_dropped": 0,
             "min_z_before_m": round(float(z.min()), 4) if n else None}
    insts = [dict(i) for i in instances]
    for i in insts:
        ids = np.asarray(i.get("vertex_ids", []), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise InputError(f"instance {i.get('id')}: vertex_ids outside mesh.ply's {n} vertices")
    if mode == "keep" or n == 0:
        stats["min_z_after_m"] = stats["min_z_before_m"]
        return mesh, insts, stats
    below = z < 0
    drop = below if mode == "drop" else z < -float(band_m)
    snap = below & ~drop
    v[snap, 2] = 0.0
    keep = ~drop
    new_index = np.cumsum(keep) - 1
    tris = np.asarray(mesh.triangles, dtype=np.int64)
    tris = new_index[tris[keep[tris].all(axis=1)]] if len(tris) else tris
    pick = (lambda a: None if a is None else np.asarray(a)[keep])
    out = Mesh(v[keep], tris, pick(mesh.colors), pick(mesh.normals), mesh.frame)
    for i in insts:
        if "vertex_ids" in i:
            ids = np.asarray(i["vertex_ids"], dtype=np.int64)
            i["vertex_ids"] = new_index[ids[keep[ids]]].tolist()
    stats.update(n_snapped=int(snap.sum()), n_dropped=int(drop.sum()),
                 min_z_after_m=round(float(out.vertices[:, 2].min()), 4) if len(out.vertices) else None)
    return out, insts, stats


def export_inputs(scene: Scene, config: ExportConfig) -> tuple[Mesh, list[dict], dict]:
    """The world-frame mesh and ``instances.json`` records an exporter writes, after
    :func:`clean_below_floor` with the config's ``below_floor`` / ``below_floor_band_m``.

    Raises:
        InputError: no mesh / instances.json / world frame, or ``vertex_ids`` outside the mesh.
    """
    from ..tasks import common as scene_inputs

    mesh = scene_inputs.mesh(scene)
    inst = scene_inputs.instances_doc(scene)["instances"]
    return clean_below_floor(mesh, inst, config.below_floor, config.below_floor_band_m)
