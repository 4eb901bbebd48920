"""``ingest`` stage: decode the input once, streaming, into working-resolution frames.

Reads a video file (anything PyAV/FFmpeg decodes: H.264/H.265/VP9/AV1 in mp4/mkv/webm/mov, variable frame
rate, rotation metadata honoured) or a folder of ordered images, and writes

* ``frames_all/NNNNNN.jpg``: kept frames (at most ``max_fps`` per second of video time), long side
  ``long_side`` px, upright (display orientation), RGB JPEG;
* ``frames_all/index.json``: ``{"frames": [{"source_frame", "timestamp_s"}]}`` in decode order;
* ``video.json``: fps, duration_s, width, height (display orientation, source pixels), rotation_deg,
  n_frames (decoded), codec, working size, kept frames, whether the file was truncated.

Frames are written as they are decoded, so memory stays flat for long videos.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import io, progress
from .errors import InputError, StageFailed
from .scene import Scene
from .stage import StageResult

NAME = "ingest"
OUTPUTS = ["frames_all", "video.json"]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_fps: float = Field(10.0, ge=0, description="keep at most this many frames per second of video; 0 = all")
    long_side: int = Field(640, ge=0, description="working resolution: long side in px (never upscaled); 0 = native")
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_frames: int | None = Field(None, ge=1, description="stop after keeping this many frames")
    images_fps: float = Field(10.0, gt=0, description="frame rate assumed for an image-folder input (timestamps)")


def describe_source(path: str | Path) -> dict:
    """Identify an input: ``{"path", "kind": "video"|"images", "sha256", "size_bytes"}``.

    The sha256 of a video is of the file; of an image folder, of the sorted names and sizes of its images.

    Raises:
        InputError: the path does not exist, or is a folder without images.
    """
    p = Path(path).expanduser()
    try:
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if not p.is_dir() and not p.is_file():
            raise InputError(f"input is not a regular file or folder (device, pipe or socket): {p}")
        return _describe(p)
    except OSError as e:
        raise InputError(f"cannot read input {p}: {e.strerror or e}") from e


def _describe(p: Path) -> dict:
    if p.is_dir():
        images = list_images(p)
        listing = "\n".join(f"{f.name}\t{f.stat().st_size}" for f in images)
        return {"path": str(p.resolve()), "kind": "images", "n_images": len(images),
                "sha256": hashlib.sha256(listing.encode()).hexdigest(),
                "size_bytes": sum(f.stat().st_size for f in images)}
    return {"path": str(p.resolve()), "kind": "video", "sha256": io.sha256_file(p), "size_bytes": p.stat().st_size}


def list_images(folder: Path) -> list[Path]:
    """The images of ``folder`` (by extension, :data:`IMAGE_EXTS`) in sorted-name order.

    Raises:
        InputError: the folder holds no images.
    """
    images = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    if not images:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in folder {folder}")
    return images


def working_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) scaled so that the long side is ``long_side`` (no upscaling), both even."""
    s = 1.0 if long_side <= 0 or max(width, height) <= long_side else long_side / max(width, height)
    w, h = max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)
    if s == 1.0:
        w, h = width, height
    return w, h


def rotate_upright(image: np.ndarray, rotation_deg: float) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, as PyAV's ``VideoFrame.rotation``)."""
    r = int(round(rotation_deg / 90.0)) % 4
    if r == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k=r))  # np.rot90 rotates counter-clockwise


class _Keeper:
    """Decides which frames to keep for a frame-rate cap, from presentation timestamps (VFR-safe)."""

    def __init__(self, max_fps: float):
        self.step = 0.0 if max_fps <= 0 else 1.0 / max_fps
        self.next_t = -math.inf

    def keep(self, t: float) -> bool:
        if self.step == 0.0:
            return True
        if t + 1e-6 >= self.next_t:
            # Advance on a fixed grid so rounding does not drift; jump ahead after gaps.
            self.next_t = max(self.next_t + self.step, t + self.step * 0.5) if math.isfinite(self.next_t) \
                else t + self.step
            return True
        return False


