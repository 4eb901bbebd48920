"""``shots`` stage: split the kept frames into shots and choose the one(s) to lift into a scene.

Reads the frames ``ingest`` kept (``frames_all/``; never the video again) and writes ``shots.json``::

    {"detector": "transnetv2", "threshold": 0.5,
     "shots": [{"shot": 0, "start_frame": 0, "end_frame": 26, "start_s": 0.0, "end_s": 0.9009, "n_frames": 9,
                "duration_s": 0.9009, "usable": false, "reason": "too short (0.9 s < 2 s)"},
               {"shot": 1, "start_frame": 30, "end_frame": 176, "start_s": 1.001, "end_s": 5.9059,
                "n_frames": 49, "duration_s": 4.9049, "usable": true, "reason": null}, ...],
     "emit": "longest", "min_shot_s": 2.0, "chosen": [1]}

``start_frame`` / ``end_frame`` are *source* frame indices, inclusive. A shot owns the source frames from its
first kept frame up to the frame before the next kept frame (ingest keeps ≤ ``max_fps`` frames/s, so kept
frames are usually several source frames apart); ``start_s`` is its first kept frame's timestamp and
``end_s`` the timestamp where the frames it owns end. ``n_frames`` counts kept frames. Frames a detector
flags as a transition (fades, dissolves) belong to no shot.

Backends (the registry :data:`BACKENDS`, names as users type them; built by
:func:`vid2scene.stage.make_backend`, each from its own options section,
``shots: {backend: adaptive, adaptive: {adaptive_threshold: 3.0, min_scene_len: 5}}``):

* ``transnetv2`` (default) — TransNetV2 (Souček & Lokoč 2020), the shot detector of SceneVerse++;
* ``adaptive`` — PySceneDetect's AdaptiveDetector, as LAM3C uses.

Shots shorter than ``min_shot_s`` are unusable. An image folder (``video.json`` ``kind: "images"``) is one
shot by definition: no detection, no minimum duration. ``emit="longest"`` chooses the longest usable shot,
``emit="all"`` every usable shot (the pipeline forks one scene per chosen shot). No usable shot raises
:class:`~vid2scene.errors.RejectedInput`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import stage
from ..errors import RejectedInput, StageFailed
from ..scene import FrameRecord, Scene
from ..stage import StageResult, known_backend
from .adaptive import AdaptiveBackend
from .base import ShotBackend, cuts_to_spans, spans_to_cuts, transitions_to_spans
from .transnetv2 import TransNetV2Backend

NAME = "shots"
OUTPUTS = ["shots.json"]

BACKENDS: dict[str, type] = {
    "transnetv2": TransNetV2Backend,
    "adaptive": AdaptiveBackend,
}

__all__ = ["NAME", "OUTPUTS", "BACKENDS", "Config", "run", "backend_status", "make_backend",
           "build_shots", "choose", "ShotBackend", "cuts_to_spans", "spans_to_cuts", "transitions_to_spans"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str = Field("transnetv2", description=f"shot detector: one of {', '.join(BACKENDS)}")
    transnetv2: TransNetV2Backend.Options = Field(default_factory=TransNetV2Backend.Options)
    adaptive: AdaptiveBackend.Options = Field(default_factory=AdaptiveBackend.Options)
    min_shot_s: float = Field(2.0, ge=0, description="shots shorter than this (seconds) are unusable")
    emit: Literal["longest", "all"] = Field("longest", description="choose the longest usable shot, or all")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        return known_backend(v, BACKENDS, "shot")


def backend_status() -> dict[str, str]:
    """``{name: "installed" | "not installed: <how to install>"}`` for every registered backend."""
    return stage.backend_status(BACKENDS)


def make_backend(config: Config) -> ShotBackend:
    """An instance of the configured backend, built from its options section.

    Raises:
        InputError: no backend has that name.
        BackendNotInstalled: its dependency or weights are missing (the reason says how to install it).
    """
    return stage.make_backend(NAME, BACKENDS, config)


def _kept_fps(frames: list[FrameRecord], video_fps: float) -> float:
    ts = np.asarray([f.timestamp_s for f in frames], dtype=np.float64)
    dt = np.diff(ts)
    dt = dt[np.isfinite(dt) & (dt > 0)]
    if len(dt):
        return float(1.0 / np.median(dt))
    return float(video_fps) if video_fps and video_fps > 0 else 10.0


def build_shots(spans: np.ndarray, frames: list[FrameRecord], video: dict, min_shot_s: float) -> list[dict]:
    """Shot records (``shots.json`` entries) from kept-frame spans.

    Args:
        spans: ``n_shots×2`` int inclusive kept-frame spans.
        frames: the kept frames (``Scene.frame_index()``).
        video: ``video.json`` (``fps``, ``n_frames``).
        min_shot_s: shots with ``duration_s`` below this are marked unusable, with the reason.

    Returns:
        list of dicts with ``shot, start_frame, end_frame`` (source frames, inclusive), ``start_s, end_s,
        duration_s`` (seconds), ``n_frames`` (kept frames), ``usable``, ``reason``.
    """
    sf = np.asarray([f.source_frame for f in frames], dtype=np.int64)
    ts = np.asarray([f.timestamp_s for f in frames], dtype=np.float64)
    fps = float(video.get("fps") or 0.0)
    # The last kept frame owns the source frames after it, up to one stride (the largest gap between kept
    # frames), and never past the end of the video.
    stride = int(np.diff(sf).max()) if len(sf) > 1 else 1
    n_src = int(video.get("n_frames") or (sf[-1] + 1))
    last_end = int(max(sf[-1], min(n_src - 1, sf[-1] + stride - 1)))
    if fps <= 0:
        fps = _kept_fps(frames, 0.0) * (int(np.median(np.diff(sf))) if len(sf) > 1 else 1)
    out = []
    for k, (a, b) in enumerate(np.asarray(spans, dtype=np.int64).reshape(-1, 2)):
        a, b = int(a), int(b)
        if b + 1 < len(frames):
            end_frame, end_s = int(sf[b + 1] - 1), float(ts[b + 1])
        else:
            end_frame = last_end
            end_s = float(ts[b] + (last_end - sf[b] + 1) / fps)
        start_s = float(ts[a])
        dur = end_s - start_s
        usable = dur >= min_shot_s
        out.append({"shot": k, "start_frame": int(sf[a]), "end_frame": end_frame,
                    "start_s": round(start_s, 4), "end_s": round(end_s, 4), "n_frames": b - a + 1,
                    "duration_s": round(dur, 4), "usable": bool(usable),
                    "reason": None if usable else f"too short ({dur:.1f} s < {min_shot_s:g} s)"})
    return out


def choose(shots: list[dict], emit: str) -> list[int]:
    """Indices of the chosen shots: the longest usable one (first on ties) or every usable one."""
    usable = [s for s in shots if s["usable"]]
    if not usable:
        return []
    if emit == "all":
        return [s["shot"] for s in usable]
    return [max(usable, key=lambda s: (s["duration_s"], -s["shot"]))["shot"]]


def run(scene: Scene, config: Config) -> StageResult:
    """Detect shots in the kept frames, write ``shots.json``, and choose the shot(s) to use.

    Raises:
        InputError: unknown backend.
        BackendNotInstalled: the configured backend's package or weights are missing.
        StageFailed: ``ingest`` has not produced its frame index (or kept no frames).
        RejectedInput: no shot lasts ``min_shot_s`` (``shots.json`` is still written, with ``chosen: []``).
    """
    frames, video = _ingested(scene)
    if video.get("kind") == "images":
        return _image_folder_shot(scene, frames, video, config)
    backend = make_backend(config)
    fps = _kept_fps(frames, float(video.get("fps") or 0.0))
    spans = backend.detect((scene.frame_image(f.source_frame) for f in frames), len(frames), fps)
    shots = build_shots(spans, frames, video, config.min_shot_s)
    chosen = choose(shots, config.emit)
    scene.write_shots({"detector": config.backend, "threshold": backend.threshold, "shots": shots,
                       "emit": config.emit, "min_shot_s": config.min_shot_s, "chosen": chosen})
    if not chosen:
        longest = max((s["duration_s"] for s in shots), default=0.0)
        raise RejectedInput(f"no usable shot: the longest is {longest:.1f} s, below "
                            f"min_shot_s={config.min_shot_s:g}")
    return StageResult(qc=_qc(shots, chosen), summary=_summary(shots, chosen, config),
                       warnings=backend.warnings(fps))


def _image_folder_shot(scene: Scene, frames: list[FrameRecord], video: dict, config: Config) -> StageResult:
    """An image folder is one shot by definition (photos have no cuts and no duration): every kept image, no
    detector, no minimum duration; ``shots.json`` says ``detector: "none (image folder)"``."""
    shot = build_shots(np.array([[0, len(frames) - 1]]), frames, video, 0.0)[0]
    shot.update(usable=True, reason=None)
    scene.write_shots({"detector": "none (image folder)", "threshold": None, "shots": [shot], "emit": config.emit,
                       "min_shot_s": None, "chosen": [0]})
    return StageResult(qc=_qc([shot], [0]), summary=f"image folder: one shot of {len(frames)} images")


def _ingested(scene: Scene) -> tuple[list[FrameRecord], dict]:
    """The kept frames and ``video.json``. Raises StageFailed when ``ingest`` has not produced them."""
    try:
        frames, video = scene.frame_index(), scene.video_info()
    except StageFailed as e:
        raise StageFailed(NAME, f"no ingested frames in {scene.root} (missing frames_all/index.json or "
                                "video.json); run ingest first") from e
    if not frames:
        raise StageFailed(NAME, "ingest kept no frames")
    return frames, video


def _qc(shots: list[dict], chosen: list[int]) -> dict:
    chosen_s = float(sum(shots[k]["duration_s"] for k in chosen))
    return {"n_shots": len(shots), "n_usable": sum(s["usable"] for s in shots), "chosen": chosen,
            "chosen_duration_s": round(chosen_s, 3)}


def _summary(shots: list[dict], chosen: list[int], config: Config) -> str:
    n_usable = sum(s["usable"] for s in shots)
    if config.emit == "longest":
        c = shots[chosen[0]]
        what = (f"chose shot {c['shot']} ({c['duration_s']:.1f} s, source frames "
                f"{c['start_frame']}-{c['end_frame']})")
    else:
        what = f"chose all {len(chosen)} usable ({sum(shots[k]['duration_s'] for k in chosen):.1f} s)"
    return f"{len(shots)} shots ({n_usable} usable) by {config.backend}; {what}"
