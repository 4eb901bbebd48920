"""``report.html``: what a person looks at first — stage status, QC figures, failure reason, a strip of
keyframes, and a top-down view of the camera path over the sparse points. Self-contained (images inlined)."""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from .io import atomic_path
from .scene import Scene


def _png_data_uri(rgb: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def _jpg_data_uri(path, width: int = 200) -> str:
    import cv2

    img = cv2.imread(str(path))
    if img is None:
        return ""
    img = cv2.resize(img, (width, max(1, round(img.shape[0] * width / img.shape[1]))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


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


def write_report(scene: Scene) -> None:
    """(Re)write ``report.html`` from whatever the scene folder holds now."""
    m = scene.read_manifest()
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
    if scene.cameras_json.exists():
        frames = scene.load_cameras()
        reg = [f for f in frames if f.registered]
        centers = np.array([f.center_in_world for f in reg]).reshape(-1, 3)
        pts = scene.load_sparse_points()[0] if scene.sparse_points_ply.exists() else np.zeros((0, 3))
        if len(pts) > 20000:
            pts = pts[np.random.default_rng(0).choice(len(pts), 20000, replace=False)]
        parts.append(f"<h2>Camera path (top-down)</h2><p>{len(reg)}/{len(frames)} keyframes registered; "
                     "path blue (start, dot) to red; grey: sparse points.</p>"
                     f"<img src='{_png_data_uri(top_down_view(pts, centers))}'>")
        unreg = [f.name for f in frames if not f.registered]
        if unreg:
            parts.append("<p class='warn'>not registered: " + e(", ".join(unreg[:50])) + "</p>")
    if scene.keyframes_json.exists() and scene.frames_dir.exists():
        kfs = scene.load_keyframes()["keyframes"]
        pick = kfs if len(kfs) <= 12 else [kfs[i] for i in np.linspace(0, len(kfs) - 1, 12).astype(int)]
        imgs = "".join(f"<figure><img src='{_jpg_data_uri(scene.keyframe_path(k['source_frame']))}'>"
                       f"<figcaption>{k['source_frame']} ({e(k['reason'])})</figcaption></figure>" for k in pick)
        parts.append(f"<h2>Keyframes ({len(kfs)})</h2><div class='strip'>{imgs}</div>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}pre{margin:0;font-size:11px}"
             ".complete{color:green}.failed{color:#b00}.warn{color:#a60}.running,.stale,.incomplete{color:#a60}"
             ".strip{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;font-size:11px}")
    doc = f"<!doctype html><html><head><meta charset='utf-8'><title>vid2scene report</title><style>{style}</style>" \
          f"</head><body>{''.join(parts)}</body></html>"
    with atomic_path(scene.report_html) as tmp:
        tmp.write_text(doc)
