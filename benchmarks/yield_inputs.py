"""Benchmark: does the default ``vid2scene run`` finish real inputs of any length, and how good is gravity?

Inputs, made from the HoloLens walk into a temporary folder (PyAV only, no ffmpeg binary):

* ``walk``: ``hololens_office.mp4`` as it is (37 s, 10 fps);
* ``images``: every 10th frame (``hololens_office/images``, 38 PNGs) as an image folder;
* ``clip7``: the first 7 s (70 frames) re-encoded at 10 fps;
* ``clip7_30fps``: the same 7 s re-encoded at 30 fps (each frame three times).

For each, with default settings (all stages): complete or not (the failure when not), keyframes, registered
share, seconds, stage warnings. Then, on the walk's scene, the floor normal against the ground-truth gravity
(``poses.txt``; GT up = the GT world axis closest to the cameras' mean −y axis, mapped into the SfM frame by the
Sim(3) that aligns the SfM camera centres to the GT ones), for the default cues and with the floor cue disabled
(the fallback alone), plus each cue's own error. Prints one JSON object per line.

    python benchmarks/yield_inputs.py [--data ../shared/data] [--only walk,images] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def make_inputs(data: Path, folder: Path, only: set[str]) -> dict[str, Path]:
    """The four inputs (those named in ``only``) under ``folder``."""
    import av

    from vid2scene.io import read_image_rgb, write_image_rgb, write_video

    video = data / "hololens_office.mp4"
    out: dict[str, Path] = {}
    if "walk" in only:
        out["walk"] = video
    if "images" in only:
        imgs = folder / "images_every_10th"
        imgs.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(sorted((data / "hololens_office" / "images").glob("*.png"))):
            if i % 10 == 0:
                write_image_rgb(imgs / f"{i:05d}.png", read_image_rgb(p))
        out["images"] = imgs
    if only & {"clip7", "clip7_30fps"}:
        frames = []
        with av.open(str(video)) as c:
            for f in c.decode(c.streams.video[0]):
                frames.append(f.to_ndarray(format="rgb24"))
                if len(frames) == 70:
                    break
        if "clip7" in only:
            write_video(folder / "clip7.mp4", frames, fps=10.0)
            out["clip7"] = folder / "clip7.mp4"
        if "clip7_30fps" in only:
            write_video(folder / "clip7_30fps.mp4", (f for f in frames for _ in range(3)), fps=30.0)
            out["clip7_30fps"] = folder / "clip7_30fps.mp4"
    return out


def run_one(name: str, path: Path, scene_dir: Path) -> dict:
    """Run every stage with default settings; the figures of the issue."""
    from vid2scene import progress
    from vid2scene.errors import Vid2SceneError
    from vid2scene.pipeline import run_pipeline
    from vid2scene.scene import Scene

    progress.set_enabled(False)
    t0 = time.perf_counter()
    error = None
    try:
        run_pipeline(path, scene_dir)
    except Vid2SceneError as e:
        error = f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    scene = Scene(scene_dir)
    m = scene.read_manifest()
    row = {"input": name, "complete": m.get("status") == "complete", "failure": error, "seconds": round(wall, 1)}
    try:
        kf = scene.keyframes()["keyframes"]
        row["keyframes"] = len(kf)
    except Vid2SceneError:
        row["keyframes"] = None
    try:
        cams = scene.cameras()
        row["registered"] = sum(f.registered for f in cams)
        row["registered_share"] = round(row["registered"] / max(len(cams), 1), 3)
    except Vid2SceneError:
        row["registered_share"] = None
    row["warnings"] = {k: v["warnings"] for k, v in m.get("stages", {}).items() if v.get("warnings")}
    row["stage_s"] = {k: v.get("seconds") for k, v in m.get("stages", {}).items()}
    return row


def gravity_figures(scene_dir: Path, data: Path) -> list[dict]:
    """Floor normal vs GT gravity (degrees) with the default cues and with the floor cue disabled."""
    from vid2scene import layout
    from vid2scene.geometry import sim3_scale, umeyama
    from vid2scene.scene import Scene

    scene = Scene(scene_dir)
    gt = np.loadtxt(data / "hololens_office" / "poses.txt").reshape(-1, 4, 4)
    reg = [f for f in scene.cameras() if f.registered and f.source_frame < len(gt)]
    G = umeyama(np.array([f.center_in_world for f in reg]), np.array([gt[f.source_frame][:3, 3] for f in reg]))
    R_gt = G[:3, :3] / sim3_scale(G)
    cam_up = -gt[:, :3, 1].mean(0)
    axis = int(np.argmax(np.abs(cam_up)))
    gt_up = np.sign(cam_up[axis]) * np.eye(3)[axis]

    def err(u) -> float:
        v = R_gt @ np.asarray(u, float)
        return round(float(np.degrees(np.arccos(np.clip(v @ gt_up / np.linalg.norm(v), -1, 1)))), 3)

    out = []
    saved = scene.layout_json.read_bytes()
    try:
        for label, cues in (("default cues", None),
                            ("floor cue disabled", ["horizontal_planes", "vanishing_points", "camera_axes"])):
            cfg = layout.Config() if cues is None else layout.Config(gravity_cues=cues)
            res = layout.run(scene, cfg)
            g = scene.layout()["gravity"]
            out.append({"figure": "gravity", "what": label, "floor_normal_vs_gt_gravity_deg": err(g["floor_up_in_sfm"]),
                        "floor_observed": g["floor_observed"], "cue": g["cue"], "uncertainty_deg": g["uncertainty_deg"],
                        "per_cue_deg": {c["cue"]: err(c["up_in_sfm"]) for c in g["cues"]},
                        "scale_m_per_sfm": round(scene.layout()["scale"]["metres_per_sfm_unit"], 4),
                        "gt_scale_m_per_sfm": round(sim3_scale(G), 4), "warnings": res.warnings})
    finally:
        scene.layout_json.write_bytes(saved)  # the scene keeps its default layout
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--only", default="walk,images,clip7,clip7_30fps")
    ap.add_argument("--keep", type=Path, default=None, help="keep the inputs and scenes in this folder")
    args = ap.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    work = args.keep or Path(tempfile.mkdtemp(prefix="v2s_yield_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        inputs = make_inputs(args.data, work / "inputs", only)
        for name in ("walk", "images", "clip7", "clip7_30fps"):
            if name not in inputs:
                continue
            scene_dir = work / "scenes" / name
            if scene_dir.exists():
                shutil.rmtree(scene_dir)
            row = run_one(name, inputs[name], scene_dir)
            print(json.dumps(row), flush=True)
            if name == "walk" and row["complete"]:
                for g in gravity_figures(scene_dir, args.data):
                    print(json.dumps(g), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
