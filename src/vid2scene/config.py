"""Pipeline configuration: one pydantic model per stage, named presets, and config files.

Precedence (lowest to highest): stage defaults < preset < config file < command-line flags.
A config file is YAML or JSON with one section per stage, e.g.::

    preset: fast
    keyframes: {min_disparity: 0.06}
    sfm: {known_intrinsics: [500, 500, 320, 180]}
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import InputError
from .stage import STAGES, stage_module


def _pipeline_config() -> type[BaseModel]:
    fields = {name: (stage_module(name).Config, Field(default_factory=stage_module(name).Config)) for name in STAGES}
    model = create_model("PipelineConfig", __config__=ConfigDict(extra="forbid"), **fields)
    model.__doc__ = "Configuration of every stage, in pipeline order (one section per entry of stage.STAGES)."
    return model


#: Configuration of every stage, built from the stage registry (:data:`vid2scene.stage.STAGES`).
PipelineConfig = _pipeline_config()


#: Named presets: partial configs applied over the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # Quicker: PySceneDetect instead of TransNetV2, fewer sequential and loop-closure pairs.
    "fast": {"shots": {"backend": "adaptive"}, "sfm": {"sequential_overlap": 6, "loop_candidates": 3}},
    # Slower, denser: more keyframes, more features and sequential pairs.
    "quality": {"keyframes": {"min_disparity": 0.05, "max_keyframes": 1600},
                "sfm": {"max_num_features": 4096, "sequential_overlap": 10}},
}


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict. Raises InputError when missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file not found: {p}")
    try:
        text = p.read_text()
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml/json parse errors of several types
        raise InputError(f"cannot parse config file {p}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {p} must hold a mapping of stage sections")
    return data


def load_config(config_file: str | Path | None = None, preset: str | None = None,
                overrides: dict | None = None) -> PipelineConfig:
    """Build a :class:`PipelineConfig` from a preset, a config file and overrides.

    Raises:
        InputError: unknown preset, unreadable file, or values that fail validation (one-line reason).
    """
    data = read_config_file(config_file) if config_file else {}
    preset = preset or data.pop("preset", None) or "default"
    data.pop("preset", None)
    if preset not in PRESETS:
        raise InputError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    merged = deep_merge(deep_merge(PRESETS[preset], data), overrides or {})
    cfg = validate_config(PipelineConfig, merged)
    check_intrinsics(getattr(cfg.sfm, "known_intrinsics", None), "sfm.known_intrinsics")
    return cfg


def check_intrinsics(values, where: str) -> None:
    """Raise InputError unless ``values`` is None or four finite, positive numbers (fx, fy, cx, cy in pixels)."""
    import math

    if values is None:
        return
    vals = list(values)
    if len(vals) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in vals):
        raise InputError(f"invalid config value {where}: wants four finite positive numbers fx, fy, cx, cy "
                         f"(pixels), got {vals}")


def validate_config(model: type[BaseModel], data: dict, what: str = "config") -> BaseModel:
    """``model.model_validate(data)``, with the first validation error as a one-line :class:`InputError`
    (``invalid <what> value <section.field>: <message>``)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InputError(f"invalid {what} value {where}: {first['msg']}") from e
