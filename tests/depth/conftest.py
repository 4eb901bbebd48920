"""Fixtures of the depth tests: the synthetic scene of :mod:`tests.fixtures.depth_scene`."""

from __future__ import annotations

import pytest

from tests.fixtures.depth_scene import SynthScene, build_scene


@pytest.fixture(scope="module")
def synth_scene(tmp_path_factory) -> SynthScene:
    return build_scene(tmp_path_factory.mktemp("depth") / "scene")


@pytest.fixture
def scene_builder():
    """:func:`tests.fixtures.depth_scene.build_scene`, for tests that need their own scene."""
    return build_scene
