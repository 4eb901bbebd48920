"""What the exporters share: the scene's world-frame inputs, the packaged label table (COCO → ScanNet → NYU40),
per-vertex ownership (instances, then floor / walls / ceiling), the output folder and the base of every
exporter's ``Config``.

Every input is read through :class:`~vid2scene.scene.Scene` in the world frame (z up, floor z = 0, metres) by
:mod:`vid2scene.tasks.common`; a missing one raises :class:`~vid2scene.errors.InputError` naming it.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..scene import Scene, TASKS


class ExportConfig(BaseModel):
    """Options every exporter has: ``out`` (folder to write into; default ``SCENE/tasks/exports/<format>/``)
    and ``scene_name`` (file-name-safe id of the scene in the output; default the scene folder's name)."""

    model_config = ConfigDict(extra="forbid")
    out: Path | None = Field(None, description="output folder (default SCENE/tasks/exports/<format>/)")
    scene_name: str | None = Field(None, description="scene id in the output (default: the folder name)")


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
