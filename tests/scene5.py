"""A hand-built scene folder for the task / export tests (issue 5): everything after ``scene_graph`` written
directly with known geometry, in the gravity-aligned metric frame (z up, floor z = 0, metres).

Room x∈[0, 4], y∈[0, 3], z∈[0, 2.5] with a partition wall at x = 2.2 for y∈[0, 2]; four box instances
(subdivided box meshes, so every instance owns its own vertices); four cameras (320×240). Camera 0 stands at
x = 0.1 looking along +x: the chair is in front of it, the couch is behind the partition (hidden) although its
centre projects inside the image. Frames and depth maps are rendered from the mesh with the package's own
rasteriser (colours do not matter to the tests; depth does, for ``occlusion="depth"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tests.synth import look_at
from vid2scene.fusion import write_mesh_ply
from vid2scene.scene import Scene

W, H = 320, 240
K = np.array([[250.0, 0, 160.0], [0, 250.0, 120.0], [0, 0, 1]])
ROOM = (4.0, 3.0, 2.5)
PARTITION_X, PARTITION_Y1 = 2.2, 2.0

# id, label, centre, size (local x, local y, z), yaw_rad, colour
OBJECTS = [
    (0, "chair", (1.3, 1.0, 0.45), (0.5, 0.5, 0.9), 0.0, (200, 40, 40)),
    (1, "couch", (3.1, 1.0, 0.4), (1.2, 0.8, 0.8), 0.3, (40, 160, 40)),
    (2, "tv", (3.0, 2.7, 1.2), (0.8, 0.1, 0.5), 0.0, (30, 30, 30)),
    (3, "dining table", (1.2, 2.3, 0.375), (1.0, 0.6, 0.75), 0.0, (150, 100, 50)),
]
FLOOR_RGB, WALL_RGB, CEIL_RGB, PART_RGB = (120, 120, 120), (220, 210, 180), (250, 250, 250), (90, 90, 200)
CAMERAS = [  # source frame, eye, target
    (0, (0.1, 1.0, 1.0), (3.5, 1.0, 0.3)),
    (10, (0.5, 2.5, 1.4), (3.5, 2.6, 1.0)),
    (20, (1.8, 0.3, 1.5), (1.2, 2.6, 0.4)),
    (30, (3.7, 2.0, 1.5), (2.5, 0.5, 0.5)),
]


def grid_quad(origin, u, v, nu: int, nv: int):
    """Vertices ``(nu+1)(nv+1)×3`` and triangles of a subdivided parallelogram origin + s·u + t·v."""
    s, t = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    V = np.asarray(origin) + s.reshape(-1, 1) * np.asarray(u) + t.reshape(-1, 1) * np.asarray(v)
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    T = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return V, T


def _cells(length: float, cell: float) -> int:
    return max(1, int(np.ceil(length / cell)))


def box_mesh(center, size, yaw, cell=0.1):
    """Closed subdivided box (6 grid faces; shared edges duplicated, which is fine for rendering)."""
    sx, sy, sz = size
    c, s = np.cos(yaw), np.sin(yaw)
    ax, ay, az = np.array([c, s, 0]) * sx, np.array([-s, c, 0]) * sy, np.array([0, 0, 1.0]) * sz
    o = np.asarray(center) - (ax + ay + az) / 2
    faces = [(o, ax, ay), (o + az, ax, ay), (o, ax, az), (o + ay, ax, az), (o, ay, az), (o + ax, ay, az)]
    Vs, Ts, n = [], [], 0
    for org, u, v in faces:
        V, T = grid_quad(org, u, v, _cells(np.linalg.norm(u), cell), _cells(np.linalg.norm(v), cell))
        Vs.append(V)
        Ts.append(T + n)
        n += len(V)
    return np.concatenate(Vs), np.concatenate(Ts)


@dataclass
class Scene5:
    scene: Scene
    verts: np.ndarray
    tris: np.ndarray
    colors: np.ndarray
    instance_vertices: dict[int, np.ndarray] = field(default_factory=dict)
    poses: dict[int, np.ndarray] = field(default_factory=dict)


def build_scene(root: str | Path, with_frames: bool = True) -> Scene5:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    X, Y, Z = ROOM
    parts = [  # (origin, u, v, colour)
        ((0, 0, 0), (X, 0, 0), (0, Y, 0), FLOOR_RGB),
        ((0, 0, Z), (X, 0, 0), (0, Y, 0), CEIL_RGB),
        ((0, 0, 0), (X, 0, 0), (0, 0, Z), WALL_RGB),
        ((0, Y, 0), (X, 0, 0), (0, 0, Z), WALL_RGB),
        ((0, 0, 0), (0, Y, 0), (0, 0, Z), WALL_RGB),
        ((X, 0, 0), (0, Y, 0), (0, 0, Z), WALL_RGB),
        ((PARTITION_X, 0, 0), (0, PARTITION_Y1, 0), (0, 0, Z), PART_RGB),
    ]
    Vs, Ts, Cs, n = [], [], [], 0
    for org, u, v, rgb in parts:
        V, T = grid_quad(org, u, v, _cells(np.linalg.norm(u), 0.25), _cells(np.linalg.norm(v), 0.25))
        Vs.append(V), Ts.append(T + n), Cs.append(np.tile(rgb, (len(V), 1)))
        n += len(V)
    inst_vertices = {}
    for iid, _, centre, size, yaw, rgb in OBJECTS:
        V, T = box_mesh(centre, size, yaw)
        inst_vertices[iid] = np.arange(n, n + len(V))
        Vs.append(V), Ts.append(T + n), Cs.append(np.tile(rgb, (len(V), 1)))
        n += len(V)
    verts, tris, cols = np.concatenate(Vs), np.concatenate(Ts), np.concatenate(Cs).astype(np.uint8)
    write_mesh_ply(root / "mesh.ply", verts, tris, cols, comments=["frame: gravity_z_up_metric"])

    instances = []
    for iid, label, centre, size, yaw, _ in OBJECTS:
        P = verts[inst_vertices[iid]]
        instances.append({
            "id": iid, "label": label, "score": 0.8, "n_views": 3, "label_votes": {label: 2.4},
            "vertex_ids": inst_vertices[iid].tolist(), "n_points": int(len(P)),
            "box": {"center": list(centre), "size": list(size), "yaw_rad": yaw},
            "aabb": {"min": P.min(0).tolist(), "max": P.max(0).tolist()},
            "first_frame": 0, "last_frame": 30, "first_timestamp_s": 0.0, "last_timestamp_s": 3.0,
            "views": [], "caption": None})
    (root / "instances.json").write_text(json.dumps({
        "frame": "gravity_z_up_metric", "units": "m", "geometry": "mesh.ply", "n_vertices": int(len(verts)),
        "detector": "synthetic", "instances": instances}))
    polygon = [[0, 0], [X, 0], [X, Y], [0, Y]]
    (root / "layout.json").write_text(json.dumps({
        "frame": "gravity_z_up_metric", "units": "m", "world_from_sfm": np.eye(4).tolist(),
        "floor": {"normal": [0, 0, 1], "d": 0.0, "n_inliers": 100, "rms_m": 0.0},
        "ceiling": {"normal": [0, 0, -1], "d": Z, "height_m": Z, "n_inliers": 100},
        "walls": [{"normal": [1, 0, 0], "d": 0.0, "n_inliers": 10, "length_m": Y},
                  {"normal": [-1, 0, 0], "d": X, "n_inliers": 10, "length_m": Y},
                  {"normal": [0, 1, 0], "d": 0.0, "n_inliers": 10, "length_m": X},
                  {"normal": [0, -1, 0], "d": Y, "n_inliers": 10, "length_m": X}],
        "room": {"polygon_xy": polygon, "floor_area_m2": X * Y, "extent_m": [X, Y], "height_m": Z,
                 "height_source": "ceiling_plane"},
        "cameras": {"n_registered": len(CAMERAS), "median_height_m": 1.4}}))
    poses = {f: look_at(eye, tgt) for f, eye, tgt in CAMERAS}
    frames = [{"name": f"{f:06d}.jpg", "source_frame": f, "timestamp_s": f / 10.0, "width": W, "height": H,
               "K": K.tolist(), "cam_from_world": poses[f].tolist(), "registered": True} for f, _, _ in CAMERAS]
    frames.append({"name": "000040.jpg", "source_frame": 40, "timestamp_s": 4.0, "width": W, "height": H,
                   "K": K.tolist(), "registered": False})
    (root / "cameras.json").write_text(json.dumps({"convention": "opencv", "world": "gravity_z_up_metric",
                                                   "frames": frames}))
    (root / "manifest.json").write_text(json.dumps({"status": "complete", "stages": {}, "source": {}}))
    if with_frames:
        from vid2scene.tasks.bev import project, rasterize

        (root / "frames").mkdir(exist_ok=True)
        (root / "depth").mkdir(exist_ok=True)
        for f, T in poses.items():
            uv, z = project(verts, K, T)
            keep = np.all(z[tris] > 0.01, axis=1)
            zbuf, _, rgb = rasterize(uv, z, tris[keep], H, W, colors=cols, perspective=True)
            cv2.imwrite(str(root / "frames" / f"{f:06d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            d = np.where(np.isfinite(zbuf), zbuf, 0).astype(np.float32)
            np.savez_compressed(root / "depth" / f"{f:06d}.npz", depth_m=d, confidence=np.ones_like(d))
    return Scene5(Scene(root), verts, tris, cols, inst_vertices, poses)
