"""``fusion`` stage: TSDF mesh and cleaned video point cloud from the per-keyframe depth maps.

Reads ``depth/NNNNNN.npz`` (``depth_m``, ``confidence``, ``scale_applied``, ``world``), ``cameras.json`` and the
keyframe images; writes

* ``mesh.ply`` — Open3D ``ScalableTSDFVolume`` (Curless & Levoy 1996, as in SceneVerse++) over the confident
  depth, marching-cubes surface with vertex colours and normals;
* ``points.ply`` — the cleaned video point cloud in the LAM3C sense: confident depth back-projected with
  colours, depth-edge pixels (large relative depth jump to a neighbour, or next to unknown depth) removed,
  voxel downsampling, statistical outlier removal, normals (Open3D, oriented towards the nearest camera).

Units and frame: everything is in the frame of ``cameras.json`` (``"sfm"`` before ``layout``: SfM units;
``"gravity_z_up_metric"`` after it: metres). Depth maps are brought to that frame by their own
``scale_applied`` (raw = depth_m / scale_applied), so a re-run in either frame never scales twice. The voxel
size and truncation default to fractions of the median depth (``voxel = median depth / 100``), which works in
SfM units; both are config-overridable and the values used are recorded in the QC figures.

Both PLYs carry header comments ``frame: <world>`` and, in a non-SfM frame, ``world_from_sfm: <16 numbers>``
(row-major), so :mod:`vid2scene.layout` can undo a transform from the file alone.

Open3D is pinned to 0.19.0: 0.20.0's ScalableTSDFVolume returned an empty mesh even for a flat plane
(``tests/test_fusion.py::test_flat_plane_gives_planar_mesh`` catches that regression).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import progress
from .depth.base import depth_edges
from .errors import BackendNotInstalled, StageFailed
from .io import atomic_path, ply_vertex_array, read_json
from .people import PersonDetector, mask_people_in_depth
from .scene import CameraFrame, Scene
from .stage import StageResult

NAME = "fusion"
OUTPUTS = ["mesh.ply", "points.ply"]

WORLD_SFM = "sfm"
WORLD_METRIC = "gravity_z_up_metric"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voxel_size: float | None = Field(None, gt=0, description="TSDF voxel in world units; None = median depth / "
                                                             "depth_to_voxel")
    depth_to_voxel: float = Field(100.0, gt=10, description="median depth / voxel size when voxel_size is None "
                                                         "(100: ~2.5 cm at 2.5 m; 150 gave 2.3x the triangles and "
                                                         "2x the time for the same accuracy on the synthetic room)")
    sdf_trunc_voxels: float = Field(4.0, ge=1.5, description="TSDF truncation distance, in voxels")
    depth_trunc: float | None = Field(None, gt=0, description="ignore depth beyond this (world units); None = "
                                                              "depth_trunc_rel × median depth")
    depth_trunc_rel: float = Field(3.0, gt=0.5)
    min_confidence: float = Field(0.15, ge=0, le=1, description="depth pixels below this confidence are dropped "
                                  "(hololens_office mesh F-score@5cm: 0.5 -> 0.255, 0.3 -> 0.269, 0.15 -> 0.276)")
    edge_rel_threshold: float = Field(0.05, gt=0, description="a pixel whose depth differs from a 4-neighbour "
                                                              "by more than this fraction is a depth edge")
    edge_dilate_px: int = Field(1, ge=0, description="grow the depth-edge mask by this many pixels")
    point_stride: int = Field(2, ge=1, description="back-project every n-th pixel (rows and columns)")
    point_voxel_size: float | None = Field(None, gt=0, description="points.ply voxel; None = TSDF voxel")
    outlier_neighbors: int = Field(20, ge=2)
    outlier_std_ratio: float = Field(2.0, gt=0)
    normal_neighbors: int = Field(30, ge=3)
    min_component_triangles: int = Field(100, ge=0, description="drop mesh components with fewer triangles")
    max_stat_frames: int = Field(20, ge=1, description="depth maps read to estimate the median depth")
    mask_people: bool = Field(True, description="zero depth under COCO person boxes (SSD detector, refined by "
                                                "depth) so walking people leave no ghosts (vid2scene.people)")


# ---------------------------------------------------------------------------------------------------------
# PLY helpers shared with layout
# ---------------------------------------------------------------------------------------------------------
def read_ply_comments(path: str | Path) -> list[str]:
    """Header comments of a PLY file (``comment`` lines, without the keyword)."""
    out = []
    with open(path, "rb") as f:
        for _ in range(200):
            line = f.readline()
            if not line:
                break
            s = line.decode("ascii", "replace").strip()
            if s.startswith("comment "):
                out.append(s[len("comment "):])
            if s == "end_header":
                break
    return out


def ply_frame(path: str | Path) -> tuple[str, np.ndarray | None]:
    """(frame name, ``world_from_sfm`` 4×4 or None) recorded in a PLY header; ``"sfm"`` when not stated."""
    frame, T = WORLD_SFM, None
    for c in read_ply_comments(path):
        if c.startswith("frame:"):
            frame = c.split(":", 1)[1].strip()
        elif c.startswith("world_from_sfm:"):
            T = np.array([float(v) for v in c.split(":", 1)[1].split()], dtype=np.float64).reshape(4, 4)
    return frame, T


def frame_comments(world: str, world_from_sfm: np.ndarray | None, source: str) -> list[str]:
    out = [f"frame: {world}"]
    if world != WORLD_SFM and world_from_sfm is not None:
        out.append("world_from_sfm: " + " ".join(f"{v:.12g}" for v in np.asarray(world_from_sfm).ravel()))
    out.append(f"source: vid2scene {source}")
    return out


def write_mesh_ply(path: str | Path, vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray | None = None,
                   normals: np.ndarray | None = None, comments: list[str] | None = None) -> None:
    """Atomically write a binary little-endian triangle-mesh PLY (vectorised, with header comments).

    ``colors`` are ``N×3`` uint8 (or float 0..1, converted); ``triangles`` ``M×3`` vertex indices.
    """
    c = None if colors is None else np.asarray(colors)
    if c is not None and c.dtype != np.uint8:
        c = np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)
    arr = ply_vertex_array(vertices, c, normals)
    tri = np.asarray(triangles, dtype=np.int32).reshape(-1, 3)
    faces = np.empty(len(tri), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"] = 3
    faces["v"] = tri
    head = ["ply", "format binary_little_endian 1.0"] + [f"comment {c}" for c in (comments or [])]
    head.append(f"element vertex {len(arr)}")
    names = {"<f4": "float", "|u1": "uchar"}
    head += [f"property {names[t]} {n}" for n, t in arr.dtype.descr]
    head += [f"element face {len(tri)}", "property list uchar int vertex_indices", "end_header"]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(head) + "\n").encode("ascii"))
            f.write(arr.tobytes())
            f.write(faces.tobytes())


def read_mesh_ply(path: str | Path):
    """An ``open3d.geometry.TriangleMesh`` from a PLY file."""
    o3d = _open3d()
    mesh = o3d.io.read_triangle_mesh(str(path))
    return mesh


def read_points_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(``N×3`` points float64, ``N×3`` uint8 colours or None, ``N×3`` normals or None) of a PLY point cloud."""
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"].data
    names = v.dtype.names or ()
    pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    cols = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8) if "red" in names else None
    nrm = np.stack([v["nx"], v["ny"], v["nz"]], axis=1).astype(np.float64) if "nx" in names else None
    return pts, cols, nrm


