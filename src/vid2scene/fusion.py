"""``fusion`` stage: TSDF mesh and cleaned video point cloud from the per-keyframe depth maps.

Reads the depth maps (``Scene.depth``, SfM units), the cameras (``Scene.cameras``, SfM frame), the keyframe
images and the person boxes of ``detect`` (``Scene.people_boxes``); writes, in the SfM frame (never rewritten:
``Scene.mesh(frame="world")`` / ``Scene.points(frame="world")`` give the metric copies once ``layout`` ran):

* ``mesh.ply`` — Open3D ``ScalableTSDFVolume`` (Curless & Levoy 1996, as in SceneVerse++) over the confident
  depth, marching-cubes surface with vertex colours and normals;
* ``points.ply`` — the cleaned video point cloud in the LAM3C sense: confident depth back-projected with
  colours, depth-edge pixels (large relative depth jump to a neighbour, or next to unknown depth) removed,
  voxel downsampling, statistical outlier removal, normals (Open3D, oriented towards the nearest camera).

The voxel size and truncation default to fractions of the median depth (``voxel = median depth / 100``), which
works in SfM units; both are config-overridable and the values used are recorded in the QC figures. The depth
maps are integrated at the size the voxel needs, ``pixels_per_voxel`` pixels across one voxel at the median depth
(:func:`integration_scale`; about the depth stage's working resolution by default), not at the keyframe size
they are stored at: the TSDF has no use for finer samples and integrating them costs time. ``points.ply`` is
back-projected from the stored maps.

People. A walking person must leave no ghost in the mesh: inside each person box of ``detect`` the person is
the foreground depth band, cut at depth discontinuities (:func:`person_mask`), and its depth is zeroed before
integration (:func:`mask_people_in_depth`). Without detections (``detect`` has not run) nothing is masked and
the stage records a warning.

Open3D is pinned to 0.19.0: 0.20.0's ScalableTSDFVolume returned an empty mesh even for a flat plane
(``tests/test_fusion.py::test_flat_plane_gives_planar_mesh`` catches that regression).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import geometry, io, parallel, progress
from .errors import StageFailed
from .scene import CameraFrame, Mesh, PointCloud, Scene
from .stage import StageResult

NAME = "fusion"
OUTPUTS = ["mesh.ply", "points.ply"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voxel_size: float | None = Field(None, gt=0, description="TSDF voxel in SfM units; None = median depth / "
                                                             "depth_to_voxel")
    depth_to_voxel: float = Field(100.0, gt=10, description="median depth / voxel size when voxel_size is None "
                                                         "(100: ~2.5 cm at 2.5 m; 150 gave 2.3x the triangles and "
                                                         "2x the time for the same accuracy on the synthetic room)")
    sdf_trunc_voxels: float = Field(4.0, ge=1.5, description="TSDF truncation distance, in voxels")
    depth_trunc: float | None = Field(None, gt=0, description="ignore depth beyond this (SfM units); None = "
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
    pixels_per_voxel: float | None = Field(3.0, gt=0, description="integrate each depth map resized (resize_depth) so "
                                           "that one voxel spans this many pixels at the median depth (never "
                                           "enlarged); None = at the stored size. The depth maps carry no detail "
                                           "finer than their working resolution (depth.max_size)")
    workers: int | None = Field(1, ge=1, description="threads preparing the depth maps (read, people mask, "
                                "edges, back-projection) while the main thread integrates; None = "
                                "$VID2SCENE_WORKERS or the available cores. 1 by default: most of that work holds "
                                "the GIL (Open3D calls) and competes with Open3D's own OpenMP threads (hololens: "
                                "21 s with 1, 27 s with 2 on a loaded machine)")
    mask_people: bool = Field(True, description="zero depth under the person boxes that detect found (refined "
                                                "by depth) so walking people leave no ghosts")


# ---------------------------------------------------------------------------------------------------------
# depth edges and people
# ---------------------------------------------------------------------------------------------------------
def depth_edges(depth: np.ndarray, rel_threshold: float, dilate_px: int = 1,
                unknown_is_edge: bool = True) -> np.ndarray:
    """Boolean ``H×W`` mask of depth-discontinuity pixels: a 4-neighbour's depth differs by more than
    ``rel_threshold`` × the nearer of the two depths (any units; the test is relative). With
    ``unknown_is_edge`` a pixel next to unknown depth (0) is an edge too; the mask is dilated by ``dilate_px``."""
    d = depth
    edge = np.zeros(d.shape, bool)
    for axis in (0, 1):
        a, b = np.delete(d, -1, axis=axis), np.delete(d, 0, axis=axis)
        lo = np.minimum(a, b)
        bad = np.abs(a - b) > rel_threshold * np.maximum(lo, 1e-12)
        bad = (bad | (lo <= 0)) if unknown_is_edge else (bad & (lo > 0))
        if axis == 0:
            edge[:-1] |= bad
            edge[1:] |= bad
        else:
            edge[:, :-1] |= bad
            edge[:, 1:] |= bad
    if dilate_px > 0:
        k = np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), np.uint8)
        edge = cv2.dilate(edge.astype(np.uint8), k) > 0
    return edge


def _box_pixels(box, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Integer pixel slice bounds ``(r0, r1, c0, c1)`` covering a float box, or None if empty."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, r1, c0, c1


def person_mask(boxes: list, depth: np.ndarray | None = None, shape: tuple[int, int] | None = None, *,
                quantile: float = 0.25, band_rel: float = 0.2, edge_rel_threshold: float = 0.1,
                min_component_frac: float = 0.02, min_valid_frac: float = 0.1, dilate_px: int = 3) -> np.ndarray:
    """``H×W`` bool mask of person pixels.

    Args:
        boxes: person boxes ``(x0, y0, x1, y1[, score])`` in pixels of the image (x right, y down); an empty
            list gives an empty mask.
        depth: ``H×W`` float z-depth (any units: the test is relative; 0 or non-finite = unknown), or None.
        shape: ``(H, W)`` of the image when ``depth`` is None.

    Without depth each box is masked whole. With depth, inside each box:

    * the foreground reference ``d_ref`` is the ``quantile`` of the box's known depth (the person is the near
      cluster in its own box);
    * candidates are known pixels with ``depth ≤ (1 + band_rel) × d_ref`` (anything in front of the person
      too), minus depth-edge pixels (relative jump to a 4-neighbour > ``edge_rel_threshold``) so that the
      near band cannot leak across a discontinuity;
    * connected pieces smaller than ``min_component_frac`` of the box's candidate pixels are dropped;
    * a box with less than ``min_valid_frac`` known depth is masked whole.

    With depth, the union is dilated by ``dilate_px`` pixels (square kernel) to cover the silhouette edge, which
    depth maps smear between person and background (those mixed depths would otherwise fuse as floaters).

    Raises:
        ValueError: ``depth`` is not 2-D, or neither ``depth`` nor ``shape`` is given.
    """
    if depth is not None:
        depth = np.asarray(depth, dtype=np.float32)
        if depth.ndim != 2:
            raise ValueError(f"depth must be H×W, got {depth.shape}")
        h, w = depth.shape
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    elif shape is not None:
        h, w = shape
    else:
        raise ValueError("person_mask needs depth or shape for the image size")
    mask = np.zeros((h, w), bool)
    for box in boxes:
        sl = _box_pixels(box, h, w)
        if sl is None:
            continue
        r0, r1, c0, c1 = sl
        if depth is None:
            mask[r0:r1, c0:c1] = True
        else:
            mask[r0:r1, c0:c1] |= _foreground_in_box(depth[r0:r1, c0:c1], quantile, band_rel, edge_rel_threshold,
                                                     min_component_frac, min_valid_frac)
    if dilate_px > 0 and depth is not None and mask.any():
        k = np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), np.uint8)
        mask = cv2.dilate(mask.astype(np.uint8), k) > 0
    return mask


def _foreground_in_box(d: np.ndarray, quantile: float, band_rel: float, edge_rel_threshold: float,
                       min_component_frac: float, min_valid_frac: float) -> np.ndarray:
    """The near depth band of one box's depth crop (see :func:`person_mask`), as a bool mask of the crop."""
    known = d > 0
    if known.sum() < max(min_valid_frac * d.size, 1):
        return np.ones(d.shape, bool)
    d_ref = float(np.quantile(d[known], quantile))
    cand = known & (d <= (1.0 + band_rel) * d_ref) & ~depth_edges(d, edge_rel_threshold, dilate_px=0,
                                                                  unknown_is_edge=False)
    n_cand = int(cand.sum())
    if n_cand == 0:
        return np.zeros(d.shape, bool)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(cand.astype(np.uint8), connectivity=4)
    big = stats[:, cv2.CC_STAT_AREA] >= max(min_component_frac * n_cand, 1)
    big[0] = False  # background label
    return big[labels]


