"""Task generators: training / evaluation data written under ``SCENE/tasks/`` from a scene's instances, scene
graph, layout and cameras (DESIGN.md, last row of the stage table). They are not pipeline stages: run them with
``vid2scene tasks SCENE [--only vqa,vln]`` or :func:`run_tasks`.

Registry: ``GENERATORS`` maps a generator name (what users type after ``--only``) to a module with ``NAME``,
``OUTPUTS`` (paths under the scene folder), a pydantic ``Config`` and ``run(scene, config) -> dict`` (a summary).
Each generator has its own section in :class:`TasksConfig`; a new generator adds its module here and a section
there.

- ``vqa`` (:mod:`.vqa`): VSI-Bench-form spatial QA, ``tasks/vqa.jsonl`` + ``tasks/vqa_meta.json``; scored by
  :mod:`.eval_vqa` (``vid2scene eval-vqa``).
- ``vln`` (:mod:`.vln`): R2R / VLN-CE episodes, ``tasks/vln.json`` + ``tasks/nav_graph.json``.
- ``bev`` (:mod:`.bev`): GPT4Scene bird's-eye view and marked keyframes, ``tasks/bev.png``,
  ``tasks/marked_frames/``, ``tasks/gpt4scene.json``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from . import bev as _bev
from . import vln as _vln
from . import vqa as _vqa
from .common import INSTANCES_JSON, LAYOUT_JSON, require_inputs, scene_of

GENERATORS = {"vqa": _vqa, "vln": _vln, "bev": _bev}


class TasksConfig(BaseModel):
    """One section per task generator."""

    model_config = ConfigDict(extra="forbid")
    vqa: _vqa.Config = Field(default_factory=_vqa.Config)
    vln: _vln.Config = Field(default_factory=_vln.Config)
    bev: _bev.BevConfig = Field(default_factory=_bev.BevConfig)


def run_tasks(scene, names: list[str] | None = None, config: TasksConfig | None = None,
              seed: int | None = None) -> dict[str, dict]:
    """Run the named generators (all registered ones when None) on a scene folder; outputs go under
    ``SCENE/tasks/`` (atomic writes). ``seed`` overrides every generator's ``seed``. Returns
    ``{name: summary}``.

    Raises:
        InputError: an unknown generator name, or the scene lacks instances.json / layout.json (named).
    """
    scene = scene_of(scene)
    if not Path(scene.root).is_dir():
        raise InputError(f"no such scene folder: {scene.root}")
    names = list(GENERATORS) if not names else list(names)
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        raise InputError(f"unknown task generator(s) {', '.join(unknown)}; known: {', '.join(GENERATORS)}")
    require_inputs(scene, [INSTANCES_JSON, LAYOUT_JSON])
    config = config or TasksConfig()
    out = {}
    for name in names:
        section = getattr(config, name, None)
        if section is None:
            section = GENERATORS[name].Config()
        if seed is not None:
            section = section.model_copy(update={"seed": seed})
        out[name] = GENERATORS[name].run(scene, section)
    return out
