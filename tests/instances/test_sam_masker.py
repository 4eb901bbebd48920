"""``instances`` masker ``sam`` with a tiny randomly initialised SAM (tests/fixtures/tiny_hf.py): mask shapes,
offline loading, hints, and the masks narrowing the per-view masks of the ``masks`` method."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from tests.fixtures.objects import Obj, build_scene
from tests.fixtures.tiny_hf import tiny_sam
from vid2scene.config import PipelineConfig
from vid2scene.errors import BackendNotInstalled
from vid2scene.instances import backend_status
from vid2scene.instances.config import Config
from vid2scene.instances.lifting import box_mask
from vid2scene.instances.maskers import SamMasker
from vid2scene.pipeline import run_stage


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    return tiny_sam(tmp_path_factory.mktemp("sam") / "model")


def test_sam_masks_one_per_box(sam_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = SamMasker(SamMasker.Options(model=str(sam_dir), batch=2))
    rgb = np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8)
    out = m.masks(rgb, [[10, 5, 40, 30], [50, 10, 70, 40], [0, 0, 80, 48]])
    assert len(out) == 3 and all(x.shape == (48, 80) and x.dtype == bool for x in out)
    assert m.masks(rgb, []) == []


def test_pixel_mask_narrows_the_box_mask():
    uv = np.array([[5.0, 5.0], [6.0, 5.0], [15.0, 5.0], [16.0, 5.0]])
    z = np.array([2.0, 2.0, 2.0, 2.0])
    pm = np.zeros((20, 20), bool)
    pm[:, :10] = True
    assert box_mask(uv, z, [0, 0, 20, 10], Config()).tolist() == [True] * 4
    assert box_mask(uv, z, [0, 0, 20, 10], Config(), pm).tolist() == [True, True, False, False]


def test_stage_runs_with_sam(sam_dir, tmp_path):
    scene, _ = build_scene(tmp_path, objects=(Obj("chair", (2.5, 2.0), (0.5, 0.5, 0.9), 0.0),), n_views=4)
    cfg = PipelineConfig()
    cfg.instances.masker = "sam"
    cfg.instances.sam.model = str(sam_dir)
    run_stage(scene, "instances", cfg)
    doc = json.loads((scene.root / "instances.json").read_text())
    assert doc["meta"]["method"] == "masks" and "chair" in doc["meta"]["per_label"]


def test_hints(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(BackendNotInstalled, match="no weights"):
        SamMasker(SamMasker.Options(model="facebook/sam-vit-base"))
    assert backend_status()["masker:sam"].startswith("no weights")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torch" else real(n, *a))
    assert backend_status()["masker:sam"].startswith("not installed")
