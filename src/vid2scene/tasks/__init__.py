"""Task generators: training / evaluation data written under ``SCENE/tasks/`` from a scene's instances, scene
graph, layout and cameras, all read through :class:`~vid2scene.scene.Scene` in the world frame (DESIGN.md, last
row of the stage table). They are not pipeline stages: run them with ``vid2scene tasks SCENE [--only vqa,vln]
[--config FILE]`` or :func:`run_tasks`.

Plugin shape (docs/architecture.md): ``GENERATORS`` maps a generator name (what users type after ``--only``, and
the section name in a tasks config file) to a module with ``NAME``, ``OUTPUTS`` (paths under the scene folder),
a pydantic ``Config`` and ``run(scene, config) -> StageResult`` (``qc`` holds the summary figures).
:data:`TasksConfig` is built from the registry: one section per generator. A new generator adds its module to
``GENERATORS``.

- ``vqa`` (:mod:`.vqa`): VSI-Bench-form spatial QA, ``tasks/vqa.jsonl`` + ``tasks/vqa_meta.json``; scored by
  :mod:`.eval_vqa` (``vid2scene eval-vqa``).
- ``vln`` (:mod:`.vln`): R2R / VLN-CE episodes in VLN-CE's dataset layout, ``tasks/vln/`` (``{split}.json.gz``,
  ``{split}_gt.json.gz``, the scene's habitat ``.glb``) + ``tasks/nav_graph.json``.
- ``bev`` (:mod:`.bev`): GPT4Scene bird's-eye view and marked keyframes, ``tasks/bev.png``,
  ``tasks/marked_frames/``, ``tasks/gpt4scene.json``, and GPT4Scene's ``scene_anno`` / ShareGPT training files
  ``tasks/gpt4scene/`` (:mod:`.gpt4scene`).
- ``layout_synth`` (:mod:`.layout_synth`): VIPScene-style layout synthesis from the room and its instances
  (object plan, solver, first-person renders, plausibility scores), ``tasks/layout_synth/``; also
  ``vid2scene synth-layout``.

A tasks config file (YAML or JSON) holds one section per generator, e.g.::

    vqa: {max_per_type: 50, seed: 3}
    bev: {n_frames: 16, occlusion: depth}
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..errors import InputError
from ..scene import INSTANCES_JSON, LAYOUT_JSON, Scene
from ..stage import StageResult
from . import bev, layout_synth, vln, vqa
from .common import require_inputs, scene_of

GENERATORS: dict[str, ModuleType] = {m.NAME: m for m in (vqa, vln, bev, layout_synth)}


def _tasks_config() -> type[BaseModel]:
    fields = {name: (mod.Config, Field(default_factory=mod.Config)) for name, mod in GENERATORS.items()}
    model = create_model("TasksConfig", __config__=ConfigDict(extra="forbid"), **fields)
    model.__doc__ = "Configuration of every task generator (one section per entry of GENERATORS)."
    return model


#: Configuration of every task generator, built from :data:`GENERATORS`.
TasksConfig = _tasks_config()


def load_tasks_config(path: str | Path | None = None) -> BaseModel:
    """A :data:`TasksConfig` from a YAML/JSON file with one section per generator (defaults when None).

    Raises:
        InputError: unreadable file, an unknown section or value that fails validation (one-line reason).
    """
    from ..config import read_config_file, validate_config

    return validate_config(TasksConfig, read_config_file(path) if path is not None else {}, "tasks config")


def run_tasks(scene: Scene | str | Path, names: list[str] | None = None, config: BaseModel | None = None,
              seed: int | None = None) -> dict[str, StageResult]:
    """Run the named generators (all registered ones when None) on a scene folder; outputs go under
    ``SCENE/tasks/`` (atomic writes). ``config`` is a :data:`TasksConfig` (defaults when None); ``seed``
    overrides every generator's ``seed``. Returns ``{name: StageResult}`` in run order.

    Raises:
        InputError: an unknown generator name, or the scene lacks instances.json / layout.json (named), or a
            generator's input is missing / unreadable / not in the world frame.
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
        section = getattr(config, name)
        if seed is not None:
            section = section.model_copy(update={"seed": seed})
        out[name] = GENERATORS[name].run(scene, section)
    return out
