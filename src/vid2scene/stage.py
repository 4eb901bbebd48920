"""What every stage, backend, task generator and exporter shares: the registry, the result type, one plugin shape.

Plugin shape (docs/architecture.md). A *stage* is a module with ``NAME``, a pydantic ``Config``, ``OUTPUTS``
(paths relative to the scene folder that it writes, removed before a re-run so a half-written result is never
trusted) and ``run(scene, config) -> StageResult``. Task generators (:mod:`vid2scene.tasks`) and exporters
(:mod:`vid2scene.export`) have the same shape. :data:`STAGES` is the one list of pipeline stages, in order:
the pipeline, the configuration model and the CLI are built from it.

A *backend* (one way of doing a stage: shot detector, depth, detector, labeller) follows :class:`Backend`:
a class with ``name``, a pydantic ``Options`` model (its own config section, nested under the stage's:
``detect: {backend: onnx, onnx: {model_path: …}}``), a cheap ``is_installed()`` and a constructor taking its
options. Each stage with backends keeps a registry ``BACKENDS = {name: class}`` and calls :func:`make_backend`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

#: Pipeline stages in order (module ``vid2scene.<name>``). ``detect`` runs right after ``keyframes`` so that
#: ``sfm`` and ``fusion`` can use its person boxes.
STAGES: tuple[str, ...] = ("ingest", "shots", "quality", "keyframes", "detect", "sfm", "depth", "fusion",
                           "layout", "instances", "scene_graph")


def stage_module(name: str) -> ModuleType:
    """The module of stage ``name``.

    Raises:
        InputError: ``name`` is not a stage.
    """
    if name not in STAGES:
        from .errors import InputError

        raise InputError(f"unknown stage '{name}'; stages are: {', '.join(STAGES)}")
    return importlib.import_module(f"vid2scene.{name}")


@dataclass
class StageResult:
    """What a stage (or task generator, or exporter) reports back: QC figures (JSON-able), a one-line summary
    and warnings (a weaker result that still completes the stage)."""

    qc: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    warnings: list[str] = field(default_factory=list)


class Options(BaseModel):
    """Base of every backend's options model (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid")


class Backend(Protocol):
    """One way of doing a stage. Constructed as ``cls(options)`` with its own :class:`Options` model."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]

    @classmethod
    def is_installed(cls) -> tuple[bool, str]:
        """``(True, "installed")`` or ``(False, "not installed: <how to install / which path to give>")``.
        Cheap: no model loading, no heavy imports. A backend may also define ``is_usable(options)`` with the
        same result, when its availability depends on its options; :func:`make_backend` prefers it."""
        ...


def backend_status(backends: dict[str, type]) -> dict[str, str]:
    """``{name: "installed" | "not installed: <how to install>"}`` for a stage's backend registry."""
    out = {}
    for name, cls in backends.items():
        ok, hint = cls.is_installed()
        out[name] = "installed" if ok else hint
    return out


def known_backend(name: str, backends: dict[str, type], stage: str) -> str:
    """``name`` if it is registered in ``backends``; else ``ValueError`` naming the choices (for the pydantic
    ``backend`` validators of the stages' configs)."""
    if name not in backends:
        raise ValueError(f"unknown {stage} backend {name!r}; choose one of {', '.join(backends)}")
    return name


def backend_options(config: BaseModel, name: str, cls: type) -> BaseModel:
    """The options section ``config.<name>`` of a stage config, or the backend's defaults when the stage
    config has no such section."""
    opts = getattr(config, name, None)
    return opts if isinstance(opts, BaseModel) else cls.Options()