def mask_people_in_depth(scene: Scene, source_frame: int, depth: np.ndarray, confidence: np.ndarray,
                         **mask_kwargs) -> tuple[np.ndarray, np.ndarray, int]:
    """Depth and confidence of one keyframe with its person pixels zeroed.

    The person boxes are those ``detect`` stored for ``source_frame`` (``Scene.people_boxes``), scaled to the
    depth map's size and refined by :func:`person_mask` (``mask_kwargs`` go to it).

    Args:
        depth: ``H×W`` float32 z-depth (any units, 0 = unknown).
        confidence: ``H×W`` float32 0..1, same size.

    Returns:
        ``(depth, confidence, n_person_pixels)``: new arrays (the inputs are not modified) and the number of
        masked pixels.

    Raises:
        ValueError: depth and confidence sizes differ.
    """
    depth = np.asarray(depth, dtype=np.float32)
    conf = np.asarray(confidence, dtype=np.float32)
    if depth.shape != conf.shape:
        raise ValueError(f"depth {depth.shape} and confidence {conf.shape} sizes differ")
    h, w = depth.shape
    boxes = scene.people_boxes(source_frame, size=(w, h))
    mask = person_mask(boxes, depth, **mask_kwargs) if boxes else None
    n = 0 if mask is None else int(mask.sum())
    if n == 0:
        return depth.copy(), conf.copy(), 0
    return np.where(mask, 0, depth).astype(np.float32), np.where(mask, 0, conf).astype(np.float32), n


