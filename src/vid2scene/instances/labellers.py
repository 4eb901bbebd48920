"""Labeller backends of ``instances``: object crops → a label and a one-line caption.

``none`` (the default) captions nothing. ``openai`` asks a vision-language model behind an OpenAI-compatible
``/v1/chat/completions`` endpoint (vLLM, llama.cpp server, Ollama, LM Studio, OpenAI itself). Its options
(``instances.openai``), each falling back to the environment when not set: ``base_url`` /
``VID2SCENE_VLM_BASE_URL`` (e.g. ``http://127.0.0.1:8000/v1``; ``/v1`` is appended when missing), ``model`` /
``VID2SCENE_VLM_MODEL``, ``api_key`` / ``VID2SCENE_VLM_API_KEY`` / ``OPENAI_API_KEY`` (sent as
``Authorization: Bearer``; a pydantic ``SecretStr`` excluded from every dump, so it is never written to the
manifest or a dataset's ``dataset.json`` nor part of the config hash; worker processes read it from the
environment). Each request carries one JPEG crop as a base64 ``data:`` URL in an ``image_url``
content part, asks for JSON ``{"label": ..., "caption": ...}``, and is retried (``retries`` more times,
exponential back-off from ``backoff_s``) on connection errors, timeouts, HTTP 429 and 5xx. A server that stays
unreachable raises :class:`~vid2scene.errors.StageFailed` with a one-line reason; a missing base URL raises
:class:`~vid2scene.errors.BackendNotInstalled`. Only the standard library (``urllib``) is used.
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np
from pydantic import Field, SecretStr

from ..errors import BackendNotInstalled, StageFailed
from ..io import post_json
from ..stage import Options, make_backend

ENV_BASE_URL, ENV_MODEL, ENV_API_KEY = "VID2SCENE_VLM_BASE_URL", "VID2SCENE_VLM_MODEL", "VID2SCENE_VLM_API_KEY"
ENV_OPENAI_API_KEY = "OPENAI_API_KEY"  # read when VID2SCENE_VLM_API_KEY is not set
PROMPT = ("This image is a crop around one object in an indoor scene; a detector called it '{hint}'. "
          "Reply with JSON only: {{\"label\": <short lower-case object name>, \"caption\": <one sentence "
          "describing the object: colour, material, state>}}.")


class NoLabeller:
    """The default labeller: instances keep their detector label and no caption."""

    name = "none"

    class Options(Options):
        pass

    def __init__(self, options: Options | None = None):
        self.options = options or self.Options()

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        return True, "installed"


class OpenAICompatLabeller:
    """Client of an OpenAI-compatible chat-completions server for crop labels and captions.

    Raises:
        BackendNotInstalled: (constructor) no base URL in the options nor in ``VID2SCENE_VLM_BASE_URL``.
    """

    name = "openai"

    class Options(Options):
        base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 "
                                     f"(env {ENV_BASE_URL})")
        model: str | None = Field(None, description=f"model name (env {ENV_MODEL})")
        api_key: SecretStr | None = Field(None, exclude=True, repr=False,
                                          description=f"API key (env {ENV_API_KEY} or {ENV_OPENAI_API_KEY}); a "
                                          "secret: never serialised (manifest, dataset.json) nor hashed")
        timeout_s: float = Field(30.0, gt=0)
        retries: int = Field(2, ge=0)
        backoff_s: float = Field(0.5, ge=0, description="first retry's wait; doubled for each further one")

    def __init__(self, options: Options | None = None, stage: str = "instances"):
        o = options or self.Options()
        base_url = o.base_url or os.environ.get(ENV_BASE_URL)
        if not base_url:
            raise BackendNotInstalled(f"labeller 'openai' not installed: set instances.openai.base_url or "
                                      f"{ENV_BASE_URL} to an OpenAI-compatible server URL")
        base = base_url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model = o.model or os.environ.get(ENV_MODEL) or "default"
        self._key = (o.api_key.get_secret_value() if o.api_key is not None else None) or \
            os.environ.get(ENV_API_KEY) or os.environ.get(ENV_OPENAI_API_KEY)
        self.timeout_s, self.retries, self.backoff_s = float(o.timeout_s), int(o.retries), float(o.backoff_s)
        self.stage = stage

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        """Whether the environment names a server (a base URL in the config section also suffices)."""
        return (True, "installed") if os.environ.get(ENV_BASE_URL) else \
            (False, f"not installed: set {ENV_BASE_URL} (or instances.openai.base_url)")

    @classmethod
    def is_usable(cls, options: "OpenAICompatLabeller.Options") -> tuple[bool, str]:
        """Whether a server is named by ``options.base_url`` or the environment."""
        return (True, "installed") if options.base_url or os.environ.get(ENV_BASE_URL) else \
            (False, f"not installed: set instances.openai.base_url or {ENV_BASE_URL} to an OpenAI-compatible "
                    "server URL")

    def _post(self, body: dict) -> dict:
        return post_json(self.url, body, api_key=self._key, timeout_s=self.timeout_s, retries=self.retries,
                         backoff_s=self.backoff_s, stage=self.stage, what="labeller")

    def describe(self, crop_rgb: np.ndarray, hint: str = "object") -> dict:
        """``{"label": str, "caption": str}`` for one ``H×W×3`` uint8 RGB crop.

        The model's reply is parsed as JSON (also inside a ```json fence); a plain-text reply becomes the
        caption (first line) with ``hint`` as the label.

        Raises:
            StageFailed: the server refused the request, stayed unreachable or gave an unexpected reply.
            ValueError: the crop cannot be encoded as JPEG.
        """
        import cv2

        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(crop_rgb), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("could not encode the crop as JPEG")
        url = "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()
        body = {"model": self.model, "temperature": 0, "max_tokens": 120,
                "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT.format(hint=hint)},
                                                          {"type": "image_url", "image_url": {"url": url}}]}]}
        reply = self._post(body)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise StageFailed(self.stage, f"labeller: unexpected reply from {self.url}: {str(reply)[:200]}") from e
        return parse_reply(text, hint)


def parse_reply(text, hint: str) -> dict:
    """``{"label", "caption"}`` from a chat reply's content (a string or a list of content parts): JSON, also
    inside a ```json fence, else the first line as the caption and ``hint`` as the label."""
    if isinstance(text, list):  # content parts
        text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
    text = str(text).strip()
    s = text.strip("`")
    if s.startswith("json"):
        s = s[4:]
    try:
        d = json.loads(s)
        label, caption = str(d.get("label") or hint).strip().lower(), str(d.get("caption") or "").strip()
    except (json.JSONDecodeError, AttributeError):
        label, caption = hint, (text.splitlines() or [""])[0].strip()
    return {"label": label, "caption": " ".join(caption.split())}


