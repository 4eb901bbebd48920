"""The ``fetch`` step: download a URL source with yt-dlp into ``DATASET_DIR/downloads/``.

yt-dlp handles video sites and, through its generic extractor, direct links to video files. The step

- skips the download when ``downloads/<scene_id>.<ext>`` already exists (a finished earlier download),
- keeps yt-dlp's download archive (``downloads/archive.txt``: one ``<extractor> <video id>`` line per
  finished download, yt-dlp's ``--download-archive`` format) so that other tools can skip the same videos,
- raises :class:`~vid2scene.errors.InputError` with yt-dlp's one-line reason when the download fails
  (the build records it in the index as the scene's failure), and
  :class:`~vid2scene.errors.BackendNotInstalled` when yt-dlp is absent (``pip install 'vid2scene[fetch]'``).

This is the only step of vid2scene that uses the network, and only for URL entries of a manifest.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import BackendNotInstalled, InputError

ARCHIVE = "archive.txt"


def backend_status() -> dict[str, str]:
    return {"yt-dlp": "installed" if importlib.util.find_spec("yt_dlp") else "not installed "
            "(pip install 'vid2scene[fetch]')"}


def existing_download(downloads: Path, scene_id: str) -> Path | None:
    """The finished download of ``scene_id`` in ``downloads`` (not a ``.part``/``.ytdl`` leftover), or None."""
    if not downloads.is_dir():
        return None
    for p in sorted(downloads.glob(f"{scene_id}.*")):
        if p.is_file() and p.suffix not in (".part", ".ytdl", ".tmp") and ".part" not in p.suffixes:
            return p
    return None


class _QuietLogger:
    """yt-dlp logger that keeps the last error line instead of printing."""

    def __init__(self):
        self.errors: list[str] = []

    def debug(self, msg):
        pass

    def info(self, msg):
        pass

    def warning(self, msg):
        pass

    def error(self, msg):
        self.errors.append(str(msg))


def fetch(url: str, downloads: str | Path, scene_id: str, socket_timeout_s: float = 30.0,
          retries: int = 2) -> tuple[Path, bool]:
    """Download ``url`` to ``downloads/<scene_id>.<ext>``; returns (path, downloaded_now).

    ``downloaded_now`` is False when an earlier finished download was reused.

    Raises:
        BackendNotInstalled: yt-dlp is not installed.
        InputError: yt-dlp could not download the URL (unreachable, 404, unsupported page, ...).
    """
    downloads = Path(downloads)
    downloads.mkdir(parents=True, exist_ok=True)
    done = existing_download(downloads, scene_id)
    if done is not None:
        return done, False
    try:
        import yt_dlp
    except ImportError as e:
        raise BackendNotInstalled("fetching URLs needs yt-dlp: pip install 'vid2scene[fetch]'") from e

    def attempt(use_archive: bool) -> None:
        log = _QuietLogger()
        opts = {"outtmpl": str(downloads / f"{scene_id}.%(ext)s"), "noplaylist": True, "quiet": True,
                "no_warnings": True, "noprogress": True, "logger": log, "socket_timeout": socket_timeout_s,
                "retries": retries, "format": "best[ext=mp4]/best", "overwrites": False, "color": "never"}
        if use_archive:
            opts["download_archive"] = str(downloads / ARCHIVE)
        try:
            with yt_dlp.YoutubeDL(opts) as ydl:
                rc = ydl.download([url])
        except Exception as e:  # yt-dlp's DownloadError and friends
            msg = log.errors[-1] if log.errors else str(e)
            raise InputError(f"fetch failed for {url}: {_one_line(msg)}") from e
        if rc:
            raise InputError(f"fetch failed for {url}: {_one_line(log.errors[-1] if log.errors else 'yt-dlp error')}")

    attempt(use_archive=True)
    done = existing_download(downloads, scene_id)
    if done is None:  # listed in the archive, but the file is gone: download again, ignoring the archive
        attempt(use_archive=False)
        done = existing_download(downloads, scene_id)
    if done is None:
        raise InputError(f"fetch failed for {url}: yt-dlp reported success but wrote no file")
    return done, True


def _one_line(msg: str) -> str:
    msg = " ".join(str(msg).split())
    return msg.removeprefix("ERROR: ")[:300]
