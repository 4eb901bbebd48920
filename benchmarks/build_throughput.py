"""Benchmark: `vid2scene build` throughput on short clips cut from hololens_office.mp4, with 1 and 2 workers,
then a build killed half-way and re-run. Prints one JSON object per line.

Dataset: ``--n-clips`` clips of ``--clip-s`` seconds spread evenly over the video (re-encoded with PyAV,
H.264), plus one bad file (the first 40% of a clip's bytes: a truncated mp4 without its index) and one
static clip (the first frame repeated). Every run uses a fresh dataset folder and the ``vid2scene build``
command line (local engine), with the preset ``--preset`` and stages ``ingest .. --until``.

Figures: wall time, complete scenes per hour, speed-up of 2 workers over 1, peak RSS per task process (the
task's ``ru_maxrss``, from index.parquet), which videos failed and why, the 1-minute load average before and
after (the machine may be shared), and for the kill/re-run: which scenes had finished before the kill and
whether any of them was recomputed (their manifest stage timestamps and task attempts must not change).

    python benchmarks/build_throughput.py [--until keyframes] [--workers 1,2] [--out /tmp/v2s_build_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_VIDEO = HERE.parent.parent / "shared" / "data" / "hololens_office.mp4"
SRC = HERE.parent / "src"


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def encode(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    from vid2scene.io import write_video

    write_video(path, frames, fps)
    return path


def make_clips(video: Path, folder: Path, n_clips: int, clip_s: float) -> list[Path]:
    """Cut the clips, the static clip and the bad file into ``folder``; returns every file, in order."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as c:
        fps = float(c.streams.video[0].average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    n = int(round(clip_s * fps))
    starts = np.linspace(0, len(frames) - n, n_clips).round().astype(int)
    files = [encode(folder / f"clip{i:02d}_{s / fps:04.1f}s.mp4", frames[s:s + n], fps) for i, s in enumerate(starts)]
    files.append(encode(folder / "static.mp4", [frames[0]] * n, fps))
    bad = folder / "bad_truncated.mp4"
    data = files[0].read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.4)])
    files.append(bad)
    return files


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                VID2SCENE_NO_PROGRESS="1")


def build_cmd(sources: Path, ds: Path, workers: int, args) -> list[str]:
    cmd = [sys.executable, "-m", "vid2scene.cli", "build", str(sources), "-o", str(ds), "--workers", str(workers),
           "--preset", args.preset, "-q"]
    if args.until:
        cmd += ["--until", args.until]
    if args.timeout_s:
        cmd += ["--timeout-s", str(args.timeout_s)]
    return cmd