def _open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise InputError(f"not a decodable video: {path.name} ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise InputError(f"no video stream in {path.name}")
    return container


def probe_video(path: Path) -> dict:
    """Stream-level facts without decoding: codec, fps, duration_s, frame count estimate, coded size.

    Raises:
        InputError: the file cannot be opened as a video.
    """
    container = _open_video(path)
    try:
        s = container.streams.video[0]
        fps = float(s.average_rate) if s.average_rate else (float(s.guessed_rate) if s.guessed_rate else 0.0)
        duration_s = float(s.duration * s.time_base) if s.duration is not None and s.time_base else (
            container.duration / 1e6 if container.duration else 0.0)
        return {"codec": s.codec_context.codec.canonical_name, "fps": fps, "duration_s": duration_s,
                "n_frames_header": int(s.frames or 0), "coded_width": s.codec_context.width,
                "coded_height": s.codec_context.height}
    finally:
        container.close()


def iter_video_frames(path: Path) -> Iterator[tuple[int, float, int, "object | None", bool]]:
    """Decode ``path`` in order: yields ``(source_frame, timestamp_s, rotation_deg, frame, truncated)``.

    ``frame`` is the undecoded-to-array ``av.VideoFrame`` (convert only the frames you keep, e.g.
    ``frame.to_ndarray(format="rgb24", width=w, height=h)``); ``timestamp_s`` comes from the frame's pts
    (variable frame rate safe). A last item ``(i, nan, 0, None, True)`` is yielded when decoding stopped on
    corrupt data. Raises InputError when the file cannot be opened as a video.
    """
    import av

    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base) if stream.time_base else None
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        i = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * tb) if (frame.pts is not None and tb) else i / fps
                yield i, t, int(getattr(frame, "rotation", 0) or 0), frame, False
                i += 1
        except (av.error.FFmpegError, EOFError):  # corrupt or truncated data: keep what decoded
            yield i, float("nan"), 0, None, True
    finally:
        container.close()


def run(scene: Scene, config: Config) -> StageResult:
    """Decode the scene's source into ``frames_all/`` and write ``video.json``.

    Raises:
        InputError: the input is missing, not decodable, has images of different sizes, or yields zero frames.
    """
    source = scene.read_manifest()["source"]
    path = Path(source["path"])
    out = FrameWriter(scene, config)
    if source["kind"] == "images":
        info, warnings = ingest_images(path, config, out), []
    else:
        info, warnings = ingest_video(path, config, out)
    if not out.kept:
        raise InputError(f"no frames kept from {path.name}")
    info.update({"working_width": out.size[0], "working_height": out.size[1], "n_kept": len(out.kept),
                 "max_fps": config.max_fps, "scale_working_from_source": out.size[0] / info["width"]})
    scene.write_frame_index(out.kept)
    scene.write_video_info(info)
    qc = {"n_frames_decoded": info["n_frames"], "n_frames_kept": len(out.kept), "duration_s": info["duration_s"],
          "truncated": info["truncated"]}
    return StageResult(qc=qc, summary=f"{len(out.kept)} of {info['n_frames']} frames kept at "
                       f"{info['working_width']}x{info['working_height']}", warnings=warnings)


class FrameWriter:
    """Writes kept frames to ``frames_all/`` (emptied first) as they are decoded and remembers them."""

    def __init__(self, scene: Scene, config: Config):
        self.scene, self.config = scene, config
        if scene.frames_all_dir.exists():
            shutil.rmtree(scene.frames_all_dir)
        scene.frames_all_dir.mkdir(parents=True)
        self.keeper = _Keeper(config.max_fps)
        self.kept: list[dict] = []
        self.size: tuple[int, int] | None = None  # (w, h) of the written frames

    def full(self) -> bool:
        """Whether ``max_frames`` frames are kept already."""
        return bool(self.config.max_frames and len(self.kept) >= self.config.max_frames)

    def save(self, source_frame: int, t: float, rgb: np.ndarray) -> None:
        """Write one frame. Raises StageFailed with the OS reason when the write fails (full disk, ...)."""
        path = self.scene.frame_path(source_frame)
        try:
            io.write_image_rgb_checked(path, rgb, jpeg_quality=self.config.jpeg_quality)
        except OSError as e:
            raise StageFailed(NAME, f"cannot write frame {path}: {e.strerror or e}") from e
        self.kept.append({"source_frame": source_frame, "timestamp_s": round(t, 6)})
        if self.size is None:
            self.size = (int(rgb.shape[1]), int(rgb.shape[0]))


def _read_input_image(path: Path) -> np.ndarray:
    try:
        return io.read_image_rgb(path)
    except OSError as e:
        raise InputError(f"unreadable image {path}") from e


