"""``quality`` stage: per-frame blur, exposure, frozen-frame checks and video-level letterbox/portrait.

For every frame that ``ingest`` kept, ``quality.json`` records::

    {"source_frame", "timestamp_s", "blur_var", "mean_luma", "bright_share", "diff_prev",
     "verdict": "ok" | "reject", "reason": null | "outside_shot" | "dark" | "overexposed" | "frozen" | "blurry"}

* ``blur_var`` — variance of the Laplacian of the grey image (Pech-Pacheco et al. 2000), the sharpness score
  SceneVerse++ filters video frames with. A frame is ``blurry`` when it is below ``blur_min_var`` or below
  ``blur_rel`` × the median of its neighbours (±``blur_window`` frames), so the test adapts to the content.
* ``mean_luma`` (0..255) and ``bright_share`` (share of pixels ≥ 250): ``dark`` / ``overexposed``.
* ``diff_prev`` — mean absolute grey difference (0..255) to the previous kept frame at 64 px width:
  below ``frozen_max_diff`` the frame is a duplicate (``frozen``).
* ``letterbox`` — black bars present in most frames, ``{"top", "bottom", "left", "right"}`` in working px;
  ``keyframes`` crops them away. ``portrait`` — the picture (after cropping bars) is taller than wide.

Frames outside the shot(s) chosen by ``shots`` are ``outside_shot``.

The indoor filter (:mod:`vid2scene.quality.indoor`) gives up to ``indoor.max_frames`` frames of the chosen shot(s)
a ``scene_type`` (``indoor`` / ``outdoor`` / ``not_walkthrough``) with ``scene_reasons``; ``quality.json``'s
``indoor`` section holds the counts and the decision. An outdoor or not-a-walkthrough input is rejected
(:class:`~vid2scene.errors.RejectedInput`) with the reason, after ``quality.json`` is written.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .. import progress
from ..errors import RejectedInput
from ..scene import Scene
from ..stage import StageResult
from . import indoor as indoor_filter

NAME = "quality"
OUTPUTS = ["quality.json"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blur_min_var: float = Field(10.0, ge=0, description="absolute floor on variance of Laplacian")
    blur_rel: float = Field(0.45, ge=0, le=1, description="blurry if below this share of the local median")
    blur_window: int = Field(15, ge=1, description="half-width (frames) of the local median window")
    dark_max_mean: float = Field(30.0, description="mean luma below this is 'dark'")
    bright_min_mean: float = Field(235.0, description="mean luma above this is 'overexposed'")
    bright_max_share: float = Field(0.6, description="share of saturated pixels above this is 'overexposed'")
    frozen_max_diff: float = Field(0.6, ge=0, description="mean abs grey diff to previous frame below this = frozen")
    letterbox_max_luma: float = Field(18.0, description="rows/cols darker than this at the border are bars")
    indoor: indoor_filter.Config = Field(default_factory=indoor_filter.Config, description="the indoor filter "
                                  "(vid2scene.quality.indoor): reject outdoor / not-a-walkthrough inputs")
    min_usable_frames: int = Field(10, ge=1, description="fewer passing frames reject the input; with a short "
                                   "input the need is min(this, half the frames in the shot, at least 3)")


def frame_stats(rgb: np.ndarray, bar_luma: float = 18.0) -> tuple[dict, np.ndarray, tuple[int, int, int, int]]:
    """Sharpness and exposure of one ``H×W×3`` uint8 RGB frame.

    Returns (stats dict with ``blur_var``, ``mean_luma``, ``bright_share``; a 64-px-wide float32 grey
    thumbnail for frame differencing; the content box ``(top, bottom, left, right)`` bar widths in px).
    """
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    blur_var = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    mean = float(grey.mean())
    bright = float((grey >= 250).mean())
    h, w = grey.shape
    thumb = cv2.resize(grey, (64, max(1, round(64 * h / w))), interpolation=cv2.INTER_AREA).astype(np.float32)
    rows, cols = grey.mean(axis=1), grey.mean(axis=0)
    box = (_bar(rows, bar_luma), _bar(rows[::-1], bar_luma), _bar(cols, bar_luma), _bar(cols[::-1], bar_luma))
    return {"blur_var": round(blur_var, 2), "mean_luma": round(mean, 2), "bright_share": round(bright, 4)}, thumb, box


def _bar(profile: np.ndarray, thr: float) -> int:
    """Number of leading entries of a row/column mean-luma profile darker than ``thr``."""
    above = np.nonzero(profile > thr)[0]
    return int(above[0]) if len(above) else len(profile)


def _chosen_ranges(scene: Scene) -> list[tuple[int, int]]:
    """Inclusive source-frame ranges of the shots ``shots`` chose."""
    shots = scene.shots()
    by_id = {s["shot"]: s for s in shots["shots"]}
    return [(by_id[k]["start_frame"], by_id[k]["end_frame"]) for k in shots["chosen"]]


def run(scene: Scene, config: Config) -> StageResult:
    """Score every kept frame and write ``quality.json``.

    Raises:
        StageFailed: ``ingest`` or ``shots`` has not completed, or a frame is unreadable.
        RejectedInput: fewer than ``min_usable_frames`` frames pass (reason names the dominant cause);
            ``quality.json`` is still written.
    """
    scene.require("ingest")
    scene.require("shots")
    ranges = _chosen_ranges(scene)
    rows, boxes = score_frames(scene, config.letterbox_max_luma)
    in_shot = np.array([any(a <= r["source_frame"] <= b for a, b in ranges) for r in rows])
    info = scene.video_info()
    give_verdicts(rows, in_shot, config, relative_blur=info.get("kind") != "images")
    letterbox = measure_letterbox(boxes, in_shot, info["working_width"], info["working_height"])
    counts = count_reasons(rows)
    usable = np.array([r["verdict"] == "ok" for r in rows]) & in_shot
    scene_type = classify_scene(scene, rows, usable if usable.any() else in_shot, letterbox["letterbox"],
                                config.indoor) if config.indoor.enabled else None
    out = {"frames": rows, **letterbox, "counts": counts, "indoor": scene_type,
           "thresholds": config.model_dump(mode="json")}
    scene.write_quality(out)
    _check_usable(counts, int(in_shot.sum()), config)
    if scene_type is not None:
        _check_indoor(scene_type)
    return _result(out, rows, in_shot)


def classify_scene(scene: Scene, rows: list[dict], mask: np.ndarray, crop: dict,
                   config: indoor_filter.Config) -> dict:
    """The indoor filter over up to ``config.max_frames`` frames evenly spaced among those of ``mask`` (the
    usable frames of the chosen shot(s)), letterbox bars ``crop`` (``{"top", "bottom", "left", "right"}`` px)
    cut away; sets ``scene_type`` (and ``scene_reasons``) on their rows. Returns ``quality.json``'s ``indoor`` section:
    ``{"backend", "n_frames", "counts", "decision": None | "outdoor" | "not_walkthrough", "reasons"}``.

    Raises:
        BackendNotInstalled: the configured backend cannot run.
    """
    idx = np.nonzero(mask)[0] if mask.any() else np.arange(len(rows))
    idx = idx[np.unique(np.linspace(0, len(idx) - 1, min(len(idx), config.max_frames)).round().astype(int))]
    backend = indoor_filter.make_backend(config)

    def content(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        return rgb[crop["top"]: h - crop["bottom"], crop["left"]: w - crop["right"]]

    verdicts = backend.classify([content(scene.frame_image(rows[i]["source_frame"])) for i in idx])
    for i, v in zip(idx, verdicts):
        rows[i]["scene_type"], rows[i]["scene_reasons"] = v["verdict"], v["reasons"]
    decision, counts = indoor_filter.decide(verdicts, config)
    reasons: dict[str, int] = {}
    for v in verdicts:
        if decision is not None and v["verdict"] == decision:
            for r in v["reasons"]:
                key = r.split(" (")[0]
                reasons[key] = reasons.get(key, 0) + 1
    return {"backend": config.backend, "n_frames": len(verdicts), "counts": counts, "decision": decision,
            "reasons": reasons}


def _check_indoor(doc: dict) -> None:
    """Raise RejectedInput when the indoor filter decided the input is outdoor or not a walkthrough."""
    if doc["decision"] is None:
        return
    c, n = doc["counts"], doc["n_frames"]
    why = ", ".join(f"{k} in {v}" for k, v in sorted(doc["reasons"].items(), key=lambda kv: -kv[1])[:3])
    if doc["decision"] == "outdoor":
        raise RejectedInput(f"outdoor: {c['outdoor']} of {c['outdoor'] + c['indoor']} frames that show a place look "
                            f"outdoor ({why}); vid2scene lifts indoor walkthroughs")
    raise RejectedInput(f"not a walkthrough: {c['not_walkthrough']} of {n} frames show no place ({why})")


def score_frames(scene: Scene, bar_luma: float) -> tuple[list[dict], list[tuple[int, int, int, int]]]:
    """Per kept frame: its ``quality.json`` row (without the verdict) and its bar widths (see
    :func:`frame_stats`)."""
    rows: list[dict] = []
    boxes = []
    prev = None
    for fr in progress.track(scene.frame_index(), "quality"):
        st, thumb, box = frame_stats(scene.frame_image(fr.source_frame), bar_luma)
        diff = float(np.abs(thumb - prev).mean()) if prev is not None and prev.shape == thumb.shape else None
        prev = thumb
        boxes.append(box)
        rows.append({"source_frame": fr.source_frame, "timestamp_s": fr.timestamp_s, **st,
                     "diff_prev": None if diff is None else round(diff, 3)})
    return rows, boxes


def give_verdicts(rows: list[dict], in_shot: np.ndarray, config: Config, relative_blur: bool = True) -> None:
    """Set ``verdict`` and ``reason`` of every row in place (first failing check wins: outside_shot, dark,
    overexposed, frozen, blurry). ``relative_blur=False`` (photos: neighbours are unrelated views) keeps only
    the absolute ``blur_min_var`` floor."""
    blur = np.array([r["blur_var"] for r in rows])
    local_med = _local_median(blur, in_shot, config.blur_window) if relative_blur else np.zeros(len(rows))
    for i, r in enumerate(rows):
        reason = None
        if not in_shot[i]:
            reason = "outside_shot"
        elif r["mean_luma"] < config.dark_max_mean:
            reason = "dark"
        elif r["mean_luma"] > config.bright_min_mean or r["bright_share"] > config.bright_max_share:
            reason = "overexposed"
        elif r["diff_prev"] is not None and r["diff_prev"] < config.frozen_max_diff:
            reason = "frozen"
        elif r["blur_var"] < max(config.blur_min_var, config.blur_rel * local_med[i]):
            reason = "blurry"
        r["verdict"] = "ok" if reason is None else "reject"
        r["reason"] = reason


def measure_letterbox(boxes: list, in_shot: np.ndarray, width: int, height: int) -> dict:
    """``{"letterbox", "has_letterbox", "portrait", "content_size"}`` from per-frame bar widths: the median
    over the chosen shot (all frames if none is in it); bars thinner than 2% of the side (vignetting, dark
    content edges) or covering 45% or more are ignored."""
    b = np.array(boxes)[in_shot] if in_shot.any() else np.array(boxes)
    letterbox = {k: int(v) for k, v in zip(("top", "bottom", "left", "right"), np.median(b, axis=0))}
    for k, side in (("top", height), ("bottom", height), ("left", width), ("right", width)):
        if letterbox[k] < 0.02 * side or letterbox[k] >= 0.45 * side:
            letterbox[k] = 0
    content_w = width - letterbox["left"] - letterbox["right"]
    content_h = height - letterbox["top"] - letterbox["bottom"]
    return {"letterbox": letterbox, "has_letterbox": any(letterbox.values()),
            "portrait": bool(content_h > content_w), "content_size": [content_w, content_h]}


def count_reasons(rows: list[dict]) -> dict[str, int]:
    """``{reason or "ok": number of frames}`` in order of first occurrence."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["reason"] or "ok"] = counts.get(r["reason"] or "ok", 0) + 1
    return counts


