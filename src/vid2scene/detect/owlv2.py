"""Open-vocabulary detect backend: OWLv2 (Minderer et al., "Scaling Open-Vocabulary Object Detection", NeurIPS
2023) through Hugging Face ``transformers``, with a configurable text vocabulary.

The weights come from a Hugging Face model id (default ``google/owlv2-base-patch16-ensemble``) or a local
folder (``save_pretrained`` layout: ``config.json``, weights, processor files). ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``) loads from the local cache only. Runs on CUDA when available (``device: auto``).

Label space: a vocabulary term that names a COCO class (directly or through :data:`COCO_SYNONYMS`, e.g.
"sofa" → couch, "monitor" → tv) is reported with that class's 91-id COCO id, so the ``detect`` stage's COCO
filtering keeps it; any other term gets id ``EXTRA_ID_BASE + its index`` and its name in
:attr:`OWLv2Backend.label_names`.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .. import stage
from ..stage import load_pretrained, pretrained_installed, pretrained_usable
from ..errors import BackendNotInstalled
from .coco import COCO_ID

#: A ScanNet-200-style indoor vocabulary (frequent ScanNet200 categories; Rozenberszki et al., ECCV 2022).
INDOOR_VOCABULARY: tuple[str, ...] = (
    "chair", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair", "bed", "pillow", "sink",
    "picture", "window", "toilet", "bookshelf", "monitor", "curtain", "book", "armchair", "coffee table", "box",
    "refrigerator", "lamp", "kitchen cabinet", "towel", "clothes", "tv", "nightstand", "counter", "dresser",
    "stool", "cushion", "plant", "trash can", "bathtub", "backpack", "whiteboard", "keyboard", "bag", "bottle",
    "microwave", "laptop", "cup", "oven", "printer", "mirror", "radiator", "telephone", "clock", "vase", "bowl",
    "suitcase", "sofa chair", "computer tower", "mouse", "dining table", "potted plant", "fan", "bench",
    "washing machine")

#: Vocabulary terms that name a COCO class under another name.
COCO_SYNONYMS: dict[str, str] = {
    "table": "dining table", "desk": "dining table", "coffee table": "dining table", "office chair": "chair",
    "armchair": "chair", "sofa chair": "chair", "sofa": "couch", "monitor": "tv", "television": "tv",
    "plant": "potted plant", "bag": "handbag", "telephone": "cell phone"}

#: Ids of vocabulary terms without a COCO class start here (91-id COCO ends at 90).
EXTRA_ID_BASE = 1000

DEFAULT_MODEL = "google/owlv2-base-patch16-ensemble"


def label_id(term: str, index: int) -> int:
    """The id reported for vocabulary ``term`` at ``index`` (COCO id, or ``EXTRA_ID_BASE + index``)."""
    name = COCO_SYNONYMS.get(term, term)
    return COCO_ID.get(name, EXTRA_ID_BASE + index)


class OWLv2Backend:
    """Open-vocabulary 2D detection with OWLv2 (text queries = the vocabulary)."""

    name = "owlv2"
    HINT = ("not installed: pip install 'vid2scene[owlv2]' (transformers, torch); weights: "
            f"huggingface-cli download {DEFAULT_MODEL} (or detect.owlv2.model: a local folder)")

    class Options(stage.Options):
        model: str = Field(DEFAULT_MODEL, description="Hugging Face id or local folder of an OWLv2 checkpoint")
        vocabulary: list[str] = Field(default_factory=lambda: list(INDOOR_VOCABULARY),
                                      description="text queries (default: a ScanNet-200-style indoor list)")
        min_score: float = Field(0.05, ge=0, le=1, description="raw score floor before the stage's threshold")
        device: str = Field("auto", description="auto (CUDA when available), cpu or cuda[:n]")
        prompt: str = Field("a photo of a {}", description="template of each text query")

    def __init__(self, options: "OWLv2Backend.Options | None" = None):
        """Load processor and model (local files only under ``HF_HUB_OFFLINE``).

        Raises:
            BackendNotInstalled: transformers / torch are missing, or the weights are not available.
        """
        self.options = options or self.Options()
        ok, hint = self.is_usable(self.options)
        if not ok:
            raise BackendNotInstalled(f"detect backend 'owlv2' {hint}")
        import torch
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        self.processor, self.model, self.device = load_pretrained(
            Owlv2Processor, Owlv2ForObjectDetection, self.options.model, self.options.device,
            "detect backend 'owlv2'", self.HINT.split("; ", 1)[1])
        self.vocabulary = list(self.options.vocabulary)
        self.ids = np.array([label_id(t, k) for k, t in enumerate(self.vocabulary)], np.int64)
        self.label_names = {int(i): t for i, t in zip(self.ids, self.vocabulary) if i >= EXTRA_ID_BASE}
        self.max_text_len = int(self.model.config.text_config.max_position_embeddings)  # OWL-ViT pads to 16
        self._torch = torch

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        """For ``vid2scene stages``: the packages are importable and the default weights are local (in the
        Hugging Face cache); the hint says how to get what is missing."""
        return pretrained_installed(DEFAULT_MODEL, "detect.owlv2.model", cls.HINT)

    @classmethod
    def is_usable(cls, options: "OWLv2Backend.Options") -> tuple[bool, str]:
        """The packages are importable and ``options.model`` can be loaded
        (:func:`vid2scene.stage.weights_available`)."""
        return pretrained_usable(options.model, cls.HINT)

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """``N×6`` ``[label_id, score, x0, y0, x1, y1]`` rows (pixels of ``rgb``), best first.

        OWLv2 pads the image to a square at the bottom / right, so boxes are scaled by the long side.

        Raises:
            ValueError: ``rgb`` is not ``H×W×3`` uint8.
        """
        img = np.asarray(rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an H×W×3 uint8 RGB image, got {img.shape} {img.dtype}")
        torch = self._torch
        h, w = img.shape[:2]
        side = max(h, w)
        queries = [[self.options.prompt.format(t) for t in self.vocabulary]]
        inputs = self.processor(text=queries, images=img, return_tensors="pt", padding="max_length",
                                truncation=True, max_length=self.max_text_len)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model(**inputs)
        res = self.processor.post_process_grounded_object_detection(
            out, threshold=self.options.min_score, target_sizes=torch.tensor([[side, side]]))[0]
        boxes = res["boxes"].detach().cpu().numpy().astype(np.float64).reshape(-1, 4)
        scores = res["scores"].detach().cpu().numpy().astype(np.float64).ravel()
        labels = res["labels"].detach().cpu().numpy().astype(np.int64).ravel()
        boxes = np.clip(boxes, 0, [w, h, w, h])
        rows = np.column_stack([self.ids[labels], scores, boxes]).reshape(-1, 6)
        rows = rows[np.argsort(-rows[:, 1], kind="stable")]
        return rows[(rows[:, 4] > rows[:, 2]) & (rows[:, 5] > rows[:, 3])]
