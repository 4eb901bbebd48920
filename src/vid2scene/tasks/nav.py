"""Navigation substrate shared by ``route_planning`` (VQA) and the VLN episodes.

World frame ``gravity_z_up_metric`` (z up, floor z = 0, metres). Headings (``yaw``) are radians about +z from
world +x, counter-clockwise seen from above, so a *left* turn adds to the yaw.

1. **Floor trajectory** — registered keyframe camera centres projected to the floor (z dropped), in time order.
2. **Refinement** (:func:`refine_trajectory`) — Gaussian smoothing (σ in samples), densified to a fine arc-length
   spacing; back-tracking cut: by default (``backtrack="split"``) the walk is cut at its U-turns
   (:func:`split_at_uturns`), so an out-and-back excursion gives two one-way legs; with ``"erase"`` the back leg
   is dropped (:func:`despike`, a stack scan that collapses reversals). Then, within each piece, *loop erasure*
   (Lawler's loop-erased walk, with a tolerance): when the walk comes back within ``revisit_radius_m`` of a
   point it left more than ``revisit_gap_m`` of path ago, the loop between is cut (detours, wide turn-backs). A
   loop longer than ``max_erase_m`` is a real route, not a detour: the piece is split there instead. Stubs left
   by the cuts are despiked; every segment is a simple path, resampled every ``resample_m``.
3. **Free space** (:class:`FreeSpace`) — a grid of the room polygon minus the floor footprints of instances
   whose boxes reach into the body height band, eroded by the agent radius, plus the walked corridor (where the
   camera went is walkable).
4. **Navigation graph** (:func:`build_nav_graph`, networkx) — nodes at the refined trajectory samples
   (``kind="trajectory"``) and on a lattice of free cells (``kind="free"``); edges between consecutive samples
   and between nodes closer than ``edge_max_m`` whose straight segment stays in free space; weight = length.
5. **Actions** (:func:`encode_actions`, :func:`replay_actions`) — VLN-CE's discrete action space
   (0 STOP, 1 MOVE_FORWARD ``forward_step_m``, 2 TURN_LEFT ``turn_deg``, 3 TURN_RIGHT ``turn_deg``), encoded by
   a greedy follower that re-aims at every waypoint from its own simulated pose, so errors do not accumulate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .common import Instance, footprint_distance, wrap_angle

STOP, FORWARD, TURN_LEFT, TURN_RIGHT = 0, 1, 2, 3
ACTION_NAMES = {STOP: "STOP", FORWARD: "MOVE_FORWARD", TURN_LEFT: "TURN_LEFT", TURN_RIGHT: "TURN_RIGHT"}


class NavConfig(BaseModel):
    """Trajectory refinement, free space and navigation-graph parameters (metres unless named otherwise)."""

    model_config = ConfigDict(extra="forbid")
    smooth_sigma: float = Field(1.5, ge=0, description="Gaussian smoothing of the camera track, in keyframes")
    dense_step_m: float = Field(0.05, gt=0, description="arc-length spacing used for loop erasure")
    reversal_deg: float = Field(150.0, gt=90, le=180, description="a turn sharper than this is back-tracking")
    backtrack: Literal["split", "erase"] = Field("split", description="at a U-turn, split the walk into its out and "
                                                                        "back legs, or erase the back leg")
    uturn_window_m: float = Field(1.0, gt=0, description="path window of the U-turn test (turn radius ≲ w/π)")
    revisit_radius_m: float = Field(0.35, gt=0, description="coming back this close to an earlier point ...")
    revisit_gap_m: float = Field(1.0, gt=0, description="... that lies this much path behind closes a loop")
    max_erase_m: float = Field(6.0, gt=0, description="loops up to this length are cut; longer ones split")
    resample_m: float = Field(0.25, gt=0, description="spacing of the refined trajectory")
    min_segment_m: float = Field(1.0, ge=0, description="refined segments shorter than this are dropped")
    cell_m: float = Field(0.05, gt=0, description="free-space grid cell")
    agent_radius_m: float = Field(0.2, ge=0)
    obstacle_z_min_m: float = Field(0.1, ge=0, description="boxes reaching above this height ...")
    obstacle_z_max_m: float = Field(1.8, gt=0, description="... and starting below this one block the way")
    lattice_m: float = Field(0.5, gt=0, description="spacing of free-space graph nodes")
    edge_max_m: float = Field(0.8, gt=0, description="longest straight graph edge")
    approach_max_m: float = Field(1.0, gt=0, description="a node this close to an object's footprint reaches it")
    forward_step_m: float = Field(0.25, gt=0)
    turn_deg: float = Field(15.0, gt=0, lt=180)


# ---------------------------------------------------------------------------------------------------------
# trajectory
# ---------------------------------------------------------------------------------------------------------
def floor_trajectory(cameras) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera centres projected to the floor: (``N×2`` xy metres, ``N`` timestamp_s, ``N`` viewing yaw rad).

    ``cameras`` are registered :class:`~vid2scene.scene.CameraFrame` s in the metric z-up world; the yaw is the
    heading of the optical axis (OpenCV +z) projected onto the floor (NaN when the camera looks straight down).
    """
    cams = sorted([c for c in cameras if c.registered], key=lambda c: (c.timestamp_s, c.source_frame))
    xy = np.array([c.center_in_world[:2] for c in cams], dtype=np.float64).reshape(-1, 2)
    t = np.array([c.timestamp_s for c in cams], dtype=np.float64)
    fwd = np.array([c.cam_from_world[2, :3] for c in cams], dtype=np.float64).reshape(-1, 3)  # R^T e_z
    yaw = np.where(np.hypot(fwd[:, 0], fwd[:, 1]) > 0.2, np.arctan2(fwd[:, 1], fwd[:, 0]), np.nan)
    return xy, t, yaw


