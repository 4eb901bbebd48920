"""``report.html``: what a person looks at first — stage status, QC figures, failure reason, a strip of
keyframes, a top-down view of the camera path over the sparse points and, once ``instances`` has run, the objects
seen from above and projected into keyframes. Self-contained (images inlined). Reads the scene only through
:class:`~vid2scene.scene.Scene` (in the world frame once ``layout`` has stored ``world_from_sfm``)."""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from .errors import StageFailed
from .geometry import box_corners, box_edges, project
from .io import atomic_path
from .scene import SFM, WORLD, Scene


def _png_data_uri(rgb: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def rgb_jpg_data_uri(rgb: np.ndarray, width: int = 200) -> str:
    """A ``data:image/jpeg`` URI of an ``H×W×3`` uint8 RGB image resized (area) to ``width`` pixels wide."""
    import cv2

    img = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    img = cv2.resize(img, (width, max(1, round(img.shape[0] * width / img.shape[1]))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def jpg_data_uri(path, width: int = 200) -> str:
    """:func:`rgb_jpg_data_uri` of an image file ("" when it is missing or unreadable)."""
    import cv2

    img = cv2.imread(str(path))
    return "" if img is None else rgb_jpg_data_uri(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), width)



def _keyframe_uri(scene: Scene, source_frame: int) -> str:
    try:
        return rgb_jpg_data_uri(scene.keyframe_image(source_frame))
    except StageFailed:
        return ""


def top_down_view(points: np.ndarray, centers: np.ndarray, size: int = 520, up_axis: np.ndarray | None = None,
                  ) -> np.ndarray:
    """Render an ``size×size×3`` uint8 RGB top-down view: sparse points (grey) and camera path (blue→red).

    The view looks along ``up_axis`` (world frame); by default the axis of least camera-path spread
    combined with the points' smallest principal axis, which is "up" for a walk on a floor.
    """
    import cv2

    img = np.full((size, size, 3), 255, np.uint8)
    if len(centers) == 0:
        return img
    if up_axis is None:
        c = centers - centers.mean(0)
        _, _, vt = np.linalg.svd(c if len(c) >= 3 else np.vstack([c, np.eye(3)]), full_matrices=False)
        up_axis = vt[-1]
    up_axis = up_axis / np.linalg.norm(up_axis)
    a = np.cross(up_axis, [1.0, 0, 0] if abs(up_axis[0]) < 0.9 else [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(up_axis, a)
    P = np.stack([a, b], 1)
    cc = centers @ P
    pp = points @ P if len(points) else np.zeros((0, 2))
    ref = np.vstack([cc, pp]) if len(pp) else cc
    lo, hi = np.percentile(ref, 2, axis=0), np.percentile(ref, 98, axis=0)
    span = max(float((hi - lo).max()), 1e-6)
    to_px = lambda q: ((q - lo) / span * (size - 40) + 20).astype(int)  # noqa: E731
    for x, y in to_px(pp):
        if 0 <= x < size and 0 <= y < size:
            img[y, x] = (150, 150, 150)
    cpx = to_px(cc)
    for i in range(len(cpx) - 1):
        t = i / max(len(cpx) - 2, 1)
        cv2.line(img, tuple(map(int, cpx[i])), tuple(map(int, cpx[i + 1])), (int(255 * t), 0, int(255 * (1 - t))), 2)
    cv2.circle(img, tuple(map(int, cpx[0])), 6, (0, 0, 255), -1)
    return img


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}pre{margin:0;font-size:11px}"
         ".complete{color:green}.failed{color:#b00}.warn{color:#a60}.running,.stale,.incomplete{color:#a60}"
         ".strip{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;font-size:11px}")


def write_report(scene: Scene) -> None:
    """(Re)write ``report.html`` from whatever the scene folder holds now.

    Raises:
        InputError: the folder is not a scene (no readable manifest).
        StageFailed: an asset the report shows exists but cannot be read.
    """
    m = scene.read_manifest()
    parts = status_sections(scene, m) + camera_path_sections(scene) + keyframe_strip(scene) + instances_sections(scene)
    doc = f"<!doctype html><html><head><meta charset='utf-8'><title>vid2scene report</title><style>{STYLE}</style>" \
          f"</head><body>{''.join(parts)}</body></html>"
    with atomic_path(scene.report_html) as tmp:
        tmp.write_text(doc)


def status_sections(scene: Scene, m: dict) -> list[str]:
    """Title, source and status, the failure (if any) and the table of stages from the manifest ``m``."""
    e = html.escape
    parts = [f"<h1>vid2scene scene: {e(scene.root.name)}</h1>",
             f"<p>source: <code>{e(str(m['source'].get('path')))}</code> &middot; status: "
             f"<b class='{e(m.get('status', ''))}'>{e(m.get('status', '?'))}</b></p>"]
    if m.get("failure"):
        f = m["failure"]
        parts.append(f"<p class='failed'><b>Failed in {e(f['stage'])}</b>: {e(f['reason'])}</p>")
    rows = []
    for name, st in m.get("stages", {}).items():
        warn = "<br><span class='warn'>" + e("; ".join(st.get("warnings") or [])) + "</span>" \
            if st.get("warnings") else ""
        rows.append(f"<tr><td>{e(name)}</td><td class='{e(st.get('status', ''))}'>{e(st.get('status', ''))}</td>"
                    f"<td>{st.get('seconds', 0):.1f}</td><td>{e(st.get('summary') or st.get('reason') or '')}{warn}"
                    f"</td><td><pre>{e(json.dumps(st.get('qc', {}), indent=0))}</pre></td></tr>")
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>s</th><th>result</th><th>QC</th></tr>"
                 + "".join(rows) + "</table>")
    return parts


def camera_path_sections(scene: Scene) -> list[str]:
    """The top-down camera path over the sparse points (world frame once ``layout`` has run, else SfM) and the
    keyframes left unregistered; nothing before ``sfm``."""
    if not scene.cameras_json.exists():
        return []
    frame = WORLD if scene.world_from_sfm() is not None else SFM
    frames = scene.cameras(frame=frame)
    reg = [f for f in frames if f.registered]
    centers = np.array([f.center_in_world for f in reg]).reshape(-1, 3)
    pts = scene.sparse_points(frame=frame).points if scene.sparse_points_ply.exists() else np.zeros((0, 3))
    if len(pts) > 20000:
        pts = pts[np.random.default_rng(0).choice(len(pts), 20000, replace=False)]
    parts = [f"<h2>Camera path (top-down)</h2><p>{len(reg)}/{len(frames)} keyframes registered; "
             "path blue (start, dot) to red; grey: sparse points.</p>"
             f"<img src='{_png_data_uri(top_down_view(pts, centers))}'>"]
    unreg = [f.name for f in frames if not f.registered]
    if unreg:
        parts.append("<p class='warn'>not registered: " + html.escape(", ".join(unreg[:50])) + "</p>")
    return parts


def keyframe_strip(scene: Scene, n: int = 12) -> list[str]:
    """Up to ``n`` evenly spread keyframes with their source frame and selection reason."""
    if not (scene.keyframes_json.exists() and scene.frames_dir.exists()):
        return []
    kfs = scene.keyframes()["keyframes"]
    pick = kfs if len(kfs) <= n else [kfs[i] for i in np.linspace(0, len(kfs) - 1, n).astype(int)]
    imgs = "".join(f"<figure><img src='{_keyframe_uri(scene, k['source_frame'])}'>"
                   f"<figcaption>{k['source_frame']} ({html.escape(k['reason'])})</figcaption></figure>" for k in pick)
    return [f"<h2>Keyframes ({len(kfs)})</h2><div class='strip'>{imgs}</div>"]


# ---------------------------------------------------------------------------------------------------------
# objects (instances.json) seen from above and projected into keyframes
# ---------------------------------------------------------------------------------------------------------
def _label_colour(label: str) -> tuple[int, int, int]:
    import zlib

    h = zlib.crc32(label.encode()) & 0xFFFFFF
    return (60 + (h & 0x7F), 60 + ((h >> 8) & 0x7F), 60 + ((h >> 16) & 0x7F))


def instances_top_down(instances: list[dict], polygon_xy=None, points: np.ndarray | None = None,
                       centers: np.ndarray | None = None, size: int = 640) -> np.ndarray:
    """``size×size×3`` uint8 RGB top-down view of the metric z-up world: room polygon (black), mesh points
    (light grey, ``N×3``), camera path (blue), each instance's gravity-aligned box (coloured by label) with
    ``id label``; +x to the right, +y up, 1 m grid (light lines), scale bar."""
    import cv2

    img = np.full((size, size, 3), 255, np.uint8)
    refs = []
    if polygon_xy is not None and len(polygon_xy):
        refs.append(np.asarray(polygon_xy, float))
    for i in instances:
        refs.append(box_corners(i["box"]["center"], i["box"]["size"], i["box"]["yaw_rad"])[:, :2])
    if centers is not None and len(centers):
        refs.append(np.asarray(centers, float)[:, :2])
    if not refs:
        return img
    ref = np.vstack(refs)
    lo, hi = ref.min(0) - 0.3, ref.max(0) + 0.3
    span = float(max((hi - lo).max(), 1e-6))
    k = (size - 40) / span

    def px(xy):
        xy = np.asarray(xy, float).reshape(-1, 2)
        return np.stack([20 + (xy[:, 0] - lo[0]) * k, size - 20 - (xy[:, 1] - lo[1]) * k], 1).astype(np.int32)

    for gx in np.arange(np.floor(lo[0]), hi[0] + 1):
        a = px([[gx, lo[1]], [gx, hi[1]]])
        cv2.line(img, tuple(map(int, a[0])), tuple(map(int, a[1])), (235, 235, 235), 1)
    for gy in np.arange(np.floor(lo[1]), hi[1] + 1):
        a = px([[lo[0], gy], [hi[0], gy]])
        cv2.line(img, tuple(map(int, a[0])), tuple(map(int, a[1])), (235, 235, 235), 1)
    if points is not None and len(points):
        q = px(np.asarray(points)[:, :2])
        ok = (q[:, 0] >= 0) & (q[:, 0] < size) & (q[:, 1] >= 0) & (q[:, 1] < size)
        img[q[ok, 1], q[ok, 0]] = (200, 200, 200)
    if polygon_xy is not None and len(polygon_xy) >= 3:
        cv2.polylines(img, [px(polygon_xy)], True, (0, 0, 0), 2)
    if centers is not None and len(centers) > 1:
        cv2.polylines(img, [px(np.asarray(centers)[:, :2])], False, (60, 90, 230), 1)
    for i in instances:
        col = _label_colour(i["label"])
        c = px(box_corners(i["box"]["center"], i["box"]["size"], i["box"]["yaw_rad"])[:4, :2])
        cv2.polylines(img, [c], True, col, 2)
        t = c.mean(0).astype(int)
        cv2.putText(img, f"{i['id']} {i['label']}", (int(t[0]) - 10, int(t[1])), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (0, 0, 0), 1, cv2.LINE_AA)
    a = px([[lo[0] + 0.1, lo[1] + 0.1], [lo[0] + 1.1, lo[1] + 0.1]])
    cv2.line(img, tuple(map(int, a[0])), tuple(map(int, a[1])), (0, 0, 0), 3)
    cv2.putText(img, "1 m", (int(a[0][0]), int(a[0][1]) - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return img


def keyframe_with_boxes(rgb: np.ndarray, frame, items: list[tuple[dict, dict | None]]) -> np.ndarray:
    """Keyframe ``rgb`` (``H×W×3`` uint8, the camera's image size) with each instance's 3D box projected as a
    wireframe (label colour) and, if given, the supporting detection box of this view (thin white)."""
    import cv2

    img = np.ascontiguousarray(rgb.copy())
    edges = box_edges()
    for inst, view in items:
        col = _label_colour(inst["label"])
        if view is not None:
            x0, y0, x1, y1 = map(int, view["bbox_xyxy"])
            cv2.rectangle(img, (x0, y0), (x1, y1), (255, 255, 255), 1)
        C = box_corners(inst["box"]["center"], inst["box"]["size"], inst["box"]["yaw_rad"])
        uv, z = project(C, frame.K, frame.cam_from_world)
        if (z <= 0.05).any():
            continue
        for a, b in edges:
            cv2.line(img, tuple(map(int, uv[a])), tuple(map(int, uv[b])), col, 2, cv2.LINE_AA)
        t = uv.min(0).astype(int)
        cv2.putText(img, f"{inst['id']} {inst['label']}", (max(int(t[0]), 0), max(int(t[1]) - 3, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, col, 1, cv2.LINE_AA)
    return img


def instances_sections(scene: Scene, n_keyframes: int = 4) -> list[str]:
    """HTML sections for ``instances.json``: a top-down view with boxes and labels, a table of the objects
    and ``n_keyframes`` keyframes (those supporting most instances) with the projected boxes. Cameras and the
    video point cloud are read in the world frame (as the instances are); nothing before ``instances``."""
    if not scene.instances_json.is_file():
        return []
    doc = scene.instances()
    frames = [f for f in scene.cameras(frame=WORLD) if f.registered] if scene.cameras_json.exists() else []
    return objects_section(scene, doc, frames) + projected_keyframes_section(scene, doc.get("instances", []),
                                                                             frames, n_keyframes)


def objects_section(scene: Scene, doc: dict, frames: list) -> list[str]:
    """The objects seen from above (over the video points at furniture height) and their table."""
    e = html.escape
    insts = doc.get("instances", [])
    layout = scene.layout() if scene.layout_json.is_file() else {}
    centers = np.array([f.center_in_world for f in frames]).reshape(-1, 3)
    pts = None
    if scene.points_ply.is_file():
        pts = scene.points(frame=WORLD).points
        pts = pts[(pts[:, 2] > 0.1) & (pts[:, 2] < 2.0)]  # furniture height band
        if len(pts) > 60000:
            pts = pts[np.random.default_rng(0).choice(len(pts), 60000, replace=False)]
    top = instances_top_down(insts, (layout.get("room") or {}).get("polygon_xy"), pts, centers)
    sc = doc.get("scale") or {}
    rows = "".join(f"<tr><td>{i['id']}</td><td>{e(i['label'])}</td><td>{i['score']:.2f}</td><td>{i['n_views']}</td>"
                   f"<td>{' × '.join(f'{v:.2f}' for v in i['box']['size'])}</td><td>{i['first_frame']}–{i['last_frame']}"
                   f"</td><td>{e(i.get('caption') or '')}</td></tr>" for i in insts)
    return [f"<h2>Objects ({len(insts)}, top-down)</h2><p>gravity-aligned boxes from <code>instances.json</code> over "
            "mesh points at 0.1–2 m (grey), room polygon (black), camera path (blue); 1 m grid. Scale: layout "
            f"{sc.get('layout_metres_per_sfm_unit')}, object priors {sc.get('object_prior_metres_per_sfm_unit')} "
            f"({sc.get('n_objects_used', 0)} objects) m per SfM unit.</p><img src='{_png_data_uri(top)}'>"
            "<table><tr><th>id</th><th>label</th><th>score</th><th>views</th><th>size (m)</th><th>frames</th>"
            f"<th>caption</th></tr>{rows}</table>"]


def projected_keyframes_section(scene: Scene, insts: list[dict], frames: list, n_keyframes: int) -> list[str]:
    """The ``n_keyframes`` keyframes supporting most instances, with their boxes projected (world-frame
    ``frames``) and the supporting detections."""
    by_frame: dict[int, list] = {}
    for i in insts:
        for v in i["views"]:
            by_frame.setdefault(v["frame"], []).append((i, v))
    cams = {f.source_frame: f for f in frames}
    pick = sorted(by_frame, key=lambda k: -len(by_frame[k]))[:n_keyframes]
    figs = []
    for sf in sorted(pick):
        if sf not in cams:
            continue
        f = cams[sf]
        try:
            rgb = scene.keyframe_image(sf, (f.width, f.height))
        except StageFailed:
            continue
        img = keyframe_with_boxes(rgb, f, by_frame[sf])
        figs.append(f"<figure><img src='{_png_data_uri(img)}' style='max-width:560px'><figcaption>{sf}: "
                    f"{len(by_frame[sf])} supported instances (white: detection, colour: 3D box)</figcaption></figure>")
    return [f"<h2>Keyframes with projected boxes</h2><div class='strip'>{''.join(figs)}</div>"] if figs else []
