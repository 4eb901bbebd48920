"""Benchmark: layout synthesis (``vid2scene.tasks.layout_synth``) — each score before and after solving, mean
displacement, solver seconds, render seconds. Prints one JSON object per line.

Synthetic (``--synthetic``): the scene of ``tests/fixtures/layout_scene.py`` (6 × 5 m room, 8 true boxes) with
planted errors of three kinds at growing size and count —

* ``overlap``: an object pushed into its neighbour by ``size`` metres (1–3 objects: chair→table, chair→table,
  plant→couch);
* ``wall``: an object pushed ``size`` metres through a wall (fridge west, chair south, couch north);
* ``floating``: an object lifted by ``size`` metres (chair, laptop above its table, plant).

For each case: scores before / after (``f1_iou25`` against the *true* boxes), mean / max floor displacement,
objects moved, solver seconds. ``monotone`` lines say whether each before-score moves the right way as the
error grows (non-strictly; collision / out-of-room / support rates up, reachable share and F1 down). One full
generator run (render included) gives the render seconds.

Scene (``--scene DIR``): the generator on a real scene; its inputs are copied into a temporary folder (the scene
is never modified); ``--out DIR`` keeps the outputs (plans, layout.txt, scores.json, fpv/) and an overview
render before / after solving (``overview_before_after.png``).

    python benchmarks/layout_synth.py --synthetic [--out DIR]    # DIR/synthetic_before_after.png
    python benchmarks/layout_synth.py --scene /work/scenes/hololens --out /tmp/hololens_layout
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
INPUTS = ["manifest.json", "instances.json", "layout.json", "cameras.json", "detections", "keyframes.json"]
KEYS = ("collision_rate", "overlap_area_m2", "out_of_room_rate", "outside_area_m2", "support_violation_rate",
        "reachable_floor_share", "wall_parallel_share", "frame_agreement", "f1_iou25")
# direction of "worse" for the monotonicity check: +1 grows with errors, -1 shrinks
WORSE = {"collision_rate": 1, "overlap_area_m2": 1, "out_of_room_rate": 1, "outside_area_m2": 1,
         "support_violation_rate": 1, "reachable_floor_share": -1, "f1_iou25": -1}


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def planted(kind: str, size: float, count: int):
    from tests.fixtures import layout_scene as ls

    recs = ls.instance_records()
    if size == 0:
        return recs
    if kind == "overlap":
        for obj, toward in [(2, 1), (3, 1), (6, 0)][:count]:
            recs = ls.plant_overlap(recs, obj, toward, size)
    elif kind == "wall":
        for obj, wall in [(4, "west"), (2, "south"), (0, "north")][:count]:
            recs = ls.plant_through_wall(recs, obj, size, wall)
    elif kind == "floating":
        for obj in [3, 7, 6][:count]:
            recs = ls.plant_floating(recs, obj, size)
    return recs


def planted_more(recs):
    """Add an overlap (chair into the table) and a floating chair to ``recs``."""
    from tests.fixtures import layout_scene as ls

    return ls.plant_floating(ls.plant_overlap(recs, 2, 1, 0.25), 3, 0.5)


SIZES = {"overlap": [0.0, 0.05, 0.1, 0.2, 0.3], "wall": [0.0, 0.1, 0.2, 0.4, 0.6],
         "floating": [0.0, 0.1, 0.3, 0.5, 0.8]}


def synthetic(out_dir: Path | None) -> None:
    from tests.fixtures import layout_scene as ls
    from vid2scene.tasks.layout_synth.plan import build_plan
    from vid2scene.tasks.layout_synth.scores import score_plan
    from vid2scene.tasks.layout_synth.solver import solve

    lay, cams, ref = ls.layout_doc(), ls.cameras(), ls.true_boxes()
    all_disp = []
    for kind, sizes in SIZES.items():
        for count in (1, 2, 3):
            series = []
            for size in sizes:
                plan = build_plan(planted(kind, size, count), lay, cams)
                t0 = time.perf_counter()
                out, rep = solve(plan)
                secs = time.perf_counter() - t0
                b, a = score_plan(plan, ref), score_plan(out, ref)
                r = rep.to_json()
                if size > 0:
                    all_disp.append(r["mean_displacement_moved_xy_m"])
                series.append(b)
                emit({"case": "synthetic", "error": kind, "count": count, "size_m": size,
                      "before": {k: b[k] for k in KEYS}, "after": {k: a[k] for k in KEYS},
                      "mean_displacement_xy_m": r["mean_displacement_xy_m"],
                      "mean_displacement_moved_xy_m": r["mean_displacement_moved_xy_m"],
                      "max_displacement_xy_m": r["max_displacement_xy_m"], "n_moved": r["n_moved"],
                      "mean_displacement_m": r["mean_displacement_m"],
                      "n_removed": len(r["removed"]), "iterations": r["iterations"], "solver_s": round(secs, 4)})
            mono = {k: all(WORSE[k] * (series[i + 1][k] - series[i][k]) >= -1e-9 for i in range(len(series) - 1))
                    for k in WORSE}
            emit({"case": "monotone", "error": kind, "count": count, "sizes_m": sizes, **mono})
    import numpy as np

    emit({"case": "synthetic_summary", "mean_displacement_moved_xy_m": round(float(np.mean(all_disp)), 4),
          "max_mean_displacement_moved_xy_m": round(float(np.max(all_disp)), 4)})
    with tempfile.TemporaryDirectory() as d:
        from vid2scene.tasks import layout_synth as L

        recs = planted("overlap", 0.2, 2)
        scene = ls.write_layout_scene(Path(d) / "s", recs)
        t0 = time.perf_counter()
        res = L.run(scene)
        s = json.loads(scene.task_path("layout_synth/scores.json").read_text())
        emit({"case": "synthetic_run", "seconds": round(time.perf_counter() - t0, 3), "render": s["render"],
              "solver_s": s["solver"]["seconds"], "summary": res.summary})
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            raw = build_plan(planted_more(planted("wall", 0.4, 1)), lay, cams)
            overview(raw, solve(raw)[0], out_dir / "synthetic_before_after.png")


def overview(raw, solved, path: Path, width: int = 480) -> None:
    """Side-by-side render of the plan before / after solving from a high corner of the room (a PNG)."""
    import numpy as np

    from vid2scene.io import write_image_rgb
    from vid2scene.tasks.layout_synth.render import View, render_view

    P = np.asarray(solved.room.polygon_xy, np.float64)
    c = P.mean(0)
    lo = P.min(0)
    eye = np.array([*(lo + 0.1 * (P.max(0) - lo)), min(solved.room.height_m - 0.1, 2.4)])
    target = np.array([*c, 0.3])
    fwd = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd])
    T[:3, 3] = -T[:3, :3] @ eye
    h = int(width * 0.75)
    f = 0.5 * width / np.tan(np.radians(50))
    K = np.array([[f, 0, width / 2], [0, f, h / 2], [0, 0, 1]])
    imgs = [render_view(p, View("overview", K, T, width, h)).rgb for p in (raw, solved)]
    write_image_rgb(path, np.hstack([imgs[0], np.full((h, 4, 3), 255, np.uint8), imgs[1]]))


def real(scene_dir: Path, out: Path | None, seed: int) -> None:
    from vid2scene.scene import Scene
    from vid2scene.tasks import layout_synth as L

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / scene_dir.name
        tmp.mkdir()
        for name in INPUTS:
            src = scene_dir / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        t0 = time.perf_counter()
        res = L.run(Scene(tmp), L.Config(seed=seed, n_variations=2))
        secs = time.perf_counter() - t0
        s = json.loads((tmp / "tasks/layout_synth/scores.json").read_text())
        emit({"case": "scene", "scene": str(scene_dir), "seconds": round(secs, 3),
              "before": {k: s["before"].get(k) for k in KEYS}, "after": {k: s["after"].get(k) for k in KEYS},
              "n_objects": s["after"]["n_objects"], "solver": {k: v for k, v in s["solver"].items()
                                                               if k != "displacement_xy_m"},
              "render": s.get("render"), "variations": [{k: v.get(k) for k in ("collision_rate", "out_of_room_rate",
                                                                               "f1_iou25")} for v in s["variations"]],
              "warnings": res.warnings})
        if out is not None:
            from vid2scene.tasks.layout_synth.plan import Plan

            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(tmp / "tasks/layout_synth", out)
            raw = Plan.from_json(json.loads((out / "plan_raw.json").read_text()))
            solved = Plan.from_json(json.loads((out / "plan.json").read_text()))
            overview(raw, solved, out / "overview_before_after.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--scene", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if not a.synthetic and a.scene is None:
        ap.error("give --synthetic and/or --scene DIR")
    if a.synthetic:
        synthetic(a.out)
    if a.scene is not None:
        real(a.scene, a.out, a.seed)


if __name__ == "__main__":
    main()