def _check_usable(counts: dict[str, int], n_in: int, config: Config) -> None:
    """Raise RejectedInput when fewer than ``min_usable_frames`` frames pass, naming the dominant cause."""
    n_ok = counts.get("ok", 0)
    if n_ok >= usable_frames_needed(n_in, config.min_usable_frames):
        return
    bad = {k: v for k, v in counts.items() if k not in ("ok", "outside_shot")}
    cause = max(bad, key=bad.get) if bad else "none in the chosen shot"
    if cause == "frozen":
        raise RejectedInput(f"insufficient camera motion: {bad['frozen']} of {n_in} frames in the chosen shot "
                            "are unchanged from the previous frame (static camera or frozen video)")
    raise RejectedInput(f"too few usable frames: {n_ok} of {n_in} in the chosen shot pass "
                        f"(need {usable_frames_needed(n_in, config.min_usable_frames)}; most rejected as "
                        f"'{cause}')")


def usable_frames_needed(n_in_shot: int, min_usable_frames: int) -> int:
    """Passing frames a shot of ``n_in_shot`` frames needs: ``min_usable_frames``, lowered for short inputs to
    half the shot (at least 3), so a 13-photo folder or a 3-second clip is judged on its own frames."""
    return int(min(min_usable_frames, max(3, math.ceil(0.5 * n_in_shot))))


