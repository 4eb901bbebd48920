"""Benchmark: pose accuracy and speed of the ``sfm`` stage per feature type, against plain pycolmap on all
frames, on the HoloLens walk and the sample clip, side by side in one run. Prints one JSON object per line
and a table at the end.

For each video (``hololens_office.mp4``: 373 frames; ``examples/hololens_office_25s.mp4``: its first 250):

* ``vid2scene run VIDEO --until sfm`` once with ``sfm.features: sift`` (every stage timed from a cold start);
  then, for each other feature type, the same scene copied and ``run --until sfm`` again with that feature
  type: only ``sfm`` re-runs (the earlier stages resume), so the ``run --until sfm`` seconds of a feature type
  are the measured seconds of the shared stages plus its own ``sfm`` seconds;
* plain pycolmap on every frame (decode to PNG, SIFT, sequential matching, incremental mapping, intrinsics
  unknown, one shared camera) in its own process.

Figures: registered share (keyframes / frames in the one kept model), ATE RMSE (cm) of camera centres after
Sim(3) alignment to the ground-truth ``poses.txt`` (evo APE, translation part, ``align`` + ``correct_scale``),
focal error (%) against ``K.txt``, seconds of the ``sfm`` stage and of ``run --until sfm`` (and the ratio of
the latter to plain pycolmap's seconds), peak RSS of each process (MB, ``/usr/bin/time``-style ``ru_maxrss``
of a wrapper process per run).

    python benchmarks/sfm_hololens.py [--data ../shared/data] [--features sift,xfeat,disk] [--videos hololens,clip]
        [--extra-config FILE] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
CLIP = HERE.parent / "examples" / "hololens_office_25s.mp4"


def load_gt(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(camera-to-world poses ``N×4×4``, OpenCV axes, metres; row i = video frame i), K 3×3."""
    rows = np.loadtxt(data / "hololens_office" / "poses.txt")
    return rows.reshape(-1, 4, 4), np.loadtxt(data / "hololens_office" / "K.txt")


def ate_cm(est_c2w: dict[int, np.ndarray], gt: np.ndarray) -> float | None:
    """ATE RMSE in cm after Sim(3) alignment (evo APE, translation part) over the frames in ``est_c2w``."""
    from evo.core.metrics import PoseRelation
    from evo.core.trajectory import PosePath3D
    from evo.main_ape import ape

    idx = sorted(est_c2w)
    if len(idx) < 3:
        return None
    ref = PosePath3D(poses_se3=[gt[i] for i in idx])
    est = PosePath3D(poses_se3=[est_c2w[i] for i in idx])
    res = ape(ref, est, PoseRelation.translation_part, align=True, correct_scale=True)
    return round(100.0 * float(res.stats["rmse"]), 2)


def c2w(cam_from_world) -> np.ndarray:
    return np.linalg.inv(np.asarray(cam_from_world, dtype=np.float64))


def timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd`` through a wrapper process; returns (process, wall seconds, peak RSS MB of the command)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--rss-wrapper", json.dumps(cmd)], capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    rss = 0.0
    lines = proc.stderr.strip().splitlines()
    if lines and lines[-1].startswith("{\"peak_rss_mb\""):
        rss = json.loads(lines[-1])["peak_rss_mb"]
    return proc, wall, rss


def rss_wrapper(cmd_json: str) -> None:
    proc = subprocess.run(json.loads(cmd_json))
    sys.stderr.write("\n" + json.dumps({"peak_rss_mb": round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1)}) + "\n")
    sys.exit(proc.returncode)


