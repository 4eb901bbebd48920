"""``DATASET_DIR/report.html``: counts by status, failure reasons, histograms of the QC figures of complete
scenes (inline SVG) and a thumbnail per scene (its first keyframe, inlined). Self-contained: one file."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..io import atomic_path
from ..report import jpg_data_uri
from .index import summarize

#: (column, axis label) of the histograms.
HISTOGRAMS = [
    ("duration_s", "video duration (s)"), ("n_keyframes", "keyframes"), ("registered_share", "registered share"),
    ("reprojection_error_px", "mean reprojection error (px)"), ("n_points", "sparse points"),
    ("n_instances", "instances"), ("n_qa", "QA pairs"), ("wall_s", "task wall time (s)"),
    ("peak_rss_mb", "peak RSS per task (MiB)"),
]

_STATUS_COLOUR = {"complete": "#2a7", "failed": "#c33", "incomplete": "#d90"}


def svg_histogram(values: list[float], label: str, bins: int = 12, width: int = 300, height: int = 150) -> str:
    """An inline ``<svg>`` histogram of ``values`` (bars, x range and counts labelled); "" when empty."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return ""
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(v, bins=min(bins, max(1, v.size)), range=(lo, hi))
    pad_l, pad_b, pad_t = 28, 30, 18
    pw, ph = width - pad_l - 8, height - pad_b - pad_t
    cmax = max(1, int(counts.max()))
    bw = pw / len(counts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="background:#fafafa;border:1px solid #ddd">',
             f'<text x="{width / 2}" y="13" font-size="12" text-anchor="middle">{html.escape(label)} '
             f'(n={v.size})</text>']
    for i, c in enumerate(counts):
        h = ph * c / cmax
        x = pad_l + i * bw
        parts.append(f'<rect x="{x + 1:.1f}" y="{pad_t + ph - h:.1f}" width="{max(bw - 2, 1):.1f}" height="{h:.1f}" '
                     f'fill="#4a7fb5"><title>{edges[i]:.4g} – {edges[i + 1]:.4g}: {c}</title></rect>')
    parts.append(f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="10" text-anchor="end">{cmax}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="{pad_t + ph}" font-size="10" text-anchor="end">0</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 12}" font-size="10">{lo:.4g}</text>')
    parts.append(f'<text x="{width - 8}" y="{height - 12}" font-size="10" text-anchor="end">{hi:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_dataset_report(dataset_dir: str | Path, rows: list[dict]) -> Path:
    """Write ``dataset_dir/report.html`` for the index ``rows``; returns its path."""
    ds = Path(dataset_dir)
    s = summarize(rows)
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>vid2scene dataset</title><style>",
           "body{font-family:sans-serif;margin:20px;max-width:1300px} table{border-collapse:collapse;margin:8px 0}",
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}",
           ".grid{display:flex;flex-wrap:wrap;gap:10px}.card{width:170px;font-size:11px;word-break:break-all}",
           ".card img{width:160px;border:3px solid #ccc;display:block}.hist{display:flex;flex-wrap:wrap;gap:10px}",
           "</style></head><body>", f"<h1>vid2scene dataset: {e(ds.name)}</h1>"]
    out.append(f"<p>{s['n_scenes']} scenes from {s['n_tasks']} videos; "
               f"{s['video_seconds_complete']:.0f} s of video in complete scenes.</p><table><tr>")
    out += [f"<th style='color:{_STATUS_COLOUR.get(k, '#000')}'>{e(k)}</th>" for k in s["by_status"]]
    out.append("</tr><tr>" + "".join(f"<td>{v}</td>" for v in s["by_status"].values()) + "</tr></table>")
    if s["failure_reasons"]:
        out.append("<h2>Failure reasons</h2><table><tr><th>count</th><th>stage: reason</th></tr>")
        out += [f"<tr><td>{n}</td><td>{e(k)}</td></tr>" for k, n in s["failure_reasons"].items()]
        out.append("</table>")
    done = [r for r in rows if r["status"] == "complete"]
    hists = [svg_histogram([r.get(c) for r in done], label) for c, label in HISTOGRAMS]
    hists = [h for h in hists if h]
    if hists:
        out.append("<h2>QC of complete scenes</h2><div class='hist'>" + "".join(hists) + "</div>")
    out.append("<h2>Scenes</h2><div class='grid'>")
    for r in rows:
        thumb = jpg_data_uri(ds / r["thumbnail"], 160) if r.get("thumbnail") else ""
        colour = _STATUS_COLOUR.get(r["status"], "#999")
        img = (f"<img src='{thumb}' style='border-color:{colour}'>" if thumb else
               f"<div style='width:160px;height:90px;background:#eee;border:3px solid {colour}'></div>")
        detail = (f"{r.get('n_keyframes') or '-'} kf, reg {r['registered_share']:.0%}"
                  if r.get("registered_share") is not None else f"{r.get('n_keyframes') or '-'} kf")
        why = f"<br><span style='color:#c33'>{e(str(r.get('failure_stage')))}: {e((r.get('failure_reason') or '')[:140])}</span>" \
            if r["status"] == "failed" else ""
        link = f"{r['scene_dir']}/report.html"
        out.append(f"<div class='card'><a href='{e(link)}'>{img}</a><b>{e(r['scene_id'])}</b><br>"
                   f"{e(r['status'])} · {detail}{why}</div>")
    out.append("</div></body></html>")
    path = ds / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out))
    return path