def make_backend(stage: str, backends: dict[str, type], config: BaseModel, name: str | None = None):
    """An instance of backend ``name`` (default ``config.backend``) built from its nested options section.

    Raises:
        InputError: no backend of that name is registered.
        BackendNotInstalled: its dependency or weights are missing (the reason says how to install them).
    """
    from .errors import BackendNotInstalled, InputError

    name = name or getattr(config, "backend")
    if name not in backends:
        raise InputError(f"unknown {stage} backend {name!r}; choose one of {', '.join(backends)}")
    cls = backends[name]
    options = backend_options(config, name, cls)
    # a backend whose availability depends on its options (a server URL, a model path) says so by is_usable
    usable = getattr(cls, "is_usable", None)
    ok, hint = usable(options) if usable is not None else cls.is_installed()
    if not ok:
        raise BackendNotInstalled(f"{stage} backend '{name}' {hint}")
    return cls(options)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face weights for learned backends (detect "owlv2", instances masker "sam", quality.indoor "clip")
# ---------------------------------------------------------------------------------------------------------
def hf_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks for local files only."""
    import os

    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def weights_available(model: str) -> tuple[bool, str]:
    """(whether ``model`` — a local folder or a Hugging Face id — can be loaded now, why not). An id counts as
    available when its ``config.json`` is in the local cache, or when the hub may be reached (not offline)."""
    from pathlib import Path

    p = Path(model).expanduser()
    if p.is_dir():
        return ((p / "config.json").is_file(), f"no weights: {p} has no config.json")
    if p.exists() or model.startswith((".", "/", "~")):
        return False, f"no weights: {model} is not a model folder"
    if cached(model) or not hf_offline():
        return True, ""
    return False, (f"no weights: {model} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; run "
                   f"`huggingface-cli download {model}` where the hub is reachable, or point the model option "
                   "at a local folder")


def cached(model: str) -> bool:
    """Whether the Hugging Face id ``model`` has its ``config.json`` in the local cache (or is a local folder)."""
    from pathlib import Path

    if Path(model).expanduser().is_dir():
        return (Path(model).expanduser() / "config.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id or an unreadable cache: not cached
        return False


def _transformers_importable() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "torch"))


def pretrained_installed(default_model: str, option: str, hint: str) -> tuple[bool, str]:
    """A learned backend's ``is_installed`` for ``vid2scene stages``: ``transformers`` and ``torch`` importable
    (else ``(False, hint)``) and ``default_model`` in the local cache (else a "no weights" line naming the
    download command and the config ``option``, e.g. ``detect.owlv2.model``, that takes a local folder)."""
    if not _transformers_importable():
        return False, hint
    if not cached(default_model):
        return False, f"no weights: huggingface-cli download {default_model} (or set {option} to a local folder)"
    return True, "installed"


def pretrained_usable(model: str, hint: str) -> tuple[bool, str]:
    """A learned backend's ``is_usable``: the packages are importable (else ``(False, hint)``) and ``model``
    can be loaded now (:func:`weights_available`)."""
    if not _transformers_importable():
        return False, hint
    ok, why = weights_available(model)
    return (True, "installed") if ok else (False, why)


def torch_device(device: str) -> str:
    """``"cuda"`` when ``device`` is ``auto`` and CUDA is available, else ``device`` (``"cpu"`` for auto)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pretrained(processor_cls: type, model_cls: type, model: str, device: str, what: str, hint: str):
    """``(processor, model, device)`` of a ``transformers`` checkpoint (a local folder or a Hugging Face id;
    local files only under :func:`hf_offline`), the model moved to :func:`torch_device` ``(device)`` in eval
    mode.

    Raises:
        BackendNotInstalled: the checkpoint cannot be loaded; the message is ``"<what>: cannot load <model>
            (<reason>); <hint>"``.
    """
    from .errors import BackendNotInstalled

    try:
        processor = processor_cls.from_pretrained(model, local_files_only=hf_offline())
        net = model_cls.from_pretrained(model, local_files_only=hf_offline())
    except OSError as e:
        raise BackendNotInstalled(f"{what}: cannot load {model!r} ({e}); {hint}") from e
    device = torch_device(device)
    net.to(device).eval()
    return processor, net, device