def run_vid2scene(video: Path, scene_dir: Path, variant: str, extra: dict, gt: np.ndarray, K: np.ndarray,
                  shared_s: float | None) -> dict:
    """One ``run --until sfm``; ``variant`` is a feature type, optionally ``+refine`` (refine_all_frames)."""
    import yaml

    features, *flags = variant.split("+")
    cfg = scene_dir.parent / f"cfg_{variant.replace('+', '_')}.yaml"
    sfm = {**extra.get("sfm", {}), "features": features}
    if "refine" in flags:
        sfm["refine_all_frames"] = True
    cfg.write_text(yaml.safe_dump({**extra, "sfm": sfm}))
    cmd = [sys.executable, "-m", "vid2scene.cli", "run", str(video), "-o", str(scene_dir), "--until", "sfm",
           "--config", str(cfg), "-q"]
    proc, wall, rss = timed(cmd)
    out = {"method": f"vid2scene sfm.features={features}" + (" + refine_all_frames" if flags else ""),
           "exit_code": proc.returncode, "peak_rss_mb": rss}
    man = json.loads((scene_dir / "manifest.json").read_text())
    stage_s = {k: v.get("seconds") for k, v in man["stages"].items()}
    sfm_s = stage_s.get("sfm")
    before = sum(v or 0 for k, v in stage_s.items() if k != "sfm")
    out.update({"sfm_s": sfm_s, "stages_before_sfm_s": round(before, 1),
                "run_until_sfm_s": round((shared_s if shared_s is not None else before) + (sfm_s or 0), 1),
                "process_wall_s": round(wall, 1)})
    if proc.returncode != 0:
        out["error"] = (proc.stderr.strip().splitlines() or ["?"])[-2:]
        return out
    from vid2scene.scene import Scene

    cams = Scene(scene_dir).cameras(frame="sfm")
    reg = {c.source_frame: c2w(c.cam_from_world) for c in cams if c.registered}
    qc = man["qc"]["sfm"]
    f = float(qc["camera"]["params"][0])
    out.update({"keyframes": len(cams), "registered": len(reg), "registered_share": round(len(reg) / len(cams), 4),
                "n_models": qc.get("n_models"), "ate_cm": ate_cm(reg, gt),
                "focal_px": round(f, 1), "focal_err_pct": round(100 * (f / K[0, 0] - 1), 2),
                "reprojection_px": qc["mean_reprojection_error_px"], "n_points": qc["n_points"],
                "loops_dropped": len(qc.get("loops_dropped", [])), "unregistered_reasons": qc.get("unregistered_reasons"),
                "refine": qc.get("refine"),
                "warnings": man["stages"]["sfm"].get("warnings", [])})
    return out


