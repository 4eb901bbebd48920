"""``vid2scene eval-geometry``: a scene's reconstructed surface and depth maps against a metric reference.

Figures (all in metres of the reference frame):

* ``accuracy_m`` — mean distance from samples of our surface (mesh or point cloud) to the reference surface;
  ``completeness_m`` — mean distance from reference samples to our surface; ``chamfer_m`` — their mean;
  ``precision`` / ``recall`` — share of those distances below ``tau_m``; ``fscore`` — their harmonic mean.
  Distances to a mesh are exact point-to-triangle distances (Open3D ``RaycastingScene``), to a point cloud
  nearest-neighbour distances.
* ``absrel`` — mean over frames of ``mean |d − d*| / d*``; ``delta1`` — mean over frames of the share of pixels
  with ``max(d/d*, d*/d) < 1.25``; over pixels where both our depth ``d`` (SfM units × the alignment's scale)
  and the reference depth ``d*`` are known. ``depth_coverage`` — share of reference-valid pixels with a depth.

Alignment. Our scene is in its SfM frame; the reference in its own metric frame. The Sim(3) ``ref_from_sfm`` is
the Umeyama fit of our registered keyframes' camera centres to the reference centres of the same frames
(frame ``i`` of the reference = source frame ``i`` of the scene), optionally refined by rigid point-to-point
ICP of our (observed) surface samples onto the reference's (Open3D, correspondence distance
``icp_max_dist_m``). ICP removes any rigid offset, including a genuine one: the hand-made check "a plane
shifted by 2 cm has accuracy 2 cm" holds with ``icp=False``.

Observed space. Only what the reference cameras of our registered keyframes saw is scored: a point counts
when, in at least one of those cameras, it projects inside the image at a pixel with a reference depth ``d*``
and its own depth ``z ≤ d*·(1 + rel_margin) + abs_margin_m`` (in front of or on the observed surface; points
hidden behind it are unobserved). Reference depth comes from the reference's depth images, or from ray
casting the reference mesh; a bare reference point cloud has no depth and is restricted by the frusta only.

Reference layouts (:func:`read_reference`):

* HoloLens (``hololens_office``): ``poses.txt`` (camera-to-world, row-major 4×4 per line), ``K.txt`` (3×3),
  ``depth/*.png`` (uint16 millimetres, the ``i``-th in sorted order is frame ``i``); fused by TSDF
  (:func:`fuse_reference`) with the scene's fusion settings converted to metres.
* 7-Scenes sequence folder: ``frame-NNNNNN.pose.txt`` (camera-to-world 4×4), ``frame-NNNNNN.depth.png``
  (uint16 mm, 65535 = invalid), K = (585, 585, 320, 240); fused the same way.
* A ``.ply`` mesh or point cloud in metres with ``poses`` (a HoloLens-style ``poses.txt``) and optionally
  ``K`` (a ``K.txt``; else the scene's keyframe intrinsics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from .. import io
from ..errors import InputError, StageFailed
from ..geometry import MeshRaycaster, apply_transform, intrinsics_for_size, invert, project, sim3_scale, umeyama
from ..scene import CameraFrame, Mesh, Scene

SEVEN_SCENES_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------------------
# the reference
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """A metric reference: per-frame cameras, optional depth images, optional surface.

    ``poses`` maps a frame index to its 4×4 float64 ``cam_from_world`` (OpenCV axes, reference frame,
    metres); ``K`` (3×3, for images of ``size = (w, h)``) is None when the scene's keyframe intrinsics apply.
    ``depth_files`` maps a frame index to a depth image holding ``value × depth_scale`` metres (values 0 or
    ≥ ``invalid_at_least`` are unknown). ``mesh`` or ``points`` (``N×3`` float64) is the surface; a
    reference from depth images gets its mesh from :func:`fuse_reference`.
    """

    poses: dict[int, np.ndarray]
    K: np.ndarray | None = None
    size: tuple[int, int] | None = None
    depth_files: dict[int, Path] = field(default_factory=dict)
    depth_scale: float = 0.001
    invalid_at_least: float = np.inf
    mesh: Mesh | None = None
    points: np.ndarray | None = None
    _raycaster: MeshRaycaster | None = None

    def depth_image(self, index: int) -> np.ndarray | None:
        """``H×W`` float32 metres (0 = unknown) of frame ``index`` from its depth file, or None."""
        import cv2

        p = self.depth_files.get(index)
        if p is None:
            return None
        raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise InputError(f"unreadable reference depth image {p}")
        raw = raw.astype(np.float32)
        raw[raw >= self.invalid_at_least] = 0
        return raw * np.float32(self.depth_scale)

    def depth_at(self, index: int, K: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
        """Reference z-depth (``size = (w, h)``, float32 metres, 0 = unknown) of frame ``index`` seen with
        intrinsics ``K`` (for that size): the depth file resized (nearest), else the mesh ray-cast."""
        import cv2

        d = self.depth_image(index)
        if d is not None:
            return cv2.resize(d, size, interpolation=cv2.INTER_NEAREST)
        if self.mesh is None or index not in self.poses:
            return None
        if self._raycaster is None:
            self._raycaster = MeshRaycaster(self.mesh.vertices, self.mesh.triangles)
        d = self._raycaster.depth(K, self.poses[index], size[0], size[1])
        return np.where(np.isfinite(d), d, 0).astype(np.float32)


def read_poses_txt(path: str | Path) -> list[np.ndarray]:
    """``poses.txt`` (camera-to-world, row-major 4×4 per line) → list of 4×4 ``cam_from_world``."""
    c2w = np.loadtxt(path, dtype=np.float64).reshape(-1, 4, 4)
    return [invert(T) for T in c2w]


def read_reference(path: str | Path, poses: str | Path | None = None, K: str | Path | None = None) -> Reference:
    """Read a reference in one of the layouts of the module docstring.

    Raises:
        InputError: the path is neither layout, or a ``.ply`` reference comes without ``poses``.
    """
    path = Path(path)
    if path.is_dir() and (path / "poses.txt").is_file() and (path / "depth").is_dir():
        cams = read_poses_txt(path / "poses.txt")
        files = io.finished_files(path / "depth", "*.png")
        Kr = np.loadtxt(path / "K.txt").reshape(3, 3) if (path / "K.txt").is_file() else None
        size = _image_size(files[0]) if files else None
        return Reference(dict(enumerate(cams)), Kr, size, dict(enumerate(files)), 0.001)
    if path.is_dir() and any(path.glob("frame-*.pose.txt")):
        pose_files = sorted(path.glob("frame-*.pose.txt"))
        cams = {i: invert(np.loadtxt(p).reshape(4, 4)) for i, p in enumerate(pose_files)}
        files = {i: p.with_name(p.name.replace(".pose.txt", ".depth.png")) for i, p in enumerate(pose_files)}
        files = {i: p for i, p in files.items() if p.is_file()}
        return Reference(cams, SEVEN_SCENES_K.copy(), (640, 480), files, 0.001, invalid_at_least=65535)
    if path.is_file() and path.suffix.lower() == ".ply":
        if poses is None:
            raise InputError(f"reference {path} is a surface without cameras: give its poses (--gt-poses "
                             "poses.txt, camera-to-world 4×4 per line) for the camera-centre alignment")
        v, t, c, n = io.read_ply_mesh(path)
        cams = dict(enumerate(read_poses_txt(poses)))
        Kr = None if K is None else np.loadtxt(K).reshape(3, 3)
        if len(t):
            return Reference(cams, Kr, mesh=Mesh(v, t, c, n, "world"))
        return Reference(cams, Kr, points=np.asarray(v, np.float64))
    raise InputError(f"cannot read a reference at {path}: expected a folder with poses.txt + depth/ (HoloLens), "
                     "a 7-Scenes sequence folder, or a .ply mesh/point cloud with --gt-poses")


def _image_size(p: Path) -> tuple[int, int]:
    import cv2

    im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if im is None:
        raise InputError(f"unreadable reference depth image {p}")
    return im.shape[1], im.shape[0]


def fuse_reference(ref: Reference, frames: list[int], voxel_m: float, sdf_trunc_m: float,
                   depth_trunc_m: float, K: np.ndarray | None = None) -> Mesh:
    """TSDF fusion (Open3D, no colour) of the reference depth images of ``frames`` with their poses.

    ``K`` (for the depth images' size) overrides ``ref.K``. Returns the mesh in the reference frame.

    Raises:
        InputError: no depth image among ``frames``, or no intrinsics.
    """
    o3d = io.open3d()
    Kd = ref.K if K is None else K
    if Kd is None:
        raise InputError("fusing reference depth images needs their intrinsics (K.txt)")
    vol = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=float(voxel_m), sdf_trunc=float(sdf_trunc_m),
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.NoColor)
    n = 0
    for i in frames:
        d = ref.depth_image(i)
        if d is None or i not in ref.poses:
            continue
        h, w = d.shape
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.zeros((h, w, 3), np.uint8)), o3d.geometry.Image(d), depth_scale=1.0,
            depth_trunc=float(depth_trunc_m), convert_rgb_to_intensity=False)
        intr = o3d.camera.PinholeCameraIntrinsic(w, h, Kd[0, 0], Kd[1, 1], Kd[0, 2] - 0.5, Kd[1, 2] - 0.5)
        vol.integrate(rgbd, intr, ref.poses[i])
        n += 1
    if n == 0:
        raise InputError("no reference depth image for the scene's registered keyframes")
    return Mesh.from_open3d(vol.extract_triangle_mesh(), "world")


# ---------------------------------------------------------------------------------------------------------
# surfaces, distances, observed space
# ---------------------------------------------------------------------------------------------------------
def sample_surface(mesh: Mesh | None, points: np.ndarray | None, n: int, seed: int = 0) -> np.ndarray:
    """``≤ n×3`` float64 samples: uniform by area on ``mesh`` (when it has triangles), else a random subset of
    ``points``."""
    rng = np.random.default_rng(seed)
    if mesh is not None and len(mesh.triangles):
        v = np.asarray(mesh.vertices, np.float64)
        tri = v[np.asarray(mesh.triangles)]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        if area.sum() <= 0:
            return np.unique(v, axis=0)[:n]
        f = rng.choice(len(tri), size=n, p=area / area.sum())
        a, b = rng.random(n), rng.random(n)
        flip = a + b > 1
        a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
        t = tri[f]
        return t[:, 0] + a[:, None] * (t[:, 1] - t[:, 0]) + b[:, None] * (t[:, 2] - t[:, 0])
    p = np.asarray(points if points is not None else np.zeros((0, 3)), np.float64)
    return p if len(p) <= n else p[rng.choice(len(p), n, replace=False)]


def distances_to(query: np.ndarray, mesh: Mesh | None, points: np.ndarray | None) -> np.ndarray:
    """``N`` float64 distances from ``query`` (``N×3``) to a mesh's triangles (exact) or to a point set."""
    if len(query) == 0:
        return np.zeros(0)
    if mesh is not None and len(mesh.triangles):
        o3d = io.open3d()
        rs = o3d.t.geometry.RaycastingScene()
        rs.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, np.float32)),
                         o3d.core.Tensor(np.asarray(mesh.triangles, np.uint32)))
        return rs.compute_distance(o3d.core.Tensor(np.asarray(query, np.float32))).numpy().astype(np.float64)
    from scipy.spatial import cKDTree

    if points is None or len(points) == 0:
        return np.full(len(query), np.inf)
    return cKDTree(points).query(query, k=1)[0]


