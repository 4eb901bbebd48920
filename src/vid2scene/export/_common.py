"""Small private readers shared by the exporters and the BEV task (docs/schemas.md is the contract).

Kept tiny on purpose: the lead merges them with ``vid2scene.tasks.common`` (issue 5 part A).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_json
from ..scene import Scene


def load_json_asset(scene: Scene, name: str, why: str) -> dict:
    """``scene.root / name`` parsed, or :class:`InputError` saying which stage writes it (one reader for the task
    generators and the exporters: :func:`vid2scene.tasks.common._read`)."""
    from ..tasks.common import _read

    return _read(scene.root / name, why)


def load_instances(scene: Scene) -> dict:
    """``instances.json`` (docs/schemas.md); raises InputError when absent or without an ``instances`` list."""
    d = load_json_asset(scene, "instances.json", "run the instances stage first")
    if not isinstance(d.get("instances"), list):
        raise InputError(f"{scene.root / 'instances.json'} has no 'instances' list")
    return d


def load_layout(scene: Scene) -> dict | None:
    """``layout.json`` or None when the scene has none."""
    p = scene.root / "layout.json"
    return read_json(p) if p.is_file() else None


def load_mesh(scene: Scene) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``mesh.ply`` as (``N×3`` float64 vertices, ``N×3`` uint8 RGB or None, ``M×3`` int64 triangles).

    Vertex order is the file's, so ``instances.json`` ``vertex_ids`` index these arrays. Read with plyfile
    (no Open3D needed). Raises InputError when the file is missing or has no faces.
    """
    from plyfile import PlyData

    path = scene.root / "mesh.ply"
    if not path.is_file():
        raise InputError(f"{path} is missing (run the fusion stage first)")
    try:  # fixed-length triangle lists read without a Python loop
        ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
    except Exception:  # noqa: BLE001 - not triangles, or another list name: the generic reader
        ply = PlyData.read(str(path))
    v = ply["vertex"].data
    names = v.dtype.names or ()
    verts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    cols = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8) if "red" in names else None
    if "face" not in ply:
        raise InputError(f"{path} has no faces")
    f = ply["face"].data
    key = "vertex_indices" if "vertex_indices" in (f.dtype.names or ()) else f.dtype.names[0]
    faces = f[key]
    tris = (np.asarray(faces.tolist(), dtype=np.int64) if faces.dtype == object else np.asarray(faces, dtype=np.int64))
    return verts, cols, tris.reshape(-1, 3)


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


def obj_tag(instance_id: int) -> str:
    """GPT4Scene-style marker text: ``obj_tag(3) == "<OBJ003>"``."""
    return f"<OBJ{int(instance_id):03d}>"


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
    """Where an exporter writes: ``out`` or ``SCENE/tasks/exports/<fmt>/``."""
    d = Path(out) if out is not None else scene.root / "tasks" / "exports" / fmt
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
    import re

    s = given or scene.root.resolve().name or "scene"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)
