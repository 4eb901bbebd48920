"""What every stage shares: the result type and the stage protocol.

A stage is a module with ``NAME``, a pydantic ``Config``, ``OUTPUTS`` (paths relative to the scene folder
that it writes, removed before a re-run so a half-written result is never trusted) and
``run(scene, config) -> StageResult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageResult:
    """What a stage reports back: QC figures (JSON-able), a one-line summary and warnings."""

    qc: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    warnings: list[str] = field(default_factory=list)


def backend_status(backends: dict[str, type]) -> dict[str, str]:
    """``{name: "installed" | "not installed: <how to install>"}`` for a stage's backend registry.

    Each backend class has ``is_installed() -> (bool, hint)``.
    """
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
