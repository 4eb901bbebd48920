"""GPT4Scene-style prompts: a bird's-eye view (BEV) of the scene and keyframes, both marked with object IDs.

GPT4Scene (Qi et al., 2025, "GPT4Scene: Understand 3D Scenes from Videos with Vision-Language Models") prompts
a vision-language model with a top-down BEV image of the reconstructed scene plus a few video frames, on both of
which every object carries the same ID marker, and the text refers to the objects by those IDs (``<OBJ###>``).

What :func:`generate` writes (all under ``SCENE/tasks/``):

``bev.png``
    Orthographic top-down render of the mesh's vertex colours in the world frame (:meth:`Scene.mesh` with
    ``frame="world"``: z up, floor z = 0, metres), long side ``max_side_px`` (≤ 512 by default). Triangles above the ceiling cut
    (room height − ``ceiling_margin_m`` from ``layout.json``) are dropped so the view looks into the room.
    Pixel ``(u, v)`` (x right, y down, pixel centres at +0.5) of world ``(x, y)``::

        u = (x − x_min) / metres_per_pixel,   v = (y_max − y) / metres_per_pixel

    i.e. world +x to the right and world +y up in the image. Each instance is marked at its box centre.
``marked_frames/NNNNNN.jpg``
    ``n_frames`` registered keyframes sampled evenly over the video; an instance is marked at the projection
    ``K · cam_from_world · center`` of its box centre when the centre falls in the image and at least
    ``min_visible_share`` of its (sampled) vertices pass the occlusion test against a z-buffer of the mesh
    rendered from that camera (``occlusion="mesh"``) or against the keyframe's depth map in metres
    (:meth:`Scene.depth` with ``frame="world"``; ``occlusion="depth"``).
``gpt4scene.json``
    ``{"bev": {"image", "width", "height", "metres_per_pixel", "pixel_from_world" (3×3, homogeneous xy),
    "markers": [...]}, "frames": [{"image", "source_frame", "timestamp_s", "width", "height", "markers": [...]}],
    "objects": [{"id", "tag", "label"}], ...}``; a marker is ``{"id", "tag", "label", "pixel_xy": [u, v]}``
    (float pixel position of the marker's centre, x right, y down; frames add ``depth_m`` and
    ``visible_share``).
``gpt4scene/scene_anno.json``, ``gpt4scene/train_sharegpt.json``, ``gpt4scene/dataset_info.json``
    What GPT4Scene's loader and trainer read (:mod:`.gpt4scene`): ``scene_anno[scene_id]`` = the BEV and
    frame paths, and a ShareGPT training set whose conversations carry those images.

The default frame count is 32, as GPT4Scene's released model (``GPT4Scene-qwen2vl_full_sft_mark_32_3D_img512``).

The rasteriser (:func:`rasterize`) is a vectorised NumPy scan-converter with a z-buffer (pixel-centre sampling,
barycentric interpolation, perspective-correct for cameras), so nothing needs an OpenGL context.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .. import geometry
from ..errors import InputError, StageFailed
from ..io import write_image_rgb, write_json
from ..scene import WORLD, WORLD_NAME, CameraFrame, Scene
from ..stage import StageResult
from . import common, gpt4scene

NAME = "bev"
OUTPUTS = ["tasks/bev.png", "tasks/gpt4scene.json", "tasks/marked_frames/", "tasks/gpt4scene/"]


def obj_tag(instance_id: int) -> str:
    """GPT4Scene-style marker text: ``obj_tag(3) == "<OBJ003>"``."""
    return f"<OBJ{int(instance_id):03d}>"


class Config(BaseModel):
    """Configuration of the GPT4Scene BEV / marked-frame generator."""

    model_config = ConfigDict(extra="forbid")
    n_frames: int = Field(32, ge=1, le=64, description="keyframes sampled evenly across the video (GPT4Scene's "
                                                       "released model: 32)")
    image_root: str | None = Field(None, description="write GPT4Scene image paths relative to this folder "
                                                     "(default: absolute)")
    max_side_px: int = Field(512, ge=64, le=4096, description="long side of bev.png in pixels")
    margin_m: float = Field(0.2, ge=0, description="empty border around the scene in the BEV (metres)")
    extent_percentile: float = Field(0.5, ge=0, lt=10, description="BEV extent: this percentile .. 100 − it of "
                                                                   "the kept vertices' x / y (drops flyaways)")
    ceiling_margin_m: float = Field(0.3, ge=0, description="drop triangles above room height − this")
    max_height_m: float | None = Field(None, gt=0, description="explicit cut height (metres above the floor); "
                                                               "overrides layout.json's room height")
    occlusion: Literal["mesh", "depth"] = Field("mesh", description="visibility test against a mesh z-buffer "
                                                                   "or the scene's depth maps")
    occlusion_max_side_px: int = Field(320, ge=32, description="z-buffer resolution (long side) for occlusion")
    depth_tol_m: float = Field(0.05, ge=0, description="a point is visible when its depth ≤ buffer + tol_m + "
                                                       "tol_rel · depth")
    depth_tol_rel: float = Field(0.03, ge=0)
    min_visible_share: float = Field(0.1, gt=0, le=1, description="share of an instance's vertices that must be "
                                                                  "visible in a frame for a marker")
    max_instance_points: int = Field(3000, ge=10, description="vertices sampled per instance for visibility")
    marker_text: Literal["tag", "number"] = Field("tag", description="draw '<OBJ003>' or just '3'")
    font_scale: float = Field(0.4, gt=0)
    frame_jpeg_quality: int = Field(92, ge=10, le=100)
    background_rgb: tuple[int, int, int] = (255, 255, 255)
    seed: int = 0


# ---------------------------------------------------------------------------------------------------------
# rasteriser
# ---------------------------------------------------------------------------------------------------------
def rasterize(xy: np.ndarray, depth: np.ndarray, triangles: np.ndarray, height: int, width: int,
              colors: np.ndarray | None = None, perspective: bool = False,
              budget: int = 4_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Scan-convert triangles into a z-buffer (nearest = smallest ``depth``), vectorised over pixels.

    Args:
        xy: ``N×2`` float vertex positions in continuous pixel coordinates (x right, y down; the centre of pixel
            ``(c, r)`` is ``(c + 0.5, r + 0.5)``). A pixel is covered when its centre is inside the triangle.
        depth: ``N`` float depth per vertex (camera z for perspective, any "distance" for orthographic).
        triangles: ``M×3`` vertex indices.
        colors: optional ``N×3`` (0..255) vertex colours, interpolated barycentrically.
        perspective: interpolate 1/depth (perspective-correct) instead of depth; needs depth > 0.
        budget: most candidate pixels processed at once (memory ≈ 100 bytes each).

    Returns:
        (``H×W`` float64 depth buffer, ``inf`` where empty; ``H×W`` int64 triangle index, −1 where empty;
        ``H×W×3`` uint8 colours or None).
    """
    xy = np.asarray(xy, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    zbuf = np.full(height * width, np.inf)
    tbuf = np.full(height * width, -1, dtype=np.int64)
    cbuf = None if colors is None else np.zeros((height * width, 3), dtype=np.float64)
    cols = None if colors is None else np.asarray(colors, dtype=np.float64)
    if len(tri) == 0:
        return zbuf.reshape(height, width), tbuf.reshape(height, width), None if cbuf is None else \
            cbuf.reshape(height, width, 3).astype(np.uint8)
    P = xy[tri]  # M×3×2
    finite = np.all(np.isfinite(P), axis=(1, 2))
    P = np.where(finite[:, None, None], P, 0.0)
    x, y = P[..., 0], P[..., 1]
    c0 = np.clip(np.ceil(x.min(1) - 0.5), 0, width).astype(np.int64)
    c1 = np.clip(np.floor(x.max(1) - 0.5), -1, width - 1).astype(np.int64)
    r0 = np.clip(np.ceil(y.min(1) - 0.5), 0, height).astype(np.int64)
    r1 = np.clip(np.floor(y.max(1) - 0.5), -1, height - 1).astype(np.int64)
    bw, bh = np.maximum(c1 - c0 + 1, 0), np.maximum(r1 - r0 + 1, 0)
    area = (y[:, 1] - y[:, 2]) * (x[:, 0] - x[:, 2]) + (x[:, 2] - x[:, 1]) * (y[:, 0] - y[:, 2])
    dz = depth[tri]
    ok = finite & (bw > 0) & (bh > 0) & (np.abs(area) > 1e-12) & np.all(np.isfinite(dz), axis=1)
    if perspective:
        ok &= np.all(dz > 0, axis=1)
    idx = np.flatnonzero(ok)
    counts = (bw * bh)[idx]
    cum = np.cumsum(counts)
    start = 0
    while start < len(idx):  # chunks of whole triangles within the budget (a huge triangle gets its own chunk)
        base = int(cum[start - 1]) if start else 0
        end = max(int(np.searchsorted(cum, base + budget, side="right")), start + 1)
        t = idx[start:end]
        n = counts[start:end]
        start = end
        rep = np.repeat(np.arange(len(t)), n)
        k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        tt = t[rep]
        col = c0[tt] + k % bw[tt]
        row = r0[tt] + k // bw[tt]
        px, py = col + 0.5, row + 0.5
        X, Y, A = x[tt], y[tt], area[tt]
        l0 = ((Y[:, 1] - Y[:, 2]) * (px - X[:, 2]) + (X[:, 2] - X[:, 1]) * (py - Y[:, 2])) / A
        l1 = ((Y[:, 2] - Y[:, 0]) * (px - X[:, 2]) + (X[:, 0] - X[:, 2]) * (py - Y[:, 2])) / A
        l2 = 1.0 - l0 - l1
        eps = -1e-9
        inside = (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
        if not inside.any():
            continue
        l0, l1, l2, tt, col, row = l0[inside], l1[inside], l2[inside], tt[inside], col[inside], row[inside]
        D = dz[tt]
        if perspective:
            w = np.stack([l0 / D[:, 0], l1 / D[:, 1], l2 / D[:, 2]], axis=1)
            inv = w.sum(1)
            z = 1.0 / inv
            w /= inv[:, None]
        else:
            w = np.stack([l0, l1, l2], axis=1)
            z = (w * D).sum(1)
        key = row * width + col
        order = np.lexsort((z, key))
        key, first = np.unique(key[order], return_index=True)
        sel = order[first]
        z = z[sel]
        better = z < zbuf[key]
        key, sel = key[better], sel[better]
        zbuf[key] = z[better]
        tbuf[key] = tt[sel]
        if cbuf is not None:
            vc = cols[tri[tt[sel]]]  # K×3×3
            cbuf[key] = np.einsum("kj,kjc->kc", w[sel], vc)
    rgb = None if cbuf is None else np.clip(np.round(cbuf), 0, 255).astype(np.uint8).reshape(height, width, 3)
    return zbuf.reshape(height, width), tbuf.reshape(height, width), rgb


# ---------------------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------------------
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
                     [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40],
                     [128, 0, 0], [170, 255, 195], [128, 128, 0], [0, 0, 128], [128, 128, 128]], dtype=np.uint8)


