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


def read_ply_points(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read a PLY point cloud (or a mesh's vertices): (``N×3`` float64 points, ``N×3`` uint8 colours or None,
    ``N×3`` float64 normals or None)."""
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"].data
    return _vertex_fields(v)


def _vertex_fields(v) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    names = v.dtype.names or ()
    pts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    cols = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8) if "red" in names else None
    nrm = np.stack([v["nx"], v["ny"], v["nz"]], axis=1).astype(np.float64) if "nx" in names else None
    return pts, cols, nrm


def read_ply_comments(path: str | os.PathLike) -> list[str]:
    """Header comments of a PLY file (``comment`` lines, without the keyword)."""
    out = []
    with open(path, "rb") as f:
        for _ in range(200):
            line = f.readline()
            if not line:
                break
            s = line.decode("ascii", "replace").strip()
            if s.startswith("comment "):
                out.append(s[len("comment "):])
            if s == "end_header":
                break
    return out


def write_ply_mesh(path: str | os.PathLike, vertices: np.ndarray, triangles: np.ndarray,
                   colors: np.ndarray | None = None, normals: np.ndarray | None = None,
                   comments: list[str] | None = None) -> None:
    """Atomically write a binary little-endian triangle-mesh PLY (vectorised, with header comments).

    Args:
        vertices: ``V×3`` float (written as float32).
        triangles: ``F×3`` int vertex indices (written as int32 lists of length 3).
        colors: optional ``V×3`` uint8 RGB (float 0..1 is converted).
        normals: optional ``V×3`` float vertex normals.
        comments: header comments, e.g. ``["frame: sfm"]``.
    """
    c = None if colors is None else np.asarray(colors)
    if c is not None and c.dtype != np.uint8:
        c = np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)
    write_ply_records(path, ply_vertex_array(vertices, c, normals), triangles, comments)


def read_ply_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read a triangle-mesh PLY: (``V×3`` float64 vertices, ``F×3`` int64 triangles, ``V×3`` uint8 colours or
    None, ``V×3`` float64 normals or None). A file without faces gives ``0×3`` triangles."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
    except Exception:  # a face list of another length, or no face element: read it the slow way
        ply = PlyData.read(str(path))
    pts, cols, nrm = _vertex_fields(ply["vertex"].data)
    tri = np.zeros((0, 3), np.int64)
    if "face" in ply:
        f = ply["face"].data
        key = "vertex_indices" if "vertex_indices" in (f.dtype.names or ()) else (f.dtype.names or ("",))[0]
        if len(f):
            tri = np.vstack([np.asarray(x, np.int64) for x in f[key]]) if f[key].dtype == object \
                else np.asarray(f[key], np.int64).reshape(-1, 3)
    return pts, tri, cols, nrm


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Atomically write a compressed ``.npz`` of the given arrays."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, loaded (the file is closed on return)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_image_rgb(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as ``H×W×3`` uint8 RGB, resized (area interpolation) to ``size = (width, height)`` when
    given. Raises OSError when the file is missing or unreadable."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"missing or unreadable image {path}")
    if size is not None and (bgr.shape[1], bgr.shape[0]) != tuple(size):
        bgr = cv2.resize(bgr, tuple(int(v) for v in size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_image_rgb(path: str | os.PathLike, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Atomically write an ``H×W×3`` uint8 RGB image (format from the suffix: .jpg or .png)."""
    import cv2

    with atomic_path(path) as tmp:
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if Path(path).suffix.lower() in (".jpg", ".jpeg") else []
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR), params):
            raise OSError(f"cannot write image {path}")