def read_rows(ds: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(ds / "index.parquet").to_pylist()


def stage_times(ds: Path, scene_dir: str) -> dict:
    m = json.loads((ds / scene_dir / "manifest.json").read_text())
    return {k: v.get("finished") for k, v in m["stages"].items()}


def run_build(sources: Path, ds: Path, workers: int, args) -> dict:
    if ds.exists():
        shutil.rmtree(ds)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(build_cmd(sources, ds, workers, args), env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"build failed ({r.returncode}): {r.stderr[-2000:]}")
    rows = read_rows(ds)
    done = [x for x in rows if x["status"] == "complete"]
    rss = [x["peak_rss_mb"] for x in rows if x.get("peak_rss_mb")]
    stage_cols = [c for c in rows[0] if c.startswith("seconds_")]
    return {"run": "build", "workers": workers, "preset": args.preset, "until": args.until or "layout",
            "n_videos": len(rows), "n_complete": len(done), "n_failed": len(rows) - len(done),
            "wall_s": round(wall, 1), "scenes_per_hour": round(len(done) / wall * 3600, 1),
            "video_s_per_wall_s": round(sum(x["duration_s"] or 0 for x in done) / wall, 3),
            "task_wall_s_median": round(float(np.median([x["wall_s"] for x in done])), 1) if done else None,
            "stage_s_median": {c.removeprefix("seconds_"): round(float(np.median(v)), 2) for c in stage_cols
                               if (v := [x[c] for x in done if x[c] is not None])},
            "peak_rss_mb_per_task_max": max(rss) if rss else None,
            "peak_rss_mb_per_task_median": round(float(np.median(rss)), 1) if rss else None,
            "failed": {x["scene_id"]: f"{x['failure_stage']}: {x['failure_reason']}" for x in rows
                       if x["status"] == "failed"},
            "loadavg_1m_before": round(load0, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count()}


def run_kill_resume(sources: Path, ds: Path, workers: int, n_videos: int, args) -> dict:
    """Start a build, SIGKILL it once half the videos have finished, re-run it; check nothing was recomputed."""
    if ds.exists():
        shutil.rmtree(ds)
    t0 = time.perf_counter()
    proc = subprocess.Popen(build_cmd(sources, ds, workers, args), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    half = n_videos // 2
    while proc.poll() is None and len(list((ds / "tasks").glob("*.json"))) < half:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - t0
    time.sleep(2.0)  # orphaned task processes see their parent gone and exit
    recs = {p.stem: json.loads(p.read_text()) for p in (ds / "tasks").glob("*.json")}
    before = {tid: (stage_times(ds, f"scenes/{tid}"), r["attempts"]) for tid, r in recs.items()
              if r["status"] == "complete"}
    failed_before = {tid for tid, r in recs.items() if r["status"] == "failed"}
    in_progress = [p.name for p in (ds / "scenes").iterdir() if p.name not in recs]
    t1 = time.perf_counter()
    r = subprocess.run(build_cmd(sources, ds, workers, args), env=env(), capture_output=True, text=True)
    rerun = time.perf_counter() - t1
    rows = read_rows(ds)
    recs2 = {p.stem: json.loads(p.read_text()) for p in (ds / "tasks").glob("*.json")}
    recomputed = [tid for tid, (times, att) in before.items()
                  if stage_times(ds, f"scenes/{tid}") != times or recs2[tid]["attempts"] != att]
    rerun_failed = [tid for tid in failed_before if recs2[tid]["attempts"] != recs[tid]["attempts"]]
    return {"run": "kill_and_resume", "workers": workers, "killed_after_s": round(killed_after, 1),
            "finished_before_kill": sorted(before), "failed_before_kill": sorted(failed_before),
            "interrupted_in_progress": sorted(in_progress), "rerun_rc": r.returncode, "rerun_wall_s": round(rerun, 1),
            "recomputed_finished": recomputed, "failed_rerun_without_retry_flag": rerun_failed,
            "final_status": {s: sum(x["status"] == s for x in rows) for s in sorted({x["status"] for x in rows})},
            "nothing_finished_recomputed": not recomputed and not rerun_failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--out", type=Path, default=Path("/tmp/v2s_build_bench"))
    ap.add_argument("--n-clips", type=int, default=8)
    ap.add_argument("--clip-s", type=float, default=8.0)
    ap.add_argument("--until", default="keyframes", help="last stage ('' = all stages)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--timeout-s", type=float, default=None)
    ap.add_argument("--skip-resume", action="store_true")
    args = ap.parse_args()
    clips = args.out / "clips"
    if clips.exists():
        shutil.rmtree(clips)
    files = make_clips(args.video, clips, args.n_clips, args.clip_s)
    sources = args.out / "sources.txt"
    sources.write_text("\n".join(str(f) for f in files) + "\n")
    emit({"run": "dataset", "n_videos": len(files), "clips": [f.name for f in files], "clip_s": args.clip_s})
    walls = {}
    for w in [int(x) for x in args.workers.split(",")]:
        res = run_build(sources, args.out / f"ds_w{w}", w, args)
        walls[w] = res["wall_s"]
        emit(res)
    if 1 in walls and 2 in walls:
        emit({"run": "speedup", "speedup_2_workers_vs_1": round(walls[1] / walls[2], 2),
              "note": "2 cores shared with other jobs; see loadavg fields"})
    if not args.skip_resume:
        emit(run_kill_resume(sources, args.out / "ds_resume", 2, len(files), args))


if __name__ == "__main__":
    main()
