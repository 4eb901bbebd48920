"""``keyframes`` stage: disparity-based keyframe selection (SceneVerse++, Sec. 3.1 data curation).

Instead of sampling uniformly, features (Shi–Tomasi corners) detected in the last keyframe are tracked
frame to frame with pyramidal Lucas–Kanade over the frames that ``quality`` accepted. A frame becomes the next
keyframe when the *median displacement* of the surviving tracks since the last keyframe exceeds
``min_disparity`` × the image's long side (``reason: "disparity"``), or when too few tracks survive to
measure it (``reason: "track_loss"``: the frame before the loss is taken, so consecutive keyframes still
overlap). The first and last usable frames are keyframes too. If more than ``max_keyframes`` result, the
threshold is raised and selection repeated.

The threshold adapts to the input: ``min_disparity`` is where it starts; when that gives fewer keyframes than
the target (``target_keyframes_per_s`` × the duration, at least ``min_keyframes``, at most the candidates) it is
lowered step by step down to ``min_disparity_floor``; when even that gives too few and the candidates are few
(≤ ``use_all_below``), every candidate is a keyframe (``reason: "all"``). An image folder (``video.json`` kind
``images``: photos, not a sequence) uses every usable image (``reason: "image"``) up to ``max_keyframes``
(``image_folder: disparity`` selects among them as among video frames).
Rejection is kept for what cannot work: a static camera (features never move ``static_max_disparity`` of the
image) and fewer than 3 usable frames.

Writes ``frames/NNNNNN.jpg`` (letterbox bars from ``quality`` cropped away) and ``keyframes.json``::

    {"keyframes": [{"source_frame", "timestamp_s", "reason", "disparity_rel", "tracked_share"}],
     "min_disparity": float, "crop": {"top","bottom","left","right"}, "width", "height", "n_candidates"}

Raises ``RejectedInput`` for a static camera ("insufficient camera motion") or fewer than 3 usable frames.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import io, progress
from .errors import RejectedInput
from .scene import Scene
from .stage import StageResult

NAME = "keyframes"
OUTPUTS = ["frames", "keyframes.json"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_disparity: float = Field(0.08, gt=0, lt=1,
                                 description="median track displacement since last keyframe, share of long side "
                                 "(the starting threshold; lowered for short inputs)")
    max_keyframes: int = Field(1000, ge=2, description="more keyframes than this raise the threshold (sparser "
                               "keyframes). Keep it above what the input needs at min_disparity: the HoloLens walk "
                               "forward + backward (60 s) gave 336 keyframes at 8%; capped at 300 the threshold "
                               "rose to 11.2%, 272 keyframes, and incremental mapping split into 8 models (3 min "
                               "of restarts) where 336 map in one")
    min_keyframes: int = Field(10, ge=2, description="target at least this many keyframes (the threshold is "
                               "lowered, or every candidate used); fewer is a warning, not a rejection")
    target_keyframes_per_s: float = Field(0.5, ge=0, description="target keyframes per second of input")
    min_disparity_floor: float = Field(0.02, gt=0, lt=1, description="the threshold is never lowered below this")
    use_all_below: int = Field(40, ge=0, description="with at most this many usable frames and too few keyframes "
                               "at the floor threshold, every usable frame is a keyframe")
    image_folder: Literal["all", "disparity"] = Field("all", description="an image folder: every usable image "
                                                      "is a keyframe (photos), or select by disparity (a frame "
                                                      "sequence saved as images)")
    static_max_disparity: float = Field(0.015, gt=0, lt=1, description="features moving less than this share of "
                                        "the image over the whole input: a static camera (rejected)")
    n_features: int = Field(400, ge=20, description="corners tracked from each keyframe")
    min_tracked_share: float = Field(0.35, gt=0, lt=1, description="below this share of surviving tracks: track loss")
    track_long_side: int = Field(480, ge=64, description="tracking resolution (long side px)")


def _gray_small(rgb: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    import cv2

    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    s = min(1.0, long_side / max(g.shape))
    if s < 1.0:
        g = cv2.resize(g, (round(g.shape[1] * s), round(g.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return g, s


MIN_TRACKS = 15  # fewer surviving tracks than this is a track loss, whatever the share


class _Tracks:
    """KLT tracks since the last keyframe: Shi–Tomasi corners ``p0`` detected there and where they are now
    (``p_cur``), both ``N×1×2`` float32 pixels of the grey images."""

    def __init__(self, n_features: int):
        import cv2

        self.n_features = n_features
        self.lk = dict(winSize=(21, 21), maxLevel=3,
                       criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        self.p0 = self.p_cur = np.zeros((0, 1, 2), np.float32)
        self.n0 = 0

    def restart(self, img: np.ndarray) -> None:
        """Detect fresh corners in ``img`` (the new keyframe)."""
        import cv2

        pts = cv2.goodFeaturesToTrack(img, maxCorners=self.n_features, qualityLevel=0.01, minDistance=8,
                                      blockSize=7)
        self.p0 = self.p_cur = np.zeros((0, 1, 2), np.float32) if pts is None else pts.astype(np.float32)
        self.n0 = len(self.p0)

    def follow(self, img_a: np.ndarray, img_b: np.ndarray) -> None:
        """Track the current points from ``img_a`` to ``img_b`` (pyramidal LK with a forward-backward check
        under 1 px); lost tracks are dropped."""
        import cv2

        if not len(self.p_cur):
            return
        p_next, st, _ = cv2.calcOpticalFlowPyrLK(img_a, img_b, self.p_cur, None, **self.lk)
        p_back, st2, _ = cv2.calcOpticalFlowPyrLK(img_b, img_a, p_next, None, **self.lk)
        fb = np.linalg.norm((p_back - self.p_cur).reshape(-1, 2), axis=1)
        ok = (st.ravel() == 1) & (st2.ravel() == 1) & (fb < 1.0)
        self.p0, self.p_cur = self.p0[ok], p_next[ok]

    @property
    def share(self) -> float:
        """Share of the keyframe's corners still tracked."""
        return len(self.p_cur) / max(self.n0, 1)

    def lost(self, min_share: float) -> bool:
        return self.share < min_share or len(self.p_cur) < MIN_TRACKS

    def displacement(self) -> float:
        """Median displacement (px) of the surviving tracks since the keyframe; 0 without tracks."""
        if not len(self.p_cur):
            return 0.0
        return float(np.median(np.linalg.norm((self.p_cur - self.p0).reshape(-1, 2), axis=1)))


