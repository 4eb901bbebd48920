"""The one exception hierarchy of vid2scene (see DESIGN.md, "Errors and exit codes").

Library code raises these, never ``sys.exit``; the CLI maps them to exit codes:

=====================  =========  ====================================================
exception              exit code  meaning
=====================  =========  ====================================================
``InputError``         3          missing / unreadable / undecodable input, bad config
``RejectedInput``      3          usable file, unusable content (static camera, ...)
``StageFailed``        4          a stage ran and could not produce a good result
``BackendNotInstalled`` 4         a selected backend's dependency or weights are absent
=====================  =========  ====================================================
"""

from __future__ import annotations


class Vid2SceneError(Exception):
    """Base class. ``str(err)`` is a one-line, user-facing reason."""

    exit_code = 1

    def __init__(self, reason: str):
        super().__init__(" ".join(str(reason).split()))

    @property
    def reason(self) -> str:
        return str(self)


class InputError(Vid2SceneError):
    """The input path, file or configuration is unusable (missing, not a video, no frames)."""

    exit_code = 3


class RejectedInput(Vid2SceneError):
    """The input decodes but its content is unusable (static camera, too short, no usable shot)."""

    exit_code = 3


class StageFailed(Vid2SceneError):
    """A stage ran but its result fails the quality checks (e.g. SfM registered too few frames)."""

    exit_code = 4

    def __init__(self, stage: str, reason: str):
        self.stage = stage
        super().__init__(f"{stage}: {reason}")


class BackendNotInstalled(Vid2SceneError):
    """A selected backend cannot run: its package or weights are missing. The reason says how to fix it."""

    exit_code = 4