def _open3d():
    # Open3D's OpenMP loops busy-wait by default; on shared, oversubscribed cores that made one fusion run
    # 4-8x slower (21 s vs 2.7 s on the synthetic room). Passive waiting only takes effect if set before the
    # OpenMP runtime starts, i.e. before the first import of open3d; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import open3d as o3d
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendNotInstalled("fusion needs Open3D: pip install open3d==0.19.0") from e
    return o3d


# ---------------------------------------------------------------------------------------------------------
# depth and frames
# ---------------------------------------------------------------------------------------------------------
def depth_path(scene: Scene, source_frame: int) -> Path:
    return scene.root / "depth" / f"{int(source_frame):06d}.npz"


def cameras_world(scene: Scene) -> tuple[str, np.ndarray | None]:
    """(world name of ``cameras.json``, its ``world_from_sfm`` 4×4 or None)."""
    d = read_json(scene.cameras_json)
    world = d.get("world", WORLD_SFM)
    T = d.get("world_from_sfm")
    if T is None and world != WORLD_SFM:
        T = scene.read_manifest().get("world_from_sfm")
    return world, None if T is None else np.asarray(T, dtype=np.float64)


def sim3_scale(T: np.ndarray | None) -> float:
    if T is None:
        return 1.0
    return float(np.cbrt(np.linalg.det(np.asarray(T)[:3, :3])))