def select_keyframes(grays: "list[np.ndarray] | object", min_disparity: float, n_features: int = 400,
                     min_tracked_share: float = 0.35, total: int | None = None) -> tuple[list[dict], float]:
    """Disparity-based keyframe selection over an ordered sequence of grey images.

    Args:
        grays: iterable of ``H×W`` uint8 grey images (all one size), in time order.
        min_disparity: threshold on the median displacement since the last keyframe, as a share of the long side.
        n_features: Shi–Tomasi corners detected per keyframe.
        min_tracked_share: a keyframe is forced when fewer tracks than this share survive.
        total: number of images, for the progress bar.

    Returns:
        (list of ``{"index", "reason", "disparity_rel", "tracked_share"}`` with ``index`` into ``grays``,
        the largest median displacement seen from any keyframe, as a share of the long side).
    """
    chosen: list[dict] = []

    def add(i: int, reason: str, disp: float, share: float) -> None:
        chosen.append({"index": i, "reason": reason, "disparity_rel": round(float(disp), 4),
                       "tracked_share": round(float(share), 3)})

    tracks = _Tracks(n_features)
    prev_img, prev_info = None, (0, 0.0, 1.0)  # previous frame and its (index, disparity, share)
    long_side, max_disp, last_idx = 1.0, 0.0, -1
    with progress.bar("keyframes: tracking", total=total) as bar:
        for i, img in enumerate(grays):
            bar.advance()
            last_idx = i
            if prev_img is None:
                long_side = float(max(img.shape))
                add(i, "first", 0.0, 1.0)
                tracks.restart(img)
                prev_img, prev_info = img, (i, 0.0, 1.0)
                continue
            tracks.follow(prev_img, img)
            if tracks.lost(min_tracked_share) and prev_info[0] != chosen[-1]["index"]:
                # Track loss: the previous frame still overlapped the last keyframe; make it a keyframe and
                # restart tracking from it, so consecutive keyframes always share features.
                add(prev_info[0], "track_loss", prev_info[1], prev_info[2])
                tracks.restart(prev_img)
                tracks.follow(prev_img, img)
            disp, share = tracks.displacement() / long_side, tracks.share
            max_disp = max(max_disp, disp)
            # still lost: an abrupt change, nothing in common with the previous frame
            reason = "track_loss" if tracks.lost(min_tracked_share) else \
                ("disparity" if disp >= min_disparity else None)
            if reason is not None:
                add(i, reason, disp, share)
                tracks.restart(img)
                disp, share = 0.0, 1.0
            prev_img, prev_info = img, (i, disp, share)
    if last_idx > 0 and chosen[-1]["index"] != last_idx:
        add(last_idx, "last", prev_info[1], prev_info[2])
    return chosen, max_disp