# ---------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Grid:
    """Scale-dependent settings, in SfM units: the median confident depth and what is derived from it."""

    median_depth: float
    voxel: float
    sdf_trunc: float
    depth_trunc: float
    point_voxel: float
    scale: float = 1.0  # integration size / stored depth-map size


@dataclass
class Integrated:
    """What the integration pass leaves: the TSDF volume, the per-frame point chunks and counters."""

    volume: object
    points: list[np.ndarray] = field(default_factory=list)
    colors: list[np.ndarray] = field(default_factory=list)
    centres: list[np.ndarray] = field(default_factory=list)
    n_fused: int = 0
    person_pixels: int = 0


def run(scene: Scene, config: Config) -> StageResult:
    """Fuse the depth maps into ``mesh.ply`` and ``points.ply`` (SfM frame).

    Raises:
        StageFailed: ``depth`` has not completed, no depth maps for registered keyframes, no confident depth,
            a keyframe image is missing, or the TSDF gives an empty mesh.
        BackendNotInstalled: Open3D is missing.
    """
    scene.require("depth")
    t_start = time.perf_counter()
    cams = depth_cameras(scene)
    grid = fusion_grid(scene, cams, config)
    mask_people, warnings = people_masking(scene, config)
    acc = integrate(scene, cams, grid, config, mask_people)
    mesh_qc = write_mesh(scene, acc, grid, config)
    points_qc = write_points(scene, acc, grid, config)
    seconds = time.perf_counter() - t_start
    qc = {"frame": "sfm", "units": "sfm", "n_depth_maps": len(cams), "n_fused": acc.n_fused,
          "median_depth": round(grid.median_depth, 6), "voxel_size": round(grid.voxel, 6),
          "sdf_trunc": round(grid.sdf_trunc, 6), "depth_trunc": round(grid.depth_trunc, 6),
          "point_voxel_size": round(grid.point_voxel, 6), "min_confidence": config.min_confidence,
          "integration_scale": round(grid.scale, 4),
          "mask_people": config.mask_people, "person_pixels_masked": acc.person_pixels, **mesh_qc, **points_qc,
          "seconds_per_keyframe": round(seconds / max(acc.n_fused, 1), 4)}
    return StageResult(qc=qc, summary=f"fused {acc.n_fused} depth maps: mesh {qc['mesh_vertices']} vertices / "
                       f"{qc['mesh_triangles']} triangles, {qc['points']} cleaned points (voxel {grid.voxel:.3g} "
                       "sfm)", warnings=warnings)