def _result(out: dict, rows: list[dict], in_shot: np.ndarray) -> StageResult:
    counts = out["counts"]
    n_ok, n_in = counts.get("ok", 0), int(in_shot.sum())
    blur = np.array([r["blur_var"] for r in rows])
    qc = {"n_frames": len(rows), "n_in_shot": n_in, "n_ok": n_ok, "ok_share": round(n_ok / max(n_in, 1), 3),
          "rejected": {k: v for k, v in counts.items() if k != "ok"}, "letterbox": out["has_letterbox"],
          "portrait": out["portrait"], "median_blur_var": round(float(np.median(blur)), 1)}
    rej = ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("ok",)) or "none rejected"
    return StageResult(qc=qc, summary=f"{n_ok}/{n_in} frames usable ({rej})")


def _local_median(values: np.ndarray, mask: np.ndarray, half: int) -> np.ndarray:
    """Median of ``values`` over ±``half`` neighbours restricted to ``mask`` (vectorised via padding)."""
    from numpy.lib.stride_tricks import sliding_window_view

    v = np.where(mask, values, np.nan).astype(np.float64)
    padded = np.pad(v, half, constant_values=np.nan)
    win = sliding_window_view(padded, 2 * half + 1)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(win, axis=1)
    return np.where(np.isnan(med), 0.0, med)