def run(scene: Scene, config: Config) -> StageResult:
    """Select keyframes among the frames ``quality`` accepted; write ``frames/`` and ``keyframes.json``.

    Raises:
        StageFailed: ``quality`` has not completed, or a frame is unreadable / cannot be written (OS reason).
        RejectedInput: "insufficient camera motion" (the median track displacement never reaches
            ``static_max_disparity``: a static camera or a tripod shot) or fewer than 3 usable frames.
    """
    scene.require("quality")
    q = scene.quality()
    cand = [r for r in q["frames"] if r["verdict"] == "ok"]
    if len(cand) < 3:
        raise RejectedInput(f"too few usable keyframes: only {len(cand)} usable frame(s)")
    crop = q.get("letterbox") or {"top": 0, "bottom": 0, "left": 0, "right": 0}
    images = scene.video_info().get("kind") == "images"
    sel = choose_keyframes(scene, cand, crop, config, images)
    records, size = write_keyframe_images(scene, cand, sel.chosen, crop)
    reasons: dict[str, int] = {}
    for r in records:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    scene.write_keyframes({"keyframes": records, "min_disparity": sel.threshold, "capped": sel.capped,
                           "adapted": sel.adapted, "target": sel.target, "crop": crop, "width": size[0],
                           "height": size[1], "n_candidates": len(cand), "reasons": reasons})
    qc = {"n_keyframes": len(records), "n_candidates": len(cand), "min_disparity": round(sel.threshold, 4),
          "reasons": reasons, "capped": sel.capped, "adapted": sel.adapted, "target": sel.target,
          "max_disparity_rel": round(sel.max_disp, 4)}
    warnings = []
    if len(records) < config.min_keyframes:
        warnings.append(f"only {len(records)} keyframes (< min_keyframes={config.min_keyframes}): a short input "
                        "or little motion; SfM may register few")
    how = ("every usable image of the folder" if sel.adapted == "images" else
           "every usable frame (few frames)" if sel.adapted == "all" else
           f"threshold {100 * sel.threshold:.1f}% of the long side"
           + (f", lowered from {100 * config.min_disparity:.1f}%" if sel.adapted == "lowered" else ""))
    return StageResult(qc=qc, summary=f"{len(records)} keyframes from {len(cand)} usable frames ({how})",
                       warnings=warnings)


@dataclass
class Selection:
    """The outcome of :func:`choose_keyframes`: chosen candidates (``select_keyframes`` records), the threshold
    used, whether the cap raised it, how it adapted (``"none" | "lowered" | "all" | "images"``), the target
    count and the largest displacement seen (share of the long side)."""

    chosen: list[dict]
    threshold: float
    capped: bool
    adapted: str
    target: int
    max_disp: float


def keyframe_target(n_candidates: int, duration_s: float, config: Config) -> int:
    """Keyframes to aim for: ``target_keyframes_per_s`` × duration, at least ``min_keyframes``, at most the
    candidates and ``max_keyframes``."""
    want = max(config.min_keyframes, math.ceil(config.target_keyframes_per_s * max(duration_s, 0.0)))
    return int(min(want, n_candidates, config.max_keyframes))


