"""Gravity-aligned boxes of instances (world frame: z up, floor z = 0, metres).

A box is ``{"center", "size", "yaw_rad"}`` as in :mod:`vid2scene.geometry` (corners by
:func:`vid2scene.geometry.box_corners`): local x is the longer horizontal side, ``yaw_rad`` ∈ [−π/2, π/2) its
angle from world +x about +z.
"""

from __future__ import annotations

import math

import numpy as np


def oriented_box(points: np.ndarray, floor_snap_m: float = 0.1) -> dict:
    """Gravity-aligned box of ``N×3`` world-frame points: ``{"center", "size", "yaw_rad"}`` + ``"aabb"``.

    Footprint: ``cv2.minAreaRect`` of the xy points after dropping points more than 2 cm outside the 0.5–99.5th
    percentiles per axis (stray points; a median/MAD rule would cut an L-shaped footprint of two visible faces); local x is the longer side, ``yaw_rad`` ∈ [−π/2, π/2) is its angle from world +x about +z.
    Height: 1st–99th percentile of z, bottom snapped to 0 when below ``floor_snap_m``. Sizes are full side
    lengths in metres (≥ 1 cm). ``aabb``: ``{"min", "max"}`` of the inlier footprint and that z range.

    Raises:
        ValueError: ``points`` is empty.
    """
    import cv2

    P = np.asarray(points, np.float64).reshape(-1, 3)
    if len(P) == 0:
        raise ValueError("oriented_box needs at least one point")
    lo, hi = np.percentile(P[:, :2], [0.5, 99.5], axis=0)
    inl = np.all((P[:, :2] >= lo - 0.02) & (P[:, :2] <= hi + 0.02), axis=1)
    Q = P[inl] if inl.sum() >= 3 else P
    (cx, cy), (w, h), _ = cv2.minAreaRect(Q[:, :2].astype(np.float32))
    corners = cv2.boxPoints(((cx, cy), (w, h), _)).astype(np.float64)
    e1, e2 = corners[1] - corners[0], corners[2] - corners[1]
    if np.linalg.norm(e2) > np.linalg.norm(e1):
        e1, e2 = e2, e1
    sx, sy = float(np.linalg.norm(e1)), float(np.linalg.norm(e2))
    yaw = math.atan2(e1[1], e1[0]) if sx > 0 else 0.0
    yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2
    z0, z1 = np.percentile(P[:, 2], [1, 99])
    if z0 < floor_snap_m:
        z0 = 0.0
    size = [max(sx, 0.01), max(sy, 0.01), max(float(z1 - z0), 0.01)]
    center = [float(cx), float(cy), float((z0 + z1) / 2)]
    return {"center": center, "size": size, "yaw_rad": float(yaw),
            "aabb": {"min": [float(v) for v in Q[:, :2].min(0)] + [float(z0)],
                     "max": [float(v) for v in Q[:, :2].max(0)] + [float(z1)]}}


def box_fields(box: dict) -> dict:
    """The ``box`` and ``aabb`` fields of an ``instances.json`` record from :func:`oriented_box`'s result
    (rounded to 0.1 mm, yaw to 1e-5 rad)."""
    return {"box": {"center": [round(x, 4) for x in box["center"]], "size": [round(x, 4) for x in box["size"]],
                    "yaw_rad": round(box["yaw_rad"], 5)},
            "aabb": {k: [round(x, 4) for x in vals] for k, vals in box["aabb"].items()}}


def box_dimension(box: dict, dimension: str) -> float:
    """One measured dimension of an instance box in metres, as the size priors state them: ``"top"`` (height of
    the top above the floor, ``center_z + size_z / 2``; the z extent when the box has no centre), ``"height"``
    (the z extent) or ``"length"`` (the longer horizontal side)."""
    size = box["size"]
    if dimension == "top":
        return box["center"][2] + size[2] / 2 if "center" in box else size[2]
    return size[2] if dimension == "height" else max(size[0], size[1])
