"""A synthetic task-ready scene folder with objects at known places (no rendering, no pipeline).

Room: 6 m × 5 m rectangle (floor area 30 m²), z up, floor z = 0. Objects are axis-aligned boxes (yaw 0) whose
surfaces are meshed into ``mesh.ply``; ``instances.json`` points at their vertex ids. The camera walks at 1.5 m
height along ``WALK`` (with a 1 m back-track at (4.6, 1.0)), looking along the walking direction, one keyframe
every 0.15 m of path, 0.1 s apart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tests.synth import intrinsics, look_at
from vid2scene.fusion import write_mesh_ply
from vid2scene.io import write_json

ROOM_POLY = [[0.0, 0.0], [6.0, 0.0], [6.0, 5.0], [0.0, 5.0]]
ROOM_AREA = 30.0

# id, label, center, size, first_timestamp_s
OBJECTS = [
    (0, "couch", (1.0, 4.3, 0.4), (1.8, 0.8, 0.8), 1.0),
    (1, "tv", (5.7, 2.5, 1.0), (0.1, 1.2, 0.7), 3.0),
    (2, "dining table", (3.0, 1.0, 0.375), (1.4, 0.8, 0.75), 5.0),
    (3, "chair", (3.0, 0.3, 0.45), (0.5, 0.4, 0.9), 5.5),
    (4, "chair", (3.0, 1.9, 0.45), (0.5, 0.5, 0.9), 6.0),
    (5, "chair", (0.6, 1.0, 0.45), (0.5, 0.5, 0.9), 9.0),
    (6, "potted plant", (5.5, 4.5, 0.4), (0.4, 0.4, 0.8), 8.0),
    (7, "refrigerator", (0.4, 2.6, 0.9), (0.7, 0.7, 1.8), 0.5),
    (8, "laptop", (3.2, 1.0, 0.765), (0.35, 0.25, 0.03), 5.3),
    (9, "clock", (3.0, 4.95, 2.0), (0.3, 0.05, 0.3), 12.0),
    (10, "potted plant", (0.4, 0.4, 0.4), (0.4, 0.4, 0.8), 10.0),
]

# the camera's walk (floor x, y): east along y = 3.2, south to y = 1.0, back north 1 m, then west-south-west
WALK = [(1.6, 3.2), (4.6, 3.2), (4.6, 1.0), (4.6, 2.0), (1.8, 2.6)]
CAMERA_HEIGHT = 1.5


def box_mesh(center, size, n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (``6n²×3``) and triangles of an axis-aligned box whose faces are n×n vertex grids."""
    c, s = np.asarray(center, float), np.asarray(size, float)
    t = np.linspace(-0.5, 0.5, n)
    u, v = np.meshgrid(t, t, indexing="ij")
    verts, tris = [], []
    for axis in range(3):
        for side in (-0.5, 0.5):
            p = np.zeros((n * n, 3))
            others = [a for a in range(3) if a != axis]
            p[:, axis] = side
            p[:, others[0]] = u.ravel()
            p[:, others[1]] = v.ravel()
            base = sum(len(x) for x in verts)
            verts.append(c + p * s)
            for i in range(n - 1):
                for j in range(n - 1):
                    a = base + i * n + j
                    tris += [(a, a + n, a + 1), (a + 1, a + n, a + n + 1)]
    return np.concatenate(verts), np.asarray(tris)


def walk_points(step: float = 0.15) -> np.ndarray:
    """Floor points of ``WALK`` every ``step`` metres (K×2)."""
    return walk_points_for(WALK, step)


def box_distance(a_min, a_max, b_min, b_max) -> float:
    """Exact closest distance between two axis-aligned boxes (metres)."""
    a_min, a_max, b_min, b_max = (np.asarray(x, float) for x in (a_min, a_max, b_min, b_max))
    gap = np.maximum(0.0, np.maximum(b_min - a_max, a_min - b_max))
    return float(np.linalg.norm(gap))


def aabb(obj_id: int) -> tuple[np.ndarray, np.ndarray]:
    _, _, c, s, _ = OBJECTS[obj_id]
    c, s = np.asarray(c), np.asarray(s)
    return c - s / 2, c + s / 2