def choose_keyframes(scene: Scene, cand: list[dict], crop: dict, config: Config, images: bool = False) -> Selection:
    """The adaptive selection described in the module docstring.

    Raises:
        RejectedInput: a static camera (largest displacement below ``static_max_disparity``).
    """
    duration = float(cand[-1]["timestamp_s"] - cand[0]["timestamp_s"])
    target = keyframe_target(len(cand), duration, config)
    thr = config.min_disparity
    chosen, thr, capped, max_disp = _select_capped(scene, cand, crop, config, thr)
    if max_disp < config.static_max_disparity and not any(c["reason"] == "track_loss" for c in chosen):
        raise RejectedInput(f"insufficient camera motion: features moved at most {100 * max_disp:.1f}% of the "
                            f"image over {duration:.1f} s (a moving camera needs "
                            f"{100 * config.static_max_disparity:.1f}%); a static camera gives no parallax for SfM")
    if images and config.image_folder == "all" and len(cand) <= config.max_keyframes:
        kept = {c["index"]: c for c in chosen}
        chosen = [dict(kept.get(i, {"index": i, "disparity_rel": None, "tracked_share": None}), reason="image")
                  for i in range(len(cand))]
        return Selection(chosen, thr, False, "images", len(cand), max_disp)
    adapted = "none"
    while len(chosen) < target and thr > config.min_disparity_floor and not capped:
        # the count falls roughly in proportion to the threshold: aim at the target, at most halve per step
        thr = max(config.min_disparity_floor, thr * max(0.5, min(0.85, len(chosen) / target)))
        chosen, thr, capped, max_disp = _select_capped(scene, cand, crop, config, thr)
        adapted = "lowered"
    if len(chosen) < target and len(cand) <= config.use_all_below:
        kept = {c["index"]: c for c in chosen}
        chosen = [kept.get(i, {"index": i, "reason": "all", "disparity_rel": None, "tracked_share": None})
                  for i in range(len(cand))]
        adapted = "all"
    return Selection(chosen, thr, capped, adapted, target, max_disp)


def _cropped(rgb: np.ndarray, crop: dict) -> np.ndarray:
    """``rgb`` without the letterbox bars ``crop`` (``{"top", "bottom", "left", "right"}`` px)."""
    h, w = rgb.shape[:2]
    return rgb[crop["top"]: h - crop["bottom"], crop["left"]: w - crop["right"]]


def _select_capped(scene: Scene, cand: list[dict], crop: dict, config: Config, thr: float
                   ) -> tuple[list[dict], float, bool, float]:
    """:func:`select_keyframes` over the candidates at threshold ``thr``, raising the threshold until at most
    ``max_keyframes`` result. Returns (chosen, threshold used, whether the cap raised it, largest
    displacement)."""

    # Grey thumbnails for tracking are small (≤ 480 px: ~170 KB each); stream them, never hold all frames.
    def grays():
        for r in cand:
            yield _gray_small(_cropped(scene.frame_image(r["source_frame"]), crop), config.track_long_side)[0]

    chosen, max_disp = select_keyframes(grays(), thr, config.n_features, config.min_tracked_share, len(cand))
    capped = False
    while len(chosen) > config.max_keyframes:
        thr *= 1.25 * len(chosen) / config.max_keyframes
        capped = True
        chosen, max_disp = select_keyframes(grays(), thr, config.n_features, config.min_tracked_share, len(cand))
    return chosen, thr, capped, max_disp


def write_keyframe_images(scene: Scene, cand: list[dict], chosen: list[dict], crop: dict
                          ) -> tuple[list[dict], tuple[int, int]]:
    """Write ``frames/NNNNNN.jpg`` for the chosen candidates (cropped and re-encoded at JPEG q95 when there
    are bars, else hard links to ``frames_all/``). Returns (``keyframes.json`` records, keyframe size
    ``(w, h)``)."""
    if scene.frames_dir.exists():
        shutil.rmtree(scene.frames_dir)
    scene.frames_dir.mkdir(parents=True)
    any_crop = any(crop.values())
    records = []
    size = None
    for c in chosen:
        r = cand[c["index"]]
        sf = r["source_frame"]
        if any_crop:
            rgb = _cropped(scene.frame_image(sf), crop)
            io.write_image_rgb_checked(scene.keyframe_path(sf), rgb, jpeg_quality=95)
            size = (rgb.shape[1], rgb.shape[0])
        else:
            _link(scene.frame_path(sf), scene.keyframe_path(sf))
        records.append({"source_frame": sf, "timestamp_s": r["timestamp_s"], "reason": c["reason"],
                        "disparity_rel": c["disparity_rel"], "tracked_share": c["tracked_share"]})
    if size is None:
        info = scene.video_info()
        size = (info["working_width"], info["working_height"])
    return records, size


def _link(src, dst) -> None:
    """Hard-link ``src`` to ``dst`` (copy where the file system cannot)."""
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)
