"""Exporters from the scene folder to other tools' formats; each names the convention it converts to.

``EXPORTERS`` maps a format name (what users type after ``vid2scene export SCENE --format``) to a function
``export(scene, out=None, **options) -> dict`` that writes under ``out`` (default
``SCENE/tasks/exports/<format>/``) and returns a summary. ``nerfstudio`` (``transforms.json``) is written by the
``layout`` stage itself and is not listed here.
"""

from __future__ import annotations

from typing import Callable

from . import pointcept, scannet, sceneverse, spatiallm

EXPORTERS: dict[str, Callable[..., dict]] = {
    "spatiallm": spatiallm.export,
    "scannet": scannet.export,
    "pointcept": pointcept.export,
    "sceneverse": sceneverse.export,
}
