"""Indoor filter of the ``quality`` stage: a per-frame ``indoor`` / ``outdoor`` / ``not_walkthrough`` verdict with
the reasons, and the video-level decision (LAM3C, Sec. 3.1: walkthrough videos are first filtered to indoor
scenes).

Backends (``quality: {indoor: {backend: heuristic | clip}}``):

* ``heuristic`` (default, no weights) — measurable cues of one ``H×W×3`` uint8 RGB frame:

  - ``sky_share``: share of the top third of the frame that is sky-like — smooth (low gradient), bright and
    blue or bright and colourless (overcast), and connected to the top edge;
  - ``vegetation_share``: share of the frame that is saturated green/yellow-green texture (foliage, grass);
  - ``line_share``: share of the image diagonal × 10 covered by long straight segments (OpenCV's line segment
    detector) that are near-vertical or near-horizontal — the Manhattan structure of rooms and furniture;
  - ``edge_density``: share of pixels on Canny edges; a near-uniform frame (title card, black, a hand over the
    lens) has almost none: ``not_walkthrough``.

  - ``straightness``: length of those segments per edge pixel (foliage and rock have many edges, few lines);
  - ``dark_share``: share of near-black pixels (a black frame with a caption is no walkthrough).

  ``outdoor`` when the straight-structure evidence does not beat the sky/vegetation evidence by a margin;
  ``indoor`` otherwise (:meth:`HeuristicBackend.classify_one`).
* ``clip`` — zero-shot CLIP (Radford et al. 2021) with prompts for the three classes, loaded with
  ``transformers`` from a local folder or a Hugging Face id (``HF_HUB_OFFLINE=1`` honoured: nothing is fetched).

The video is rejected as not a walkthrough when more than ``max_not_walkthrough_share`` of the classified
frames (evenly spaced over the chosen shots) are ``not_walkthrough``, and as outdoor when more than
``max_outdoor_share`` of those that show a place are ``outdoor`` (:func:`decide`). The detector's indoor classes
are not used: ``detect`` runs after ``keyframes``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import stage
from ..errors import BackendNotInstalled, InputError
from ..stage import Options, hf_offline

VERDICTS = ("indoor", "outdoor", "not_walkthrough", "unknown")


class HeuristicBackend:
    """Indoor / outdoor / not-a-walkthrough from sky, vegetation, straight-line and edge cues (no weights)."""

    name: ClassVar[str] = "heuristic"

    class Options(Options):
        work_width: int = Field(320, ge=64, description="frames are analysed at this width (px)")
        line_ref: float = Field(0.3, gt=0, description="line_share giving one unit of indoor evidence")
        straightness_ref: float = Field(0.15, gt=0, description="straightness giving one unit of indoor evidence")
        sky_ref: float = Field(0.25, gt=0, description="sky share (top third) giving one unit of outdoor evidence")
        vegetation_ref: float = Field(0.5, gt=0, description="vegetation share giving one unit of outdoor "
                                      "evidence")
        min_margin: float = Field(1.2, description="indoor evidence − outdoor evidence below this: outdoor")
        min_edge_density: float = Field(0.004, ge=0, description="fewer edge pixels than this share: not a "
                                        "walkthrough (blank, title card, covered lens)")
        max_dark_share: float = Field(0.9, gt=0, le=1, description="more near-black pixels than this share: not "
                                      "a walkthrough (black frame, a caption on black)")
        min_judge_evidence: float = Field(0.15, ge=0, description="indoor evidence below this (no straight "
                                          "lines at all) and little sky/vegetation: too little to judge "
                                          "(``unknown``, counted for neither side: noise, a plain surface)")

    def __init__(self, options: "HeuristicBackend.Options | None" = None):
        self.options = options or self.Options()

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        return True, "installed"

    def classify(self, frames: list[np.ndarray]) -> list[dict]:
        """One ``{"verdict", "reasons", "cues"}`` per ``H×W×3`` uint8 RGB frame."""
        return [self.classify_one(f) for f in frames]

    def classify_one(self, rgb: np.ndarray) -> dict:
        """The verdict of one frame: ``not_walkthrough`` when near-blank or near-black; ``unknown`` when it has
        neither straight structure nor sky/vegetation (nothing to judge by); else ``outdoor`` when the
        indoor evidence (straight Manhattan structure: ``line_share / line_ref + straightness /
        straightness_ref``) exceeds the outdoor evidence (``sky_share / sky_ref + vegetation_share /
        vegetation_ref``) by less than ``min_margin``; else ``indoor``."""
        o = self.options
        c = frame_cues(rgb, o.work_width)
        if c["edge_density"] < o.min_edge_density or c["dark_share"] > o.max_dark_share:
            why = (f"almost no edges ({100 * c['edge_density']:.2f}% of pixels)" if c["edge_density"] <
                   o.min_edge_density else f"{100 * c['dark_share']:.0f}% of the frame is black")
            return {"verdict": "not_walkthrough", "reasons": [why], "cues": c}
        e_in = c["line_share"] / o.line_ref + c["straightness"] / o.straightness_ref
        e_out = c["sky_share"] / o.sky_ref + c["vegetation_share"] / o.vegetation_ref
        c = dict(c, indoor_evidence=round(e_in, 3), outdoor_evidence=round(e_out, 3))
        if e_in < o.min_judge_evidence and e_out < 0.5:
            return {"verdict": "unknown", "reasons": [f"too little structure to judge (no straight lines: "
                                                      f"evidence {e_in:.2f}; sky/vegetation {e_out:.2f})"],
                    "cues": c}
        if e_in - e_out >= o.min_margin:
            return {"verdict": "indoor", "reasons": [f"straight structure {e_in:.2f} vs sky/vegetation "
                                                     f"{e_out:.2f}"], "cues": c}
        reasons = []
        if c["sky_share"] > 0.5 * o.sky_ref:
            reasons.append(f"sky-like region at the top ({100 * c['sky_share']:.0f}% of the top third)")
        if c["vegetation_share"] > 0.5 * o.vegetation_ref:
            reasons.append(f"vegetation ({100 * c['vegetation_share']:.0f}% of the frame)")
        reasons.append(f"weak straight-line structure (evidence {e_in:.2f}, line share {c['line_share']:.2f}, "
                       f"straightness {c['straightness']:.2f})")
        return {"verdict": "outdoor", "reasons": reasons, "cues": c}


def frame_cues(rgb: np.ndarray, work_width: int = 320) -> dict:
    """The heuristic cues of one ``H×W×3`` uint8 RGB frame (see the module docstring), rounded floats."""
    import cv2

    h, w = rgb.shape[:2]
    s = min(1.0, work_width / w)
    img = cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA) \
        if s < 1 else rgb
    h, w = img.shape[:2]
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # H 0..179, S, V 0..255
    H, S, V = (hsv[..., k].astype(np.float32) for k in range(3))
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    grad = cv2.GaussianBlur(np.hypot(gx, gy), (0, 0), 2.0)
    smooth = grad < 12.0
    blue = (H >= 90) & (H <= 130) & (S > 40) & (V > 110)
    overcast = (S < 30) & (V > 170)
    sky = (smooth & (blue | overcast)).astype(np.uint8)
    top = h // 3
    # sky is connected to the top edge of the frame
    n, lab = cv2.connectedComponents(sky[:top], connectivity=4)
    touching = np.unique(lab[0][sky[0, :] > 0])
    sky_top = np.isin(lab, touching[touching > 0]) if len(touching) else np.zeros_like(sky[:top], bool)
    sky_share = float(sky_top.mean())
    veg = (H >= 25) & (H <= 85) & (S > 60) & (V > 40)  # green / yellow-green: foliage, grass (sharp or bokeh)
    veg_share = float(veg.mean())
    dark_share = float((V < 24).mean())
    edges = cv2.Canny(grey, 60, 150)
    edge_density = float((edges > 0).mean())
    lines = cv2.createLineSegmentDetector().detect(grey)[0]
    diag = math.hypot(w, h)
    line_share = straightness = 0.0
    if lines is not None:
        L = lines.reshape(-1, 4)
        dx, dy = L[:, 2] - L[:, 0], L[:, 3] - L[:, 1]
        length = np.hypot(dx, dy)
        ang = np.degrees(np.arctan2(np.abs(dy), np.abs(dx)))  # 0 horizontal .. 90 vertical
        manhattan = (ang < 15) | (ang > 75)
        keep = manhattan & (length > 0.05 * diag)
        line_share = float(length[keep].sum() / (10 * diag))
        straightness = float(length[keep].sum() / max(float((edges > 0).sum()), 1.0))
    return {"sky_share": round(sky_share, 4), "vegetation_share": round(veg_share, 4),
            "line_share": round(line_share, 4), "straightness": round(straightness, 4),
            "edge_density": round(edge_density, 5), "dark_share": round(dark_share, 4)}


class ClipBackend:
    """Zero-shot CLIP with one prompt per verdict; the model from a local folder or a Hugging Face id.

    Raises:
        BackendNotInstalled: (constructor) ``transformers`` is missing, no model is named, or it cannot be
            loaded (offline and not in the local cache, or not a CLIP checkpoint).
    """

    name: ClassVar[str] = "clip"
    PROMPTS: ClassVar[dict[str, str]] = {
        "indoor": "a photo of the inside of a room, an indoor scene",
        "outdoor": "a photo taken outdoors, a landscape, street or nature scene",
        "not_walkthrough": "a blank screen, a title card, text or a close-up that shows no place",
    }

    class Options(Options):
        model: str | None = Field(None, description="local folder or Hugging Face id of a CLIP model (e.g. "
                                  "openai/clip-vit-base-patch32); HF_HUB_OFFLINE=1 allows only local files")
        batch_size: int = Field(16, ge=1)
        device: str = Field("cpu", description="torch device")

    def __init__(self, options: "ClipBackend.Options | None" = None):
        self.options = o = options or self.Options()
        ok, why = self.is_usable(o)
        if not ok:
            raise BackendNotInstalled(f"indoor backend 'clip' {why}")
        from transformers import CLIPModel, CLIPProcessor

        offline = hf_offline()
        try:
            self.model = CLIPModel.from_pretrained(o.model, local_files_only=offline).to(o.device).eval()
            self.processor = CLIPProcessor.from_pretrained(o.model, local_files_only=offline)
        except (OSError, ValueError) as e:
            raise BackendNotInstalled(f"indoor backend 'clip' cannot load {o.model!r}"
                                      f"{' (HF_HUB_OFFLINE is set: local files only)' if offline else ''}: "
                                      f"{str(e).splitlines()[0]}") from e

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        try:
            import importlib.util

            if importlib.util.find_spec("transformers") is None:
                raise ImportError
        except ImportError:
            return False, "not installed: pip install transformers (and give quality.indoor.clip.model)"
        return True, "installed"

    @classmethod
    def is_usable(cls, options: "ClipBackend.Options") -> tuple[bool, str]:
        ok, why = cls.is_installed()
        if not ok:
            return ok, why
        if not options.model:
            return False, "not installed: set quality.indoor.clip.model to a local CLIP folder or a HF id"
        return True, "installed"

    def classify(self, frames: list[np.ndarray]) -> list[dict]:
        """One ``{"verdict", "reasons", "cues": {"p_indoor", "p_outdoor", "p_not_walkthrough"}}`` per frame."""
        import torch

        names = list(self.PROMPTS)
        out = []
        with torch.no_grad():
            text = self.processor(text=[self.PROMPTS[k] for k in names], return_tensors="pt", padding=True)
            text = {k: v.to(self.options.device) for k, v in text.items()}
            for i in range(0, len(frames), self.options.batch_size):
                px = self.processor(images=list(frames[i:i + self.options.batch_size]), return_tensors="pt")
                res = self.model(**text, pixel_values=px["pixel_values"].to(self.options.device))
                p = res.logits_per_image.softmax(-1).cpu().numpy()  # (images, prompts)
                for row in p:
                    k = int(np.argmax(row))
                    out.append({"verdict": names[k], "reasons": [f"CLIP: {names[k]} p={row[k]:.2f}"],
                                "cues": {f"p_{n}": round(float(x), 4) for n, x in zip(names, row)}})
        return out


BACKENDS: dict[str, type] = {"heuristic": HeuristicBackend, "clip": ClipBackend}


class Config(BaseModel):
    """``quality.indoor``: the indoor filter."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="run the indoor filter (reject outdoor / not-walkthrough inputs)")
    backend: str = Field("heuristic", description=f"one of {', '.join(BACKENDS)}")
    heuristic: HeuristicBackend.Options = Field(default_factory=HeuristicBackend.Options)
    clip: ClipBackend.Options = Field(default_factory=ClipBackend.Options)
    max_frames: int = Field(48, ge=1, description="frames (evenly spaced over the chosen shots) classified")
    max_outdoor_share: float = Field(0.5, ge=0, le=1, description="reject as outdoor above this share of frames")
    max_not_walkthrough_share: float = Field(0.5, ge=0, le=1)

    @field_validator("backend")
    @classmethod
    def _known(cls, v: str) -> str:
        return stage.known_backend(v, BACKENDS, "indoor filter")


