"""``report.html``: what a person looks at first — stage status, QC figures, failure reason, a strip of
keyframes, a top-down view of the camera path over the sparse points and, once ``instances`` has run, the objects
seen from above and projected into keyframes. Self-contained (images inlined). Reads the scene only through
:class:`~vid2scene.scene.Scene` (in the world frame once ``layout`` has stored ``world_from_sfm``)."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter

import numpy as np

from .errors import StageFailed
from .geometry import box_corners, box_edges, project
from .io import atomic_path, read_json
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


STYLE = ("body{font-family:system-ui,sans-serif;margin:0 auto;padding:12px;max-width:1100px;line-height:1.35}"
         "img{max-width:100%;height:auto}table{border-collapse:collapse;display:block;overflow-x:auto}"
         "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}pre{margin:0;font-size:11px;"
         "white-space:pre-wrap}.complete{color:green}.failed{color:#b00}.warn{color:#a60}"
         ".running,.stale,.incomplete{color:#a60}.strip{display:flex;flex-wrap:wrap;gap:6px}"
         "figure{margin:0;font-size:11px;max-width:100%}.cards{display:grid;gap:8px;"
         "grid-template-columns:repeat(auto-fill,minmax(160px,1fr))}.card{border:1px solid #ddd;border-radius:6px;"
         "padding:6px 8px}.card b{display:block;font-size:18px}.card span{font-size:12px;color:#555}"
         ".views{display:grid;gap:8px;grid-template-columns:repeat(auto-fit,minmax(300px,1fr))}"
         "details{margin:8px 0}summary{cursor:pointer;font-weight:600}")


def write_report(scene: Scene) -> None:
    """(Re)write ``report.html`` from whatever the scene folder holds now, summary first.

    Order: title and status; warnings with reasons (stage warnings from the manifest, unregistered keyframes
    with their ``reason`` / ``figures`` from ``cameras.json``, an unobserved floor from ``layout.json``
    ``gravity``); key figures (registered share, scale and σ, room size, objects by label, questions by type);
    the top-down view with objects and camera path; the BEV with markers (``tasks/bev.png``); four keyframes
    with projected boxes; then, folded (``<details>``), the object table, the keyframe strip, the camera path
    over the sparse points and the stage table with QC. Self-contained (images inlined), phone-readable
    (viewport meta, fluid images).

    Raises:
        InputError: the folder is not a scene (no readable manifest).
        StageFailed: an asset the report shows exists but cannot be read.
    """
    m = scene.read_manifest()
    parts = (header_section(scene, m) + warnings_section(scene, m) + key_figures_section(scene, m)
             + views_section(scene) + details_sections(scene, m))
    doc = ("<!doctype html><html><head><meta charset='utf-8'>"
           "<meta name='viewport' content='width=device-width, initial-scale=1'><title>vid2scene report</title>"
           f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    with atomic_path(scene.report_html) as tmp:
        tmp.write_text(doc)


def header_section(scene: Scene, m: dict) -> list[str]:
    """Title, source, status and the failure (if any)."""
    e = html.escape
    parts = [f"<h1>vid2scene scene: {e(scene.root.name)}</h1>",
             f"<p id='status'>status: <b class='{e(m.get('status', ''))}'>{e(m.get('status', '?'))}</b> &middot; "
             f"source: <code>{e(str(m['source'].get('path')))}</code></p>"]
    if m.get("failure"):
        f = m["failure"]
        parts.append(f"<p class='failed'><b>Failed in {e(f['stage'])}</b>: {e(f['reason'])}</p>")
    return parts


def _raw_cameras(scene: Scene) -> list[dict]:
    try:
        return read_json(scene.cameras_json).get("frames", []) if scene.cameras_json.is_file() else []
    except (OSError, ValueError):
        return []


def _layout(scene: Scene) -> dict:
    return scene.layout() if scene.layout_json.is_file() else {}


def warnings_section(scene: Scene, m: dict) -> list[str]:
    """Every stage warning (from the manifest), the unregistered keyframes grouped by ``reason`` with an example
    of their ``figures``, and the gravity cue when the floor was not observed."""
    e = html.escape
    items = [f"<li><b>{e(name)}</b>: {e(w)}</li>" for name, st in m.get("stages", {}).items()
             for w in (st.get("warnings") or [])]
    unreg = [f for f in _raw_cameras(scene) if not f.get("registered", True)]
    if unreg:
        by: dict[str, list] = {}
        for f in unreg:
            by.setdefault(str(f.get("reason") or "no reason recorded"), []).append(f)
        for reason, fs in sorted(by.items(), key=lambda kv: -len(kv[1])):
            ex = fs[0].get("figures")
            names = ", ".join(str(f.get("source_frame", f.get("name"))) for f in fs[:12])
            items.append(f"<li><b>sfm</b>: {len(fs)} keyframe(s) not registered: {e(reason)} ({e(names)}"
                         f"{' …' if len(fs) > 12 else ''})" + (f"; e.g. {e(json.dumps(ex))}" if ex else "") + "</li>")
    g = _layout(scene).get("gravity") or {}
    if g.get("floor_observed") is False:
        items.append(f"<li><b>layout</b>: floor not observed; gravity from cue <code>{e(str(g.get('cue')))}</code>"
                     + (f" (±{g['uncertainty_deg']}°)" if g.get("uncertainty_deg") is not None else "") + "</li>")
    if not items:
        return ["<h2 id='warnings'>Warnings</h2><p class='complete'>none</p>"]
    return [f"<h2 id='warnings'>Warnings ({len(items)})</h2><ul class='warn'>{''.join(items)}</ul>"]


def _card(value: str, what: str) -> str:
    return f"<div class='card'><b>{html.escape(value)}</b><span>{html.escape(what)}</span></div>"


def key_figures_section(scene: Scene, m: dict) -> list[str]:
    """Cards: keyframes registered, scale ± σ (and its method), room size, objects by label, questions by type."""
    cards = []
    cams = _raw_cameras(scene)
    if cams:
        n_reg = sum(1 for f in cams if f.get("registered", True))
        cards.append(_card(f"{n_reg}/{len(cams)} ({100 * n_reg / len(cams):.0f}%)", "keyframes registered"))
    lay = _layout(scene)
    sc = lay.get("scale") or {}
    if sc.get("metres_per_sfm_unit") is not None:
        sig = sc.get("sigma")
        rel = f" ± {100 * sig / sc['metres_per_sfm_unit']:.0f}%" if sig else ""
        cards.append(_card(f"{sc['metres_per_sfm_unit']:.4g} m/unit{rel}", f"scale ({sc.get('method', '?')})"))
    room = lay.get("room") or {}
    if room.get("extent_m"):
        ex = room["extent_m"]
        h = room.get("height_m")
        cards.append(_card(f"{ex[0]:.1f} × {ex[1]:.1f}" + (f" × {h:.1f}" if h else "") + " m",
                           f"room, {room.get('floor_area_m2', 0):.1f} m² floor"))
    if scene.instances_json.is_file():
        insts = scene.instances().get("instances", [])
        by = Counter(i["label"] for i in insts)
        cards.append(_card(f"{len(insts)} objects", ", ".join(f"{v} {k}" for k, v in by.most_common()) or "none"))
    qm = scene.task_path("vqa_meta.json")
    if qm.is_file():
        gen = read_json(qm).get("generation", {})
        per = {k: v.get("n_written", 0) for k, v in (gen.get("per_type") or {}).items()}
        short = {k: k.replace("object_", "").replace("obj_", "").replace("_estimation", "") for k in per}
        n_types = sum(1 for v in per.values() if v)
        cards.append(_card(f"{gen.get('n_questions', sum(per.values()))} questions, {n_types} types",
                           ", ".join(f"{short[k]} {v}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v)
                           or "none"))
    done = sum(1 for st in m.get("stages", {}).values() if st.get("status") == "complete")
    cards.append(_card(f"{done}/{len(m.get('stages', {}))}", "stages complete"))
    return [f"<h2 id='figures'>Key figures</h2><div class='cards'>{''.join(cards)}</div>"]


def views_section(scene: Scene) -> list[str]:
    """The top-down view with objects and camera path, the BEV with markers and four keyframes with boxes."""
    figs = []
    frames = []
    if scene.cameras_json.exists() and scene.world_from_sfm() is not None:
        frames = [f for f in scene.cameras(frame=WORLD) if f.registered]
    if scene.instances_json.is_file() and frames:
        doc = scene.instances()
        figs.append("<figure><img src='" + _png_data_uri(objects_top_down(scene, doc, frames)) + "'><figcaption>"
                    "top-down: objects (boxes, id label), camera path (blue), room (black), 1 m grid</figcaption>"
                    "</figure>")
    elif scene.cameras_json.exists():
        frame = WORLD if scene.world_from_sfm() is not None else SFM
        reg = [f for f in scene.cameras(frame=frame) if f.registered]
        pts = scene.sparse_points(frame=frame).points if scene.sparse_points_ply.exists() else np.zeros((0, 3))
        if len(pts) > 20000:
            pts = pts[np.random.default_rng(0).choice(len(pts), 20000, replace=False)]
        figs.append("<figure><img src='" + _png_data_uri(top_down_view(
            pts, np.array([f.center_in_world for f in reg]).reshape(-1, 3))) + "'><figcaption>top-down camera "
            "path (blue start → red) over the sparse points</figcaption></figure>")
    bev = scene.task_path("bev.png")
    if bev.is_file():
        figs.append(f"<figure><img src='{jpg_data_uri(bev, 640)}'><figcaption>BEV with object markers "
                    "(tasks/bev.png)</figcaption></figure>")
    parts = [f"<h2 id='views'>Scene</h2><div class='views'>{''.join(figs)}</div>"] if figs else []
    if scene.instances_json.is_file() and frames:
        parts += projected_keyframes_section(scene, scene.instances().get("instances", []), frames, 4)
    return parts


def details_sections(scene: Scene, m: dict) -> list[str]:
    """Folded: the object table, the keyframe strip, the camera path over the sparse points, the stage table."""
    out = []
    if scene.instances_json.is_file():
        out.append("<details><summary>Objects table</summary>" + "".join(objects_table(scene.instances()))
                   + "</details>")
    strip = keyframe_strip(scene)
    if strip:
        out.append("<details><summary>Keyframes</summary>" + "".join(strip) + "</details>")
    cam = camera_path_sections(scene)
    if cam:
        out.append("<details><summary>Camera path over the sparse points</summary>" + "".join(cam) + "</details>")
    out += stage_table(m)
    return out


def stage_table(m: dict) -> list[str]:
    """The table of stages (status, seconds, summary, warnings), each stage's QC JSON folded."""
    e = html.escape
    rows = []
    for name, st in m.get("stages", {}).items():
        warn = "<br><span class='warn'>" + e("; ".join(st.get("warnings") or [])) + "</span>" \
            if st.get("warnings") else ""
        qc = st.get("qc", {})
        qc_html = f"<details><summary>QC</summary><pre>{e(json.dumps(qc, indent=1))}</pre></details>" if qc else ""
        rows.append(f"<tr><td>{e(name)}</td><td class='{e(st.get('status', ''))}'>{e(st.get('status', ''))}</td>"
                    f"<td>{st.get('seconds', 0):.1f}</td><td>{e(st.get('summary') or st.get('reason') or '')}{warn}"
                    f"{qc_html}</td></tr>")
    return ["<h2 id='stages'>Stages</h2><table><tr><th>stage</th><th>status</th><th>s</th><th>result / QC</th>"
            "</tr>" + "".join(rows) + "</table>"]


