"""Exporters from the scene folder to other tools' formats; each names the convention (and frame) it converts to.

Plugin shape (docs/architecture.md): ``EXPORTERS`` maps a format name (what users type after
``vid2scene export SCENE --format``) to a module with ``NAME``, ``Config`` (pydantic; every exporter's has ``out``,
the folder to write into — default ``SCENE/tasks/exports/<format>/`` — and ``scene_name``), ``OUTPUTS`` and
``run(scene, config) -> StageResult`` whose ``qc`` is the summary of what was written (``format``, ``dir``,
``files``, counts). :func:`export` runs one by name.

- ``spatiallm`` (:mod:`.spatiallm`): SpatialLM layout text + point cloud.
- ``scannet`` (:mod:`.scannet`): ScanNet v2 scan files (mesh, segments, aggregation, labels).
- ``pointcept`` (:mod:`.pointcept`): Pointcept's per-scene ``.npy`` arrays.
- ``sceneverse`` (:mod:`.sceneverse`): a SceneVerse++ scene folder.
- ``nerfstudio`` (:mod:`.nerfstudio`): a world-frame ``transforms.json`` (the scene root's, written by ``sfm``,
  is in the SfM frame).

All of them write the world frame (z up, floor z = 0, metres).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from pydantic import ValidationError

from ..errors import InputError
from ..scene import Scene
from ..stage import StageResult
from . import nerfstudio, pointcept, scannet, sceneverse, spatiallm

EXPORTERS: dict[str, ModuleType] = {m.NAME: m for m in (spatiallm, scannet, pointcept, sceneverse, nerfstudio)}


def export(scene: Scene | str | Path, fmt: str, out: str | Path | None = None, **options) -> StageResult:
    """Run exporter ``fmt`` on ``scene`` writing into ``out`` (default ``SCENE/tasks/exports/<fmt>/``);
    ``options`` are fields of that exporter's ``Config``.

    Raises:
        InputError: an unknown format, options that fail validation, a path that is not a folder, or a missing
            / unreadable input (named).
    """
    if fmt not in EXPORTERS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORTERS)}")
    scene = scene if isinstance(scene, Scene) else Scene(scene)
    if not scene.root.is_dir():
        raise InputError(f"not a folder: {scene.root}")
    mod = EXPORTERS[fmt]
    try:
        config = mod.Config(out=out, **options)
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"invalid {fmt} export option {'.'.join(str(x) for x in first['loc'])}: "
                         f"{first['msg']}") from e
    return mod.run(scene, config)
