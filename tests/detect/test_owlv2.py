"""``detect`` backend ``owlv2`` with a tiny randomly initialised OWLv2 (tests/fixtures/tiny_hf.py) in a local
folder: output shape and label mapping, loading offline, the "not installed / no weights" hints."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("transformers")

from tests.fixtures.tiny_hf import tiny_owlv2
from vid2scene.detect import BACKENDS, Config, backend_status, detect_image, make_backend
from vid2scene.detect.coco import COCO_ID
from vid2scene.detect.owlv2 import EXTRA_ID_BASE, OWLv2Backend
from vid2scene.errors import BackendNotInstalled


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_owlv2(tmp_path_factory.mktemp("owlv2") / "model")


def test_registered_with_options_section():
    assert BACKENDS["owlv2"] is OWLv2Backend
    cfg = Config(backend="owlv2", owlv2={"model": "/x", "vocabulary": ["chair"]})
    assert cfg.owlv2.vocabulary == ["chair"]


def test_detect_shapes_and_label_mapping(model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder loads with the hub off
    vocab = ["chair", "sofa", "trash can", "monitor"]
    b = OWLv2Backend(OWLv2Backend.Options(model=str(model_dir), vocabulary=vocab, min_score=0.0, device="auto"))
    assert b.device == "cpu" or b.device.startswith("cuda")
    rgb = np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8)
    rows = b.detect(rgb)
    assert rows.ndim == 2 and rows.shape[1] == 6 and len(rows) > 0
    allowed = {COCO_ID["chair"], COCO_ID["couch"], COCO_ID["tv"], EXTRA_ID_BASE + 2}
    assert set(rows[:, 0].astype(int)) <= allowed
    assert b.label_names == {EXTRA_ID_BASE + 2: "trash can"}
    assert np.all(np.diff(rows[:, 1]) <= 1e-9)  # best first
    assert np.all((rows[:, 2] >= 0) & (rows[:, 4] <= 80) & (rows[:, 3] >= 0) & (rows[:, 5] <= 48))
    assert np.all((rows[:, 4] > rows[:, 2]) & (rows[:, 5] > rows[:, 3]))
    with pytest.raises(ValueError):
        b.detect(rgb[..., 0])


def test_through_the_stage_config(model_dir):
    cfg = Config(backend="owlv2", score_threshold=0.0,
                 owlv2={"model": str(model_dir), "vocabulary": ["chair", "sofa"], "min_score": 0.0})
    b = make_backend(cfg)
    objects, people = detect_image(b, np.random.default_rng(1).integers(0, 255, (40, 64, 3), np.uint8), cfg)
    assert people == [] and objects and {o["label"] for o in objects} <= {"chair", "couch"}


def test_offline_without_weights_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(BackendNotInstalled, match="no weights.*huggingface-cli download"):
        make_backend(Config(backend="owlv2", owlv2={"model": "google/owlv2-base-patch16-ensemble"}))
    with pytest.raises(BackendNotInstalled, match="no weights"):
        OWLv2Backend(OWLv2Backend.Options(model=str(tmp_path / "no_such_folder")))


def test_not_installed_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    ok, hint = OWLv2Backend.is_installed()
    assert not ok and "pip install" in hint and "huggingface-cli download" in hint
    assert backend_status()["owlv2"].startswith("not installed")
