"""FPVScore: a multimodal model judges a layout from first-person frames (VIPScene), through an OpenAI-compatible
``/v1/chat/completions`` endpoint (vLLM, llama.cpp server, Ollama, LM Studio, OpenAI).

One request per layout: :data:`PROMPT` with the :data:`RUBRIC` and the object list, then up to ``max_frames``
rendered frames as base64 PNG ``data:`` URLs (``image_url`` content parts). The model must answer with JSON
``{"<criterion>": <integer 1..5>, ..., "comment": "<one sentence>"}``; the reply may be wrapped in a ```json
fence. The score is the mean of the criteria, mapped to 0..1 as ``(mean − 1) / 4``.

Configuration (config first, then environment): ``base_url`` / ``VID2SCENE_VLM_BASE_URL`` (``/v1`` appended
when missing), ``model`` / ``VID2SCENE_VLM_MODEL``, ``api_key`` / ``VID2SCENE_VLM_API_KEY`` (sent as
``Authorization: Bearer``, never written to the scene). Connection errors, timeouts, HTTP 429 and 5xx are retried
``retries`` more times with exponential back-off. Errors raise :class:`~vid2scene.errors.StageFailed`
(``"layout_synth"``) with a one-line reason: server unreachable or timing out, HTTP 4xx, a reply that is not
JSON, lacks ``choices[0].message.content``, or whose content lacks a criterion or gives one outside 1..5.
Only the standard library (``urllib``) is used.
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ...errors import StageFailed
from ...io import post_json

ENV_BASE_URL, ENV_MODEL, ENV_API_KEY = "VID2SCENE_VLM_BASE_URL", "VID2SCENE_VLM_MODEL", "VID2SCENE_VLM_API_KEY"
STAGE = "layout_synth"

RUBRIC = {
    "physical_plausibility": "objects do not intersect each other or the walls; nothing floats; small objects "
                             "rest on a surface",
    "spatial_coherence": "furniture is arranged as in a real room of this kind: against walls where expected, "
                         "chairs at tables, related objects together",
    "navigability": "a person could walk through the room and reach the furniture; passages are not blocked",
    "realism": "object sizes, counts and orientations are believable for an indoor room",
}

PROMPT = ("You are judging the 3D layout of an indoor room from first-person views of a walk through it. The "
          "room is drawn as grey walls, a checkered floor and coloured boxes, one colour per object class, each "
          "box labelled with its class. Objects in the layout: {objects}.\n"
          "Rate the layout on each criterion with an integer from 1 (very poor) to 5 (excellent):\n{rubric}\n"
          "Reply with JSON only: {{{keys}, \"comment\": <one sentence>}}.")


class FPVScoreConfig(BaseModel):
    """The FPVScore client (module docstring); off unless ``enabled`` and a base URL is given."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    base_url: str | None = Field(None, description=f"OpenAI-compatible server URL (or {ENV_BASE_URL})")
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(1, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    max_frames: int = Field(8, ge=1)
    max_tokens: int = Field(200, ge=1)


def prompt_text(object_labels: list[str]) -> str:
    """The text part of the request for a layout with these object labels."""
    counts: dict[str, int] = {}
    for lab in object_labels:
        counts[lab] = counts.get(lab, 0) + 1
    objs = ", ".join(f"{n} {lab}" for lab, n in sorted(counts.items())) or "none"
    rubric = "\n".join(f"- {k}: {v}" for k, v in RUBRIC.items())
    keys = ", ".join(f"\"{k}\": <1-5>" for k in RUBRIC)
    return PROMPT.format(objects=objs, rubric=rubric, keys=keys)


def png_data_url(rgb: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a frame as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def parse_reply(text: str) -> dict:
    """``{"criteria": {name: int}, "comment": str, "score": 0..1}`` from the model's text (module docstring).

    Raises:
        ValueError: not JSON, a criterion missing, or a value outside 1..5.
    """
    s = str(text).strip()
    if s.startswith("```"):
        s = s.strip("`").strip()
        if s.lower().startswith("json"):
            s = s[4:]
    try:
        d = json.loads(s)
    except json.JSONDecodeError:
        i, j = s.find("{"), s.rfind("}")
        if i < 0 or j <= i:
            raise ValueError(f"reply is not JSON: {s[:120]!r}") from None
        try:
            d = json.loads(s[i:j + 1])
        except json.JSONDecodeError as e:
            raise ValueError(f"reply is not JSON: {s[:120]!r}") from e
    if not isinstance(d, dict):
        raise ValueError(f"reply is not a JSON object: {s[:120]!r}")
    crit = {}
    for k in RUBRIC:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= float(v) <= 5:
            raise ValueError(f"reply lacks criterion {k!r} as a number 1..5 (got {v!r})")
        crit[k] = float(v)
    mean = float(np.mean(list(crit.values())))
    return {"criteria": crit, "comment": " ".join(str(d.get("comment") or "").split()),
            "score": round((mean - 1) / 4, 4)}


class FPVScoreClient:
    """Client of an OpenAI-compatible chat-completions server for FPVScore (module docstring).

    Raises:
        StageFailed: no base URL in the config nor the environment.
    """

    def __init__(self, config: FPVScoreConfig):
        base = config.base_url or os.environ.get(ENV_BASE_URL)
        if not base:
            raise StageFailed(STAGE, f"fpvscore: set fpvscore.base_url or {ENV_BASE_URL} to an OpenAI-compatible "
                                     "server URL")
        base = base.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model = config.model or os.environ.get(ENV_MODEL) or "default"
        self._key = config.api_key or os.environ.get(ENV_API_KEY)
        self.cfg = config

    def request_body(self, frames: list[np.ndarray], object_labels: list[str]) -> dict:
        """The chat-completions request: one user message, the prompt then up to ``max_frames`` frames (evenly
        chosen)."""
        if len(frames) > self.cfg.max_frames:
            frames = [frames[i] for i in np.linspace(0, len(frames) - 1, self.cfg.max_frames).round().astype(int)]
        content = [{"type": "text", "text": prompt_text(object_labels)}]
        content += [{"type": "image_url", "image_url": {"url": png_data_url(f)}} for f in frames]
        return {"model": self.model, "temperature": 0, "max_tokens": self.cfg.max_tokens,
                "messages": [{"role": "user", "content": content}]}

    def _post(self, body: dict) -> dict:
        c = self.cfg
        return post_json(self.url, body, api_key=self._key, timeout_s=c.timeout_s, retries=c.retries,
                         backoff_s=c.backoff_s, stage=STAGE, what="fpvscore")

    def score(self, frames: list[np.ndarray], object_labels: list[str]) -> dict:
        """FPVScore of one layout: ``{"score": 0..1, "criteria": {...}, "comment", "model", "n_frames"}``."""
        body = self.request_body(frames, object_labels)
        reply = self._post(body)
        try:
            text = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise StageFailed(STAGE, f"fpvscore: unexpected reply from {self.url}: {str(reply)[:200]}") from e
        if isinstance(text, list):
            text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
        try:
            out = parse_reply(text)
        except ValueError as e:
            raise StageFailed(STAGE, f"fpvscore: malformed answer from {self.url}: {e}") from e
        return {**out, "model": self.model, "n_frames": len(body["messages"][0]["content"]) - 1}