def marker_color(instance_id: int) -> tuple[int, int, int]:
    c = _PALETTE[int(instance_id) % len(_PALETTE)]
    return int(c[0]), int(c[1]), int(c[2])


def draw_marker(img_rgb: np.ndarray, uv: tuple[float, float], text: str, color: tuple[int, int, int],
                font_scale: float = 0.4) -> tuple[int, int]:
    """Draw a pin at ``uv`` (in place, RGB): a dot in ``color`` with a dark outline on the pixel that contains
    ``uv``, and ``text`` in a filled ``color`` box just above it. Returns the dot's pixel ``(col, row)``."""
    import cv2

    u, v = int(np.floor(uv[0])), int(np.floor(uv[1]))  # the pixel whose square contains uv
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, font_scale, 1)
    x0, y1 = u - tw // 2 - 2, v - 5
    h, w = img_rgb.shape[:2]
    x0 = int(np.clip(x0, 0, max(0, w - tw - 5)))  # keep the label inside the image; the dot stays at uv
    if y1 - th - base - 2 < 0:
        y1 = v + 6 + th + base + 2  # no room above: label below the dot
    x1, y0 = x0 + tw + 4, y1 - th - base - 2
    cv2.rectangle(img_rgb, (x0, y0), (x1, y1), color, thickness=-1)
    lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    fg = (0, 0, 0) if lum > 140 else (255, 255, 255)
    cv2.putText(img_rgb, text, (x0 + 2, y1 - base - 1), font, font_scale, fg, 1, cv2.LINE_AA)
    cv2.circle(img_rgb, (u, v), 4, (0, 0, 0), thickness=-1)
    cv2.circle(img_rgb, (u, v), 2, color, thickness=-1)
    return u, v


