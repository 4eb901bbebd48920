"""SfM anchors: the well-constrained COLMAP points and where each keyframe observes them.

A point is an anchor when its track has at least ``min_track_length`` observations, its mean reprojection
error is at most ``max_error_px`` and its triangulation angle — the largest angle, at the point, between the
rays to two cameras of its track — is at least ``min_angle_deg`` (defaults 3, 1.5 px, 2°). Positions are in
the SfM frame; pixel coordinates are the COLMAP keypoints (keyframe pixels, pixel centres at +0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scene import CameraFrame, Scene


@dataclass
class ViewAnchors:
    """The anchors one keyframe observes: ``uv`` ``N×2`` keyframe pixels, ``xyz`` ``N×3`` SfM frame,
    ``depth`` ``N`` z-depth in that camera (SfM units), ``point_ids`` ``N`` COLMAP ids."""

    uv: np.ndarray
    xyz: np.ndarray
    depth: np.ndarray
    point_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.depth)


def triangulation_angle_deg(xyz: np.ndarray, centres: np.ndarray) -> float:
    """Largest angle (degrees) at ``xyz`` (3,) between rays to any two of ``centres`` (``M×3``)."""
    if len(centres) < 2:
        return 0.0
    r = centres - xyz
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    cos = np.clip(r @ r.T, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos.min())))


def select_anchor_ids(rec, centres: dict[int, np.ndarray], min_track_length: int = 3, max_error_px: float = 1.5,
                      min_angle_deg: float = 2.0) -> set[int]:
    """COLMAP point ids passing the three tests of the module docstring.

    Args:
        rec: ``pycolmap.Reconstruction`` (SfM frame).
        centres: COLMAP image id → camera centre (3,) in the SfM frame.
    """
    keep = set()
    for pid, p in rec.points3D.items():
        if p.track.length() < min_track_length or p.error > max_error_px:
            continue
        c = np.stack([centres[e.image_id] for e in p.track.elements if e.image_id in centres]) \
            if p.track.length() else np.zeros((0, 3))
        if triangulation_angle_deg(np.asarray(p.xyz, np.float64), c) >= min_angle_deg:
            keep.add(pid)
    return keep


def scene_anchors(scene: Scene, min_track_length: int = 3, max_error_px: float = 1.5,
                  min_angle_deg: float = 2.0) -> dict[int, ViewAnchors]:
    """Anchors per registered keyframe (source frame → :class:`ViewAnchors`), from ``scene.reconstruction()``
    and ``scene.cameras("sfm")``; COLMAP images are matched to keyframes by name.

    Raises:
        StageFailed: the scene has no COLMAP model or cameras (run ``sfm``).
    """
    rec = scene.reconstruction()
    cams: dict[str, CameraFrame] = {c.name: c for c in scene.cameras("sfm") if c.registered}
    by_id = {iid: cams[im.name] for iid, im in rec.images.items() if im.name in cams}
    centres = {iid: c.center_in_world for iid, c in by_id.items()}
    good = select_anchor_ids(rec, centres, min_track_length, max_error_px, min_angle_deg)
    out: dict[int, ViewAnchors] = {}
    for iid, cam in by_id.items():
        im = rec.images[iid]
        uv, ids = [], []
        for p2 in im.points2D:
            if p2.has_point3D() and p2.point3D_id in good:
                uv.append(np.asarray(p2.xy, np.float64))
                ids.append(p2.point3D_id)
        xyz = np.stack([np.asarray(rec.points3D[i].xyz, np.float64) for i in ids]) if ids else np.zeros((0, 3))
        T = cam.cam_from_world
        z = (xyz @ T[:3, :3].T + T[:3, 3])[:, 2] if len(xyz) else np.zeros(0)
        ok = z > 0
        out[cam.source_frame] = ViewAnchors(np.asarray(uv, np.float64).reshape(-1, 2)[ok], xyz[ok], z[ok],
                                            np.asarray(ids, np.int64)[ok])
    return out
