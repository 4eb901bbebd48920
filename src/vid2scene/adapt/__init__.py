"""Adaptation of a learned depth model (Prompt Depth Anything) to scenes, SAGE-style.

- :mod:`.anchors`: well-constrained SfM points per keyframe (track length, reprojection error, angle).
- :mod:`.losses`: the anchor, rendering-consistency and distillation losses (equations there).
- :mod:`.render`: a differentiable Gaussian-splatting renderer in plain PyTorch.
- :mod:`.train`: data loading, the adaptation loop, checkpoints (a ``depth.prompt_da.model`` folder).
- :mod:`.cli`: the ``vid2scene adapt`` command.
"""