@dataclass
class View:
    """A reference camera of one of our keyframes: intrinsics for ``size = (w, h)``, pose, depth (or None)."""

    index: int
    K: np.ndarray
    cam_from_world: np.ndarray
    size: tuple[int, int]
    depth: np.ndarray | None


def observed_mask(points: np.ndarray, views: list[View], rel_margin: float = 0.05,
                  abs_margin_m: float = 0.05) -> np.ndarray:
    """``N`` bool: points (``N×3``, reference frame) seen by at least one view, as in the module docstring."""
    seen = np.zeros(len(points), bool)
    for v in views:
        uv, z = project(points, v.K, v.cam_from_world)
        w, h = v.size
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        if v.depth is not None:
            idx = np.flatnonzero(ok)
            d = v.depth[uv[idx, 1].astype(int), uv[idx, 0].astype(int)]
            good = (d > 0) & (z[idx] <= d * (1 + rel_margin) + abs_margin_m)
            ok[:] = False
            ok[idx[good]] = True
        seen |= ok
    return seen


# ---------------------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------------------
def align_cameras(cams: list[CameraFrame], ref: Reference) -> tuple[np.ndarray, list[CameraFrame], float]:
    """Umeyama Sim(3) ``ref_from_sfm`` of the registered cameras' centres onto the reference centres of the
    same frames. Returns (4×4, the matched cameras, centre RMSE in metres).

    Raises:
        InputError: fewer than 3 registered keyframes have a reference pose.
    """
    matched = [c for c in cams if c.registered and c.source_frame in ref.poses]
    if len(matched) < 3:
        raise InputError(f"only {len(matched)} registered keyframes have a reference pose; need ≥ 3 to align")
    src = np.stack([c.center_in_world for c in matched])
    dst = np.stack([invert(ref.poses[c.source_frame])[:3, 3] for c in matched])
    T = umeyama(src, dst)
    rmse = float(np.sqrt(np.mean(np.sum((apply_transform(T, src) - dst) ** 2, axis=1))))
    return T, matched, rmse


