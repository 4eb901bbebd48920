"""Benchmark: GPT4Scene BEV + marked frames and every exporter on a finished scene. One JSON object per line.

Figures per step: seconds, peak RSS (MiB, process-wide so far), and what was written (BEV size, markers per
frame, file sizes in MiB). The source scene is never modified: a work folder links to its inputs
(``mesh.ply``, ``sparse_points.ply``, ``instances.json``, ``layout.json``, ``cameras.json``, ``frames/``, ``depth/``)
and receives
``tasks/``.

    python benchmarks/bev_export_hololens.py --scene /work/scenes/hololens [--work DIR] [--frames 32]
        [--occlusion mesh|depth] [--dummy-instances K]

``--dummy-instances K`` is for scenes that have no ``instances.json`` yet (before the instances stage): it
makes K boxes from random mesh vertices (label "chair", flagged ``"dummy": true`` in the output) so that the
timings reflect the real mesh size. Their figures say nothing about instance quality.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from vid2scene.export import EXPORTERS, export  # noqa: E402
from vid2scene.scene import Scene  # noqa: E402
from vid2scene.tasks.bev import Config as BevConfig, generate  # noqa: E402

LINKED = ["manifest.json", "mesh.ply", "sparse_points.ply", "instances.json", "layout.json", "cameras.json",
          "scene_graph.json", "frames", "depth", "points.ply"]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def size_mib(paths) -> float:
    total = 0
    for p in paths:
        p = Path(p)
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return round(total / 2**20, 3)


def dummy_instances(work: Path, k: int, seed: int = 0) -> None:
    verts = Scene(work).mesh(frame="world").vertices
    rng = np.random.default_rng(seed)
    lo, hi = np.percentile(verts, 2, axis=0), np.percentile(verts, 98, axis=0)
    out = []
    for i in range(k):
        c = rng.uniform(lo, hi)
        c[2] = rng.uniform(0.3, 1.0)
        half = np.array([0.3, 0.3, 0.4])
        ids = np.flatnonzero(np.all(np.abs(verts - c) <= half, axis=1))
        out.append({"id": i, "label": "chair", "score": 0.5, "vertex_ids": ids.tolist(), "n_points": int(len(ids)),
                    "box": {"center": c.tolist(), "size": (2 * half).tolist(), "yaw_rad": 0.0}})
    (work / "instances.json").write_text(json.dumps({"frame": "gravity_z_up_metric", "units": "m",
                                                     "geometry": "mesh.ply", "n_vertices": len(verts),
                                                     "instances": out, "dummy": True}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--occlusion", choices=["mesh", "depth"], default="mesh")
    ap.add_argument("--dummy-instances", type=int, default=0)
    args = ap.parse_args()
    src = args.scene.resolve()
    work = (args.work or Path(tempfile.mkdtemp(prefix="bev_export_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        if (src / name).exists() and not (work / name).exists():
            os.symlink(src / name, work / name)
    dummy = False
    if not (work / "instances.json").exists():
        if not args.dummy_instances:
            sys.exit(f"{src} has no instances.json; pass --dummy-instances K to time on dummy boxes")
        dummy_instances(work, args.dummy_instances)
        dummy = True
    dummy = dummy or bool(json.loads((work / "instances.json").read_text()).get("dummy"))
    scene = Scene(work)
    mesh = scene.mesh(frame="world")
    verts, tris = mesh.vertices, mesh.triangles
    print(json.dumps({"step": "scene", "scene": str(src), "work": str(work), "n_vertices": int(len(verts)),
                      "n_triangles": int(len(tris)), "dummy_instances": dummy}), flush=True)
    del verts, tris, mesh

    t = time.perf_counter()
    r = generate(scene, BevConfig(n_frames=args.frames, occlusion=args.occlusion))
    doc = json.loads((work / "tasks" / "gpt4scene.json").read_text())
    print(json.dumps({"step": "bev", "seconds": round(time.perf_counter() - t, 3), "bev_seconds": r["bev_seconds"],
                      "bev_size": [doc["bev"]["width"], doc["bev"]["height"]],
                      "metres_per_pixel": round(doc["bev"]["metres_per_pixel"], 5),
                      "n_instances": r["n_instances"], "n_frames": len(r["frames"]),
                      "markers_per_frame": r["n_markers_per_frame"], "occlusion": args.occlusion,
                      "peak_rss_mib": round(rss_mib(), 1), "dummy_instances": dummy}), flush=True)
    for fmt in EXPORTERS:
        t = time.perf_counter()
        s = dict(export(scene, fmt).qc)
        files = s.pop("files")
        print(json.dumps({"step": f"export_{fmt}", "seconds": round(time.perf_counter() - t, 3),
                          "mib_written": size_mib(files), "peak_rss_mib": round(rss_mib(), 1),
                          **{k: v for k, v in s.items() if k not in ("dir",)}, "dummy_instances": dummy}), flush=True)


if __name__ == "__main__":
    main()
