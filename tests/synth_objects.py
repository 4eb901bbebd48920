"""A synthetic furnished room with *known objects*, built straight into a scene folder (no SfM), for the
``detect`` / ``instances`` / ``scene_graph`` tests.

World: ``gravity_z_up_metric`` (z up, floor z = 0, metres); the room is ``[0, 5] × [0, 4] × [0, 2.7]``.
Objects are gravity-aligned boxes (label, centre xy, size, yaw, bottom z) meshed on a regular grid (no bottom
face, as a TSDF never sees one). Cameras (OpenCV axes) walk a ring at 1.5 m looking into the room; the
mesh is ray-cast with Open3D for exact depth maps (``depth/*.npz``) and per-pixel object ids, from which the
"detector" boxes are made: the box of each object's visible pixels, jittered, some dropped, some mislabelled,
plus random false positives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOM = (5.0, 4.0, 2.7)


@dataclass
class Obj:
    label: str
    center_xy: tuple[float, float]
    size: tuple[float, float, float]  # local x, local y, height (m)
    yaw: float                        # rad, local x from world +x about +z
    z0: float = 0.0                   # bottom height (m)

    @property
    def center(self) -> np.ndarray:
        return np.array([self.center_xy[0], self.center_xy[1], self.z0 + self.size[2] / 2])


OBJECTS: tuple[Obj, ...] = (
    Obj("dining table", (2.2, 3.0), (1.4, 0.8, 0.75), 0.25),
    Obj("chair", (2.0, 1.95), (0.5, 0.5, 0.9), -0.3),
    Obj("cup", (2.3, 3.0), (0.1, 0.1, 0.12), 0.0, 0.75),
    Obj("refrigerator", (4.5, 3.5), (0.7, 0.7, 1.75), 0.0),
    Obj("couch", (0.55, 1.8), (1.8, 0.9, 0.8), math.pi / 2),
    Obj("tv", (0.175, 1.8), (0.9, 0.25, 0.5), math.pi / 2, 1.2),
)


def _grid_face(origin, u, v, nu, nv):
    """Vertices and triangles of a grid on the parallelogram ``origin + a·u + b·v``, ``a, b ∈ [0, 1]``."""
    a, b = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    P = origin + a.reshape(-1, 1) * u + b.reshape(-1, 1) * v
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    T = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    return P, T


def box_mesh(center_xy, size, yaw, z0, spacing=0.025, bottom=False, inward=False):
    """Gridded box surface (``V×3`` float64, ``F×3`` int64), outward (or ``inward``) facing, welded edges."""
    sx, sy, sz = size
    lo = np.array([-sx / 2, -sy / 2, 0.0])
    ext = np.array([sx, sy, sz])
    Vs, Fs, n0 = [], [], 0
    for axis in range(3):
        for side in (0, 1):
            if axis == 2 and side == 0 and not bottom:
                continue
            o = lo.copy()
            o[axis] += side * ext[axis]
            ua, va = [a for a in range(3) if a != axis]
            u, v = np.zeros(3), np.zeros(3)
            u[ua], v[va] = ext[ua], ext[va]
            P, T = _grid_face(o, u, v, max(1, math.ceil(ext[ua] / spacing)), max(1, math.ceil(ext[va] / spacing)))
            normal = np.zeros(3)
            normal[axis] = 1.0 if side else -1.0
            if inward:
                normal = -normal
            tn = np.cross(P[T[:, 1]] - P[T[:, 0]], P[T[:, 2]] - P[T[:, 0]])
            T = np.where((tn @ normal < 0)[:, None], T[:, [0, 2, 1]], T)
            Vs.append(P)
            Fs.append(T + n0)
            n0 += len(P)
    V, F = np.concatenate(Vs), np.concatenate(Fs)
    key = np.round(V / 1e-6).astype(np.int64)
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    V, F = V[first], inv.ravel()[F]
    c, s = math.cos(yaw), math.sin(yaw)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    V = V @ R.T + np.array([center_xy[0], center_xy[1], z0])
    return V, F


def ring_cameras(n=30, radii=(1.5, 1.1), centre=(2.5, 2.0), height=1.5, seed=0):
    """``n`` ``cam_from_world`` poses on an ellipse at ``height``, each looking at a jittered point near the
    room centre at 0.6 m."""
    from tests.synth import look_at

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = (centre[0] + radii[0] * math.cos(a), centre[1] + radii[1] * math.sin(a), height)
        target = (2.5 + rng.uniform(-0.6, 0.6), 2.0 + rng.uniform(-0.5, 0.5), 0.6)
        out.append(look_at(eye, target))
    return out


def make_detections(ids: np.ndarray, objects, rng, noise_rel=0.03, miss=0.1, mislabel=0.1, n_fp=1,
                    min_pixels=40) -> list[dict]:
    """Detector-like boxes from a per-pixel object-id image (``-1`` = no object)."""
    from vid2scene.detect.coco import COCO_ID

    h, w = ids.shape
    dets = []
    for k, o in enumerate(objects):
        ys, xs = np.nonzero(ids == k)
        if len(xs) < min_pixels or rng.random() < miss:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
        bw, bh = x1 - x0, y1 - y0
        box = np.array([x0, y0, x1, y1], float) + rng.normal(0, noise_rel, 4) * [bw, bh, bw, bh]
        box = np.clip(box, 0, [w, h, w, h])
        label = o.label
        if label == "chair" and rng.random() < mislabel:
            label = "couch"
        dets.append({"label": label, "coco_id": COCO_ID[label], "score": round(float(rng.uniform(0.5, 0.95)), 3),
                     "bbox_xyxy": [round(float(v), 2) for v in box]})
    for _ in range(n_fp):
        bw, bh = rng.uniform(15, 70, 2)
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        label = str(rng.choice(["tv", "chair", "bottle"]))
        dets.append({"label": label, "coco_id": COCO_ID[label], "score": round(float(rng.uniform(0.36, 0.5)), 3),
                     "bbox_xyxy": [round(x0, 2), round(y0, 2), round(x0 + bw, 2), round(y0 + bh, 2)]})
    return dets


def build_scene(root, objects=OBJECTS, n_views=30, width=320, height=240, seed=0, detections=True,
                det_kwargs=None, spacing=0.025):
    """Write a scene folder whose stages ``ingest`` .. ``layout`` (and ``detect`` if ``detections``) are
    complete; returns ``(scene, info)`` with the poses, K and per-view id images."""
    import open3d as o3d

    from tests.synth import intrinsics
    from vid2scene import ingest  # noqa: F401  (stage modules import cleanly)
    from vid2scene.fusion import WORLD_METRIC, frame_comments, write_mesh_ply
    from vid2scene.io import write_json
    from vid2scene.scene import CameraFrame, Scene

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scene = Scene.create(root / "scene", {"path": str(root / "synthetic"), "kind": "images", "sha256": "synthetic",
                                         "size_bytes": 0})
    parts = [box_mesh((ROOM[0] / 2, ROOM[1] / 2), ROOM, 0.0, 0.0, spacing=0.1, bottom=True, inward=True)]
    for o in objects:
        parts.append(box_mesh(o.center_xy, o.size, o.yaw, o.z0, spacing=spacing))
    V = np.concatenate([p[0] for p in parts])
    offs = np.cumsum([0] + [len(p[0]) for p in parts])
    F = np.concatenate([p[1] + offs[i] for i, p in enumerate(parts)])
    owner = np.concatenate([np.full(len(p[1]), i - 1) for i, p in enumerate(parts)])  # triangle -> object (-1 room)
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(V), o3d.utility.Vector3iVector(F.astype(np.int32)))
    m.compute_vertex_normals()
    cols = np.full((len(V), 3), 180, np.uint8)
    write_mesh_ply(scene.root / "mesh.ply", V, F, colors=cols, normals=np.asarray(m.vertex_normals),
                   comments=frame_comments(WORLD_METRIC, np.eye(4), "synthetic"))
    rs = o3d.t.geometry.RaycastingScene()
    rs.add_triangles(o3d.core.Tensor(V.astype(np.float32)), o3d.core.Tensor(F.astype(np.uint32)))
    K = intrinsics(width, height)
    poses = ring_cameras(n_views, seed=seed)
    rng = np.random.default_rng(seed)
    frames, id_images, kfs = [], [], []
    palette = np.random.default_rng(1).integers(60, 255, (len(objects) + 1, 3)).astype(np.uint8)
    (scene.root / "depth").mkdir(exist_ok=True)
    scene.frames_dir.mkdir(exist_ok=True)
    all_dets = {}
    for i, T in enumerate(poses):
        sf = 10 * i
        R, t = T[:3, :3], T[:3, 3]
        C = -R.T @ t
        xs, ys = np.meshgrid((np.arange(width) + 0.5 - K[0, 2]) / K[0, 0], (np.arange(height) + 0.5 - K[1, 2]) / K[1, 1])
        d = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3) @ R
        rays = np.concatenate([np.broadcast_to(C, d.shape), d], 1).astype(np.float32)
        hit = rs.cast_rays(o3d.core.Tensor(rays))
        depth = hit["t_hit"].numpy().reshape(height, width)
        prim = hit["primitive_ids"].numpy().reshape(height, width).astype(np.int64)
        ok = np.isfinite(depth)
        ids = np.where(ok, owner[np.clip(prim, 0, len(owner) - 1)], -1)
        id_images.append(ids)
        np.savez_compressed(scene.root / "depth" / f"{sf:06d}.npz", depth_m=np.where(ok, depth, 0).astype(np.float32),
                            confidence=ok.astype(np.float32), scale_applied=np.float64(1.0),
                            world=np.str_(WORLD_METRIC))
        shade = np.clip(1.2 - 0.15 * np.where(ok, depth, 5), 0.3, 1.0)[..., None]
        rgb = (palette[ids + 1] * shade).astype(np.uint8)
        cv2.imwrite(str(scene.keyframe_path(sf)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frames.append(CameraFrame(f"{sf:06d}.jpg", sf, float(i), width, height, K, T))
        kfs.append({"source_frame": sf, "reason": "synthetic"})
        if detections:
            all_dets[sf] = make_detections(ids, objects, rng, **(det_kwargs or {}))
    write_json(scene.keyframes_json, {"keyframes": kfs})
    write_json(scene.cameras_json, {"convention": "opencv", "world": WORLD_METRIC, "units": "m",
                                    "world_from_sfm": np.eye(4).tolist(), "frames": [f.to_json() for f in frames]})
    sx, sy, sz = ROOM
    layout = {"frame": WORLD_METRIC, "units": "m", "world_from_sfm": np.eye(4).tolist(),
              "scale": {"metres_per_sfm_unit": 1.0, "sigma": 0.1, "method": "priors", "estimates": []},
              "floor": {"normal": [0, 0, 1], "d": 0.0},
              "ceiling": {"normal": [0, 0, -1], "d": sz, "height_m": sz},
              "walls": [{"normal": [1, 0, 0], "d": 0.0}, {"normal": [-1, 0, 0], "d": sx},
                        {"normal": [0, 1, 0], "d": 0.0}, {"normal": [0, -1, 0], "d": sy}],
              "room": {"polygon_xy": [[0, 0], [sx, 0], [sx, sy], [0, sy]], "floor_area_m2": sx * sy,
                       "extent_m": [sx, sy], "height_m": sz, "height_source": "ceiling_plane"}}
    write_json(scene.root / "layout.json", layout)
    done = ["ingest", "shots", "quality", "keyframes", "sfm", "depth", "fusion", "layout"]
    if detections:
        write_detections(scene, all_dets, width, height)
        done.append("detect")

    def mark(man):
        for s in done:
            man["stages"][s] = {"status": "complete", "config_hash": "synthetic"}
        man["world_from_sfm"] = np.eye(4).tolist()

    scene.update_manifest(mark)
    return scene, {"poses": poses, "K": K, "ids": id_images, "frames": frames, "detections": all_dets}


def write_detections(scene, dets: dict, width: int, height: int) -> None:
    from vid2scene.io import write_json

    for sf, d in dets.items():
        write_json(scene.root / "detections" / f"{sf:06d}.json",
                   {"frame": sf, "width": width, "height": height, "detector": "synthetic", "detections": d,
                    "people": []})


def yaw_error(a: float, b: float, period: float = math.pi) -> float:
    """Smallest |a − b| modulo ``period`` (π for a rectangle, π/2 for a square footprint)."""
    d = (a - b) % period
    return min(d, period - d)