def icp_refine(src: np.ndarray, dst: np.ndarray, max_dist: float, iters: int = 30) -> tuple[np.ndarray, float]:
    """Rigid point-to-point ICP of ``src`` onto ``dst`` (both ``N×3``). Returns (4×4 ``dst_from_src``, fitness
    = share of ``src`` with a correspondence within ``max_dist``)."""
    o3d = io.open3d()
    if len(src) < 10 or len(dst) < 10:
        return np.eye(4), 0.0
    a = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src))
    b = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(dst))
    res = o3d.pipelines.registration.registration_icp(
        a, b, max_dist, np.eye(4), o3d.pipelines.registration.TransformationEstimationPointToPoint(),
        o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=iters))
    return np.asarray(res.transformation, np.float64), float(res.fitness)


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------
def surface_metrics(d_acc: np.ndarray, d_comp: np.ndarray, tau_m: float) -> dict:
    """Accuracy / completeness / Chamfer (means, metres), medians, precision / recall / F-score at ``tau_m``."""
    if len(d_acc) == 0 or len(d_comp) == 0:
        return {"accuracy_m": None, "completeness_m": None, "chamfer_m": None, "fscore": 0.0, "precision": 0.0,
                "recall": 0.0, "tau_m": tau_m}
    acc, comp = float(np.mean(d_acc)), float(np.mean(d_comp))
    prec, rec = float(np.mean(d_acc < tau_m)), float(np.mean(d_comp < tau_m))
    f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"accuracy_m": acc, "completeness_m": comp, "chamfer_m": 0.5 * (acc + comp), "fscore": f,
            "precision": prec, "recall": rec, "tau_m": tau_m,
            "accuracy_median_m": float(np.median(d_acc)), "completeness_median_m": float(np.median(d_comp))}