def depth_cameras(scene: Scene) -> list[CameraFrame]:
    """The registered cameras (SfM frame) that have a depth map.

    Raises:
        StageFailed: none has.
    """
    have = set(scene.depth_frames())
    cams = [c for c in scene.cameras() if c.registered and c.source_frame in have]
    if not cams:
        raise StageFailed(NAME, f"no depth maps for registered keyframes in {scene.depth_dir}")
    return cams


def fusion_grid(scene: Scene, cams: list[CameraFrame], config: Config) -> Grid:
    """Voxel, truncation and point voxel from the median confident depth of up to ``max_stat_frames`` maps.

    Raises:
        StageFailed: no confident depth, or a non-positive median.
    """
    step = max(1, len(cams) // config.max_stat_frames)
    samples = []
    for c in cams[::step]:
        dm = scene.depth(c.source_frame)
        v = dm.depth[(dm.depth > 0) & (dm.confidence >= config.min_confidence)]
        if v.size:
            samples.append(v[:: max(1, v.size // 5000)])
    if not samples:
        raise StageFailed(NAME, f"no confident depth (confidence ≥ {config.min_confidence}) in the depth maps")
    median_depth = float(np.median(np.concatenate(samples)))
    if not np.isfinite(median_depth) or median_depth <= 0:
        raise StageFailed(NAME, "degenerate depth maps (median depth is not positive)")
    voxel = config.voxel_size or median_depth / config.depth_to_voxel
    return Grid(median_depth, voxel, config.sdf_trunc_voxels * voxel,
                config.depth_trunc or config.depth_trunc_rel * median_depth, config.point_voxel_size or voxel,
                integration_scale(cams, median_depth, voxel, config.pixels_per_voxel))


def integration_scale(cams: list[CameraFrame], median_depth: float, voxel: float,
                      pixels_per_voxel: float | None) -> float:
    """Integration size / stored depth-map size (≤ 1): the scale at which one voxel of side ``voxel`` (SfM
    units) seen at ``median_depth`` spans ``pixels_per_voxel`` pixels, with the median focal length (pixels,
    at the keyframe size; depth maps are stored at the keyframe size). 1 when ``pixels_per_voxel`` is None.

    The TSDF (Curless & Levoy 1996) holds no detail finer than a voxel, and a voxel spanning ``p`` pixels gets
    ``p²`` samples per view: more pixels cost time and only average noise that the many views average anyway.
    The default (3 pixels per voxel, median depth / 100 voxels) is about the depth stage's working resolution
    (``depth.max_size`` 320 on a 540-pixel keyframe)."""
    if pixels_per_voxel is None:
        return 1.0
    f = float(np.median([0.5 * (c.K[0][0] + c.K[1][1]) for c in cams]))
    px_per_voxel_full = voxel * f / median_depth
    return float(min(1.0, pixels_per_voxel / max(px_per_voxel_full, 1e-12)))


def people_masking(scene: Scene, config: Config) -> tuple[bool, list[str]]:
    """(whether to mask people, warnings): masking needs the detections of ``detect``."""
    if not config.mask_people:
        return False, []
    if not scene.detection_frames():
        return False, ["people not masked: no person boxes (detections/ is empty; run 'detect' before fusion)"]
    return True, []


@dataclass
class Prepared:
    """One keyframe ready to integrate: depth and colour at the integration size, the pinhole intrinsics in
    Open3D's convention, and its non-edge points from the stored-size map (per-frame voxel-downsampled, SfM
    frame)."""

    depth: np.ndarray              # h×w float32, SfM units, 0 where not confident / beyond truncation
    rgb: np.ndarray                # h×w×3 uint8
    cK: np.ndarray                 # 3×3, pixel centres at integers
    points: np.ndarray             # N×3 float64
    colors: np.ndarray             # N×3 float64 in 0..1
    person_pixels: int


def prepare_frame(scene: Scene, c: CameraFrame, grid: Grid, config: Config, mask_people: bool) -> Prepared | None:
    """Read one depth map, zero its people and its unconfident / too far pixels, back-project its non-edge
    pixels (at the stored size, every ``point_stride``-th pixel) and resize depth (:func:`resize_depth`) and colour
    (area) to the integration size (``grid.scale``); None when nothing is left.

    Raises:
        StageFailed: the depth map or keyframe is missing.
    """
    o3d = io.open3d()
    dm = scene.depth(c.source_frame)
    d, conf = dm.depth, dm.confidence
    h, w = d.shape
    K = geometry.intrinsics_for_size(c.K, (c.width, c.height), (w, h))
    rgb = scene.keyframe_image(c.source_frame, (w, h))
    n_px = 0
    if mask_people:
        d, conf, n_px = mask_people_in_depth(scene, c.source_frame, d, conf)
    good = (d > 0) & (d <= grid.depth_trunc) & (conf >= config.min_confidence)
    if not good.any():
        return None
    dz = np.where(good, d, 0).astype(np.float32)
    keep = good & ~depth_edges(dz, config.edge_rel_threshold, config.edge_dilate_px)
    pts, idx = geometry.backproject(dz, K, c.cam_from_world, keep, config.point_stride)
    points, colors = np.zeros((0, 3)), np.zeros((0, 3))
    if len(pts):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        pcd.colors = o3d.utility.Vector3dVector(rgb.reshape(-1, 3)[idx].astype(np.float64) / 255.0)
        pcd = pcd.voxel_down_sample(grid.point_voxel)
        points, colors = np.asarray(pcd.points), np.asarray(pcd.colors)
    ws, hs = max(1, int(round(w * grid.scale))), max(1, int(round(h * grid.scale)))
    if (ws, hs) != (w, h):
        dz = resize_depth(dz, (ws, hs))
        rgb = cv2.resize(rgb, (ws, hs), interpolation=cv2.INTER_AREA)
        K = geometry.intrinsics_for_size(c.K, (c.width, c.height), (ws, hs))
    return Prepared(dz, np.ascontiguousarray(rgb), geometry.cv_K(K), points, colors, n_px)


def resize_depth(depth: np.ndarray, size: tuple[int, int], smooth_rel: float = 0.02) -> np.ndarray:
    """``H×W`` float32 z-depth (0 = unknown) resized to ``size = (w, h)`` without mixing depths across
    discontinuities: bilinear at the new pixel centres where the 2×2 source neighbourhood is known and smooth
    (bilinear within ``smooth_rel`` of nearest), nearest elsewhere. Nearest alone would shift each depth by up
    to half a source pixel, which on surfaces seen at a grazing angle is a depth error of several voxels."""
    near = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
    lin = cv2.resize(depth, size, interpolation=cv2.INTER_LINEAR)
    valid = cv2.resize((depth > 0).astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    smooth = (valid > 0.999) & (np.abs(lin - near) <= smooth_rel * np.maximum(near, 1e-12))
    return np.where(smooth, lin, near).astype(np.float32)


def integrate(scene: Scene, cams: list[CameraFrame], grid: Grid, config: Config, mask_people: bool) -> Integrated:
    """Integrate every confident depth map into a TSDF volume and collect its non-edge back-projected points
    (per-frame voxel-downsampled, SfM frame). Depth maps are integrated at ``grid.scale`` × their size; they
    are prepared (:func:`prepare_frame`) on :func:`vid2scene.parallel.map_ordered` threads and integrated in
    keyframe order, so the volume does not depend on the number of workers.

    Raises:
        StageFailed: no depth map had confident depth within the truncation distance, or a keyframe is missing.
    """
    o3d = io.open3d()
    acc = Integrated(o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=grid.voxel, sdf_trunc=grid.sdf_trunc,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8))
    prepared = parallel.map_ordered(lambda c: (c, prepare_frame(scene, c, grid, config, mask_people)), cams,
                                    config.workers)
    for c, p in progress.track(prepared, "fusion: integrating depth", total=len(cams)):
        if p is None:
            continue
        acc.person_pixels += p.person_pixels
        h, w = p.depth.shape
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(p.rgb), o3d.geometry.Image(p.depth), depth_scale=1.0,
            depth_trunc=float(grid.depth_trunc), convert_rgb_to_intensity=False)
        intr = o3d.camera.PinholeCameraIntrinsic(w, h, p.cK[0, 0], p.cK[1, 1], p.cK[0, 2], p.cK[1, 2])
        acc.volume.integrate(rgbd, intr, np.asarray(c.cam_from_world, dtype=np.float64))
        acc.n_fused += 1
        acc.centres.append(c.center_in_world)
        if len(p.points):
            acc.points.append(p.points)
            acc.colors.append(p.colors)
    if acc.n_fused == 0:
        raise StageFailed(NAME, "no depth map had confident depth within the truncation distance")
    return acc


def write_mesh(scene: Scene, acc: Integrated, grid: Grid, config: Config) -> dict:
    """Extract the TSDF surface, drop degenerate triangles and small components, write ``mesh.ply``; the
    volume is released. Returns the mesh QC figures.

    Raises:
        StageFailed: the mesh is empty.
    """
    with progress.bar("fusion: extracting mesh", total=None):
        mesh = acc.volume.extract_triangle_mesh()
    acc.volume = None
    mesh.remove_degenerate_triangles()
    mesh.remove_unreferenced_vertices()
    n_tri_raw = len(mesh.triangles)
    if n_tri_raw == 0:
        raise StageFailed(NAME, f"TSDF produced an empty mesh from {acc.n_fused} depth maps "
                                f"(voxel {grid.voxel:.4g}, truncation {grid.sdf_trunc:.4g}); check the depth maps "
                                "and poses (open3d must be 0.19.0)")
    if config.min_component_triangles > 0:
        small = small_components(np.asarray(mesh.triangles), len(mesh.vertices), config.min_component_triangles)
        if small.any() and not small.all():
            mesh.remove_triangles_by_mask(small)
            mesh.remove_unreferenced_vertices()
    mesh.compute_vertex_normals()
    scene.write_mesh(Mesh.from_open3d(mesh))
    return {"mesh_vertices": len(mesh.vertices), "mesh_triangles": len(mesh.triangles),
            "mesh_triangles_before_cleaning": n_tri_raw}


def write_points(scene: Scene, acc: Integrated, grid: Grid, config: Config) -> dict:
    """Voxel-downsample the collected points, remove statistical outliers, estimate normals facing the nearest
    camera, write ``points.ply``. Returns the point QC figures."""
    o3d = io.open3d()
    with progress.bar("fusion: cleaning points", total=None):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.concatenate(acc.points)))
        pcd.colors = o3d.utility.Vector3dVector(np.concatenate(acc.colors))
        acc.points, acc.colors = [], []
        n_raw = len(pcd.points)
        pcd = pcd.voxel_down_sample(grid.point_voxel)
        n_vox = len(pcd.points)
        if n_vox > config.outlier_neighbors:
            pcd, _ = pcd.remove_statistical_outlier(config.outlier_neighbors, config.outlier_std_ratio)
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4 * grid.point_voxel,
                                                                  max_nn=config.normal_neighbors))
        pts = np.asarray(pcd.points)
        nrm = orient_normals_to_cameras(pts, np.asarray(pcd.normals), np.asarray(acc.centres))
        cols = np.clip(np.round(np.asarray(pcd.colors) * 255), 0, 255).astype(np.uint8)
    scene.write_points(PointCloud(pts, cols, nrm))
    return {"points_backprojected_after_frame_voxel": n_raw, "points_after_voxel": n_vox, "points": int(len(pts))}


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