def make_backend(config: Config):
    """The configured indoor backend (its options section).

    Raises:
        InputError: unknown backend name.
        BackendNotInstalled: its dependency or model is missing.
    """
    if config.backend not in BACKENDS:
        raise InputError(f"unknown indoor filter backend {config.backend!r}")
    return stage.make_backend("quality.indoor", BACKENDS, config)


def decide(verdicts: list[dict], config: Config) -> tuple[str | None, dict]:
    """The video-level decision from per-frame verdicts: (``"outdoor"`` / ``"not_walkthrough"`` / None, counts
    ``{verdict: n}``). Not a walkthrough: more than ``max_not_walkthrough_share`` of all frames are; outdoor:
    more than ``max_outdoor_share`` of the frames that show a place (indoor or outdoor) are outdoor; frames too
    plain to judge (``unknown``) count for neither."""
    counts = {k: sum(v["verdict"] == k for v in verdicts) for k in VERDICTS}
    n = max(len(verdicts), 1)
    n_place = counts["indoor"] + counts["outdoor"]  # frames that show a place at all
    if counts["not_walkthrough"] / n > config.max_not_walkthrough_share:
        return "not_walkthrough", counts
    if n_place and counts["outdoor"] / n_place > config.max_outdoor_share:
        return "outdoor", counts
    return None, counts
