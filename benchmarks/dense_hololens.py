"""Benchmark: dense stages (depth → fusion → layout) on hololens_office against its ground truth.
Prints one JSON object per line.

Figures:

* depth: AbsRel, δ<1.25 and coverage (share of GT-valid pixels with a predicted depth) per keyframe, averaged;
  once with the pipeline's own metric depth (after ``layout``) and once with the SfM depth scaled by the
  ground-truth Sim(3) scale (isolates depth quality from scale recovery). GT: ``depth/*.png`` (uint16 mm;
  the i-th in sorted order is video frame i), resized (nearest) to the predicted depth's size.
* mesh: accuracy (ours → reference), completeness (reference → ours) in cm (mean and median) and
  F-score@5cm, after mapping our mesh into the GT frame by the Sim(3) that aligns the SfM camera centres to the
  GT centres (Umeyama). Reference mesh: GT depth + GT poses (``poses.txt``: camera-to-world, row-major 4×4 per
  line; ``K.txt``) of the same keyframes fused with the same TSDF settings (voxel, truncation converted to metres).
* layout: metric scale error % (``layout``'s metres per SfM unit vs the GT Sim(3) scale), floor normal vs GT
  gravity in degrees (GT up = the GT world axis closest to the cameras' mean −y axis: +y for HoloLens).
* seconds per keyframe (depth + fusion), peak RSS (MiB) per stage.

    python benchmarks/dense_hololens.py [--data ../shared/data] [--scene DIR] [--preset default]

``--scene`` reuses (or creates) a scene folder; without it a temporary one is made with ``vid2scene run``.
Needs the ``depth``, ``fusion`` and ``layout`` stages in the pipeline.
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


def depth_metrics(pred: np.ndarray, gt: np.ndarray) -> dict:
    valid = gt > 0
    both = valid & (pred > 0)
    if not both.any():
        return {"abs_rel": None, "delta1": None, "coverage": 0.0}
    p, g = pred[both], gt[both]
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)), "delta1": float(np.mean(np.maximum(p / g, g / p) < 1.25)),
            "coverage": float(both.sum() / max(valid.sum(), 1))}


def mean_metrics(rows: list[dict]) -> dict:
    out = {}
    for k in ("abs_rel", "delta1", "coverage"):
        v = [r[k] for r in rows if r[k] is not None]
        out[k] = round(float(np.mean(v)), 4) if v else None
    return out


def mesh_metrics(ours, ref, threshold_m: float = 0.05, n: int = 300_000) -> dict:
    """Accuracy / completeness: exact point-to-surface distances (Open3D RaycastingScene) from uniform samples
    of one mesh to the other mesh's triangles; F-score at ``threshold_m``."""
    import open3d as o3d

    def to_surface(src, dst) -> np.ndarray:
        rs = o3d.t.geometry.RaycastingScene()
        rs.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(dst))
        q = np.asarray(src.sample_points_uniformly(n).points, dtype=np.float32)
        return rs.compute_distance(o3d.core.Tensor(q)).numpy()

    d_ab = to_surface(ours, ref)  # accuracy: ours → reference
    d_ba = to_surface(ref, ours)  # completeness: reference → ours
    prec, rec = float(np.mean(d_ab < threshold_m)), float(np.mean(d_ba < threshold_m))
    f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"accuracy_mean_cm": round(100 * float(d_ab.mean()), 2), "accuracy_median_cm": round(100 * float(np.median(d_ab)), 2),
            "completeness_mean_cm": round(100 * float(d_ba.mean()), 2),
            "completeness_median_cm": round(100 * float(np.median(d_ba)), 2),
            "precision_5cm": round(prec, 4), "recall_5cm": round(rec, 4), "fscore_5cm": round(f, 4)}


def run_pipeline(video: Path, scene_dir: Path, preset: str) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "vid2scene.cli", "run", str(video), "-o", str(scene_dir), "--preset", preset, "-q",
           "--until", "layout"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return {"exit_code": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1),
            **({"error": (proc.stderr.strip().splitlines() or ["?"])[-1]} if proc.returncode else {})}


