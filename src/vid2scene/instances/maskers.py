"""Per-view 2D object masks from detection boxes, for the ``instances`` stage's ``masks`` method.

Backends (``instances.masker``): ``none`` (default: the box's depth-consistent foreground alone,
:func:`vid2scene.instances.lifting.box_mask`) and ``sam`` — box-prompted Segment Anything (Kirillov et al.,
ICCV 2023) through Hugging Face ``transformers``, from a Hugging Face id (default ``facebook/sam-vit-base``)
or a local folder, local files only under ``HF_HUB_OFFLINE``, on CUDA when available. A SAM mask narrows the
box to the object's pixels before the depth layer is chosen.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from .. import stage
from ..stage import load_pretrained, pretrained_installed, pretrained_usable
from ..errors import BackendNotInstalled

DEFAULT_SAM = "facebook/sam-vit-base"


class NoMasker:
    """No 2D masks: the box's depth-consistent foreground is the mask."""

    name = "none"

    class Options(stage.Options):
        """No options."""

    def __init__(self, options=None):
        self.options = options or self.Options()

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        return True, "installed"

    def masks(self, rgb: np.ndarray, boxes: list) -> list[np.ndarray | None]:
        """``[None] * len(boxes)``: no pixel masks."""
        return [None] * len(boxes)


class SamMasker:
    """Box-prompted SAM masks (one mask per box, the single-mask output)."""

    name = "sam"
    HINT = ("not installed: pip install 'vid2scene[sam]' (transformers, torch); weights: huggingface-cli "
            f"download {DEFAULT_SAM} (or instances.sam.model: a local folder)")

    class Options(stage.Options):
        model: str = Field(DEFAULT_SAM, description="Hugging Face id or local folder of a SAM checkpoint")
        device: str = Field("auto", description="auto (CUDA when available), cpu or cuda[:n]")
        batch: int = Field(32, ge=1, description="boxes per forward pass")

    def __init__(self, options: "SamMasker.Options | None" = None):
        """Load processor and model.

        Raises:
            BackendNotInstalled: transformers / torch are missing or the weights are not available.
        """
        self.options = options or self.Options()
        ok, hint = self.is_usable(self.options)
        if not ok:
            raise BackendNotInstalled(f"instances masker 'sam' {hint}")
        import torch
        from transformers import SamModel, SamProcessor

        self.processor, self.model, self.device = load_pretrained(
            SamProcessor, SamModel, self.options.model, self.options.device, "instances masker 'sam'",
            self.HINT.split("; ", 1)[1])
        self._torch = torch

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        """Packages importable and the default weights in the local cache (for ``vid2scene stages``)."""
        return pretrained_installed(DEFAULT_SAM, "instances.sam.model", cls.HINT)

    @classmethod
    def is_usable(cls, options: "SamMasker.Options") -> tuple[bool, str]:
        """The packages are importable and ``options.model`` can be loaded
        (:func:`vid2scene.stage.weights_available`)."""
        return pretrained_usable(options.model, cls.HINT)

    def masks(self, rgb: np.ndarray, boxes: list) -> list[np.ndarray | None]:
        """One ``H×W`` bool mask per box ``[x0, y0, x1, y1]`` (pixels of ``rgb``, ``H×W×3`` uint8)."""
        if not len(boxes):
            return []
        torch = self._torch
        out: list[np.ndarray | None] = []
        for k in range(0, len(boxes), self.options.batch):
            chunk = [[float(v) for v in b] for b in boxes[k:k + self.options.batch]]
            inp = self.processor(images=rgb, input_boxes=[chunk], return_tensors="pt")
            inp = {n: v.to(self.device) for n, v in inp.items()}
            with torch.no_grad():
                o = self.model(**inp, multimask_output=False)
            m = self.processor.image_processor.post_process_masks(o.pred_masks.cpu(), inp["original_sizes"].cpu(),
                                                                  inp["reshaped_input_sizes"].cpu())[0]
            out += [np.asarray(x[0].numpy(), bool) for x in m]
        return out


#: Mask backends of the ``masks`` method (``instances.masker``).
MASKERS: dict[str, type] = {"none": NoMasker, "sam": SamMasker}