def _arc(xy: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])


def resample_polyline(pts: np.ndarray, step: float) -> np.ndarray:
    """Resample a polyline (``N×D``; the first two columns are x/y metres, further ones, e.g. time, are
    interpolated along) at equal arc-length spacing ``step``; keeps both end points."""
    pts = np.asarray(pts, dtype=np.float64)
    s = _arc(pts[:, :2])
    if len(pts) < 2 or s[-1] <= 0:
        return pts[:1].copy()
    n = max(1, int(round(s[-1] / step)))
    q = np.linspace(0.0, s[-1], n + 1)
    return np.stack([np.interp(q, s, pts[:, k]) for k in range(pts.shape[1])], axis=1)


def despike(pts: np.ndarray, reversal_deg: float = 150.0) -> np.ndarray:
    """Cut back-tracking from a densely sampled polyline (``N×D``, x/y metres first): a stack scan that drops the
    last kept point while the path turns by more than ``reversal_deg`` there, so a walk out and back along the
    same line (or jitter in place) collapses to the point where it turned back. Returns the kept rows."""
    cos_max = math.cos(math.radians(reversal_deg))
    out: list[np.ndarray] = []
    for p in np.asarray(pts, dtype=np.float64):
        while out:
            if np.hypot(*(p[:2] - out[-1][:2])) < 1e-9:
                break
            if len(out) < 2:
                break
            a, b = out[-1][:2] - out[-2][:2], p[:2] - out[-1][:2]
            na, nb = np.hypot(*a), np.hypot(*b)
            if na < 1e-9 or float(a @ b) / (na * nb) < cos_max:
                out.pop()
                continue
            break
        if not out or np.hypot(*(p[:2] - out[-1][:2])) >= 1e-9:
            out.append(p)
    return np.asarray(out).reshape(-1, np.asarray(pts).shape[1])


@dataclass
class RefinedTrajectory:
    """Refined floor trajectory: ``segments`` each ``K×3`` (x, y metres; timestamp_s), simple paths sampled
    every ``resample_m``; ``stats`` how much was cut."""

    segments: list[np.ndarray]
    stats: dict = field(default_factory=dict)

    @property
    def length_m(self) -> float:
        return float(sum(_arc(s[:, :2])[-1] for s in self.segments))


def _loop_erase(dense: np.ndarray, cfg: "NavConfig") -> tuple[list[np.ndarray], float, int, int]:
    """Loop erasure with tolerance on one dense polyline: (simple segments, metres erased, loops erased, splits)."""
    segments: list[np.ndarray] = []
    buf = np.empty_like(dense)  # the current segment, buf[:n]; arc[:n] its cumulative length
    arc = np.empty(len(dense))
    buf[0], arc[0], n = dense[0], 0.0, 1
    erased, n_erased, n_split = 0.0, 0, 0
    for p in dense[1:]:
        step = math.hypot(p[0] - buf[n - 1, 0], p[1] - buf[n - 1, 1])
        d = np.hypot(buf[:n, 0] - p[0], buf[:n, 1] - p[1])
        behind = arc[n - 1] + step - arc[:n]
        hit = np.flatnonzero((d < cfg.revisit_radius_m) & (behind > cfg.revisit_gap_m))
        if len(hit):
            j = int(hit[0])
            if behind[j] <= cfg.max_erase_m:  # a detour: erase the loop
                erased += float(behind[j])
                n_erased += 1
                n = j + 1
                continue
            n_split += 1  # a long loop is a real route: split
            segments.append(buf[:n].copy())
            buf[0], arc[0], n = p, 0.0, 1
            continue
        buf[n], arc[n] = p, arc[n - 1] + step
        n += 1
    segments.append(buf[:n].copy())
    return segments, erased, n_erased, n_split