def open3d():
    """The ``open3d`` module, imported with passive OpenMP waiting.

    Open3D's OpenMP loops busy-wait by default; on shared, oversubscribed cores that made one fusion run
    4-8x slower (21 s vs 2.7 s on the synthetic room). Passive waiting only takes effect if set before the
    OpenMP runtime starts, i.e. before the first import of open3d; a user's own setting wins.

    Raises:
        BackendNotInstalled: Open3D is missing.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import open3d as o3d
    except ImportError as e:  # pragma: no cover - depends on the environment
        from .errors import BackendNotInstalled

        raise BackendNotInstalled("Open3D is needed: pip install open3d==0.19.0") from e
    return o3d


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- PLY meshes with arbitrary vertex fields (the ScanNet export's alpha / label) --------------------------
_PLY_TYPES = {"<f4": "float", "<f8": "double", "|u1": "uchar", "<u2": "ushort", "<i4": "int", "<u4": "uint"}


def write_ply_records(path: str | os.PathLike, vertices: np.ndarray, triangles: np.ndarray,
                      comments: list[str] | None = None) -> None:
    """Atomically write a binary little-endian triangle-mesh PLY whose vertices are a structured array.

    Args:
        vertices: ``V`` records of a little-endian structured dtype (fields float32/float64/uint8/uint16/
            int32/uint32, e.g. ``x y z red green blue alpha label``), written as they are.
        triangles: ``F×3`` int vertex indices (written as int32 lists of length 3).
        comments: header comments, e.g. ``["frame: gravity_z_up_metric"]``.
    """
    tri = np.asarray(triangles, dtype=np.int32).reshape(-1, 3)
    faces = np.empty(len(tri), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"] = 3
    faces["v"] = tri
    head = ["ply", "format binary_little_endian 1.0"] + [f"comment {c}" for c in (comments or [])]
    head.append(f"element vertex {len(vertices)}")
    head += [f"property {_PLY_TYPES[t]} {n}" for n, t in vertices.dtype.descr]
    head += [f"element face {len(tri)}", "property list uchar int vertex_indices", "end_header"]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(head) + "\n").encode("ascii"))
            f.write(np.ascontiguousarray(vertices).tobytes())
            f.write(faces.tobytes())


def read_ply_records(path: str | os.PathLike) -> np.ndarray:
    """The vertex element of a PLY file as a structured array (every field, as stored)."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3}})
    except Exception:  # a face list of another length, or no face element: read it the slow way
        ply = PlyData.read(str(path))
    return np.asarray(ply["vertex"].data)


# ---- video --------------------------------------------------------------------------------------------------
def write_video(path: str | os.PathLike, frames, fps: float = 10.0, options: dict | None = None) -> str:
    """Atomically write ``H×W×3`` uint8 RGB frames (an iterable; even sizes for yuv420p) as an MP4 with PyAV:
    H.264 (``libx264``) where available, else MPEG-4 Part 2. ``options`` are encoder options (e.g.
    ``{"preset": "ultrafast"}``). Returns the codec name.

    Raises:
        ValueError: no frames.
    """
    import av

    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write")
    h, w = first.shape[:2]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as c:
            s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=int(round(fps)))
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            if options:
                s.options = dict(options)
            for f in (first, *it):
                for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
            codec = s.codec_context.name
    return codec


# ---- nerfstudio transforms.json (written by sfm at the scene root, and by the nerfstudio exporter) --------
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def c2w_opengl(cam_from_world: np.ndarray) -> np.ndarray:
    """4×4 OpenGL-axes camera-to-world matrix from a 4×4 OpenCV ``cam_from_world``."""
    return np.linalg.inv(np.asarray(cam_from_world, dtype=np.float64)) @ OPENCV_TO_OPENGL


def cam_from_world_from_opengl(c2w_gl: np.ndarray) -> np.ndarray:
    """Inverse of :func:`c2w_opengl` (used to read a transforms.json back)."""
    return np.linalg.inv(np.asarray(c2w_gl, dtype=np.float64) @ OPENCV_TO_OPENGL)


