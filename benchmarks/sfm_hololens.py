"""Benchmark: the main job (ingest → shots → quality → keyframes → sfm) on hololens_office.mp4 against a
plain pycolmap baseline on the same video's frames. Prints one JSON object per line.

Figures per method: registered / selected frames, number of models, ATE RMSE (cm) of camera centres after
Sim(3) alignment to the ground-truth ``poses.txt`` (evo's APE, translation part, ``align`` +
``correct_scale``), wall time per stage, peak RSS. Intrinsics are unknown to both (one shared camera whose
focal length is estimated) unless ``--baseline-known-intrinsics``.

    python benchmarks/sfm_hololens.py [--data ../shared/data] [--preset default] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def load_gt(data: Path) -> np.ndarray:
    """Ground-truth camera-to-world poses, ``N×4×4`` (OpenCV axes, metres); row i = video frame i."""
    rows = np.loadtxt(data / "hololens_office" / "poses.txt")
    return rows.reshape(-1, 4, 4)


def ate_cm(est_c2w: dict[int, np.ndarray], gt: np.ndarray) -> float:
    """ATE RMSE in cm after Sim(3) alignment (evo APE, translation part) over the frames in ``est_c2w``."""
    from evo.core.metrics import PoseRelation
    from evo.core.trajectory import PosePath3D
    from evo.main_ape import ape

    idx = sorted(est_c2w)
    ref = PosePath3D(poses_se3=[gt[i] for i in idx])
    est = PosePath3D(poses_se3=[est_c2w[i] for i in idx])
    res = ape(ref, est, PoseRelation.translation_part, align=True, correct_scale=True)
    return 100.0 * float(res.stats["rmse"])


def c2w(cam_from_world: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.asarray(cam_from_world, dtype=np.float64))


def run_vid2scene(video: Path, gt: np.ndarray, preset: str, workdir: Path, config: Path | None = None,
                  scene_dir: Path | None = None) -> dict:
    scene_dir = scene_dir or workdir / "scene"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "vid2scene.cli", "run", str(video), "-o", str(scene_dir), "--preset", preset, "-q"]
    if config:
        cmd += ["--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    out = {"method": f"vid2scene ({preset}{', ' + config.name if config else ''})", "exit_code": proc.returncode, "wall_s": round(wall, 1),
           "peak_rss_mb": round(rss_mb, 1)}
    man = json.loads((scene_dir / "manifest.json").read_text())
    out["stage_s"] = {k: v.get("seconds") for k, v in man["stages"].items()}
    if proc.returncode != 0:
        out["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return out
    from vid2scene.scene import Scene

    cams = Scene(scene_dir).cameras(frame="sfm")
    reg = {c.source_frame: c2w(c.cam_from_world) for c in cams if c.registered}
    qc = man["qc"]["sfm"]
    out.update({"selected": len(cams), "registered": len(reg), "registered_share": round(len(reg) / len(cams), 4),
                "n_models": qc.get("n_models"), "models_after_merge": 1,
                "ate_rmse_cm": round(ate_cm(reg, gt), 2), "focal_px": qc["camera"]["params"][0],
                "reprojection_px": qc["mean_reprojection_error_px"], "n_points": qc["n_points"]})
    return out


def baseline_worker(video: Path, workdir: Path, known_K: list[float] | None) -> None:
    """Plain pycolmap: all frames, default SIFT, sequential matching, incremental mapping."""
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
    ro = pycolmap.ImageReaderOptions()
    if known_K:
        ro.camera_model = "PINHOLE"
        ro.camera_params = ",".join(map(str, known_K))
    t0 = time.perf_counter()
    pycolmap.extract_features(db, img_dir, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=ro,
                              device=pycolmap.Device.cpu)
    t["extract"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pycolmap.match_sequential(db, device=pycolmap.Device.cpu)
    t["match"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    (workdir / "sparse").mkdir()
    opts = pycolmap.IncrementalPipelineOptions()
    if known_K:
        opts.ba_refine_focal_length = opts.ba_refine_principal_point = opts.ba_refine_extra_params = False
    models = pycolmap.incremental_mapping(db, img_dir, workdir / "sparse", opts)
    t["map"] = time.perf_counter() - t0
    sizes = sorted((m.num_reg_images() for m in models.values()), reverse=True)
    best = max(models.values(), key=lambda m: m.num_reg_images()) if models else None
    poses = {}
    if best is not None:
        for im in best.images.values():
            if im.has_pose:
                M = np.eye(4)
                M[:3] = np.asarray(im.cam_from_world().matrix())
                poses[int(Path(im.name).stem)] = M.tolist()
    n_frames = len(list(img_dir.iterdir()))
    print(json.dumps({"n_frames": n_frames, "sizes": sizes, "poses": poses, "stage_s": t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


def run_baseline(video: Path, gt: np.ndarray, workdir: Path, known_K: list[float] | None) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--baseline-worker", str(video), "--workdir", str(workdir)]
    if known_K:
        cmd += ["--known-K", ",".join(map(str, known_K))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"method": "pycolmap baseline", "exit_code": proc.returncode, "error": proc.stderr[-500:]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    reg = {int(k): c2w(np.array(v)) for k, v in r["poses"].items()}
    return {"method": "pycolmap baseline (all frames, sequential, incremental"
                      + (", known K)" if known_K else ", unknown K)"),
            "selected": r["n_frames"], "registered": len(reg), "registered_share": round(len(reg) / r["n_frames"], 4),
            "n_models": len(r["sizes"]), "model_sizes": r["sizes"],
            "ate_rmse_cm": round(ate_cm(reg, gt), 2) if len(reg) >= 3 else None, "wall_s": round(wall, 1),
            "stage_s": {k: round(v, 1) for k, v in r["stage_s"].items()}, "peak_rss_mb": round(r["peak_rss_mb"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--config", type=Path, help="vid2scene config file (stage sections) for the main job")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--scene", type=Path, help="scene folder to run in and keep (resumes; default: a temporary one)")
    ap.add_argument("--baseline-known-intrinsics", action="store_true")
    ap.add_argument("--baseline-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--known-K", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.baseline_worker:
        K = [float(v) for v in a.known_K.split(",")] if a.known_K else None
        baseline_worker(a.baseline_worker, a.workdir, K)
        return
    video = a.data / "hololens_office.mp4"
    gt = load_gt(a.data)
    with tempfile.TemporaryDirectory(prefix="v2s_bench_") as tmp:
        print(json.dumps(run_vid2scene(video, gt, a.preset, Path(tmp), a.config, a.scene)), flush=True)
        if not a.skip_baseline:
            K = None
            if a.baseline_known_intrinsics:
                k = np.loadtxt(a.data / "hololens_office" / "K.txt")
                K = [k[0, 0], k[1, 1], k[0, 2], k[1, 2]]
            (Path(tmp) / "baseline").mkdir()
            print(json.dumps(run_baseline(video, gt, Path(tmp) / "baseline", K)), flush=True)


if __name__ == "__main__":
    main()