def split_at_uturns(dense: np.ndarray, window_m: float, reversal_deg: float) -> list[np.ndarray]:
    """Cut a densely, evenly sampled polyline (``N×D``, x/y metres first) at its U-turns: points where the
    direction over the ``window_m/2`` before and the ``window_m/2`` after differ by more than ``reversal_deg``
    (a turn back within a radius of about ``window_m/π``); each run of such points is cut at its sharpest one.
    Returns the pieces (consecutive pieces share the cut point)."""
    xy = np.asarray(dense, dtype=np.float64)[:, :2]
    if len(xy) < 3:
        return [np.asarray(dense)]
    step = float(np.median(np.linalg.norm(np.diff(xy, axis=0), axis=1))) or 1.0
    w = max(1, int(round(window_m / 2 / step)))
    if len(xy) <= 2 * w:
        return [np.asarray(dense)]
    i = np.arange(w, len(xy) - w)
    vin, vout = xy[i] - xy[i - w], xy[i + w] - xy[i]
    cos = np.einsum("ij,ij->i", vin, vout) / np.maximum(np.linalg.norm(vin, axis=1) * np.linalg.norm(vout, axis=1),
                                                         1e-12)
    cand = cos < math.cos(math.radians(reversal_deg))
    cuts = []
    k = 0
    while k < len(i):
        if cand[k]:
            m = k
            while m + 1 < len(i) and cand[m + 1]:
                m += 1
            cuts.append(int(i[k + int(np.argmin(cos[k:m + 1]))]))
            k = m + 1
        else:
            k += 1
    bounds = [0] + cuts + [len(xy) - 1]
    return [np.asarray(dense)[a:b + 1] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def refine_trajectory(xy: np.ndarray, t: np.ndarray, config: NavConfig | None = None) -> RefinedTrajectory:
    """Smooth, loop-erase / split and resample a floor trajectory (``N×2`` metres, ``N`` seconds, time order).

    Returns a :class:`RefinedTrajectory`; segments shorter than ``min_segment_m`` are dropped (possibly all).
    """
    from scipy.ndimage import gaussian_filter1d

    cfg = config or NavConfig()
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    raw_len = float(_arc(xy)[-1]) if len(xy) > 1 else 0.0
    if len(xy) >= 3 and cfg.smooth_sigma > 0:
        xy = gaussian_filter1d(xy, cfg.smooth_sigma, axis=0, mode="nearest")
    dense = resample_polyline(np.column_stack([xy, t]), cfg.dense_step_m) if len(xy) > 1 else np.column_stack([xy, t])
    before = float(_arc(dense[:, :2])[-1])
    n_uturns = 0
    if cfg.backtrack == "split":
        pieces = split_at_uturns(dense, cfg.uturn_window_m, cfg.reversal_deg)
        n_uturns = len(pieces) - 1
        backtrack = 0.0
    else:
        pieces = [despike(dense, cfg.reversal_deg)]
        backtrack = before - float(_arc(pieces[0][:, :2])[-1])
    segments: list[np.ndarray] = []
    erased, n_erased, n_split = 0.0, 0, 0
    for piece in pieces:
        segs, e, ne, ns = _loop_erase(piece, cfg)
        segments += segs
        erased, n_erased, n_split = erased + e, n_erased + ne, n_split + ns
    # loop erasure leaves a stub (up to revisit_radius_m) where the walk came back: despike again
    cleaned = [despike(s, cfg.reversal_deg) for s in segments]
    backtrack += sum(float(_arc(a[:, :2])[-1] - _arc(b[:, :2])[-1]) for a, b in zip(segments, cleaned) if len(a) > 1)
    out = [resample_polyline(s, cfg.resample_m) for s in cleaned if len(s) > 1]
    out = [s for s in out if len(s) > 1 and _arc(s[:, :2])[-1] >= cfg.min_segment_m]
    stats = {"raw_length_m": round(raw_len, 3), "backtrack": cfg.backtrack, "n_uturn_splits": n_uturns,
             "backtrack_cut_m": round(backtrack, 3), "erased_loop_m": round(erased, 3), "n_loops_erased": n_erased,
             "n_splits": n_split, "n_segments": len(out),
             "refined_length_m": round(float(sum(_arc(s[:, :2])[-1] for s in out)), 3)}
    return RefinedTrajectory(out, stats)


# ---------------------------------------------------------------------------------------------------------
# free space
# ---------------------------------------------------------------------------------------------------------
@dataclass
class FreeSpace:
    """Walkable floor cells: ``free`` H×W bool, row = y index, column = x index; cell (r, c) has its centre at
    ``origin_xy + (c, r) · cell_m`` (world metres)."""

    free: np.ndarray
    origin_xy: np.ndarray
    cell_m: float

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ij = np.round((np.asarray(xy, dtype=np.float64).reshape(-1, 2) - self.origin_xy) / self.cell_m).astype(int)
        return ij[:, 1], ij[:, 0]

    def is_free(self, xy: np.ndarray) -> np.ndarray:
        """Bool per point of ``xy`` (``N×2`` metres): inside the grid and free."""
        r, c = self.cells(xy)
        h, w = self.free.shape
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        out = np.zeros(len(r), dtype=bool)
        out[ok] = self.free[r[ok], c[ok]]
        return out

    def segment_free(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the straight floor segment a→b (metres) stays in free cells (sampled every half cell)."""
        n = max(2, int(math.ceil(np.linalg.norm(np.asarray(b) - np.asarray(a)) / (self.cell_m / 2))) + 1)
        s = np.linspace(0.0, 1.0, n)[:, None]
        return bool(self.is_free(np.asarray(a) * (1 - s) + np.asarray(b) * s).all())


def is_obstacle(inst: Instance, config: NavConfig) -> bool:
    """Whether an instance's box reaches into the body height band ``[obstacle_z_min_m, obstacle_z_max_m]``."""
    return bool(inst.aabb_max[2] > config.obstacle_z_min_m and inst.aabb_min[2] < config.obstacle_z_max_m)


def build_free_space(polygon_xy: np.ndarray, instances: list[Instance], segments: list[np.ndarray],
                     config: NavConfig | None = None) -> FreeSpace:
    """Free-space grid: room polygon (``K×2`` metres) minus obstacle footprints, eroded by the agent radius,
    plus the walked corridor (the refined trajectory ``segments``, ``K×≥2`` metres, with the agent radius)."""
    import cv2

    cfg = config or NavConfig()
    pts = [np.asarray(polygon_xy, dtype=np.float64).reshape(-1, 2)] + [s[:, :2] for s in segments]
    allp = np.concatenate(pts)
    margin = cfg.agent_radius_m + 2 * cfg.cell_m
    lo, hi = allp.min(0) - margin, allp.max(0) + margin
    w, h = (np.ceil((hi - lo) / cfg.cell_m).astype(int) + 1)
    origin = lo

    footprints = [inst.footprint_xy() for inst in instances if is_obstacle(inst, cfg)]
    free = free_grid(polygon_xy, footprints, origin, (w, h), cfg.cell_m, cfg.agent_radius_m)
    rad = int(round(cfg.agent_radius_m / cfg.cell_m))
    walked = np.zeros((h, w), np.uint8)
    for s in segments:
        cv2.polylines(walked, [grid_px(s[:, :2], origin, cfg.cell_m)], False, 1, thickness=max(1, 2 * rad + 1))
    return FreeSpace(free | (walked > 0), origin, cfg.cell_m)


def grid_px(points_xy: np.ndarray, origin: np.ndarray, cell_m: float) -> np.ndarray:
    """``K×1×2`` int32 grid cells (OpenCV polygon layout) of ``K×2`` metric points; cell (0, 0) centred on
    ``origin``."""
    return np.round((np.asarray(points_xy) - origin) / cell_m).astype(np.int32).reshape(-1, 1, 2)


def free_grid(polygon_xy: np.ndarray, footprints: list[np.ndarray], origin: np.ndarray, size_wh: tuple[int, int],
              cell_m: float, agent_radius_m: float) -> np.ndarray:
    """``H×W`` bool free floor: the room polygon (``K×2`` metres) minus the obstacle ``footprints`` (each
    ``M×2`` metres), eroded by the agent radius (elliptic kernel); cell (0, 0) centred on ``origin``."""
    import cv2

    w, h = size_wh
    room = np.zeros((h, w), np.uint8)
    cv2.fillPoly(room, [grid_px(polygon_xy, origin, cell_m)], 1)
    obst = np.zeros((h, w), np.uint8)
    for fp in footprints:
        cv2.fillPoly(obst, [grid_px(fp, origin, cell_m)], 1)
    free = (room > 0) & (obst == 0)
    rad = int(round(agent_radius_m / cell_m))
    if rad > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))
        free = cv2.erode(free.astype(np.uint8), k, borderValue=0) > 0
    return free