def evaluate(scene_dir: Path, data: Path) -> list[dict]:
    import cv2
    import open3d as o3d

    from vid2scene.geometry import apply_transform, sim3_scale, umeyama
    from vid2scene.scene import Scene

    scene = Scene(scene_dir)
    man = scene.read_manifest()
    holo = data / "hololens_office"
    gt_c2w = np.loadtxt(holo / "poses.txt").reshape(-1, 4, 4)
    K_gt = np.loadtxt(holo / "K.txt")
    gt_depth_files = sorted((holo / "depth").glob("*.png"))
    frames_sfm = scene.cameras(frame="sfm")
    reg = [f for f in frames_sfm if f.registered and f.source_frame < len(gt_c2w)]
    C_sfm = np.array([f.center_in_world for f in reg])
    C_gt = np.array([gt_c2w[f.source_frame][:3, 3] for f in reg])
    gt_from_sfm = umeyama(C_sfm, C_gt)
    s_gt = sim3_scale(gt_from_sfm)
    resid = np.linalg.norm(apply_transform(gt_from_sfm, C_sfm) - C_gt, axis=1)
    out = [{"figure": "alignment", "n_registered": len(reg), "gt_scale_m_per_sfm": s_gt,
            "camera_centre_rmse_cm": round(100 * float(np.sqrt(np.mean(resid ** 2))), 2)}]

    # depth
    own, gt_scaled = [], []
    have_depth = set(scene.depth_frames())
    for f in reg:
        if f.source_frame not in have_depth:
            continue
        d_own = scene.depth(f.source_frame, frame="world").depth  # metres (layout's scale)
        d_sfm = scene.depth(f.source_frame).depth                  # raw SfM units
        g = cv2.imread(str(gt_depth_files[f.source_frame]), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
        g = cv2.resize(g, (d_own.shape[1], d_own.shape[0]), interpolation=cv2.INTER_NEAREST)
        own.append(depth_metrics(d_own, g))
        gt_scaled.append(depth_metrics(d_sfm * s_gt, g))
    out.append({"figure": "depth", "n": len(own), "scale": "pipeline (layout)", **mean_metrics(own)})
    out.append({"figure": "depth", "n": len(gt_scaled), "scale": "gt sim3", **mean_metrics(gt_scaled)})

    # mesh vs reference fused from GT depth + poses with the same TSDF settings (in metres)
    qc_f = man["qc"].get("fusion", {})
    to_m = s_gt  # fusion works in the SfM frame
    voxel, trunc = qc_f["voxel_size"] * to_m, qc_f["sdf_trunc"] * to_m
    depth_trunc = qc_f["depth_trunc"] * to_m
    vol = o3d.pipelines.integration.ScalableTSDFVolume(voxel_length=voxel, sdf_trunc=trunc,
                                                       color_type=o3d.pipelines.integration.TSDFVolumeColorType.NoColor)
    t0 = time.perf_counter()
    for f in reg:
        g = cv2.imread(str(gt_depth_files[f.source_frame]), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
        h, w = g.shape
        rgb = np.zeros((h, w, 3), np.uint8)
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(o3d.geometry.Image(rgb), o3d.geometry.Image(g),
                                                                  depth_scale=1.0, depth_trunc=depth_trunc,
                                                                  convert_rgb_to_intensity=False)
        intr = o3d.camera.PinholeCameraIntrinsic(w, h, K_gt[0, 0], K_gt[1, 1], K_gt[0, 2], K_gt[1, 2])
        vol.integrate(rgbd, intr, np.linalg.inv(gt_c2w[f.source_frame]))
    ref = vol.extract_triangle_mesh()
    mesh_sfm = scene.mesh(frame="sfm")
    ours = mesh_sfm.transformed(gt_from_sfm, "world").to_open3d()
    out.append({"figure": "mesh", "reference": "GT depth+poses, same TSDF settings", "voxel_m": round(voxel, 4),
                "reference_fusion_s": round(time.perf_counter() - t0, 1), "ours_triangles": len(ours.triangles),
                "reference_triangles": len(ref.triangles), **mesh_metrics(ours, ref)})

    # diagnostic: our depth maps (SfM units × GT scale) fused with the GT poses — isolates depth quality from
    # pose error (SfM ATE is of the order of the 5 cm threshold)
    vol2 = o3d.pipelines.integration.ScalableTSDFVolume(voxel_length=voxel, sdf_trunc=trunc,
                                                        color_type=o3d.pipelines.integration.TSDFVolumeColorType.NoColor)
    min_conf = float(qc_f.get("min_confidence", 0.5))
    H_gt, W_gt = cv2.imread(str(gt_depth_files[0]), cv2.IMREAD_UNCHANGED).shape[:2]
    for f in reg:
        if f.source_frame not in have_depth:
            continue
        dm = scene.depth(f.source_frame)
        d_sfm, conf = dm.depth, dm.confidence
        d = np.where(conf >= min_conf, d_sfm * s_gt, 0).astype(np.float32)
        h, w = d.shape
        sx, sy = w / W_gt, h / H_gt
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.zeros((h, w, 3), np.uint8)), o3d.geometry.Image(d), depth_scale=1.0,
            depth_trunc=depth_trunc, convert_rgb_to_intensity=False)
        intr = o3d.camera.PinholeCameraIntrinsic(w, h, K_gt[0, 0] * sx, K_gt[1, 1] * sy, K_gt[0, 2] * sx,
                                                 K_gt[1, 2] * sy)
        vol2.integrate(rgbd, intr, np.linalg.inv(gt_c2w[f.source_frame]))
    ours_gt_poses = vol2.extract_triangle_mesh()
    out.append({"figure": "mesh_diagnostic", "what": "our depth (GT scale) fused with GT poses and GT K",
                "ours_triangles": len(ours_gt_poses.triangles), **mesh_metrics(ours_gt_poses, ref)})

    # layout: scale and gravity
    lj = scene.layout()
    s = float(lj["scale"]["metres_per_sfm_unit"])
    W = np.asarray(lj["world_from_sfm"])
    floor_up_sfm = (W[:3, :3] / s).T @ np.array([0.0, 0.0, 1.0])
    R_gt = gt_from_sfm[:3, :3] / s_gt
    floor_up_gt = R_gt @ floor_up_sfm
    cam_up = -gt_c2w[:, :3, 1].mean(0)
    axis = int(np.argmax(np.abs(cam_up)))
    gt_up = np.sign(cam_up[axis]) * np.eye(3)[axis]
    ang = float(np.degrees(np.arccos(np.clip(floor_up_gt @ gt_up, -1, 1))))
    out.append({"figure": "layout", "scale_m_per_sfm": s, "scale_sigma": lj["scale"]["sigma"],
                "scale_method": lj["scale"]["method"], "metric_scale_error_pct": round(100 * (s - s_gt) / s_gt, 2),
                "floor_normal_vs_gt_gravity_deg": round(ang, 3), "gt_up_axis": "xyz"[axis],
                "room_extent_m": lj["room"]["extent_m"], "room_height_m": lj["room"]["height_m"],
                "floor_area_m2": lj["room"]["floor_area_m2"]})

    # time and memory
    st = man["stages"]
    n_kf = max(len(reg), 1)
    out.append({"figure": "cost", "n_keyframes": len(reg),
                "depth_fusion_s_per_keyframe": round((st.get("depth", {}).get("seconds", 0) +
                                                      st.get("fusion", {}).get("seconds", 0)) / n_kf, 3),
                "stage_s": {k: st.get(k, {}).get("seconds") for k in ("depth", "fusion", "layout")},
                "peak_rss_mb": {k: st.get(k, {}).get("peak_rss_mb") for k in ("depth", "fusion", "layout")}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--scene", type=Path, help="scene folder to reuse/create (default: a temporary one)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--eval-only", action="store_true", help="only evaluate --scene, do not run the pipeline")
    a = ap.parse_args()
    video = a.data / "hololens_office.mp4"
    with tempfile.TemporaryDirectory(prefix="v2s_dense_") as tmp:
        scene_dir = a.scene or Path(tmp) / "scene"
        if not a.eval_only:
            r = run_pipeline(video, scene_dir, a.preset)
            print(json.dumps({"figure": "run", **r}), flush=True)
            if r["exit_code"] != 0:
                return
        for row in evaluate(scene_dir, a.data):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