def status_sections(scene: Scene, m: dict) -> list[str]:
    """Title, status, failure and the stage table (the header and stage table of :func:`write_report`)."""
    return header_section(scene, m) + stage_table(m)


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
    return ([f"<img src='{_png_data_uri(objects_top_down(scene, doc, frames))}'>"] + objects_table(doc)
            + projected_keyframes_section(scene, doc.get("instances", []), frames, n_keyframes))


def objects_top_down(scene: Scene, doc: dict, frames: list) -> np.ndarray:
    """:func:`instances_top_down` of ``doc``'s instances over the video points at furniture height (0.1–2 m),
    the room polygon and the camera path of the world-frame ``frames``."""
    layout = _layout(scene)
    centers = np.array([f.center_in_world for f in frames]).reshape(-1, 3)
    pts = None
    if scene.points_ply.is_file():
        pts = scene.points(frame=WORLD).points
        pts = pts[(pts[:, 2] > 0.1) & (pts[:, 2] < 2.0)]  # furniture height band
        if len(pts) > 60000:
            pts = pts[np.random.default_rng(0).choice(len(pts), 60000, replace=False)]
    return instances_top_down(doc.get("instances", []), (layout.get("room") or {}).get("polygon_xy"), pts, centers)


def objects_table(doc: dict) -> list[str]:
    """The objects' table (id, label, score, views, box size, frames, caption) and the scale line."""
    e = html.escape
    insts = doc.get("instances", [])
    sc = doc.get("scale") or {}
    rows = "".join(f"<tr><td>{i['id']}</td><td>{e(i['label'])}</td><td>{i['score']:.2f}</td><td>{i['n_views']}</td>"
                   f"<td>{' × '.join(f'{v:.2f}' for v in i['box']['size'])}</td><td>{i['first_frame']}–{i['last_frame']}"
                   f"</td><td>{e(i.get('caption') or '')}</td></tr>" for i in insts)
    return [f"<h3>Objects ({len(insts)})</h3><p>Scale: layout {sc.get('layout_metres_per_sfm_unit')}, object "
            f"priors {sc.get('object_prior_metres_per_sfm_unit')} ({sc.get('n_objects_used', 0)} objects) m per SfM "
            "unit.</p><table><tr><th>id</th><th>label</th><th>score</th><th>views</th><th>size (m)</th><th>frames</th>"
            f"<th>caption</th></tr>{rows}</table>"]