# ---------------------------------------------------------------------------------------------------------
# BEV
# ---------------------------------------------------------------------------------------------------------
def cut_height(layout: dict | None, verts: np.ndarray, config: Config) -> float:
    """Height (metres, world z) above which triangles are dropped from the BEV."""
    if config.max_height_m is not None:
        return float(config.max_height_m)
    h = ((layout or {}).get("room") or {}).get("height_m")
    if h:
        return float(h) - config.ceiling_margin_m
    return float(np.percentile(verts[:, 2], 99.5)) - config.ceiling_margin_m


def bev_frame(xy_points: np.ndarray, config: Config) -> dict:
    """The BEV's pixel grid for world xy points: ``{"x_min", "y_max", "metres_per_pixel", "width", "height",
    "pixel_from_world"}`` with the long side equal to ``max_side_px`` (the other ≤ it)."""
    p = config.extent_percentile
    lo = np.percentile(xy_points, p, axis=0) - config.margin_m
    hi = np.percentile(xy_points, 100 - p, axis=0) + config.margin_m
    ext = np.maximum(hi - lo, 1e-3)
    res = float(ext.max()) / config.max_side_px
    w = int(min(config.max_side_px, max(1, np.ceil(ext[0] / res - 1e-6))))
    h = int(min(config.max_side_px, max(1, np.ceil(ext[1] / res - 1e-6))))
    A = np.array([[1 / res, 0, -lo[0] / res], [0, -1 / res, hi[1] / res], [0, 0, 1]])
    return {"x_min": float(lo[0]), "y_max": float(hi[1]), "metres_per_pixel": res, "width": w, "height": h,
            "pixel_from_world": A}


