"""The object part of the mesh and its over-segmentation.

Vertices near a layout plane (floor, ceiling, walls) are removed; the rest is over-segmented with
Felzenszwalb–Huttenlocher graph segmentation (IJCV 2004) on the mesh's edge graph with ScanNet's weights
(Dai et al. 2017, ``Segmentator``). All coordinates are in the world frame (z up, floor z = 0, metres).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scene import Mesh


def layout_plane_mask(vertices: np.ndarray, layout: dict, margin_m: float) -> np.ndarray:
    """``N`` bool: True for vertices farther than ``margin_m`` from every layout plane (kept as objects).

    ``vertices``: ``N×3`` metres in the world frame. Planes: the floor ``z = 0`` (also drops everything below
    it), the ceiling plane (and above it) if ``layout["ceiling"]`` exists, and each wall ``n·x + d = 0`` of
    ``layout["walls"]`` (only the band around the plane: a "wall" may be a cabinet front).
    """
    V = np.asarray(vertices, np.float64)
    keep = V[:, 2] > margin_m
    ceil = layout.get("ceiling")
    if ceil:
        n, d = np.asarray(ceil["normal"], float), float(ceil["d"])
        s = V @ n + d
        # the ceiling normal may face up or down: "below the ceiling" is the side the floor origin is on
        side = np.sign(d) if d != 0 else 1.0
        keep &= s * side > margin_m
    for w in layout.get("walls") or []:
        n, d = np.asarray(w["normal"], float), float(w["d"])
        keep &= np.abs(V @ n + d) > margin_m
    return keep


def _largest_patch(a: np.ndarray, z: np.ndarray, cell_m: float) -> np.ndarray:
    """Bool over in-plane coordinates ``(a, z)``: the points of the largest 8-connected component of occupied
    ``cell_m`` cells."""
    from scipy import ndimage

    if len(a) == 0:
        return np.zeros(0, bool)
    q = np.stack([np.floor((a - a.min()) / cell_m), np.floor((z - z.min()) / cell_m)], 1).astype(np.int64)
    grid = np.zeros(q.max(0) + 1, bool)
    grid[q[:, 0], q[:, 1]] = True
    lab, n = ndimage.label(grid, structure=np.ones((3, 3)))
    pl = lab[q[:, 0], q[:, 1]]
    return pl == int(np.argmax(np.bincount(pl, minlength=n + 1)[1:]) + 1)


def large_vertical_planes(vertices: np.ndarray, normals: np.ndarray, min_width_m: float = 1.5,
                          min_height_m: float = 1.4, dist_m: float = 0.03, max_planes: int = 8,
                          seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """``N`` bool: True for points on a large vertical plane the layout does not hold (a partition wall, a
    second room's wall, a wall the layout missed), and the planes found.

    RANSAC (Open3D ``segment_plane``, seeded) on the points whose normals are within 20° of horizontal,
    repeated up to ``max_planes`` times; a plane counts when its normal is within ~6° of horizontal and its
    inliers (within ``dist_m``, normals within 30° of the plane's; the largest contiguous patch of 10 cm cells
    in the plane) span at least ``min_width_m`` along it and
    ``min_height_m`` in z (2nd–98th percentiles): furniture faces are narrower or lower. ``vertices``:
    ``N×3`` world frame (z up, metres); ``normals``: ``N×3`` unit.
    """
    import open3d as o3d

    V, Nn = np.asarray(vertices, np.float64), np.asarray(normals, np.float64)
    out = np.zeros(len(V), bool)
    planes: list[dict] = []
    cand = np.flatnonzero(np.abs(Nn[:, 2]) < np.sin(np.radians(20)))
    o3d.utility.random.seed(seed)
    for _ in range(max_planes):
        if len(cand) < 500:
            break
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(V[cand]))
        model, inl = pc.segment_plane(dist_m, 3, 500)
        n = np.asarray(model[:3], float)
        n /= max(np.linalg.norm(n), 1e-12)
        raw = cand[np.asarray(inl, np.int64)]
        inl = raw[np.abs(Nn[raw] @ n) > np.cos(np.radians(30))]
        cand = np.setdiff1d(cand, raw, assume_unique=True)
        if len(inl) < 200:
            continue
        horiz = np.array([-n[1], n[0], 0.0]) / max(np.hypot(n[0], n[1]), 1e-12)
        inl = inl[_largest_patch(V[inl] @ horiz, V[inl, 2], 0.1)]  # one contiguous surface, not coplanar faces
        if len(inl) < 200:
            continue
        a = V[inl] @ horiz
        width = float(np.subtract(*np.percentile(a, [98, 2])))
        height = float(np.subtract(*np.percentile(V[inl, 2], [98, 2])))
        if abs(n[2]) < 0.1 and width >= min_width_m and height >= min_height_m:
            out[inl] = True
            planes.append({"normal": [round(float(x), 4) for x in n], "d": round(float(model[3]), 4),
                           "n_points": int(len(inl)), "width_m": round(width, 3), "height_m": round(height, 3)})
    return out, planes


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """Unique undirected edges ``E×2`` (int64, ``a < b``) of a triangle list ``M×3``."""
    t = np.asarray(triangles, np.int64).reshape(-1, 3)
    e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    e.sort(axis=1)
    return np.unique(e[e[:, 0] != e[:, 1]], axis=0)


def unit_vertex_normals(mesh: Mesh) -> np.ndarray:
    """``V×3`` float64 unit vertex normals: the mesh's own, else Open3D's area-weighted triangle normals."""
    n = mesh.normals
    if n is None:
        m = mesh.to_open3d()
        m.compute_vertex_normals()
        n = np.asarray(m.vertex_normals, np.float64)
    n = np.asarray(n, np.float64)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def felzenszwalb_mesh(vertices: np.ndarray, normals: np.ndarray, edges: np.ndarray, k: float = 0.01,
                      min_vertices: int = 20) -> np.ndarray:
    """Graph-based over-segmentation of a mesh (Felzenszwalb & Huttenlocher 2004; ScanNet's Segmentator).

    Edge weight ``w = 1 − n_a·n_b``, squared for convex edges (``(p_b − p_a)·n_b > 0``); two components merge
    when ``w ≤ min(Int(A) + k/|A|, Int(B) + k/|B|)``; components smaller than ``min_vertices`` are then joined
    to a neighbour along the lightest edges.

    Args:
        vertices: ``N×3`` positions; normals: ``N×3`` unit vertex normals; edges: ``E×2`` vertex indices.
        k: threshold constant (larger → larger segments); min_vertices: segments below this size are merged
            into a neighbour (lightest edges first).

    Returns:
        ``N`` int64 segment ids, consecutive from 0; vertices without edges are their own segments.
    """
    V, Nn = np.asarray(vertices, np.float64), np.asarray(normals, np.float64)
    n = len(V)
    E = np.asarray(edges, np.int64).reshape(-1, 2)
    a, b = E[:, 0], E[:, 1]
    dot = np.clip(np.einsum("ij,ij->i", Nn[a], Nn[b]), -1.0, 1.0)
    w = 1.0 - dot
    convex = np.einsum("ij,ij->i", V[b] - V[a], Nn[b]) > 0
    w = np.where(convex, w * w, w)
    order = np.argsort(w, kind="stable")
    parent = list(range(n))
    size = [1] * n
    thr = [k] * n

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    ea, eb, ew = a[order].tolist(), b[order].tolist(), w[order].tolist()
    for i in range(len(ea)):
        ra, rb = find(ea[i]), find(eb[i])
        if ra == rb:
            continue
        wi = ew[i]
        if wi <= thr[ra] and wi <= thr[rb]:
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            thr[ra] = wi + k / size[ra]
    for i in range(len(ea)):
        ra, rb = find(ea[i]), find(eb[i])
        if ra != rb and (size[ra] < min_vertices or size[rb] < min_vertices):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
    roots = np.fromiter((find(i) for i in range(n)), np.int64, n)
    return np.unique(roots, return_inverse=True)[1].astype(np.int64)


@dataclass
class Segments:
    """The segmented object part of a mesh.

    ``obj_idx``: ``N`` int64 indices into the mesh's vertices (so into ``mesh.ply``) of the object vertices;
    ``vertices``: their ``N×3`` world positions; ``seg``: ``N`` int64 segment ids ``0..n_seg-1``.
    """

    obj_idx: np.ndarray
    vertices: np.ndarray
    seg: np.ndarray

    @property
    def n_seg(self) -> int:
        return int(self.seg.max()) + 1 if len(self.seg) else 0

    @property
    def sizes(self) -> np.ndarray:
        """``n_seg`` int64 vertices per segment."""
        return np.bincount(self.seg, minlength=self.n_seg)


def segment_objects(vertices: np.ndarray, normals: np.ndarray, triangles: np.ndarray, obj_idx: np.ndarray,
                    k: float, min_vertices: int) -> Segments:
    """Over-segment the sub-mesh of the vertices ``obj_idx`` (edges with both ends kept) of a mesh
    (``V×3`` vertices, ``V×3`` unit normals, ``F×3`` triangles, world frame)."""
    remap = np.full(len(vertices), -1, np.int64)
    remap[obj_idx] = np.arange(len(obj_idx))
    E = remap[mesh_edges(triangles)]
    E = E[(E >= 0).all(1)]
    V = np.asarray(vertices, np.float64)[obj_idx]
    seg = felzenszwalb_mesh(V, np.asarray(normals)[obj_idx], E, k, min_vertices)
    return Segments(obj_idx, V, seg)