def spread_pick(by_frame: dict[int, list], n: int) -> list[int]:
    """``n`` keyframes spread over the walk: the frames are cut into ``n`` consecutive runs and the one with most
    supported instances of each run is taken (ties: the earlier)."""
    frames = sorted(by_frame)
    if len(frames) <= n:
        return frames
    runs = np.array_split(np.arange(len(frames)), n)
    return [frames[max(r, key=lambda k: (len(by_frame[frames[k]]), -k))] for r in runs if len(r)]


def projected_keyframes_section(scene: Scene, insts: list[dict], frames: list, n_keyframes: int) -> list[str]:
    """``n_keyframes`` keyframes spread over the walk (:func:`spread_pick`), with the boxes of the instances
    they support projected (world-frame ``frames``) and the supporting detections."""
    by_frame: dict[int, list] = {}
    for i in insts:
        for v in i["views"]:
            by_frame.setdefault(v["frame"], []).append((i, v))
    cams = {f.source_frame: f for f in frames}
    pick = spread_pick(by_frame, n_keyframes)
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
        figs.append(f"<figure><img src='{rgb_jpg_data_uri(img, min(f.width, 560))}'><figcaption>{sf}: "
                    f"{len(by_frame[sf])} supported instances (white: detection, colour: 3D box)</figcaption></figure>")
    return [f"<h2 id='keyframes'>Keyframes with projected boxes</h2><div class='views'>{''.join(figs)}</div>"] if figs else []
