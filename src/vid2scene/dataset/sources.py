"""Dataset sources: read a manifest (text, CSV or a folder of videos) into tasks with stable scene ids.

A *source* is one video: a local file (or a folder of ordered images) or an ``http(s)://`` URL that the
``fetch`` step downloads with yt-dlp. Each source is one build task; its scene is written to
``DATASET_DIR/scenes/<scene_id>/``.

Manifest formats:

- a folder: every video file in it (extensions in :data:`VIDEO_EXTS`), sorted by name, not recursive;
- a ``.csv`` file with a header: column ``source`` (or ``path`` / ``url``), optional column ``id``;
- any other text file: one source per line; blank lines and lines starting with ``#`` are ignored.

Relative paths in a manifest file are resolved against the manifest's folder.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Source:
    """One build task's input.

    ``uri``: absolute local path, or the URL as written; ``kind``: ``"file"`` or ``"url"``;
    ``scene_id``: stable folder name under ``DATASET_DIR/scenes/``.
    """

    uri: str
    kind: str
    scene_id: str

    @property
    def is_url(self) -> bool:
        return self.kind == "url"


def is_url(text: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text))


def slugify(text: str, max_len: int = 40) -> str:
    """Lower-case ``[a-z0-9-]`` slug of ``text`` (``"My Tour (1).mp4"`` -> ``"my-tour-1-mp4"``)."""
    s = _SLUG.sub("-", text.lower()).strip("-")
    return (s[:max_len].rstrip("-")) or "video"


def scene_id_for(uri: str) -> str:
    """Stable scene id of a source: slug of its file stem + ``-`` + first 8 hex digits of sha1(uri).

    ``uri`` is the absolute path (local files) or the URL, so the same source always maps to the same
    folder and two files with the same name in different folders do not collide.
    """
    if is_url(uri):
        from urllib.parse import unquote, urlsplit

        u = urlsplit(uri)
        tail = unquote(u.path).rstrip("/").rsplit("/", 1)[-1]
        stem = (tail.rsplit(".", 1)[0] if "." in tail else tail) or u.hostname or "url"
    else:
        stem = Path(uri).stem if Path(uri).suffix.lower() in VIDEO_EXTS else Path(uri).name
    return f"{slugify(stem)}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"


def _make(entry: str, base: Path, given_id: str | None = None) -> Source:
    entry = entry.strip()
    if is_url(entry):
        if not entry.lower().startswith(("http://", "https://")):
            raise InputError(f"unsupported URL scheme in sources: {entry!r} (only http and https)")
        uri, kind = entry, "url"
    else:
        p = Path(entry).expanduser()
        uri, kind = str((p if p.is_absolute() else base / p).resolve()), "file"
    sid = slugify(given_id, 80) if given_id else scene_id_for(uri)
    return Source(uri=uri, kind=kind, scene_id=sid)


def read_sources(spec: str | Path) -> list[Source]:
    """Sources listed by ``spec`` (a folder of videos, a CSV file or a text file), in manifest order.

    Duplicate entries (same scene id) are kept once. A listed local file that does not exist is *not* an
    error here: its task fails with the reason, like any bad video, so one typo does not stop a build.

    Raises:
        InputError: ``spec`` does not exist, a CSV has no ``source``/``path``/``url`` column, a URL has
            an unsupported scheme, or no source is listed at all.
    """
    spec = Path(spec).expanduser()
    if not spec.exists():
        raise InputError(f"sources not found: {spec}")
    out: list[Source] = []
    if spec.is_dir():
        # iterdir() yields paths that already start with ``spec``: resolve them, never join them to it again
        out = [_make(str(p.resolve()), spec) for p in sorted(spec.iterdir())
               if p.is_file() and p.suffix.lower() in VIDEO_EXTS]
    elif spec.suffix.lower() == ".csv":
        with open(spec, newline="") as f:
            reader = csv.DictReader(f)
            cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
            col = next((cols[c] for c in ("source", "path", "url") if c in cols), None)
            if col is None:
                raise InputError(f"{spec}: a CSV manifest needs a 'source' (or 'path' / 'url') column; "
                                 f"found {list(cols)}")
            for row in reader:
                val = (row.get(col) or "").strip()
                if val and not val.startswith("#"):
                    out.append(_make(val, spec.parent, (row.get(cols["id"]) or "").strip() if "id" in cols else None))
    else:
        try:
            lines = spec.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read sources file {spec}: {e}") from e
        out = [_make(line, spec.parent) for line in lines if line.strip() and not line.strip().startswith("#")]
    seen, uniq = set(), []
    for s in out:
        if s.scene_id not in seen:
            seen.add(s.scene_id)
            uniq.append(s)
    if not uniq:
        raise InputError(f"no sources in {spec} (expected video files, or lines of paths / URLs)")
    return uniq
