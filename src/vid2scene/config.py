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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import depth as _depth
from . import fusion as _fusion
from . import ingest as _ingest
from . import layout as _layout
from . import keyframes as _keyframes
from . import quality as _quality
from . import sfm as _sfm
from . import shots as _shots
from .errors import InputError

# issue 4: semantic instances and the scene graph
from . import detect as _detect  # noqa: E402
from . import instances as _instances  # noqa: E402
from . import scene_graph as _scene_graph  # noqa: E402


class PipelineConfig(BaseModel):
    """Configuration of every stage, in pipeline order."""

    model_config = ConfigDict(extra="forbid")
    ingest: _ingest.Config = Field(default_factory=_ingest.Config)
    shots: _shots.Config = Field(default_factory=_shots.Config)
    quality: _quality.Config = Field(default_factory=_quality.Config)
    keyframes: _keyframes.Config = Field(default_factory=_keyframes.Config)
    sfm: _sfm.Config = Field(default_factory=_sfm.Config)
    depth: _depth.Config = Field(default_factory=_depth.Config)
    fusion: _fusion.Config = Field(default_factory=_fusion.Config)
    layout: _layout.Config = Field(default_factory=_layout.Config)
    detect: _detect.Config = Field(default_factory=_detect.Config)
    instances: _instances.Config = Field(default_factory=_instances.Config)
    scene_graph: _scene_graph.Config = Field(default_factory=_scene_graph.Config)


#: Named presets: partial configs applied over the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # Quicker: PySceneDetect instead of TransNetV2, fewer sequential and loop-closure pairs.
    "fast": {"shots": {"backend": "adaptive"}, "sfm": {"sequential_overlap": 6, "loop_candidates": 3}},
    # Slower, denser: more keyframes, more features and sequential pairs.
    "quality": {"keyframes": {"min_disparity": 0.05, "max_keyframes": 400},
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
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InputError(f"invalid config value {where}: {first['msg']}") from e
