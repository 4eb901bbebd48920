"""SpatialLM layout text export (``<scene_id>.txt`` + ``<scene_id>.ply`` point cloud).

Convention converted to: SpatialLM's layout language (manycore-research/SpatialLM ``spatiallm/layout/entity.py``,
after ``undiscretize_and_unnormalize``), one entity per line, **metres, z up**, in our gravity-aligned metric
world (floor z = 0)::

    wall_0=Wall(ax,ay,az,bx,by,bz,height,thickness)
    bbox_0=Bbox(class_name,position_x,position_y,position_z,angle_z,scale_x,scale_y,scale_z)

* Walls: our ``layout.json`` stores walls as infinite planes, so the wall *segments* are the edges of the room
  footprint ``room.polygon_xy`` after Douglas–Peucker simplification (``wall_simplify_m``), one wall per edge
  (a→b in polygon order, ``az = bz = 0``), height = the room
  height ``room.height_m``, thickness ``wall_thickness_m`` (0 by default, as SpatialLM's own ``to_boxes``
  assumes). No layout → no walls.
* Class names (``class_names="spatiallm"``, the default): SpatialLM's evaluation (``eval.py``) replaces ``_``
  by a space and keeps only boxes whose name its label table maps, scoring the 20 categories of its README /
  ``OBJECTS`` (``sofa``, ``plants``, ``tv``, …). Our labels (COCO names from the detector, or open-vocabulary
  labels from the labeller) are mapped through the packaged table ``spatiallm_categories.json``
  (``couch`` → ``sofa``, ``potted plant`` → ``plants``, ``rug`` → ``carpet``, …; :func:`spatiallm_category`)
  and written with underscores (``dining_table``). A label with no SpatialLM category is kept under its own
  name (``unmapped="keep"``; SpatialLM's evaluation ignores it, its training data may use it) or dropped
  (``unmapped="drop"``); ``qc`` counts both.
* Bboxes: ``position`` = box centre, ``angle_z`` = ``yaw_rad`` wrapped to [−π, π) (rotation of the box's local x
  about +z, as ``R.from_rotvec([0, 0, angle_z])`` in SpatialLM), ``scale`` = full side lengths (local x, local
  y, z). Other ``class_names``: ``"coco"`` writes our label with spaces as underscores; ``"scannet20"`` maps
  through the packaged NYU40 table to the 15 ScanNet20 object classes SceneVerse++ trains SpatialLM on and drops
  instances outside them.
* Numbers are written with 4 decimals. Ids are 0-based per entity type.

The point cloud ``<scene_id>.ply`` holds the world-frame mesh's vertices with colours (SpatialLM's input
modality), after the floor noise below z = 0 is snapped onto the floor or dropped
(:func:`~vid2scene.export.common.clean_below_floor`).
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from typing import Literal

import numpy as np

from pydantic import Field

from ..io import atomic_path, write_ply_points
from ..scene import WORLD_NAME, Scene
from ..stage import StageResult
from ..tasks import common as scene_inputs
from .common import ExportConfig, clean_below_floor, export_dir, exports_rel, map_label, scene_id

NAME = FORMAT = "spatiallm"
OUTPUTS = [exports_rel(NAME)]


class Config(ExportConfig):
    """SpatialLM export options (metres)."""

    class_names: Literal["spatiallm", "coco", "scannet20"] = Field(
        "spatiallm", description="SpatialLM's categories (default), our labels as they are, or the ScanNet20 "
                                 "object classes (others dropped)")
    unmapped: Literal["keep", "drop"] = Field("keep", description="class_names=spatiallm: a label with no "
                                                                  "SpatialLM category is kept as it is, or dropped")
    wall_thickness_m: float = Field(0.0, ge=0)
    wall_simplify_m: float = Field(0.15, ge=0, description="Douglas-Peucker tolerance of the room polygon")
    write_points: bool = Field(True, description="also write <scene_id>.ply (the mesh vertices, coloured)")

# SceneVerse++ (Spatiallm/data_generation/svpp/generate_layout.py): NYU40 id -> ScanNet20 object class name
SCANNET20_OBJECTS = {3: "cabinet", 4: "bed", 5: "chair", 6: "sofa", 7: "table", 10: "bookshelf", 11: "picture",
                     12: "counter", 14: "desk", 16: "curtain", 24: "refrigerator", 28: "shower curtain",
                     33: "toilet", 34: "sink", 36: "bathtub"}


@functools.lru_cache(maxsize=1)
def spatiallm_table() -> dict:
    """The packaged SpatialLM category table (``spatiallm_categories.json``): ``categories`` (the 20 names
    SpatialLM's evaluation scores, with spaces) and ``synonyms`` (our label → one of them)."""
    return json.loads(resources.files("vid2scene.export").joinpath("spatiallm_categories.json").read_text())


def spatiallm_category(label: str) -> str | None:
    """SpatialLM category (with spaces, e.g. ``"dining table"``) of one of our labels (case and surrounding
    spaces ignored; ``_`` read as a space), or None when the table has none."""
    key = " ".join(str(label).strip().lower().replace("_", " ").split())
    t = spatiallm_table()
    if key in t["categories"]:
        return key
    return t["synonyms"].get(key)


def _f(x: float) -> str:
    s = f"{float(x):.4f}"
    return "0.0000" if s == "-0.0000" else s


def wrap_angle(a: float) -> float:
    """Angle in [−π, π)."""
    return (float(a) + math.pi) % (2 * math.pi) - math.pi


def layout_lines(instances: list[dict], layout: dict | None, class_names: str = "spatiallm",
                 wall_thickness_m: float = 0.0, wall_simplify_m: float = 0.15, unmapped: str = "keep") -> list[str]:
    """SpatialLM text lines (walls first, then bboxes) for instances + layout; see the module docstring.

    ``wall_simplify_m``: Douglas–Peucker tolerance (metres, ``cv2.approxPolyDP``) applied to the room polygon
    before its edges become walls (layout's occupancy-grid footprint has grid staircases); 0 keeps every edge."""
    lines = []
    room = (layout or {}).get("room") or {}
    poly = room.get("polygon_xy") or []
    h = float(room.get("height_m") or 0.0)
    if len(poly) >= 3 and h > 0:
        P = np.asarray(poly, dtype=np.float64)
        if np.allclose(P[0], P[-1]):
            P = P[:-1]
        if wall_simplify_m > 0:
            import cv2

            Q = cv2.approxPolyDP(P.astype(np.float32).reshape(-1, 1, 2), float(wall_simplify_m), True)
            if len(Q) >= 3:
                P = Q.reshape(-1, 2).astype(np.float64)
        for i in range(len(P)):
            a, b = P[i], P[(i + 1) % len(P)]
            lines.append(f"wall_{i}=Wall({_f(a[0])},{_f(a[1])},{_f(0)},{_f(b[0])},{_f(b[1])},{_f(0)},"
                         f"{_f(h)},{_f(wall_thickness_m)})")
    k = 0
    for inst in sorted(instances, key=lambda d: int(d["id"])):
        box = inst.get("box")
        if not box:
            continue
        if class_names == "scannet20":
            name = SCANNET20_OBJECTS.get(map_label(inst["label"])["nyu40_id"])
            if name is None:
                continue
        elif class_names == "spatiallm":
            name = spatiallm_category(inst["label"])
            if name is None:
                if unmapped == "drop":
                    continue
                name = str(inst["label"]).strip().lower()
        else:
            name = str(inst["label"]).strip().lower()
        name = name.replace(",", " ").replace("(", " ").replace(")", " ").strip().replace(" ", "_")
        c, s = box["center"], box["size"]
        lines.append(f"bbox_{k}=Bbox({name},{_f(c[0])},{_f(c[1])},{_f(c[2])},{_f(wrap_angle(box['yaw_rad']))},"
                     f"{_f(abs(s[0]))},{_f(abs(s[1]))},{_f(abs(s[2]))})")
        k += 1
    return lines


def parse_layout(text: str) -> dict:
    """Parse SpatialLM layout text (as SpatialLM's ``Layout.from_str`` does) into
    ``{"walls": [{"id", "ax", "ay", "az", "bx", "by", "bz", "height", "thickness"}],
    "bboxes": [{"id", "class_name", "position_x", ..., "angle_z", "scale_x", "scale_y", "scale_z"}]}``
    (floats in metres / radians); lines that do not parse are skipped, doors/windows ignored."""
    walls, boxes = [], []
    for line in text.strip().splitlines():
        try:
            label, rest = line.split("=", 1)
            kind, eid = label.rsplit("_", 1)
            params = rest[rest.index("(") + 1: rest.index(")")].split(",")
            if kind == "wall":
                keys = ["ax", "ay", "az", "bx", "by", "bz", "height", "thickness"]
                walls.append({"id": int(eid), **{k: float(v) for k, v in zip(keys, params[:8])}})
            elif kind == "bbox":
                keys = ["position_x", "position_y", "position_z", "angle_z", "scale_x", "scale_y", "scale_z"]
                boxes.append({"id": int(eid), "class_name": params[0],
                              **{k: float(v) for k, v in zip(keys, params[1:8])}})
        except (ValueError, IndexError):
            continue
    return {"walls": walls, "bboxes": boxes}


def run(scene: Scene, config: Config | None = None) -> StageResult:
    """Write ``<out>/<scene_id>.txt`` (and ``<scene_id>.ply``); ``qc`` lists the files and wall / box counts.

    Raises:
        InputError: no instances.json, or (``write_points``) no mesh / no world frame.
    """
    cfg = config or Config()
    scene = scene_inputs.scene_of(scene)
    inst = scene_inputs.instances_doc(scene)["instances"]
    layout = scene_inputs.layout(scene, required=False)
    d = export_dir(scene, FORMAT, cfg.out)
    sid = scene_id(scene, cfg.scene_name)
    lines = layout_lines(inst, layout, cfg.class_names, cfg.wall_thickness_m, cfg.wall_simplify_m, cfg.unmapped)
    txt = d / f"{sid}.txt"
    with atomic_path(txt) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    files = [str(txt)]
    floor_qc = {}
    if cfg.write_points:
        mesh, _, floor_qc = clean_below_floor(scene_inputs.mesh(scene), [], cfg.below_floor, cfg.below_floor_band_m)
        write_ply_points(d / f"{sid}.ply", mesh.vertices, mesh.colors, comments=[f"frame: {WORLD_NAME}", "units: m"])
        files.append(str(d / f"{sid}.ply"))
    n_walls = sum(1 for s in lines if s.startswith("wall_"))
    qc = {"format": FORMAT, "dir": str(d), "files": files, "n_walls": n_walls, "n_bboxes": len(lines) - n_walls,
          "walls_from": "room polygon edges" if n_walls else "none (no layout.json room polygon)",
          "class_names": cfg.class_names, **floor_qc}
    if cfg.class_names == "spatiallm":
        with_box = [i for i in inst if i.get("box")]
        qc["n_spatiallm_category"] = sum(spatiallm_category(i["label"]) is not None for i in with_box)
        qc["n_unmapped"] = len(with_box) - qc["n_spatiallm_category"]
    return StageResult(qc=qc, summary=f"{n_walls} walls, {qc['n_bboxes']} boxes in {txt}")