def render_bev(verts: np.ndarray, colors: np.ndarray | None, tris: np.ndarray, config: Config,
               z_cut: float, extra_xy: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """(``H×W×3`` uint8 RGB top-down image, grid dict of :func:`bev_frame`) of the mesh below ``z_cut``."""
    keep_t = np.all(verts[tris, 2] <= z_cut, axis=1)
    t = tris[keep_t]
    used = np.unique(t)
    if used.size == 0:
        raise InputError(f"mesh.ply has no triangles below the ceiling cut z = {z_cut:.2f} m")
    pts = verts[used, :2]
    if extra_xy is not None and len(extra_xy):
        pts = np.concatenate([pts, np.asarray(extra_xy, dtype=np.float64)])
    grid = bev_frame(pts, config)
    A = grid["pixel_from_world"]
    uv = verts[:, :2] @ A[:2, :2].T + A[:2, 2]
    cols = np.full((len(verts), 3), 160.0) if colors is None else colors
    zbuf, _, rgb = rasterize(uv, -verts[:, 2], t, grid["height"], grid["width"], colors=cols)
    rgb[~np.isfinite(zbuf)] = config.background_rgb
    return rgb, grid


# ---------------------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------------------
def sample_keyframes(cameras: list[CameraFrame], n: int) -> list[CameraFrame]:
    """``n`` registered cameras spread evenly (by order of source frame) from the first to the last."""
    reg = sorted((c for c in cameras if c.registered), key=lambda c: c.source_frame)
    if not reg:
        raise InputError("cameras.json has no registered keyframes")
    pick = np.unique(np.round(np.linspace(0, len(reg) - 1, min(n, len(reg)))).astype(int))
    return [reg[i] for i in pick]


def _scaled_K(cam: CameraFrame, w: int, h: int) -> np.ndarray:
    return geometry.intrinsics_for_size(cam.K, (cam.width, cam.height), (w, h))


def visibility_buffer(scene: Scene, cam: CameraFrame, verts: np.ndarray, tris: np.ndarray,
                      config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(``h×w`` depth buffer in metres — ``inf``/0 where unknown —, its ``K``) for one keyframe; ``cam`` and
    ``verts`` in the world frame.

    Raises:
        InputError: ``occlusion="depth"`` and the keyframe has no readable depth map.
    """
    if config.occlusion == "depth":
        try:
            d = scene.depth(cam.source_frame, frame=WORLD).depth.astype(np.float64)  # 0 = unknown: not visible
        except StageFailed as e:
            raise InputError(f"{scene.depth_path(cam.source_frame)} is missing or unreadable (occlusion='depth' "
                             f"needs the depth stage's maps): {e}") from e
        return d, _scaled_K(cam, d.shape[1], d.shape[0])
    s = min(1.0, config.occlusion_max_side_px / max(cam.width, cam.height))
    w, h = max(1, int(round(cam.width * s))), max(1, int(round(cam.height * s)))
    K = _scaled_K(cam, w, h)
    uv, z = geometry.project(verts, K, cam.cam_from_world)
    near = 1e-3
    tz = z[tris]
    t = tris[np.all(tz > near, axis=1)]
    tu = uv[t]
    inb = ~(np.all(tu[..., 0] < 0, 1) | np.all(tu[..., 0] > w, 1) | np.all(tu[..., 1] < 0, 1) |
            np.all(tu[..., 1] > h, 1))
    zbuf, _, _ = rasterize(uv, z, t[inb], h, w, perspective=True)
    return zbuf, K


def frame_markers(instances: list[dict], samples: dict[int, np.ndarray], cam: CameraFrame, img_w: int, img_h: int,
                  buf: np.ndarray, K_buf: np.ndarray, config: Config) -> list[dict]:
    """Markers for the instances visible in one keyframe (see the module docstring for the rule)."""
    K_img = _scaled_K(cam, img_w, img_h)
    bh, bw = buf.shape
    out = []
    for inst in instances:
        iid = int(inst["id"])
        c = np.asarray(inst["box"]["center"], dtype=np.float64)[None]
        uv, z = geometry.project(c, K_img, cam.cam_from_world)
        u, v, zc = float(uv[0, 0]), float(uv[0, 1]), float(z[0])
        if not (zc > 0 and 0 <= u < img_w and 0 <= v < img_h):
            continue
        pts = samples[iid]
        if len(pts) == 0:
            continue
        puv, pz = geometry.project(pts, K_buf, cam.cam_from_world)
        col = np.floor(puv[:, 0]).astype(np.int64, copy=False) if len(pts) else np.zeros(0, np.int64)
        row = np.floor(puv[:, 1]).astype(np.int64, copy=False) if len(pts) else np.zeros(0, np.int64)
        ok = (pz > 0) & (col >= 0) & (col < bw) & (row >= 0) & (row < bh)
        vis = np.zeros(len(pts), dtype=bool)
        b = buf[row[ok], col[ok]]
        vis[ok] = (b > 0) & np.isfinite(b) & (pz[ok] <= b + config.depth_tol_m + config.depth_tol_rel * pz[ok])
        share = float(vis.mean())
        if share < config.min_visible_share:
            continue
        out.append({"id": iid, "tag": obj_tag(iid), "label": inst.get("label"), "pixel_xy": [u, v],
                    "depth_m": zc, "visible_share": round(share, 4)})
    return out


def _text(iid: int, config: Config) -> str:
    return obj_tag(iid) if config.marker_text == "tag" else str(int(iid))


# ---------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------
def bev_image(instances: list[dict], verts: np.ndarray, colors: np.ndarray | None, tris: np.ndarray,
              layout: dict | None, config: Config) -> tuple[np.ndarray, dict, list[dict], float]:
    """(``H×W×3`` uint8 marked BEV, grid dict of :func:`bev_frame`, BEV markers, ceiling cut z in metres) of the
    world-frame mesh and instance records (``instances.json`` entries with a ``box``)."""
    centres = np.array([d["box"]["center"] for d in instances], dtype=np.float64).reshape(-1, 3)
    z_cut = cut_height(layout, verts, config)
    bev, grid = render_bev(verts, colors, tris, config, z_cut, extra_xy=centres[:, :2])
    A = grid["pixel_from_world"]
    markers = []
    for inst, c in zip(instances, centres):
        u, v = (A @ np.array([c[0], c[1], 1.0]))[:2]
        markers.append({"id": int(inst["id"]), "tag": obj_tag(inst["id"]), "label": inst.get("label"),
                        "pixel_xy": [float(u), float(v)]})
        draw_marker(bev, (u, v), _text(inst["id"], config), marker_color(inst["id"]), config.font_scale)
    return bev, grid, markers, z_cut


def instance_samples(instances: list[dict], verts: np.ndarray, config: Config) -> dict[int, np.ndarray]:
    """Per instance id, at most ``max_instance_points`` of its mesh vertices (``M×3``, world; seeded sample)."""
    rng = np.random.default_rng(config.seed)
    samples: dict[int, np.ndarray] = {}
    for inst in instances:
        ids = np.asarray(inst.get("vertex_ids", []), dtype=np.int64)
        if len(ids) > config.max_instance_points:
            ids = rng.choice(ids, config.max_instance_points, replace=False)
        samples[int(inst["id"])] = verts[ids] if len(ids) else np.zeros((0, 3))
    return samples


def marked_frame(scene: Scene, cam: CameraFrame, instances: list[dict], samples: dict[int, np.ndarray],
                 verts: np.ndarray, tris: np.ndarray, config: Config) -> tuple[np.ndarray, list[dict]]:
    """(the keyframe ``H×W×3`` uint8 RGB with the visible instances marked, their markers) for one world-frame
    camera. Raises InputError when the keyframe image (or, for ``occlusion="depth"``, its depth map) is missing."""
    img = common.load(scene.keyframe_image, cam.source_frame)
    buf, K_buf = visibility_buffer(scene, cam, verts, tris, config)
    marks = frame_markers(instances, samples, cam, img.shape[1], img.shape[0], buf, K_buf, config)
    for m in sorted(marks, key=lambda m: -m["depth_m"]):  # far first, near markers on top
        draw_marker(img, m["pixel_xy"], _text(m["id"], config), marker_color(m["id"]), config.font_scale)
    return img, marks


def generate(scene: Scene, config: Config | None = None) -> dict:
    """Write ``tasks/bev.png``, ``tasks/marked_frames/*.jpg``, ``tasks/gpt4scene.json`` and the GPT4Scene training
    files ``tasks/gpt4scene/`` (module docstring).

    Inputs, in the world frame: the mesh (vertex colours), ``instances.json`` (boxes, vertex_ids;
    docs/schemas.md), the cameras, the keyframes, ``layout.json`` (room height for the ceiling cut) and the depth
    maps (``occlusion="depth"``).

    Returns: a summary ``{"bev": path, "frames": [paths], "n_instances", "n_markers_per_frame", "seconds"}``.

    Raises:
        InputError: a missing input, a scene without the world frame (``layout`` not run), or no registered
            camera.
    """
    config = config or Config()
    scene = common.scene_of(scene)
    t0 = time.perf_counter()
    instances = [d for d in common.instances_doc(scene)["instances"] if d.get("box")]
    mesh = common.mesh(scene)
    verts, tris = mesh.vertices, mesh.triangles
    layout = common.layout(scene, required=False)
    cameras = common.cameras(scene, registered_only=False) if scene.cameras_json.is_file() else []
    if not cameras:
        raise InputError(f"{scene.cameras_json} is missing or empty")

    bev, grid, bev_markers, z_cut = bev_image(instances, verts, mesh.colors, tris, layout, config)
    write_image_rgb(scene.task_path("bev.png"), bev)
    t_bev = time.perf_counter() - t0

    samples = instance_samples(instances, verts, config)
    frames_out = []
    for cam in sample_keyframes(cameras, config.n_frames):
        img, marks = marked_frame(scene, cam, instances, samples, verts, tris, config)
        rel = f"marked_frames/{cam.source_frame:06d}.jpg"
        write_image_rgb(scene.task_path(rel), img, config.frame_jpeg_quality)
        frames_out.append({"image": rel, "source_frame": cam.source_frame, "timestamp_s": cam.timestamp_s,
                           "width": int(img.shape[1]), "height": int(img.shape[0]), "markers": marks})

    doc = {
        "format": "gpt4scene", "frame": WORLD_NAME, "units": "m",
        "pixel_convention": "x right, y down, origin at the top-left corner of the top-left pixel "
                            "(pixel centres at +0.5)",
        "tag_format": "<OBJ###>",
        "bev": {"image": "bev.png", "width": grid["width"], "height": grid["height"],
                "metres_per_pixel": grid["metres_per_pixel"], "pixel_from_world": grid["pixel_from_world"].tolist(),
                "ceiling_cut_z_m": z_cut, "markers": bev_markers},
        "frames": frames_out,
        "objects": [{"id": int(d["id"]), "tag": obj_tag(d["id"]), "label": d.get("label")} for d in instances],
        "config": config.model_dump(),
    }
    write_json(scene.task_path("gpt4scene.json"), doc)
    train = gpt4scene.write(scene, doc, common.scene_name(scene), config.image_root)
    return {"bev": str(scene.task_path("bev.png")), "frames": [str(scene.task_path(f["image"])) for f in frames_out],
            "json": str(scene.task_path("gpt4scene.json")), "gpt4scene": train, "n_instances": len(instances),
            "n_markers_per_frame": [len(f["markers"]) for f in frames_out],
            "seconds": round(time.perf_counter() - t0, 3), "bev_seconds": round(t_bev, 3)}


def run(scene, config: Config | None = None) -> StageResult:
    """Task-generator entry point (``vid2scene tasks``): :func:`generate`; ``qc`` is its summary.

    Raises:
        InputError: as :func:`generate`.
    """
    out = generate(scene, config)
    return StageResult(qc=out, summary=f"BEV and {len(out['frames'])} marked frames, {out['n_instances']} instances")