def write_scene(root: str | Path, objects=OBJECTS, walk=WALK, with_graph: bool = True) -> Path:
    """Write the scene folder (instances.json, scene_graph.json, layout.json, cameras.json, video.json,
    mesh.ply) under ``root``; returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    verts, tris, instances = [], [], []
    nv = 0
    for oid, label, c, s, t0 in objects:
        v, f = box_mesh(c, s)
        verts.append(v)
        tris.append(f + nv)
        c, s = np.asarray(c), np.asarray(s)
        instances.append({
            "id": oid, "label": label, "score": 0.8, "n_views": 5, "label_votes": {label: 4.0},
            "vertex_ids": list(range(nv, nv + len(v))), "n_points": len(v),
            "box": {"center": c.tolist(), "size": s.tolist(), "yaw_rad": 0.0},
            "aabb": {"min": (c - s / 2).tolist(), "max": (c + s / 2).tolist()},
            "first_frame": int(round(t0 * 10)), "last_frame": int(round(t0 * 10)) + 20,
            "first_timestamp_s": t0, "last_timestamp_s": t0 + 2.0, "views": [], "caption": None})
        nv += len(v)
    write_mesh_ply(root / "mesh.ply", np.concatenate(verts), np.concatenate(tris),
                   comments=["frame: gravity_z_up_metric"])
    write_json(root / "instances.json", {"frame": "gravity_z_up_metric", "units": "m", "geometry": "mesh.ply",
                                         "n_vertices": nv, "detector": "synthetic", "instances": instances})
    layout = {"frame": "gravity_z_up_metric", "units": "m",
              "room": {"polygon_xy": ROOM_POLY, "floor_area_m2": ROOM_AREA, "extent_m": [6.0, 5.0],
                       "height_m": 2.6, "height_source": "ceiling_plane"}}
    write_json(root / "layout.json", layout)
    if with_graph:
        objs = [{"id": i["id"], "label": i["label"], "center": i["box"]["center"], "size": i["box"]["size"],
                 "yaw_rad": 0.0, "min": i["aabb"]["min"], "max": i["aabb"]["max"], "inside_room": True}
                for i in instances]
        rel = [{"subject": 8, "predicate": "on", "object": 2, "evidence": {"gap_m": 0.0, "overlap_xy": 1.0}},
               {"subject": 4, "predicate": "near", "object": 2, "distance_m": 0.25},
               {"subject": 3, "predicate": "near", "object": 2, "distance_m": 0.2},
               {"subject": 6, "predicate": "near", "object": 1, "distance_m": 1.2}]
        rel += [{"subject": i["id"], "predicate": "inside", "object": "room"} for i in instances]
        write_json(root / "scene_graph.json", {
            "frame": "gravity_z_up_metric", "units": "m",
            "room": {"id": "room", "polygon_xy": ROOM_POLY, "floor_area_m2": ROOM_AREA, "height_m": 2.6,
                     "center": [3.0, 2.5, 1.3], "extent_m": [6.0, 5.0]},
            "objects": objs, "relations": rel})
    pts = walk_points_for(walk)
    K = intrinsics(320, 240)
    frames = []
    for k, p in enumerate(pts):
        nxt = pts[min(k + 1, len(pts) - 1)] if k + 1 < len(pts) else 2 * pts[k] - pts[k - 1]
        d = nxt - p
        d = d / max(np.linalg.norm(d), 1e-9)
        eye = np.array([p[0], p[1], CAMERA_HEIGHT])
        T = look_at(eye, eye + np.array([d[0], d[1], -0.3]))
        frames.append({"name": f"{k * 3:06d}.jpg", "source_frame": k * 3, "timestamp_s": round(k * 0.1, 6),
                       "width": 320, "height": 240, "K": K.tolist(), "registered": True,
                       "cam_from_world": T.tolist()})
    write_json(root / "cameras.json", {"convention": "opencv", "world": "gravity_z_up_metric", "frames": frames})
    write_json(root / "video.json", {"fps": 30.0, "duration_s": round(len(pts) * 0.1 + 5, 3), "width": 320,
                                     "height": 240, "n_frames": len(pts) * 3 + 150})
    return root


def walk_points_for(walk, step: float = 0.15) -> np.ndarray:
    pts = [np.asarray(walk[0], float)]
    for a, b in zip(walk[:-1], walk[1:]):
        a, b = np.asarray(a, float), np.asarray(b, float)
        n = max(1, int(round(np.linalg.norm(b - a) / step)))
        pts += [a + (b - a) * k / n for k in range(1, n + 1)]
    return np.asarray(pts)


def walk_length(walk=WALK) -> float:
    return float(sum(math.dist(a, b) for a, b in zip(walk[:-1], walk[1:])))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