# ---------------------------------------------------------------------------------------------------------
# graph
# ---------------------------------------------------------------------------------------------------------
@dataclass
class NavGraph:
    """The navigation graph: ``graph`` a networkx Graph whose nodes (ints) carry ``xy`` (metres) and ``kind``
    (``"trajectory"`` / ``"free"``), edges ``length`` (metres); ``space`` the free-space grid."""

    graph: object
    space: FreeSpace
    config: NavConfig

    @cached_property
    def xy(self) -> np.ndarray:
        """``N×2`` node positions (metres), row = node id (ids are 0..N-1)."""
        return np.array([self.graph.nodes[n]["xy"] for n in sorted(self.graph.nodes)]).reshape(-1, 2)

    def approach_node(self, inst: Instance) -> tuple[int | None, float]:
        """The graph node nearest the instance's floor footprint (its box rectangle) within ``approach_max_m``,
        with that distance; (None, inf) when none is that close. Ties go to the lower node id."""
        d = footprint_distance(inst, self.xy)
        j = int(np.argmin(d))
        return (j, float(d[j])) if d[j] <= self.config.approach_max_m else (None, math.inf)

    def shortest_path(self, a: int, b: int) -> list[int] | None:
        """Node ids of the shortest path a→b (Dijkstra on edge length), or None when not connected."""
        import networkx as nx

        try:
            return nx.shortest_path(self.graph, a, b, weight="length")
        except nx.NetworkXNoPath:
            return None

    def to_json(self) -> dict:
        """Connectivity in R2R's spirit: nodes (id, xy, kind) and edges (a, b, length_m)."""
        g = self.graph
        return {"frame": "gravity_z_up_metric", "units": "m",
                "nodes": [{"id": int(n), "xy": [round(float(v), 4) for v in g.nodes[n]["xy"]],
                           "kind": g.nodes[n]["kind"]} for n in sorted(g.nodes)],
                "edges": [{"a": int(a), "b": int(b), "length_m": round(float(d["length"]), 4)}
                          for a, b, d in sorted(g.edges(data=True))]}


