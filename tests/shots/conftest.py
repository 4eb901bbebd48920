"""Fixtures for the shots tests: ingested scenes of the real sample videos, shared per module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vid2scene import ingest, progress
from vid2scene.scene import Scene

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TESTVIDEO = DATA / "pyscenedetect" / "testvideo.mp4"
HOLOLENS = DATA / "hololens_office.mp4"


def ingested(root: Path, video: Path, **cfg) -> Scene:
    if not video.is_file():
        pytest.skip(f"sample data missing: {video}")
    scene = Scene.create(root, ingest.describe_source(video))
    ingest.run(scene, ingest.Config(**cfg))
    return scene


@pytest.fixture(autouse=True, scope="session")
def _quiet_progress():
    progress.set_enabled(False)
    yield
    progress.set_enabled(True)


@pytest.fixture(scope="module")
def testvideo_scene(tmp_path_factory) -> Scene:
    """testvideo.mp4 (720 frames, 29.97 fps) ingested at default settings: 240 kept frames, every 3rd."""
    return ingested(tmp_path_factory.mktemp("shots") / "testvideo", TESTVIDEO)


@pytest.fixture(scope="module")
def hololens_scene(tmp_path_factory) -> Scene:
    """hololens_office.mp4 (373 frames, 10 fps, one continuous walk) ingested at default settings."""
    return ingested(tmp_path_factory.mktemp("shots") / "hololens", HOLOLENS)


def _encode_clip(path: Path, n_frames: int, fps: int = 10, size: tuple[int, int] = (128, 96)) -> Path:
    """Encode a smooth single-shot clip (a slowly panning colour gradient) with PyAV."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(n_frames):
            img = np.stack([(xx + 2 * i) % 256, (yy + i) % 256, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def encode_clip():
    """``encode_clip(path, n_frames, fps=10, size=(128, 96)) -> path``: a smooth single-shot clip."""
    return _encode_clip


@pytest.fixture
def ingest_video():
    """``ingest_video(scene_root, video, **ingest_config) -> Scene``."""
    return ingested


@pytest.fixture(scope="session")
def testvideo_path() -> Path:
    return TESTVIDEO


@pytest.fixture(scope="session")
def hololens_path() -> Path:
    return HOLOLENS