def depth_metrics(pred: np.ndarray, gt: np.ndarray) -> dict:
    """AbsRel, δ<1.25 and coverage of one depth map against the reference (same shape, same units)."""
    valid = gt > 0
    both = valid & (pred > 0)
    if not both.any():
        return {"absrel": None, "delta1": None, "coverage": 0.0}
    p, g = pred[both].astype(np.float64), gt[both].astype(np.float64)
    return {"absrel": float(np.mean(np.abs(p - g) / g)), "delta1": float(np.mean(np.maximum(p / g, g / p) < 1.25)),
            "coverage": float(both.sum() / max(valid.sum(), 1))}


def _mean(rows: list[dict], key: str) -> float | None:
    v = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(v)) if v else None


def _fusion_settings(scene: Scene, ref_per_sfm: float, ref: Reference, frames: list[int]) -> tuple[float, float, float]:
    """(voxel, truncation, depth cut-off) in metres: the scene's fusion QC converted, or median depth / 100."""
    try:
        qc = scene.read_manifest().get("qc", {}).get("fusion", {})
    except Exception:  # noqa: BLE001 - a scene without manifest still evaluates
        qc = {}
    if qc.get("voxel_size") and qc.get("sdf_trunc"):
        return (float(qc["voxel_size"]) * ref_per_sfm, float(qc["sdf_trunc"]) * ref_per_sfm,
                float(qc.get("depth_trunc", np.inf)) * ref_per_sfm)
    ds = [ref.depth_image(i) for i in frames[:: max(1, len(frames) // 10)]]
    med = float(np.median(np.concatenate([d[d > 0] for d in ds if d is not None]))) if ds else 2.0
    return med / 100.0, 4 * med / 100.0, 4 * med


def evaluate_geometry(scene: Scene, ref: Reference, *, source: Literal["mesh", "points"] = "mesh",
                      tau_m: float = 0.05, icp: bool = True, icp_max_dist_m: float | None = None,
                      observed_only: bool = True, n_samples: int = 200_000, depth: bool = True,
                      depth_max_size: int = 320, seed: int = 0) -> dict:
    """All figures of the module docstring for ``scene`` against ``ref`` (one JSON-able dict).

    Args:
        source: score ``mesh.ply`` or ``points.ply``.
        tau_m: F-score threshold (metres).
        icp: refine the camera-centre Sim(3) by rigid ICP (correspondences within ``icp_max_dist_m``,
            default ``2·tau_m``).
        observed_only: restrict both surfaces to the observed space.
        n_samples: surface samples per side.
        depth: also score the depth maps (reference depth files, or the mesh ray-cast).
        depth_max_size: depth maps are scored at most at this long side (pixels).

    Raises:
        StageFailed: the scene lacks cameras or the chosen surface.
        InputError: too few keyframes with a reference pose; no reference surface.
    """
    cams = scene.cameras(frame="sfm")
    ref_from_sfm, matched, rmse = align_cameras(cams, ref)
    scale = sim3_scale(ref_from_sfm)
    frames = [c.source_frame for c in matched]
    if ref.mesh is None and ref.points is None:
        voxel, trunc, dcut = _fusion_settings(scene, scale, ref, frames)
        ref.mesh = fuse_reference(ref, frames, voxel, trunc, dcut)
    views = [_reference_view(ref, c, depth_max_size) for c in matched]

    ours = scene.mesh("sfm") if source == "mesh" else None
    our_pts = None if source == "mesh" else scene.points("sfm").points
    est = apply_transform(ref_from_sfm, sample_surface(ours, our_pts, n_samples, seed))
    gt = sample_surface(ref.mesh, ref.points, n_samples, seed + 1)
    if observed_only:
        gt = gt[observed_mask(gt, views)]
    fitness = None
    if icp:
        est_obs = est[observed_mask(est, views)] if observed_only else est
        T, fitness = icp_refine(est_obs, gt, icp_max_dist_m or 2 * tau_m)
        ref_from_sfm = T @ ref_from_sfm
        est = apply_transform(T, est)
    if observed_only:
        est = est[observed_mask(est, views)]
    if len(gt) == 0:
        raise InputError("the reference surface has no point in the observed space of the scene's cameras")
    ours_ref = None if ours is None else ours.transformed(ref_from_sfm, "world")
    d_acc = distances_to(est, ref.mesh, ref.points)
    d_comp = distances_to(gt, ours_ref, None if our_pts is None else apply_transform(ref_from_sfm, our_pts))
    out = {**surface_metrics(d_acc, d_comp, tau_m), "absrel": None, "delta1": None, "depth_coverage": None,
           "n_depth_frames": 0, "source": source, "icp": icp, "icp_fitness": fitness,
           "observed_only": observed_only, "n_aligned_cameras": len(matched), "camera_centre_rmse_m": rmse,
           "scale_ref_per_sfm": scale, "n_est_samples": int(len(est)), "n_ref_samples": int(len(gt)),
           "ref_from_sfm": ref_from_sfm.tolist(), "frames": []}
    if depth:
        rows = _depth_rows(scene, ref, matched, scale, depth_max_size)
        out.update(absrel=_mean(rows, "absrel"), delta1=_mean(rows, "delta1"),
                   depth_coverage=_mean(rows, "coverage"), n_depth_frames=len(rows), frames=rows)
    return out


def _reference_view(ref: Reference, cam: CameraFrame, max_size: int) -> View:
    s = min(1.0, max_size / max(cam.width, cam.height))
    size = (max(1, round(cam.width * s)), max(1, round(cam.height * s)))
    if ref.K is not None and ref.size is not None:
        K = intrinsics_for_size(ref.K, ref.size, size)
    else:
        K = intrinsics_for_size(cam.K, (cam.width, cam.height), size)
    pose = ref.poses[cam.source_frame]
    return View(cam.source_frame, K, pose, size, ref.depth_at(cam.source_frame, K, size))


def _depth_rows(scene: Scene, ref: Reference, matched: list[CameraFrame], scale: float, max_size: int) -> list[dict]:
    import cv2

    have = set(scene.depth_frames())
    rows = []
    for c in matched:
        if c.source_frame not in have:
            continue
        pred = scene.depth(c.source_frame, frame="sfm").depth * np.float32(scale)
        h, w = pred.shape
        s = min(1.0, max_size / max(w, h))
        size = (max(1, round(w * s)), max(1, round(h * s)))
        if size != (w, h):
            pred = cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST)
        if ref.K is not None and ref.size is not None:
            K = intrinsics_for_size(ref.K, ref.size, size)
        else:
            K = intrinsics_for_size(c.K, (c.width, c.height), size)
        g = ref.depth_at(c.source_frame, K, size)
        if g is None:
            continue
        rows.append({"source_frame": c.source_frame, **depth_metrics(pred, g)})
    return rows


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------
JSON_KEYS = ("accuracy_m", "completeness_m", "chamfer_m", "fscore", "tau_m", "absrel", "delta1")


def eval_geometry_command(
        scene: Path,
        gt: Path,
        gt_poses: Optional[Path] = None,
        gt_k: Optional[Path] = None,
        source: str = "mesh",
        tau: float = 0.05,
        icp: bool = True,
        observed: bool = True,
        samples: int = 200_000,
        as_json: bool = False) -> None:
    """Score a scene's mesh (or point cloud) and depth maps against a metric reference: accuracy,
    completeness, Chamfer distance, F-score@τ after a camera-centre Sim(3) (+ ICP), restricted to the
    observed space; AbsRel and δ<1.25 of the depth maps."""
    import typer

    from ..errors import Vid2SceneError

    if source not in ("mesh", "points"):
        typer.echo("error: --source must be 'mesh' or 'points'", err=True)
        raise typer.Exit(2)
    try:
        ref = read_reference(gt, gt_poses, gt_k)
        res = evaluate_geometry(Scene(scene), ref, source=source, tau_m=tau, icp=icp,  # type: ignore[arg-type]
                                observed_only=observed, n_samples=samples)
    except (Vid2SceneError, StageFailed) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(getattr(e, "exit_code", 1))
    if as_json:
        res.pop("frames")
        typer.echo(json.dumps(res))
        return
    cm = (lambda v: "–" if v is None else f"{100 * v:.2f} cm")
    typer.echo(f"surface ({source}, {res['n_aligned_cameras']} cameras aligned, centre RMSE "
               f"{cm(res['camera_centre_rmse_m'])}{', ICP' if icp else ''}):")
    typer.echo(f"  accuracy {cm(res['accuracy_m'])}  completeness {cm(res['completeness_m'])}  "
               f"Chamfer {cm(res['chamfer_m'])}  F@{100 * tau:g}cm {res['fscore']:.3f} "
               f"(P {res['precision']:.3f}, R {res['recall']:.3f})")
    if res["n_depth_frames"]:
        typer.echo(f"depth ({res['n_depth_frames']} frames): AbsRel {res['absrel']:.4f}  δ1 {res['delta1']:.4f}  "
                   f"coverage {res['depth_coverage']:.3f}")


def make_command():
    """The typer-annotated ``eval-geometry`` command (``app.command("eval-geometry")(make_command())``)."""
    import typer

    def eval_geometry(
            scene: Path = typer.Argument(..., help="scene folder"),
            gt: Path = typer.Option(..., "--gt", help="reference: HoloLens-layout folder, 7-Scenes sequence "
                                                      "folder, or a .ply mesh / point cloud (metres)"),
            gt_poses: Optional[Path] = typer.Option(None, "--gt-poses", help="poses.txt for a .ply reference "
                                                    "(camera-to-world, row-major 4×4 per line, line i = frame i)"),
            gt_k: Optional[Path] = typer.Option(None, "--gt-K", help="K.txt for a .ply reference"),
            source: str = typer.Option("mesh", "--source", help="mesh | points"),
            tau: float = typer.Option(0.05, "--tau", help="F-score threshold in metres"),
            icp: bool = typer.Option(True, "--icp/--no-icp", help="refine the camera-centre Sim(3) by ICP"),
            observed: bool = typer.Option(True, "--observed/--everywhere", help="score only the observed space"),
            samples: int = typer.Option(200_000, "--samples", help="surface samples per side"),
            as_json: bool = typer.Option(False, "--json", help="print the figures as one JSON object")) -> None:
        eval_geometry_command(scene, gt, gt_poses, gt_k, source, tau, icp, observed, samples, as_json)

    eval_geometry.__doc__ = eval_geometry_command.__doc__
    return eval_geometry
