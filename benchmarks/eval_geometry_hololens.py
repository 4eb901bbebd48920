"""Benchmark: ``eval-geometry`` on the HoloLens walk (hololens_office), for the scene's own depth (MVS by
default) and for the ``prompt_da`` backend with a tiny random model (end-to-end path check only: its accuracy
means nothing). Prints one JSON object per line.

* ``mvs``: the scene as the pipeline left it (``mesh.ply``, ``depth/``) against the HoloLens reference
  (``poses.txt``, ``K.txt``, ``depth/*.png``; GT depth of the registered keyframes fused by TSDF with the
  scene's fusion settings in metres), Sim(3) from camera centres + ICP, observed space; with ``--no-icp`` too.
* ``prompt_da_tiny``: a copy of the scene's SfM outputs; per registered keyframe, depth from
  :class:`vid2scene.depth.prompt_da.PromptDABackend` (``model: tiny``) prompted with the projected SfM points
  (track ≥ 2) at the depth stage's default working size (long side 320); fused here by an Open3D TSDF with the
  scene's fusion voxel / truncation (no multi-view consistency filter, no people masking: this benchmark does
  not run the depth stage itself); then the same evaluation.

    PYTHONPATH=src python benchmarks/eval_geometry_hololens.py [--scene /work/scenes/hololens]
        [--gt ../shared/data/hololens_office] [--skip-prompt-da]

Figures (/work/scenes/hololens: 207 registered keyframes, MVS depth; camera-centre RMSE after the Sim(3)
6.5 cm; τ = 5 cm):

* mvs, ICP: accuracy 7.8 cm, completeness 24.6 cm, Chamfer 16.2 cm, F 0.388 (P 0.458, R 0.336); depth AbsRel
  0.065, δ1 0.945, coverage 0.53
* mvs, no ICP: accuracy 8.5 cm, completeness 24.7 cm, Chamfer 16.6 cm, F 0.308 (the 0.30 of the independent
  evaluation in dense_hololens.py, which uses no ICP)
* prompt_da with the tiny random model, ICP: Chamfer 39.1 cm, F 0.116, AbsRel 0.361, δ1 0.279, coverage 0.92,
  0.23 s/keyframe on CPU — a path check only; no real weights exist on this machine.
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
sys.path.insert(0, str(HERE.parent / "src"))

KEYS = ("accuracy_m", "completeness_m", "chamfer_m", "fscore", "precision", "recall", "tau_m", "absrel", "delta1",
        "depth_coverage", "n_depth_frames", "n_aligned_cameras", "camera_centre_rmse_m", "icp_fitness")


def figures(res: dict) -> dict:
    return {k: (round(res[k], 4) if isinstance(res[k], float) else res[k]) for k in KEYS}


def evaluate(scene_dir: Path, gt: Path, icp: bool) -> dict:
    from vid2scene.evaluation.geometry import evaluate_geometry, read_reference
    from vid2scene.scene import Scene

    t0 = time.perf_counter()
    res = evaluate_geometry(Scene(scene_dir), read_reference(gt), icp=icp)
    return {**figures(res), "eval_s": round(time.perf_counter() - t0, 1)}


def prompt_da_scene(src: Path, dst: Path, max_size: int = 320) -> dict:
    """Copy the scene's SfM outputs to ``dst``, write tiny-prompt_da depth maps and a TSDF mesh there."""

    from vid2scene import io
    from vid2scene.depth.prompt_da import PromptDABackend
    from vid2scene.geometry import intrinsics_for_size, project
    from vid2scene.scene import Mesh, Scene
    from types import SimpleNamespace

    for name in ("manifest.json", "cameras.json", "sparse_points.ply", "keyframes.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    for name in ("sfm", "frames"):
        shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
    scene = Scene(dst)
    rec = scene.reconstruction()
    cams = {c.name: c for c in scene.cameras("sfm") if c.registered}
    be = PromptDABackend(PromptDABackend.Options(model="tiny", device="auto", input_size=322, prompt_size=96))
    qc = Scene(src).read_manifest().get("qc", {}).get("fusion", {})
    o3d = io.open3d()
    voxel = float(qc.get("voxel_size") or 0.01)
    vol = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=voxel, sdf_trunc=float(qc.get("sdf_trunc") or 4 * voxel),
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.NoColor)
    t0, n = time.perf_counter(), 0
    for im in rec.images.values():
        c = cams.get(im.name)
        if c is None:
            continue
        ids = [p.point3D_id for p in im.points2D if p.has_point3D()]
        ids = [i for i in ids if rec.points3D[i].track.length() >= 2]
        xyz = np.stack([np.asarray(rec.points3D[i].xyz) for i in ids]) if ids else np.zeros((0, 3))
        s = min(1.0, max_size / max(c.width, c.height))
        w, h = round(c.width * s), round(c.height * s)
        K = intrinsics_for_size(c.K, (c.width, c.height), (w, h))
        uv, z = project(xyz, K, c.cam_from_world)
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        lo, hi = (np.percentile(z[ok], [2, 98]) if ok.sum() >= 10 else (0.01, 1e3))
        d, conf, _ = be.estimate(SimpleNamespace(path=scene.keyframe_path(c.source_frame), shape=(h, w)), [],
                                 SimpleNamespace(uv=uv[ok], z=z[ok]), (float(lo) / 1.3, float(hi) * 1.3))
        scene.write_depth(c.source_frame, d, conf)
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.zeros((h, w, 3), np.uint8)), o3d.geometry.Image(d), depth_scale=1.0,
            depth_trunc=float(qc.get("depth_trunc") or 1e3), convert_rgb_to_intensity=False)
        intr = o3d.camera.PinholeCameraIntrinsic(w, h, K[0, 0], K[1, 1], K[0, 2] - 0.5, K[1, 2] - 0.5)
        vol.integrate(rgbd, intr, c.cam_from_world)
        n += 1
    secs = time.perf_counter() - t0
    scene.write_mesh(Mesh.from_open3d(vol.extract_triangle_mesh(), "sfm"))
    scene.update_manifest(lambda m: m["stages"].update({"depth": {"status": "complete"},
                                                        "fusion": {"status": "complete"}}))
    return {"n_depth_maps": n, "depth_s_per_keyframe": round(secs / max(n, 1), 3), "device": be.device}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scene", type=Path, default=Path("/work/scenes/hololens"))
    ap.add_argument("--gt", type=Path, default=HERE.parent.parent / "shared" / "data" / "hololens_office")
    ap.add_argument("--skip-prompt-da", action="store_true")
    args = ap.parse_args()
    print(json.dumps({"figure": "eval_geometry", "depth": "scene (default: mvs)", "icp": True,
                      **evaluate(args.scene, args.gt, True)}), flush=True)
    print(json.dumps({"figure": "eval_geometry", "depth": "scene (default: mvs)", "icp": False,
                      **evaluate(args.scene, args.gt, False)}), flush=True)
    if args.skip_prompt_da:
        return
    with tempfile.TemporaryDirectory(prefix="pda_holo_") as tmp:
        info = prompt_da_scene(args.scene, Path(tmp))
        print(json.dumps({"figure": "eval_geometry", "depth": "prompt_da tiny random model (path check only)",
                          "icp": True, **info, **evaluate(Path(tmp), args.gt, True)}), flush=True)


if __name__ == "__main__":
    main()