def load_depth(path: Path, target_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(depth float32 in the target frame's units, confidence float32) from one ``depth/*.npz``.

    ``target_scale`` is world units per SfM unit (1 for the SfM frame); the raw SfM depth is
    ``depth_m / scale_applied``.
    """
    with np.load(path) as z:
        d = np.asarray(z["depth_m"], dtype=np.float32)
        conf = np.asarray(z["confidence"], dtype=np.float32) if "confidence" in z.files else np.ones_like(d)
        applied = float(z["scale_applied"]) if "scale_applied" in z.files else 1.0
    d = np.where(np.isfinite(d) & (d > 0), d, 0).astype(np.float32)
    if applied != target_scale:
        d *= np.float32(target_scale / applied)
    return d, conf


def read_rgb(path: Path, width: int, height: int) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise StageFailed(NAME, f"missing or unreadable keyframe {path}")
    if bgr.shape[1] != width or bgr.shape[0] != height:
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def backproject(depth: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray, mask: np.ndarray,
                stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World points (``N×3``) of the ``mask`` pixels (pixel centres at +0.5, COLMAP convention) and their
    flat pixel indices."""
    h, w = depth.shape
    m = np.zeros_like(mask)
    m[::stride, ::stride] = mask[::stride, ::stride]
    idx = np.flatnonzero(m)
    v, u = np.divmod(idx, w)
    z = depth.ravel()[idx].astype(np.float64)
    x = (u + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (v + 0.5 - K[1, 2]) / K[1, 1] * z
    pts_in_cam = np.stack([x, y, z], axis=1)
    R, t = cam_from_world[:3, :3], cam_from_world[:3, 3]
    return (pts_in_cam - t) @ R, idx  # R^T (p - t)


# ---------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------
def run(scene: Scene, config: Config) -> StageResult:
    o3d = _open3d()
    scene.require("depth")
    t_start = time.perf_counter()
    world, world_from_sfm = cameras_world(scene)
    if world != WORLD_SFM and world_from_sfm is None:
        raise StageFailed(NAME, f"cameras.json is in frame '{world}' but neither it nor manifest.json records "
                                "world_from_sfm; re-run sfm")
    target_scale = sim3_scale(world_from_sfm) if world != WORLD_SFM else 1.0
    cams = [c for c in scene.load_cameras() if c.registered and depth_path(scene, c.source_frame).is_file()]
    if not cams:
        raise StageFailed(NAME, f"no depth maps for registered keyframes in {scene.root / 'depth'}")

    # Scene scale from a subsample of depth maps: median of valid, confident depth.
    step = max(1, len(cams) // config.max_stat_frames)
    samples = []
    for c in cams[::step]:
        d, conf = load_depth(depth_path(scene, c.source_frame), target_scale)
        v = d[(d > 0) & (conf >= config.min_confidence)]
        if v.size:
            samples.append(v[:: max(1, v.size // 5000)])
    if not samples:
        raise StageFailed(NAME, f"no confident depth (confidence ≥ {config.min_confidence}) in the depth maps")
    median_depth = float(np.median(np.concatenate(samples)))
    if not np.isfinite(median_depth) or median_depth <= 0:
        raise StageFailed(NAME, "degenerate depth maps (median depth is not positive)")
    voxel = config.voxel_size or median_depth / config.depth_to_voxel
    sdf_trunc = config.sdf_trunc_voxels * voxel
    depth_trunc = config.depth_trunc or config.depth_trunc_rel * median_depth
    pvoxel = config.point_voxel_size or voxel

    volume = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=voxel, sdf_trunc=sdf_trunc, color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8)
    chunks_p, chunks_c = [], []
    n_fused = 0
    detector, n_person_px = (PersonDetector() if config.mask_people else None), 0
    people_warning = None
    if detector is not None and not detector.is_installed()[0]:
        people_warning = f"people not masked: person detector {detector.is_installed()[1]}"
        detector = None
    centres = []
    for c in progress.track(cams, "fusion: integrating depth"):
        d, conf = load_depth(depth_path(scene, c.source_frame), target_scale)
        h, w = d.shape
        K = _scaled_K(c, w, h)
        rgb = read_rgb(scene.keyframe_path(c.source_frame), w, h)
        if detector is not None:
            d, conf, n_px = mask_people_in_depth(scene, d, conf, c.source_frame, detector, rgb=rgb)
            n_person_px += n_px
        good = (d > 0) & (d <= depth_trunc) & (conf >= config.min_confidence)
        if not good.any():
            continue
        dz = np.where(good, d, 0).astype(np.float32)
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(rgb)), o3d.geometry.Image(dz), depth_scale=1.0,
            depth_trunc=float(depth_trunc), convert_rgb_to_intensity=False)
        # Open3D puts pixel centres at integers; our K (COLMAP) at +0.5.
        intr = o3d.camera.PinholeCameraIntrinsic(w, h, K[0, 0], K[1, 1], K[0, 2] - 0.5, K[1, 2] - 0.5)
        volume.integrate(rgbd, intr, np.asarray(c.cam_from_world, dtype=np.float64))
        n_fused += 1
        centres.append(c.center_in_world)
        # Video point cloud: confident, non-edge pixels.
        keep = good & ~depth_edges(dz, config.edge_rel_threshold, config.edge_dilate_px)
        pts, idx = backproject(dz, K, c.cam_from_world, keep, config.point_stride)
        if len(pts):
            pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
            pcd.colors = o3d.utility.Vector3dVector(rgb.reshape(-1, 3)[idx].astype(np.float64) / 255.0)
            pcd = pcd.voxel_down_sample(pvoxel)
            chunks_p.append(np.asarray(pcd.points))
            chunks_c.append(np.asarray(pcd.colors))
    if n_fused == 0:
        raise StageFailed(NAME, "no depth map had confident depth within the truncation distance")

    with progress.bar("fusion: extracting mesh", total=None):
        mesh = volume.extract_triangle_mesh()
    del volume
    mesh.remove_degenerate_triangles()
    mesh.remove_unreferenced_vertices()
    n_tri_raw = len(mesh.triangles)
    if n_tri_raw == 0:
        raise StageFailed(NAME, f"TSDF produced an empty mesh from {n_fused} depth maps "
                                f"(voxel {voxel:.4g}, truncation {sdf_trunc:.4g}); check the depth maps and poses "
                                "(open3d must be 0.19.0)")
    if config.min_component_triangles > 0:
        small = small_components(np.asarray(mesh.triangles), len(mesh.vertices), config.min_component_triangles)
        if small.any() and not small.all():
            mesh.remove_triangles_by_mask(small)
            mesh.remove_unreferenced_vertices()
    mesh.compute_vertex_normals()
    comments = frame_comments(world, world_from_sfm, NAME)
    write_mesh_ply(scene.root / "mesh.ply", np.asarray(mesh.vertices), np.asarray(mesh.triangles),
                   colors=np.asarray(mesh.vertex_colors), normals=np.asarray(mesh.vertex_normals), comments=comments)
    n_vert, n_tri = len(mesh.vertices), len(mesh.triangles)
    del mesh

    with progress.bar("fusion: cleaning points", total=None):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.concatenate(chunks_p)))
        pcd.colors = o3d.utility.Vector3dVector(np.concatenate(chunks_c))
        del chunks_p, chunks_c
        n_raw = len(pcd.points)
        pcd = pcd.voxel_down_sample(pvoxel)
        n_vox = len(pcd.points)
        if n_vox > config.outlier_neighbors:
            pcd, _ = pcd.remove_statistical_outlier(config.outlier_neighbors, config.outlier_std_ratio)
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4 * pvoxel, max_nn=config.normal_neighbors))
        pts = np.asarray(pcd.points)
        nrm = orient_normals_to_cameras(pts, np.asarray(pcd.normals), np.asarray(centres))
        cols = np.clip(np.round(np.asarray(pcd.colors) * 255), 0, 255).astype(np.uint8)
    from .io import write_ply_points

    write_ply_points(scene.root / "points.ply", pts, cols, normals=nrm, comments=comments)
    seconds = time.perf_counter() - t_start
    qc = {"frame": world, "units": "m" if world == WORLD_METRIC else "sfm", "n_depth_maps": len(cams),
          "n_fused": n_fused, "median_depth": round(median_depth, 6), "voxel_size": round(voxel, 6),
          "sdf_trunc": round(sdf_trunc, 6), "depth_trunc": round(depth_trunc, 6), "point_voxel_size": round(pvoxel, 6),
          "min_confidence": config.min_confidence, "mask_people": config.mask_people,
          "person_pixels_masked": n_person_px, "mesh_vertices": n_vert, "mesh_triangles": n_tri,
          "mesh_triangles_before_cleaning": n_tri_raw, "points_backprojected_after_frame_voxel": n_raw,
          "points_after_voxel": n_vox, "points": int(len(pts)),
          "seconds_per_keyframe": round(seconds / max(n_fused, 1), 4)}
    return StageResult(qc=qc, summary=f"fused {n_fused} depth maps: mesh {n_vert} vertices / {n_tri} triangles, "
                       f"{len(pts)} cleaned points (voxel {voxel:.3g} {qc['units']})",
                       warnings=[people_warning] if people_warning else [])