def baseline_worker(video: Path, workdir: Path) -> None:
    """Plain pycolmap: all frames, default SIFT, sequential matching, incremental mapping, unknown K."""
    import av
    import cv2
    import pycolmap

    t = {}
    t0 = time.perf_counter()
    img_dir = workdir / "images"
    img_dir.mkdir(parents=True)
    with av.open(str(video)) as c:
        for i, fr in enumerate(c.decode(video=0)):
            cv2.imwrite(str(img_dir / f"{i:06d}.png"), cv2.cvtColor(fr.to_ndarray(format="rgb24"), cv2.COLOR_RGB2BGR))
    t["decode"] = time.perf_counter() - t0
    db = workdir / "database.db"
    t0 = time.perf_counter()
    pycolmap.extract_features(db, img_dir, camera_mode=pycolmap.CameraMode.SINGLE, device=pycolmap.Device.cpu)
    t["extract"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pycolmap.match_sequential(db, device=pycolmap.Device.cpu)
    t["match"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    (workdir / "sparse").mkdir()
    models = pycolmap.incremental_mapping(db, img_dir, workdir / "sparse", pycolmap.IncrementalPipelineOptions())
    t["map"] = time.perf_counter() - t0
    sizes = sorted((m.num_reg_images() for m in models.values()), reverse=True)
    best = max(models.values(), key=lambda m: m.num_reg_images()) if models else None
    poses, focal = {}, None
    if best is not None:
        focal = float(next(iter(best.cameras.values())).params[0])
        for im in best.images.values():
            if im.has_pose:
                M = np.eye(4)
                M[:3] = np.asarray(im.cam_from_world().matrix())
                poses[int(Path(im.name).stem)] = M.tolist()
    print(json.dumps({"n_frames": len(list(img_dir.iterdir())), "sizes": sizes, "poses": poses, "stage_s": t,
                      "focal": focal}))


def run_baseline(video: Path, gt: np.ndarray, K: np.ndarray, workdir: Path) -> dict:
    proc, wall, rss = timed([sys.executable, __file__, "--baseline-worker", str(video), "--workdir", str(workdir)])
    if proc.returncode != 0:
        return {"method": "plain pycolmap (all frames)", "exit_code": proc.returncode, "error": proc.stderr[-500:]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    reg = {int(k): c2w(np.array(v)) for k, v in r["poses"].items()}
    f = r["focal"]
    return {"method": "plain pycolmap (all frames, sequential, incremental, unknown K)",
            "frames": r["n_frames"], "registered": len(reg), "registered_share": round(len(reg) / r["n_frames"], 4),
            "n_models": len(r["sizes"]), "model_sizes": r["sizes"][:6], "ate_cm": ate_cm(reg, gt),
            "focal_px": None if f is None else round(f, 1),
            "focal_err_pct": None if f is None else round(100 * (f / K[0, 0] - 1), 2),
            "run_s": round(wall, 1), "stage_s": {k: round(v, 1) for k, v in r["stage_s"].items()},
            "peak_rss_mb": rss}


def bench_video(label: str, video: Path, gt: np.ndarray, K: np.ndarray, features: list[str], extra: dict,
                tmp: Path, skip_baseline: bool) -> list[dict]:
    rows = []
    base_scene = tmp / label / f"scene_{features[0]}"
    base_scene.parent.mkdir(parents=True)
    first = run_vid2scene(video, base_scene, features[0], extra, gt, K, None)
    first["video"] = label
    print(json.dumps(first), flush=True)
    rows.append(first)
    shared = first.get("stages_before_sfm_s")
    for feat in features[1:]:
        sc = tmp / label / f"scene_{feat.replace('+', '_')}"
        shutil.copytree(base_scene, sc, symlinks=True)
        r = run_vid2scene(video, sc, feat, extra, gt, K, shared)
        r["video"] = label
        print(json.dumps(r), flush=True)
        rows.append(r)
        shutil.rmtree(sc, ignore_errors=True)
    if not skip_baseline:
        (tmp / label / "baseline").mkdir()
        b = run_baseline(video, gt, K, tmp / label / "baseline")
        b["video"] = label
        print(json.dumps(b), flush=True)
        rows.append(b)
        for r in rows[:-1]:
            if r.get("run_until_sfm_s") and b.get("run_s"):
                r["run_until_sfm_over_plain"] = round(r["run_until_sfm_s"] / b["run_s"], 3)
    shutil.rmtree(tmp / label, ignore_errors=True)
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ["video", "method", "registered_share", "n_models", "ate_cm", "focal_err_pct", "sfm_s", "run_until_sfm_s",
            "run_s", "run_until_sfm_over_plain", "peak_rss_mb"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--features", default="sift,xfeat,disk,sift+refine",
                    help="variants: feature types, '+refine' adds refine_all_frames")
    ap.add_argument("--videos", default="hololens,clip")
    ap.add_argument("--extra-config", type=Path, help="YAML with more stage sections for every vid2scene run")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--baseline-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--rss-wrapper", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_wrapper:
        rss_wrapper(a.rss_wrapper)
        return
    if a.baseline_worker:
        baseline_worker(a.baseline_worker, a.workdir)
        return
    import yaml

    extra = yaml.safe_load(a.extra_config.read_text()) if a.extra_config else {}
    gt, K = load_gt(a.data)
    feats = [f for f in a.features.split(",") if f]
    videos = {"hololens": a.data / "hololens_office.mp4", "clip": CLIP}
    rows = []
    with tempfile.TemporaryDirectory(prefix="v2s_sfm_bench_") as tmp:
        for label in a.videos.split(","):
            rows += bench_video(label, videos[label], gt, K, feats, extra, Path(tmp), a.skip_baseline)
    print_table(rows)


if __name__ == "__main__":
    main()