def build_nav_graph(space: FreeSpace, segments: list[np.ndarray], config: NavConfig | None = None) -> NavGraph:
    """Navigation graph over the refined trajectory ``segments`` and a free-space lattice (see module doc)."""
    import networkx as nx
    from scipy.spatial import cKDTree

    cfg = config or NavConfig()
    nodes, kinds, chain = [], [], []
    for s in segments:
        start = len(nodes)
        for p in s:
            nodes.append(p[:2])
            kinds.append("trajectory")
        chain += [(k, k + 1) for k in range(start, len(nodes) - 1)]
    h, w = space.free.shape
    step = max(1, int(round(cfg.lattice_m / space.cell_m)))
    rr, cc = np.mgrid[step // 2:h:step, step // 2:w:step]
    rr, cc = rr.ravel(), cc.ravel()
    keep = space.free[rr, cc]
    lattice = space.origin_xy + np.column_stack([cc[keep], rr[keep]]) * space.cell_m
    nodes += list(lattice)
    kinds += ["free"] * len(lattice)
    xy = np.asarray(nodes, dtype=np.float64).reshape(-1, 2)
    g = nx.Graph()
    for k, (p, kind) in enumerate(zip(xy, kinds)):
        g.add_node(k, xy=(float(p[0]), float(p[1])), kind=kind)
    for a, b in chain:
        g.add_edge(a, b, length=float(np.linalg.norm(xy[a] - xy[b])))
    if len(xy) > 1:
        for a, b in sorted(cKDTree(xy).query_pairs(cfg.edge_max_m)):
            if not g.has_edge(a, b) and space.segment_free(xy[a], xy[b]):
                g.add_edge(int(a), int(b), length=float(np.linalg.norm(xy[a] - xy[b])))
    return NavGraph(g, space, cfg)


# ---------------------------------------------------------------------------------------------------------
# polylines, turns, actions
# ---------------------------------------------------------------------------------------------------------
def simplify_polyline(xy: np.ndarray, tolerance_m: float) -> np.ndarray:
    """Douglas–Peucker simplification of an open polyline (``N×2`` metres) with OpenCV; keeps both ends."""
    import cv2

    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) <= 2:
        return xy.copy()
    idx = cv2.approxPolyDP(xy.reshape(-1, 1, 2).astype(np.float32), float(tolerance_m), False)
    simp = idx.reshape(-1, 2).astype(np.float64)
    # approxPolyDP returns float32 copies of kept vertices: map back to the exact inputs
    keep = [int(np.argmin(np.linalg.norm(xy - q, axis=1))) for q in simp]
    keep = sorted(set(keep) | {0, len(xy) - 1})
    return xy[keep]