#: Labeller backends by name (``instances.captioner``).
BACKENDS: dict[str, type] = {"none": NoLabeller, "openai": OpenAICompatLabeller}


def make_labeller(config):
    """The labeller named by ``config.captioner`` (an ``instances`` Config), built from its nested section, or
    None for ``"none"``.

    Raises:
        BackendNotInstalled: the labeller cannot be used as configured (the reason says what to set).
    """
    if config.captioner == "none":
        return None
    return make_backend("instances", BACKENDS, config, name=config.captioner)


def best_view(inst: dict) -> dict | None:
    """The supporting view with the highest ``iou × score`` (``None`` without views)."""
    return max(inst.get("views") or [], key=lambda v: v.get("iou", 0) * v.get("score", 0), default=None)


def crop(rgb: np.ndarray, box, margin_rel: float = 0.1) -> np.ndarray:
    """Crop ``box`` (``x0, y0, x1, y1`` pixels) grown by ``margin_rel`` per side, clipped to the image."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    mx, my = margin_rel * (x1 - x0), margin_rel * (y1 - y0)
    c0, r0 = max(int(x0 - mx), 0), max(int(y0 - my), 0)
    c1, r1 = min(int(np.ceil(x1 + mx)), w), min(int(np.ceil(y1 + my)), h)
    return rgb[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)]


def caption_instances(scene, instances: list[dict], config, labeller=None) -> int:
    """Fill ``caption`` and ``caption_label`` of up to ``config.caption_max_instances`` instances (in order)
    from their best view's crop (keyframes through ``scene.keyframe_image``; an instance whose keyframe is
    missing is skipped); returns how many were captioned. ``labeller`` defaults to :func:`make_labeller`.

    Raises:
        BackendNotInstalled: as :func:`make_labeller`.
        StageFailed: as :meth:`OpenAICompatLabeller.describe`.
    """
    labeller = labeller or make_labeller(config)
    if labeller is None:
        return 0
    n = 0
    for inst in instances[: config.caption_max_instances]:
        v = best_view(inst)
        if v is None:
            continue
        try:
            rgb = scene.keyframe_image(v["frame"])
        except StageFailed:
            continue
        out = labeller.describe(crop(rgb, v["bbox_xyxy"]), inst["label"])
        inst["caption"], inst["caption_label"] = out["caption"], out["label"]
        n += 1
    return n