def small_components(triangles: np.ndarray, n_vertices: int, min_triangles: int) -> np.ndarray:
    """Mask of triangles in connected components with fewer than ``min_triangles`` triangles (scipy graph
    components: much faster than Open3D's ``cluster_connected_triangles``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    t = triangles
    rows = np.concatenate([t[:, 0], t[:, 1]])
    cols = np.concatenate([t[:, 1], t[:, 2]])
    g = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n_vertices, n_vertices))
    _, labels = connected_components(g, directed=False)
    tri_label = labels[t[:, 0]]
    counts = np.bincount(tri_label)
    return counts[tri_label] < min_triangles


def _scaled_K(c: CameraFrame, w: int, h: int) -> np.ndarray:
    K = np.asarray(c.K, dtype=np.float64).copy()
    if (w, h) != (c.width, c.height):
        K[0] *= w / c.width
        K[1] *= h / c.height
    return K


def orient_normals_to_cameras(points: np.ndarray, normals: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Flip each normal to face the nearest camera centre."""
    if len(points) == 0 or len(centres) == 0:
        return normals
    from scipy.spatial import cKDTree

    _, j = cKDTree(centres).query(points)
    flip = np.einsum("ij,ij->i", normals, centres[j] - points) < 0
    out = normals.copy()
    out[flip] *= -1
    return out