def heading(a: np.ndarray, b: np.ndarray) -> float:
    """Yaw (rad, from +x, counter-clockwise about +z) of the floor direction a→b."""
    d = np.asarray(b, dtype=np.float64)[:2] - np.asarray(a, dtype=np.float64)[:2]
    return math.atan2(d[1], d[0])


def turn_angles(xy: np.ndarray, start_yaw: float | None = None) -> list[float]:
    """Signed turn (rad, + = left) before each leg of a polyline (``N×2``): the first relative to
    ``start_yaw`` (0 if None), then at each interior vertex."""
    legs = [heading(xy[k], xy[k + 1]) for k in range(len(xy) - 1)]
    prev = legs[0] if start_yaw is None else start_yaw
    out = []
    for h in legs:
        out.append(float(wrap_angle(h - prev)))
        prev = h
    return out


def encode_actions(start_xy: np.ndarray, start_yaw: float, waypoints: np.ndarray, forward_step_m: float = 0.25,
                   turn_deg: float = 15.0) -> list[int]:
    """Ground-truth VLN-CE actions that take an agent at ``start_xy`` (metres) with heading ``start_yaw`` (rad)
    through ``waypoints`` (``K×2`` metres), ending with STOP (0).

    A greedy follower: for each waypoint, turn (2 left / 3 right, ``turn_deg`` each) to the quantised heading
    nearest the waypoint direction, then step forward (1, ``forward_step_m``) the number of steps that best
    covers the distance; it aims from its own simulated pose, so the end error is bounded by the last leg
    (≤ leg·sin(turn/2) across + step/2 along), not accumulated. Waypoints closer than half a step are skipped.
    """
    turn = math.radians(turn_deg)
    pos = np.asarray(start_xy, dtype=np.float64)[:2].copy()
    yaw = float(start_yaw)
    actions: list[int] = []
    for w in np.asarray(waypoints, dtype=np.float64).reshape(-1, 2):
        d = float(np.linalg.norm(w - pos))
        if d < forward_step_m / 2:
            continue
        err = float(wrap_angle(heading(pos, w) - yaw))
        k = int(round(err / turn))
        actions += [TURN_LEFT] * k if k > 0 else [TURN_RIGHT] * (-k)
        yaw += k * turn
        n = int(round(d * math.cos(err - k * turn) / forward_step_m))
        actions += [FORWARD] * n
        pos = pos + n * forward_step_m * np.array([math.cos(yaw), math.sin(yaw)])
    actions.append(STOP)
    return actions


def replay_actions(start_xy: np.ndarray, start_yaw: float, actions: list[int], forward_step_m: float = 0.25,
                   turn_deg: float = 15.0) -> tuple[np.ndarray, float]:
    """Replay VLN-CE actions without collisions: (``K×2`` positions visited, start included, metres; final yaw
    rad). Stops at the first STOP."""
    turn = math.radians(turn_deg)
    pos = np.asarray(start_xy, dtype=np.float64)[:2].copy()
    yaw = float(start_yaw)
    path = [pos.copy()]
    for a in actions:
        if a == STOP:
            break
        if a == FORWARD:
            pos = pos + forward_step_m * np.array([math.cos(yaw), math.sin(yaw)])
            path.append(pos.copy())
        elif a == TURN_LEFT:
            yaw += turn
        elif a == TURN_RIGHT:
            yaw -= turn
        else:
            raise ValueError(f"unknown action {a}")
    return np.asarray(path), float(wrap_angle(yaw))
