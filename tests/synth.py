"""Synthetic textured room with known geometry and cameras, for tests that check recovered quantities.

World frame: z up, floor at z = 0, metres; the room is the axis-aligned box ``[0, sx] × [0, sy] × [0, sz]``.
Cameras use OpenCV axes (x right, y down, z forward) and 4×4 ``cam_from_world`` matrices, as in DESIGN.md.

:func:`render_room` casts one ray per pixel (vectorised NumPy), intersects the inside of the room box and
any furniture boxes (solid, seen from outside), keeps the nearest hit, maps it to metric 2-D coordinates on
the face it hit and samples that face's procedural texture (multi-scale smoothed noise plus random
rectangles and disks, deterministic from a seed) with one bilinear ``cv2.remap`` over a texture atlas.
Shading is view-independent (a fixed brightness per face direction), so the same surface point looks the
same from every camera — what SIFT matching and KLT tracking expect.

Typical use::

    K = intrinsics(320, 240)
    poses = walk_trajectory(40)
    rgb, depth_m = render_room(poses[0], K, 320, 240)
    write_frames(folder, [render_room(p, K, 320, 240)[0] for p in poses])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOM = (5.0, 4.0, 2.7)

#: Default furniture: (min corner, max corner) of axis-aligned boxes inside ROOM, in metres.
FURNITURE: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.4, 2.9, 0.0), (1.6, 3.6, 0.8)),    # sideboard against the far (+y) wall
    ((3.3, 2.6, 0.0), (4.1, 3.4, 1.1)),    # cabinet
    ((2.1, 3.2, 0.0), (2.7, 3.7, 1.7)),    # tall shelf
    ((4.2, 0.4, 0.0), (4.7, 1.2, 0.7)),    # box in the +x corner
)

TEXELS_PER_M = 100.0  # texture resolution: 1 cm per texel
_PAD = 4              # texels of padding around each face in the atlas (bilinear never bleeds across faces)


def intrinsics(width: int, height: int, hfov_deg: float = 65.0) -> np.ndarray:
    """3×3 pinhole K with square pixels, principal point at the image centre (COLMAP pixel convention)."""
    f = 0.5 * width / np.tan(np.radians(hfov_deg) / 2)
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=np.float64)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4×4 ``cam_from_world`` (OpenCV axes) of a camera at ``eye`` looking at ``target``, ``up`` pointing up."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    n = np.linalg.norm(right)
    if n < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to up")
    right /= n
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd])
    T[:3, 3] = -T[:3, :3] @ eye
    return T


def camera_center(cam_from_world: np.ndarray) -> np.ndarray:
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    return -R.T @ t


def walk_trajectory(n: int, start=(1.0, 0.8, 1.5), end=(3.6, 1.4, 1.5), yaw_deg: tuple[float, float] = (70.0, 110.0),
                    sway_m: float = 0.25, pitch_deg: float = -8.0) -> list[np.ndarray]:
    """``n`` smooth ``cam_from_world`` poses of a walk from ``start`` to ``end`` (metres, ~1.5 m high).

    The camera translates along the straight line with a small sideways/vertical sway (``sway_m``), its
    yaw (heading from +x, counter-clockwise seen from above) turns smoothly from ``yaw_deg[0]`` to
    ``yaw_deg[1]``, and it looks slightly down (``pitch_deg``). Default: along the room, facing the +y wall
    with the furniture, so consecutive views have parallax.
    """
    start, end = np.asarray(start, float), np.asarray(end, float)
    poses = []
    for i in range(n):
        s = i / max(n - 1, 1)
        e = 0.5 - 0.5 * np.cos(np.pi * s)                    # ease in/out: smooth start and stop
        pos = start + e * (end - start)
        pos = pos + sway_m * np.array([0.0, np.sin(2 * np.pi * s), 0.5 * np.sin(4 * np.pi * s)])
        yaw = np.radians(yaw_deg[0] + e * (yaw_deg[1] - yaw_deg[0]))
        pitch = np.radians(pitch_deg)
        fwd = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
        poses.append(look_at(pos, pos + fwd))
    return poses


def linear_trajectory(n: int, start, end, target_offset=(0.0, 1.0, -0.1)) -> list[np.ndarray]:
    """``n`` poses at constant speed from ``start`` to ``end``, fixed orientation looking along ``target_offset``."""
    start, end, off = (np.asarray(v, float) for v in (start, end, target_offset))
    return [look_at(p, p + off) for p in (start + (end - start) * (i / max(n - 1, 1)) for i in range(n))]


# ---------------------------------------------------------------------------------------------------------
# textures
# ---------------------------------------------------------------------------------------------------------
def make_texture(h: int, w: int, seed: int) -> np.ndarray:
    """``h×w×3`` uint8 procedural texture: multi-scale smoothed noise, rectangles and disks."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 190, size=3)
    img = np.zeros((h, w, 3), np.float32) + base.astype(np.float32)
    for cell, amp in ((64, 40.0), (24, 30.0), (8, 22.0), (3, 14.0)):
        small = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2), 3)).astype(np.float32)
        up = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img += amp * up
    n_shapes = int(h * w / 900) + 8
    for _ in range(n_shapes):
        colour = tuple(float(c) for c in rng.uniform(10, 245, size=3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            hw, hh = int(rng.integers(3, 22)), int(rng.integers(3, 22))
            cv2.rectangle(img, (cx - hw, cy - hh), (cx + hw, cy + hh), colour, thickness=-1)
        else:
            cv2.circle(img, (cx, cy), int(rng.integers(3, 18)), colour, thickness=-1)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)  # soften edges: no sub-texel aliasing at typical distances
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Face:
    """One textured rectangle of the scene: ``axis`` is its normal axis; (u_axis, v_axis) span it."""

    axis: int
    u_axis: int
    v_axis: int
    u0: float
    v0: float
    atlas_x: int   # texel offset of the face's (u0, v0) corner in the atlas
    atlas_y: int
    w: int         # size in texels
    h: int
    shade: float


_SHADE = {(2, 0): 0.75, (2, 1): 1.1, (0, 0): 0.95, (0, 1): 0.9, (1, 0): 1.0, (1, 1): 0.85}  # (axis, side)


@functools.lru_cache(maxsize=8)
def _scene(room: tuple[float, float, float], furniture: tuple, seed: int):
    """Texture atlas and face table: faces 0..5 are the room's (axis a, side s → 2a+s, s=0 the min plane);
    then 6 per furniture box, same order."""
    rects = []  # (axis, side, u_axis, v_axis, u0, v0, u_len, v_len)
    boxes = [((0.0, 0.0, 0.0), room)] + [tuple(b) for b in furniture]
    for lo, hi in boxes:
        for a in range(3):
            ua, va = [x for x in range(3) if x != a]
            for side in (0, 1):
                rects.append((a, side, ua, va, lo[ua], lo[va], hi[ua] - lo[ua], hi[va] - lo[va]))
    sizes = [(int(np.ceil(r[6] * TEXELS_PER_M)) + 2, int(np.ceil(r[7] * TEXELS_PER_M)) + 2) for r in rects]
    # Shelf packing into rows of at most ~2048 texels (wider for a face that is wider than that).
    row_w = max(2048, max(tw for tw, _ in sizes) + 2 * _PAD)
    x, y, row_h, places = 0, 0, 0, []
    for tw, th in sizes:
        if x + tw + 2 * _PAD > row_w and x > 0:
            x, y, row_h = 0, y + row_h, 0
        places.append((x + _PAD, y + _PAD))
        x += tw + 2 * _PAD
        row_h = max(row_h, th + 2 * _PAD)
    atlas = np.zeros((y + row_h, row_w, 3), np.uint8)
    faces = []
    for k, ((a, side, ua, va, u0, v0, _, _), (tw, th), (px, py)) in enumerate(zip(rects, sizes, places)):
        tex = make_texture(th + 2 * _PAD, tw + 2 * _PAD, seed * 1000 + k)
        atlas[py - _PAD: py + th + _PAD, px - _PAD: px + tw + _PAD] = tex
        faces.append(_Face(a, ua, va, u0, v0, px, py, tw, th, _SHADE[(a, side)]))
    # Per-face lookup columns (float32): atlas x, atlas y, u0, v0, max u texel, max v texel, shade.
    lut = tuple(np.array(col, np.float32) for col in zip(*[(f.atlas_x, f.atlas_y, f.u0, f.v0, f.w - 1, f.h - 1, f.shade)
                                                            for f in faces]))
    return atlas, faces, lut


# ---------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------
def _rays(cam_from_world: np.ndarray, K: np.ndarray, width: int, height: int):
    """Camera centre (3,) and per-pixel world ray directions as three float32 arrays (H·W,), scaled so that
    the camera-z component is 1 (the ray parameter of a hit is then its depth)."""
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    C = -R.T @ t
    x = ((np.arange(width, dtype=np.float32) + 0.5 - K[0, 2]) / K[0, 0]).astype(np.float32)
    y = ((np.arange(height, dtype=np.float32) + 0.5 - K[1, 2]) / K[1, 1]).astype(np.float32)
    xs, ys = np.broadcast_to(x[None, :], (height, width)).ravel(), np.broadcast_to(y[:, None], (height, width)).ravel()
    Rt = R.T.astype(np.float32)  # world direction = R^T (x, y, 1)
    d = [Rt[a, 0] * xs + Rt[a, 1] * ys + Rt[a, 2] for a in range(3)]
    return C, d


def render_room(cam_from_world: np.ndarray, K: np.ndarray, width: int, height: int,
                room: tuple[float, float, float] = ROOM, furniture=FURNITURE,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render the textured room from one camera.

    Args:
        cam_from_world: 4×4, OpenCV axes. The camera centre must be inside the room.
        K: 3×3 intrinsics in pixels, COLMAP's convention: pixel (i, j) covers [i, i+1) × [j, j+1), so its
            centre is at (i + 0.5, j + 0.5) and ``cx = W / 2`` is the image centre.
        room: (sx, sy, sz) metres; world z up, floor at z = 0.
        furniture: axis-aligned boxes ``((x0, y0, z0), (x1, y1, z1))`` inside the room (may be empty).
        seed: texture seed.

    Returns:
        (``H×W×3`` uint8 RGB image, ``H×W`` float32 depth in metres along the camera z axis).
    """
    room = tuple(float(v) for v in room)
    furniture = tuple((tuple(map(float, lo)), tuple(map(float, hi))) for lo, hi in furniture)
    atlas, faces, lut = _scene(room, furniture, seed)
    C, d = _rays(np.asarray(cam_from_world, np.float64), np.asarray(K, np.float64), width, height)
    if np.any(C <= 0) or np.any(C >= np.asarray(room)):
        raise ValueError(f"camera centre {C} is outside the room {room}")
    Cf = C.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = [np.float32(1.0) / da for da in d]
        pos = [da > 0 for da in d]
        # Inside the room each axis' exit plane is its max plane when moving +, its min plane when moving -.
        t = [np.where(pos[a], (np.float32(room[a]) - Cf[a]) * inv[a], -Cf[a] * inv[a]) for a in range(3)]
        for a in range(3):
            t[a][~(t[a] > 0)] = np.inf  # parallel rays (inf or nan)
        t_hit = np.minimum(np.minimum(t[0], t[1]), t[2])
        axis = np.where(t[0] == t_hit, 0, np.where(t[1] == t_hit, 1, 2)).astype(np.int8)
        face = (2 * axis + np.choose(axis, pos)).astype(np.int16)
        # Furniture: slab test from outside; the entry plane (largest per-axis entry t) is the face hit.
        for b, (lo, hi) in enumerate(furniture):
            t_in, t_out, b_axis = None, None, None
            for a in range(3):
                t1 = (np.float32(lo[a]) - Cf[a]) * inv[a]
                t2 = (np.float32(hi[a]) - Cf[a]) * inv[a]
                tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
                if not np.isfinite(inv[a]).all():  # ray parallel to the slab: inside it or never
                    par = ~np.isfinite(inv[a])
                    inside = (Cf[a] > lo[a]) & (Cf[a] < hi[a])
                    tn = np.where(par, -np.inf if inside else np.inf, tn)
                    tf = np.where(par, np.inf if inside else -np.inf, tf)
                if t_in is None:
                    t_in, t_out, b_axis = tn, tf, np.zeros(len(tn), np.int8)
                else:
                    b_axis = np.where(tn > t_in, np.int8(a), b_axis)
                    t_in, t_out = np.maximum(t_in, tn), np.minimum(t_out, tf)
            hit = (t_in <= t_out) & (t_in > 1e-6) & (t_in < t_hit)
            if hit.any():
                t_hit = np.where(hit, t_in, t_hit)
                axis = np.where(hit, b_axis, axis)
                # seen from outside, moving + along the axis enters through the min plane (side 0)
                side = ~np.choose(b_axis, pos)
                face = np.where(hit, 6 + 6 * b + 2 * b_axis + side, face).astype(np.int16)
    P = [Cf[a] + t_hit * d[a] for a in range(3)]
    # In-plane coordinates: normal x -> (y, z); normal y -> (x, z); normal z -> (x, y).
    uu = np.where(axis == 0, P[1], P[0])
    vv = np.where(axis == 2, P[1], P[2])
    mx = lut[0][face] + np.clip((uu - lut[2][face]) * np.float32(TEXELS_PER_M), 0, lut[4][face])
    my = lut[1][face] + np.clip((vv - lut[3][face]) * np.float32(TEXELS_PER_M), 0, lut[5][face])
    img = cv2.remap(atlas, mx.reshape(height, width), my.reshape(height, width),
                    interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    shade = lut[6][face].reshape(height, width, 1)
    rgb = cv2.convertScaleAbs(img * shade)  # saturating cast to uint8
    depth = t_hit.reshape(height, width).astype(np.float32)  # rays have camera z = 1: t is the depth
    return rgb, depth


def room_surface_distance(points_in_world: np.ndarray, room=ROOM, furniture=FURNITURE) -> np.ndarray:
    """Distance (m) from each point to the nearest surface of the scene (room walls or furniture boxes)."""
    p = np.asarray(points_in_world, np.float64).reshape(-1, 3)
    hi = np.asarray(room, float)
    # Inside the room the nearest wall distance is the smallest distance to any of the six planes.
    d = np.min(np.concatenate([np.abs(p), np.abs(hi - p)], axis=1), axis=1)
    for lo_b, hi_b in furniture:
        lo_b, hi_b = np.asarray(lo_b, float), np.asarray(hi_b, float)
        outside = np.maximum(np.maximum(lo_b - p, p - hi_b), 0.0)
        d_out = np.linalg.norm(outside, axis=1)
        inside = np.all((p >= lo_b) & (p <= hi_b), axis=1)
        d_in = np.min(np.concatenate([p - lo_b, hi_b - p], axis=1), axis=1)
        d = np.minimum(d, np.where(inside, d_in, d_out))
    return d


def write_frames(folder: str | Path, images: list[np.ndarray], ext: str = ".png") -> list[Path]:
    """Write RGB images as ``000000.png``, ``000001.png``, … into ``folder`` (created); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rgb in enumerate(images):
        p = folder / f"{i:06d}{ext}"
        if not cv2.imwrite(str(p), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {p}")
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------------------
# scenes through the real stages
# ---------------------------------------------------------------------------------------------------------
def fast_config(**sections):
    """Default ``PipelineConfig`` with the quick shot detector (PySceneDetect adaptive; TransNetV2 is slow on
    CPU). ``sections``: per stage a dict of overrides, e.g. ``fast_config(keyframes={"min_disparity": 0.02})``.
    """
    from vid2scene.config import PipelineConfig

    cfg = PipelineConfig()
    cfg.shots.backend = "adaptive"
    for stage, values in sections.items():
        for k, v in values.items():
            setattr(getattr(cfg, stage), k, v)
    return cfg


def scene_from_images(root: str | Path, images: list[np.ndarray]):
    """Write ``images`` (RGB) as PNGs to ``root/images``; create and return the scene ``root/scene`` for them."""
    from vid2scene import ingest
    from vid2scene.scene import Scene

    folder = Path(root) / "images"
    write_frames(folder, images)
    return Scene.create(Path(root) / "scene", ingest.describe_source(folder))


def run_stages(scene, cfg, until: str, start: str = "ingest") -> dict:
    """Run ``start`` .. ``until`` (inclusive) with :func:`vid2scene.pipeline.run_stage`; returns the results."""
    from vid2scene import pipeline

    order = pipeline.STAGE_ORDER
    return {name: pipeline.run_stage(scene, name, cfg)
            for name in order[order.index(start): order.index(until) + 1]}


def encode_clip(path, frames, fps: int = 10):
    """Encode ``H×W×3`` uint8 RGB ``frames`` as an H.264 mp4 at ``fps`` with PyAV; returns ``path``."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        h, w = frames[0].shape[:2]
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for img in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def random_texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A lightly blurred random ``h×w×3`` uint8 texture that KLT and SIFT lock onto."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)
