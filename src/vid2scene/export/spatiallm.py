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
* Bboxes: ``position`` = box centre, ``angle_z`` = ``yaw_rad`` wrapped to [−π, π) (rotation of the box's local x
  about +z, as ``R.from_rotvec([0, 0, angle_z])`` in SpatialLM), ``scale`` = full side lengths (local x, local
  y, z). ``class_name``: ``class_names="coco"`` writes the COCO label with spaces as underscores
  (``dining_table``, SpatialLM's spelling style); ``"scannet20"`` maps through the packaged NYU40 table to the
  15 ScanNet20 object classes SceneVerse++ trains SpatialLM on and drops instances outside them.
* Numbers are written with 4 decimals. Ids are 0-based per entity type.

The point cloud ``<scene_id>.ply`` holds the world-frame mesh's vertices with colours (SpatialLM's input
modality).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from pydantic import Field

from ..io import atomic_path, write_ply_points
from ..scene import WORLD_NAME, Scene
from ..stage import StageResult
from ..tasks import common as scene_inputs
from .common import ExportConfig, export_dir, exports_rel, map_label, scene_id

NAME = FORMAT = "spatiallm"
OUTPUTS = [exports_rel(NAME)]


class Config(ExportConfig):
    """SpatialLM export options (metres)."""

    class_names: Literal["coco", "scannet20"] = Field("coco", description="COCO labels, or the ScanNet20 object "
                                                                          "classes (others dropped)")
    wall_thickness_m: float = Field(0.0, ge=0)
    wall_simplify_m: float = Field(0.15, ge=0, description="Douglas-Peucker tolerance of the room polygon")
    write_points: bool = Field(True, description="also write <scene_id>.ply (the mesh vertices, coloured)")

# SceneVerse++ (Spatiallm/data_generation/svpp/generate_layout.py): NYU40 id -> ScanNet20 object class name
SCANNET20_OBJECTS = {3: "cabinet", 4: "bed", 5: "chair", 6: "sofa", 7: "table", 10: "bookshelf", 11: "picture",
                     12: "counter", 14: "desk", 16: "curtain", 24: "refrigerator", 28: "shower curtain",
                     33: "toilet", 34: "sink", 36: "bathtub"}


def _f(x: float) -> str:
    s = f"{float(x):.4f}"
    return "0.0000" if s == "-0.0000" else s


def wrap_angle(a: float) -> float:
    """Angle in [−π, π)."""
    return (float(a) + math.pi) % (2 * math.pi) - math.pi


def layout_lines(instances: list[dict], layout: dict | None, class_names: str = "coco",
                 wall_thickness_m: float = 0.0, wall_simplify_m: float = 0.15) -> list[str]:
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
    lines = layout_lines(inst, layout, cfg.class_names, cfg.wall_thickness_m, cfg.wall_simplify_m)
    txt = d / f"{sid}.txt"
    with atomic_path(txt) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    files = [str(txt)]
    if cfg.write_points:
        mesh = scene_inputs.mesh(scene)
        write_ply_points(d / f"{sid}.ply", mesh.vertices, mesh.colors, comments=[f"frame: {WORLD_NAME}", "units: m"])
        files.append(str(d / f"{sid}.ply"))
    n_walls = sum(1 for s in lines if s.startswith("wall_"))
    qc = {"format": FORMAT, "dir": str(d), "files": files, "n_walls": n_walls, "n_bboxes": len(lines) - n_walls,
          "walls_from": "room polygon edges" if n_walls else "none (no layout.json room polygon)"}
    return StageResult(qc=qc, summary=f"{n_walls} walls, {qc['n_bboxes']} boxes in {txt}")
