"""Atomic file writes and small readers/writers shared by all stages.

Every asset in a scene folder is written to a temporary name in the same folder and then renamed, so a
crash never leaves a half-written file under the final name (DESIGN.md, "The scene folder").
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once, at import


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, on error delete it.

    ``suffix`` defaults to the final file's suffix so that writers that infer the format from the
    extension (OpenCV, Open3D) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.", suffix=path.suffix if suffix is None else suffix,
                               dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files: give assets the permissions open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def finished_files(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Files of ``folder`` matching the glob ``pattern``, sorted, without :func:`atomic_path`'s in-progress
    temporaries (``.NAME.tmp.XXXX.ext``, which keep the final suffix and so match the same patterns)."""
    return sorted(p for p in Path(folder).glob(pattern) if not (p.name.startswith(".") and ".tmp." in p.name))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """Atomically write ``data`` as JSON (NumPy arrays and scalars converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def ply_vertex_array(points: np.ndarray, colors: np.ndarray | None = None,
                     normals: np.ndarray | None = None) -> np.ndarray:
    """PLY vertex records: a structured little-endian array with x, y, z (float32), optional nx, ny, nz
    (float32) and red, green, blue (uint8) fields, one row per point of ``points`` (``N×3``)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    arr = np.empty(len(points), dtype=fields)
    arr["x"], arr["y"], arr["z"] = points.T
    if normals is not None:
        arr["nx"], arr["ny"], arr["nz"] = np.asarray(normals, dtype=np.float32).reshape(-1, 3).T
    if colors is not None:
        arr["red"], arr["green"], arr["blue"] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3).T
    return arr


def write_ply_points(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None,
                     normals: np.ndarray | None = None, comments: list[str] | None = None) -> None:
    """Atomically write a binary little-endian PLY point cloud with plyfile.

    Args:
        points: ``N×3`` float positions (written as float32, in the frame the caller names in ``comments``).
        colors: optional ``N×3`` uint8 RGB.
        normals: optional ``N×3`` float unit normals.
        comments: header comments, e.g. ``["frame: sfm"]``.
    """
    from plyfile import PlyData, PlyElement

    arr = ply_vertex_array(points, colors, normals)
    ply = PlyData([PlyElement.describe(arr, "vertex")], text=False, comments=list(comments or []))
    with atomic_path(path) as tmp:
        ply.write(str(tmp))


def read_ply_points(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a PLY point cloud: returns (``N×3`` float64 points, ``N×3`` uint8 colours or None)."""
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"].data
    pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    names = v.dtype.names or ()
    cols = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8) if "red" in names else None
    return pts, cols


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