def ingest_images(folder: Path, config: Config, out: FrameWriter) -> dict:
    """Keep frames of an image folder (sorted names, ``images_fps`` timestamps); returns ``video.json``'s
    source fields.

    Raises:
        InputError: no images, an unreadable image, or images of different sizes.
    """
    import cv2

    images = list_images(folder)
    first = _read_input_image(images[0])
    h0, w0 = first.shape[:2]
    size = working_size(w0, h0, config.long_side)
    with progress.bar("ingest: images", total=len(images)) as b:
        for i, f in enumerate(images):
            if out.full():
                break
            t = i / config.images_fps
            b.advance()
            if not out.keeper.keep(t):
                continue
            rgb = first if i == 0 else _read_input_image(f)
            if rgb.shape[:2] != (h0, w0):
                raise InputError(f"image {f.name} is {rgb.shape[1]}x{rgb.shape[0]}, the first image is "
                                 f"{w0}x{h0}: a folder input needs images of one size")
            if size != (w0, h0):
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            out.save(i, t, rgb)
    return {"kind": "images", "fps": config.images_fps, "duration_s": len(images) / config.images_fps,
            "width": w0, "height": h0, "rotation_deg": 0, "n_frames": len(images), "codec": None,
            "truncated": False}


@dataclass
class _Decoded:
    """What decoding a video found: frames decoded, their timestamps, the display size and rotation."""

    n_decoded: int = 0
    times: list[float] = field(default_factory=list)
    rotation: int = 0
    display: tuple[int, int] | None = None  # (w, h) in display orientation, source pixels
    truncated: bool = False  # decoding stopped on corrupt data
    stopped: bool = False    # stopped at max_frames


def ingest_video(path: Path, config: Config, out: FrameWriter) -> tuple[dict, list[str]]:
    """Keep frames of a video file; returns (``video.json``'s source fields, warnings).

    Raises:
        InputError: not a decodable video, or no decodable frames.
    """
    probe = probe_video(path)
    dec = _decode(path, config, out, int(probe["n_frames_header"]) or None)
    if dec.n_decoded == 0:
        raise InputError(f"no decodable frames in {path.name}"
                         + (" (file is truncated or corrupt)" if dec.truncated else ""))
    truncated, warnings = _truncation(dec, probe["duration_s"])
    times = dec.times
    dts = np.diff(np.asarray(times)) if len(times) > 2 else np.zeros(0)
    vfr = bool(len(dts) and (dts.max() - dts.min()) > 0.5 * max(np.median(dts), 1e-6))
    duration = (times[-1] - times[0] + (np.median(dts) if len(dts) else 0.0)) if times else 0.0
    info = {"kind": "video", "fps": probe["fps"], "duration_s": round(float(duration), 4),
            "width": dec.display[0], "height": dec.display[1], "rotation_deg": dec.rotation,
            "n_frames": dec.n_decoded, "codec": probe["codec"], "variable_frame_rate": vfr, "truncated": truncated}
    return info, warnings


def _decode(path: Path, config: Config, out: FrameWriter, n_estimate: int | None) -> _Decoded:
    """Decode ``path`` once, saving the kept frames (scaled to the working size, then rotated upright)."""
    dec = _Decoded()
    wsize: tuple[int, int] | None = None
    with progress.bar("ingest: decode", total=n_estimate) as b:
        for idx, t, rot, frame, trunc in iter_video_frames(path):
            if trunc:
                dec.truncated = True
                break
            dec.n_decoded += 1
            dec.times.append(t)
            b.advance()
            if out.full():
                dec.stopped = True
                break
            if not out.keeper.keep(t):
                continue
            if wsize is None:
                dec.rotation = rot
                w0, h0 = frame.width, frame.height
                dec.display = (h0, w0) if int(round(rot / 90.0)) % 2 else (w0, h0)
                wsize = working_size(w0, h0, config.long_side)
            rgb = frame.to_ndarray(format="rgb24", width=wsize[0], height=wsize[1])
            out.save(idx, t, rotate_upright(rgb, dec.rotation))
    return dec


def _truncation(dec: _Decoded, header_duration_s: float) -> tuple[bool, list[str]]:
    """(whether the file is truncated, warnings): decoding stopped on corrupt data, or a clean EOF came well
    before the duration the header declares (a cut-off mkv/webm)."""
    if dec.truncated:
        return True, [f"decoding stopped early (truncated or corrupt file): kept {dec.n_decoded} decoded frames"]
    times = dec.times
    if not dec.stopped and len(times) > 1 and header_duration_s > 0:
        decoded_s = times[-1] - times[0] + float(np.median(np.diff(times)))
        if header_duration_s - decoded_s > max(0.5, 0.1 * header_duration_s):
            return True, [f"file looks truncated: decoded {decoded_s:.1f} s of the {header_duration_s:.1f} s "
                          f"its header declares ({dec.n_decoded} frames)"]
    return False, []