def write_transforms(path: str | Path, frames: list, image_dir: str = "frames",
                     distortion: dict | None = None, world: str = "sfm") -> dict:
    """Write registered ``frames`` as a nerfstudio ``transforms.json`` (camera-to-world, OpenGL camera axes:
    ``transform_matrix = inverse(cam_from_world) @ diag(1, -1, -1, 1)``); returns the written dict.

    Args:
        frames: keyframe cameras (:class:`vid2scene.scene.CameraFrame`: ``name``, ``source_frame``, ``width``,
            ``height``, ``K``, ``cam_from_world``, ``registered``); unregistered ones are skipped; one shared
            intrinsics is assumed.
        image_dir: folder of the images, relative to the file.
        distortion: ``{"model": COLMAP model name, "params": [...]}`` as in ``cameras.json``.
        world: name of the world frame of the poses ("sfm" or "gravity_z_up_metric").
    """
    reg = [f for f in frames if f.registered]
    if not reg:
        raise ValueError("no registered frames to export")
    K = reg[0].K
    k1 = k2 = 0.0
    if distortion and distortion.get("model") in ("SIMPLE_RADIAL", "RADIAL"):
        params = distortion["params"]
        k1 = float(params[3])
        k2 = float(params[4]) if distortion["model"] == "RADIAL" else 0.0
    out = {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": int(reg[0].width), "h": int(reg[0].height), "k1": k1, "k2": k2, "p1": 0.0, "p2": 0.0,
        "vid2scene": {"camera_axes": "opengl (x right, y up, z back)", "matrices": "camera-to-world",
                      "world": world, "converted_from": "opencv cam_from_world"},
        "frames": [{"file_path": f"{image_dir}/{f.name}", "transform_matrix": c2w_opengl(f.cam_from_world).tolist(),
                    "source_frame": f.source_frame} for f in reg],
    }
    write_json(path, out)
    return out


# ---- JSON over HTTP (the OpenAI-compatible clients: instances' labeller, layout_synth's FPVScore) ---------
def post_json(url: str, body: dict, *, api_key: str | None = None, timeout_s: float = 30.0, retries: int = 2,
              backoff_s: float = 0.5, stage: str = "vid2scene", what: str = "request") -> Any:
    """POST ``body`` as JSON to ``url`` and return the decoded JSON reply (standard library only).

    A server error (HTTP 429 or 5xx), a timeout, a refused connection or a reply that is not JSON is retried
    ``retries`` times, waiting ``backoff_s`` doubled each time; a client error (other 4xx) is not.

    Raises:
        StageFailed: (``stage``; message prefixed by ``what``) the server refused the request ("refused the
            request: HTTP 400 …"), or no attempt got a JSON answer ("cannot get an answer from URL: <last
            reason> (after N tries)"; the reason names a timeout as "timed out after T s", a bad reply as
            "reply is not JSON").
    """
    import json as _json
    import socket
    import time
    import urllib.error
    import urllib.request

    from .errors import StageFailed

    data = _json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return _json.loads(r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            msg = e.read().decode("utf-8", "replace")[:200] if e.fp else ""
            last = f"HTTP {e.code} {msg}".strip()
            if e.code != 429 and e.code < 500:  # a client error will not go away by retrying
                raise StageFailed(stage, f"{what}: {url} refused the request: {last}") from e
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            last = f"timed out after {timeout_s:g} s" if isinstance(reason, (socket.timeout, TimeoutError)) \
                else str(reason)
        except _json.JSONDecodeError as e:
            last = f"reply is not JSON ({e})"
    raise StageFailed(stage, f"{what}: cannot get an answer from {url}: {last} (after {retries + 1} tries)")


# ---- image writes that report the operating system's reason ------------------------------------------------
def write_image_rgb_checked(path: str | os.PathLike, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Atomically write an ``H×W×3`` uint8 RGB image (.jpg or .png by suffix), encoding in memory
    (``cv2.imencode``) and writing with Python's file I/O, so that a failed write (full disk, no permission)
    raises :class:`OSError` carrying the OS reason (``errno``/``strerror``), not a bare False from
    ``cv2.imwrite``.

    Raises:
        OSError: the image could not be encoded or written (the OS error of the write).
    """
    import cv2

    suffix = Path(path).suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix or ".png", cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"cannot encode image {path} as {suffix}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.tobytes())
            f.flush()
