"""Self-supervised point-cloud pre-training on the engine's own output (LAM3C on a Sonata objective).

Modules: ``serialization`` (z-order / Hilbert curves), ``backbone`` (PTv3 encoder in plain PyTorch), ``data``
(sources, RoomTours clean-up, multi-crop views), ``losses`` (Laplacian smoothing, noise consistency,
Sinkhorn–Knopp distillation, schedules), ``model`` (student / teacher, one step), ``train`` (the loop,
checkpoints, log, loss curve), ``probe`` (linear probe, mIoU), ``cli`` (``vid2scene ssl``).

The names below are imported lazily, so ``vid2scene.ssl.cli`` loads without torch.
"""

from __future__ import annotations

__all__ = ["pretrain", "probe", "preset", "PretrainConfig", "PTv3", "BACKBONES"]

_WHERE = {"pretrain": "train", "probe": "probe", "preset": "model", "PretrainConfig": "model", "PTv3": "backbone",
          "BACKBONES": "backbone"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)
