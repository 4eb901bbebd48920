"""Benchmark: the full default pipeline's speed, profile, memory and fidelity, before and after, side by side in
one run. Prints one JSON object per line, then a summary table.

Inputs (``--inputs``, any of):

* ``sample`` — the 25-second sample clip in ``examples/`` (the first 250 frames of the HoloLens walk, so its
  ground truth applies);
* ``hololens`` — the 37-second HoloLens walk (``DATA/hololens_office.mp4``, ground truth in
  ``DATA/hololens_office/``);
* ``long`` — a 60-second clip made by playing the HoloLens walk forward, then backward (cost growth with length:
  seconds per keyframe should not grow).

Per input and checkout (the working tree, and ``--before REV``'s ``src/`` exported with ``git archive``; the
long clip with the working tree only), one
``vid2scene run`` of all stages with the default preset in a fresh scene folder, in a worker process that
imports that checkout. Figures:

* ``stage_s``: seconds per stage (manifest); ``steps_s``: seconds per step — every progress bar a stage opens
  (``progress.bar`` / ``progress.track``) is timed by wrapping ``progress.bar`` in the worker, so steps are named
  by their bar (``sfm: SIFT features``, ``depth: mvs``, ``fusion: integrating depth``, ``instances: views``, …);
  ``profile``: those steps mapped to decode, feature extraction, matching, mapping, plane sweep, consistency,
  TSDF integration, mesh extraction, ray casting, segmentation;
* ``wall_s``, ``min_per_min`` (compute minutes per minute of video), ``s_per_keyframe``, ``peak_rss_mb`` (the
  worker's ru_maxrss: the whole run in one process); ``cpu_s`` / ``stage_cpu_s`` / ``cpu_min_per_min`` /
  ``cpu_s_per_keyframe``: CPU seconds of the worker (all its threads), which a loaded machine disturbs far less
  than wall time (but which does not show the gain of using two cores);
* fidelity (``sample``, ``hololens``): registered share and ATE RMSE (cm, Sim(3)-aligned, as in
  ``sfm_hololens.py``), instances, generated questions and VLN episodes (``tasks_hololens.py``, which works on
  a copy); on ``hololens`` also depth AbsRel / coverage at the ground-truth scale and mesh F-score@5 cm (as in
  ``dense_hololens.py``; its reference fusion is the slow part of the evaluation).

Also, in the same run, plain pycolmap SfM alone on all frames of the HoloLens walk (``sfm_hololens.py``'s
baseline) as the yardstick: ``ratio_to_pycolmap`` = full run wall time / baseline wall time.

    python benchmarks/pipeline_speed.py [--inputs sample hololens long] [--before caa3648] [--skip-baseline]
        [--data ../shared/data] [--keep DIR] [--no-fidelity]

Times on a shared machine drift: compare the before / after and baseline figures of one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "examples" / "hololens_office_25s.mp4"
LONG_SECONDS = 60.0

#: profile step -> regular expression over the progress-bar descriptions (numbers replaced by N)
PROFILE_STEPS: dict[str, str] = {
    "decode": r"^ingest: (decode|images)",
    "shots": r"^shots:",
    "quality / keyframes": r"^(quality|keyframes)",
    "detection": r"^detect",
    "feature extraction": r"^sfm: .*features",
    "matching": r"^sfm: matching",
    "mapping": r"^sfm: .*(incremental|global) mapping",
    "mapping restarts": r"^sfm: .*mapping restarts",
    "continuation passes": r"^sfm: .*continuation",
    "principal-point BA": r"^sfm: principal-point",
    "plane sweep": r"^depth: (mvs|mono|prompt_da)$",
    "consistency": r"^depth: consistency",
    "sparse fill / depth writing": r"^depth: (sparse fill|writing)",
    "TSDF integration": r"^fusion: integrating",
    "mesh extraction": r"^fusion: extracting",
    "point cleaning": r"^fusion: cleaning",
    "layout planes": r"^layout",
    "segmentation": r"^instances: segments",
    "ray casting": r"^instances: views",
}


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------------------------------------------------
# worker: one full run in this process, with every progress bar timed
# ---------------------------------------------------------------------------------------------------------
def install_step_timer(progress) -> dict[str, float]:
    """Wrap ``progress.bar`` (``progress.track`` uses it too) so that each bar's open time is added to the
    returned dict under its description (digits replaced by ``N``)."""
    steps: dict[str, float] = {}
    orig = progress.bar

    @contextlib.contextmanager
    def timed_bar(description: str, total=None):
        t0 = time.perf_counter()
        try:
            with orig(description, total) as b:
                yield b
        finally:
            key = re.sub(r"\d+", "N", description)
            steps[key] = steps.get(key, 0.0) + time.perf_counter() - t0

    progress.bar = timed_bar
    return steps


def worker(video: Path, scene_dir: Path) -> None:
    from vid2scene import progress
    from vid2scene.config import load_config
    from vid2scene.pipeline import run_pipeline

    steps = install_step_timer(progress)
    progress.set_enabled(False)
    marks: list[tuple[str, float]] = []

    def on_stage(name, action, reason):  # CPU seconds of this process (all threads) at each stage's start
        marks.append((name, time.process_time()))

    t0, c0 = time.perf_counter(), time.process_time()
    err = None
    try:
        run_pipeline(video, scene_dir, load_config(None, "default"), overwrite=True, on_stage=on_stage)
    except Exception as e:  # recorded, the figures so far are still printed
        err = f"{type(e).__name__}: {e}"
    wall, cpu = time.perf_counter() - t0, time.process_time()
    ends = [c for _, c in marks[1:]] + [cpu]
    stage_cpu = {name: round(e - c, 2) for (name, c), e in zip(marks, ends)}
    print(json.dumps({"wall_s": wall, "cpu_s": cpu - c0, "stage_cpu_s": stage_cpu, "steps_s": steps, "error": err,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


def run_worker(src: Path, video: Path, scene_dir: Path) -> dict:
    """One full run with the checkout whose package is under ``src`` (its ``vid2scene`` first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(video), "--scene-dir", str(scene_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    man = json.loads((scene_dir / "manifest.json").read_text())
    vid = json.loads((scene_dir / "video.json").read_text())
    n_kf = len(json.loads((scene_dir / "keyframes.json").read_text()).get("keyframes", []))
    stage_s = {k: round(v.get("seconds") or 0.0, 2) for k, v in man["stages"].items()}
    profile = {}
    for name, pat in PROFILE_STEPS.items():
        s = sum(v for k, v in r["steps_s"].items() if re.search(pat, k))
        if s:
            profile[name] = round(s, 2)
    duration = float(vid["duration_s"])
    return {"wall_s": round(r["wall_s"], 1), "cpu_s": round(r["cpu_s"], 1), "video_s": duration, "n_keyframes": n_kf,
            "cpu_min_per_min": round(r["cpu_s"] / duration, 2), "cpu_s_per_keyframe": round(r["cpu_s"] / max(n_kf, 1), 3),
            "stage_cpu_s": r["stage_cpu_s"],
            "min_per_min": round(r["wall_s"] / duration, 2), "s_per_keyframe": round(r["wall_s"] / max(n_kf, 1), 3),
            "peak_rss_mb": round(r["peak_rss_mb"], 1), "stage_s": stage_s,
            "stage_peak_rss_mb": {k: v.get("peak_rss_mb") for k, v in man["stages"].items()},
            "profile_s": dict(sorted(profile.items(), key=lambda kv: -kv[1])),
            "steps_s": {k: round(v, 2) for k, v in sorted(r["steps_s"].items(), key=lambda kv: -kv[1])},
            **({"error": r["error"]} if r["error"] else {})}


# ---------------------------------------------------------------------------------------------------------
# inputs, checkouts, fidelity
# ---------------------------------------------------------------------------------------------------------
def make_long_clip(video: Path, out: Path, seconds: float = LONG_SECONDS) -> Path:
    """``video`` forward then backward, cut at ``seconds`` (same fps and size), written with ``io.write_video``."""
    import av

    from vid2scene.io import write_video

    with av.open(str(video)) as c:
        fps = float(c.streams.video[0].average_rate or 10)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    n = int(round(seconds * fps))
    seq = (frames + frames[::-1][1:]) * (1 + n // (2 * len(frames)))
    write_video(out, seq[:n], fps=fps)
    return out


def export_checkout(rev: str, dest: Path, repo: Path = ROOT) -> Path:
    """``src/`` of revision ``rev`` of the git repository ``repo`` under ``dest`` (``git archive``; no worktree
    is added), so that edits to the working tree during a long run do not leak into it."""
    dest.mkdir(parents=True)
    arch = subprocess.run(["git", "-C", str(repo), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest / "src"


def fidelity(scene_dir: Path, data: Path, gt: np.ndarray, dense: bool = True) -> dict:
    """Registered share, ATE, depth / mesh figures (``dense``) against the HoloLens ground truth, instances,
    questions."""
    sys.path.insert(0, str(HERE))
    import dense_hololens
    import sfm_hololens

    from vid2scene.scene import Scene

    out: dict = {}
    scene = Scene(scene_dir)
    cams = scene.cameras(frame="sfm")
    reg = {c.source_frame: sfm_hololens.c2w(c.cam_from_world) for c in cams if c.registered}
    out["registered_share"] = round(len(reg) / max(len(cams), 1), 4)
    out["ate_rmse_cm"] = round(sfm_hololens.ate_cm(reg, gt), 2) if len(reg) >= 3 else None
    try:
        if not dense:
            raise LookupError("skipped (dense figures on the hololens input only)")
        rows = {(r["figure"], r.get("scale")): r for r in dense_hololens.evaluate(scene_dir, data)}
        d = rows[("depth", "gt sim3")]
        out.update({"depth_abs_rel": d["abs_rel"], "depth_coverage": d["coverage"],
                    "mesh_fscore_5cm": rows[("mesh", None)]["fscore_5cm"],
                    "mesh_fscore_5cm_gt_poses": rows[("mesh_diagnostic", None)]["fscore_5cm"]})
    except Exception as e:  # a failed stage leaves no depth / mesh: say so, keep the other figures
        out["dense_error"] = f"{type(e).__name__}: {e}"
    inst = scene_dir / "instances.json"
    if inst.is_file():
        doc = json.loads(inst.read_text())
        out["instances"] = len(doc.get("instances", doc) if isinstance(doc, dict) else doc)
    proc = subprocess.run([sys.executable, str(HERE / "tasks_hololens.py"), "--scene", str(scene_dir)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            r = json.loads(line)
            if r.get("figure") == "vqa":
                out["questions"] = r["n_questions"]
            if r.get("figure") == "vln":
                out["vln_episodes"] = r["n_episodes"]
    return out


def baseline(video: Path, gt: np.ndarray, K: np.ndarray, workdir: Path) -> dict:
    sys.path.insert(0, str(HERE))
    import sfm_hololens

    workdir.mkdir(parents=True)
    return sfm_hololens.run_baseline(video, gt, K, workdir)


def summary_table(rows: list[dict], base_s: float | None) -> str:
    lines = [f"{'input':9} {'code':8} {'wall s':>7} {'min/min':>7} {'s/kf':>6} {'RSS MB':>7} {'x pycolmap':>10}  "
             "top steps"]
    for r in rows:
        top = ", ".join(f"{k} {v:.0f}" for k, v in list(r.get("profile_s", {}).items())[:4])
        ratio = f"{r['wall_s'] / base_s:.2f}" if base_s and "wall_s" in r else "-"
        lines.append(f"{r['input']:9} {r['code']:8} {r.get('wall_s', 0):7.1f} {r.get('min_per_min', 0):7.2f} "
                     f"{r.get('s_per_keyframe', 0):6.2f} {r.get('peak_rss_mb', 0):7.0f} {ratio:>10}  {top}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--inputs", nargs="+", default=["sample", "hololens", "long"],
                    choices=["sample", "hololens", "long"])
    ap.add_argument("--before", help="also time this revision's src/ (e.g. caa3648), side by side")
    ap.add_argument("--after", default=None, help="time this revision's src/ as 'after' (default: the working "
                    "tree as it is, read at each run)")
    ap.add_argument("--only", choices=["before", "after"], help="run only this checkout (e.g. two invocations at "
                    "once, so that before and after see the same machine load)")
    ap.add_argument("--skip-baseline", action="store_true", help="no plain-pycolmap yardstick")
    ap.add_argument("--no-fidelity", action="store_true", help="timings only")
    ap.add_argument("--keep", type=Path, help="keep the scene folders here (default: a temporary folder)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scene-dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.scene_dir)
        return
    sys.path[:0] = [str(ROOT / "src"), str(HERE)]
    import sfm_hololens

    holo = a.data / "hololens_office.mp4"
    gt, K = sfm_hololens.load_gt(a.data)
    with tempfile.TemporaryDirectory(prefix="v2s_speed_") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkouts = {"after": export_checkout(a.after, work / f"checkout_{a.after}") if a.after else ROOT / "src"}
        if a.before:
            checkouts = {"before": export_checkout(a.before, work / f"checkout_{a.before}"), **checkouts}
        if a.only:
            checkouts = {k: v for k, v in checkouts.items() if k == a.only}
        videos = {"sample": SAMPLE, "hololens": holo}
        if "long" in a.inputs:
            videos["long"] = make_long_clip(holo, work / "hololens_fwd_bwd_60s.mp4")
        base_s = None
        if not a.skip_baseline:
            b = baseline(holo, gt, K, work / "pycolmap_baseline")
            base_s = b.get("run_s")
            emit({"figure": "baseline", **b})
        rows = []
        for inp in a.inputs:
            for code, src in checkouts.items():
                if code == "before" and inp == "long":  # the long clip measures growth with length: after only
                    continue
                scene_dir = work / f"{inp}_{code}"
                if scene_dir.exists():
                    shutil.rmtree(scene_dir)
                r = {"figure": "run", "input": inp, "code": code if code == "after" else f"{a.before}",
                     **run_worker(src, videos[inp], scene_dir)}
                if base_s and "wall_s" in r:
                    r["ratio_to_pycolmap"] = round(r["wall_s"] / base_s, 3)
                if not a.no_fidelity and inp in ("sample", "hololens") and "wall_s" in r:
                    r["fidelity"] = fidelity(scene_dir, a.data, gt, dense=inp == "hololens")
                emit(r)
                rows.append(r)
        print(summary_table(rows, base_s), flush=True)


if __name__ == "__main__":
    main()
