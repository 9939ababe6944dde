"""Video I/O for kpcodec: probe a video, read its frames at model resolution, write MP4.

Everything that touches a video container goes through this module, so that the
rest of kpcodec sees only ``numpy`` RGB frames and ``kpcodec.errors`` exceptions:

* :func:`probe` -> :class:`VideoInfo` (size, rational frame rate, frame count, ...).
* :func:`read_frames` yields HxWx3 ``uint8`` RGB frames, square-cropped and
  resized to ``size x size``, at a constant frame rate (see its docstring for the
  variable-frame-rate policy).
* :class:`VideoWriter` encodes RGB frames in the container its suffix names, with
  the video codec of :data:`CONTAINERS` (H.264 in mp4/mov/mkv, VP9 or AV1 in webm,
  GIF, raw y4m) or another encoder, atomically (temp file + ``os.replace``) or as
  fragmented MP4 to stdout.
* :func:`crop_warnings` says when a crop loses much (upscaled, or a very wide frame).
* :func:`check_codecs` reports which of the encoders/decoders we rely on exist.

Every reading failure raises :class:`~kpcodec.errors.VideoError` with a
one-line message that names the file; PyAV/FFmpeg exceptions never escape.
Writing failures (bad directory, full disk) also raise ``VideoError``;
arguments that make no sense (odd size, unknown codec) raise ``UsageError``.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from PIL import Image

from kpcodec.errors import UsageError, VideoError

__all__ = ["VideoInfo", "probe", "read_frames", "VideoWriter", "CONTAINERS", "container_for",
           "crop_warnings", "check_codecs"]

# Demuxers that open a single still image as a one-frame "video"; we refuse them.
_STILL_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe",
                        "tiff_pipe", "avif", "heif", "jpegxl_pipe", "qoi_pipe"}
# FFmpeg renders text files (ANSI art, .txt/.nfo) as "video"; they are not videos to us.
_TEXT_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}
_TEXT_CODECS = {"ansi", "bintext", "xbin", "idf"}
# Rates a variable-rate stream's average is snapped to (see _pick_rate).
_STANDARD_RATES = [Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001),
                   Fraction(30), Fraction(50), Fraction(60000, 1001), Fraction(60)]
# Rates above this from FFmpeg's guess are usually the timebase, not a frame rate.
_MAX_GUESSED_RATE = 240


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video.

    ``width``/``height`` are the *displayed* size: a rotation stored in the
    container (phone video) is applied, so they match what :func:`read_frames`
    sees before cropping.  ``fps`` is the rate :func:`read_frames` outputs at.
    ``frame_count`` is the number of coded frames: the container's own count
    when it stores one (mp4/mov), otherwise counted by demuxing the packets
    (mkv/webm; reads the file but decodes nothing).  For constant-frame-rate
    input it equals the number of frames :func:`read_frames` yields; for
    variable-frame-rate input the resampled count can differ slightly.
    ``duration_s`` is the video stream's duration when the container gives it,
    else ``frame_count / fps``.  ``codec`` is FFmpeg's canonical codec name
    ("h264", "hevc", "vp9", "av1", "mjpeg", ...).
    """

    path: str
    width: int
    height: int
    fps: Fraction
    frame_count: int
    duration_s: float
    codec: str
    has_audio: bool


# --------------------------------------------------------------------------- helpers


def reason(exc: BaseException) -> str:
    """One-line reason from a PyAV/OS exception (never the multi-line log dump)."""
    msg = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    log = getattr(exc, "log", None)
    if isinstance(log, tuple) and len(log) >= 3 and log[2]:
        msg = f"{msg}; {log[2]}"
    return " ".join(str(msg).split())


def _open_input(path: str):
    """Open ``path`` for reading; return (container, video_stream) or raise VideoError."""
    # Check the common cases ourselves: the messages are clearer than FFmpeg's.
    if not os.path.exists(path):
        raise VideoError(f"cannot open {path}: No such file")
    if os.path.isdir(path):
        raise VideoError(f"cannot open {path}: is a directory")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: not a video (empty file)")
    try:
        container = av.open(path, mode="r")
    except PermissionError as e:
        raise VideoError(f"cannot open {path}: Permission denied") from e
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: not a video or corrupt ({reason(e)})") from e
    try:
        fmt = container.format.name.split(",")[0]
        if fmt in _STILL_IMAGE_FORMATS:
            raise VideoError(f"{path}: not a video (a still image)")
        if not container.streams.video:
            raise VideoError(f"{path}: not a video (no video stream)")
        stream = container.streams.video[0]
        if fmt in _TEXT_FORMATS or stream.codec_context.name in _TEXT_CODECS:
            raise VideoError(f"{path}: not a video (a text file)")
        # Frame + slice threading; frame threading matters most on small frames.
        stream.thread_type = "AUTO"
        return container, stream
    except BaseException:
        container.close()
        raise


def _pick_rate(path: str, stream) -> Fraction:
    """The constant rate we output at.

    FFmpeg's ``base_rate`` (r_frame_rate) is the exact nominal rate of a
    constant-rate stream (e.g. 30000/1001), while ``average_rate`` is frames /
    duration.  When they agree (within 1%) the stream is constant-rate and we
    take the exact nominal value; otherwise the stream is variable-rate and we
    take the average: snapped to a standard rate within 1.5% of it, else with a
    denominator of at most 1001 so that it is usable as a time base.
    """
    avg = stream.average_rate
    base = stream.base_rate
    if avg and base and abs(float(avg) / float(base) - 1.0) < 0.01:
        return Fraction(base)
    if avg and avg > 0:
        # Phones record nominal 30 (or 25, 60) fps with jitter and the odd dropped
        # frame, so the average is a little off a standard rate: snap to it.
        nearest = min(_STANDARD_RATES, key=lambda r: abs(float(avg) / float(r) - 1.0))
        if abs(float(avg) / float(nearest) - 1.0) < 0.015:
            return nearest
        return Fraction(avg).limit_denominator(1001)
    guessed = stream.guessed_rate
    if guessed and 0 < guessed <= _MAX_GUESSED_RATE:
        return Fraction(guessed)
    raise VideoError(f"{path}: cannot determine the frame rate")


def _as_rate(fps) -> Fraction:
    """Accept Fraction/int/str/float as a frame rate; floats go through their repr."""
    try:
        rate = fps if isinstance(fps, Fraction) else Fraction(str(fps))
    except (ValueError, ZeroDivisionError) as e:
        raise UsageError(f"bad frame rate {fps!r}") from e
    if rate <= 0:
        raise UsageError(f"bad frame rate {fps!r}: must be > 0")
    return rate


def _rotation_quarters(frame) -> int:
    """Number of 90-degree counter-clockwise turns the display matrix asks for."""
    try:
        deg = frame.rotation or 0
    except Exception:  # missing/odd side data: treat as unrotated
        return 0
    return int(round(deg / 90.0)) % 4


def _display_size(frame) -> tuple[int, int]:
    w, h = frame.width, frame.height
    return (h, w) if _rotation_quarters(frame) % 2 else (w, h)


def _stream_duration_tag(stream) -> float | None:
    """Matroska's per-stream "DURATION" tag (HH:MM:SS.nnnnnnnnn) in seconds, if any."""
    tag = (stream.metadata or {}).get("DURATION")
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", tag.strip()) if tag else None
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _count_packets(path: str) -> int:
    """Count the video stream's coded packets (= frames for every codec we read)."""
    container, stream = _open_input(path)
    n = 0
    try:
        for packet in container.demux(stream):
            if packet.size:  # the final empty packet is only a flush marker
                n += 1
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: corrupt data near frame {n} ({reason(e)})") from e
    finally:
        container.close()
    return n


class _Decoder:
    """Demux + decode one video stream, counting packets to detect truncation."""

    def __init__(self, path: str, container, stream, on_error=None):
        self.path, self.container, self.stream = path, container, stream
        self.packets = 0
        self.frames = 0
        # on_error(frame, reason): skip a packet that does not decode instead of raising.
        self.on_error = on_error
        self._it = self._gen()

    def _decode(self, packet):
        if self.on_error is None:
            return packet.decode()
        try:
            return packet.decode()
        except (av.FFmpegError, ValueError) as e:
            self.on_error(self.frames, reason(e))
            return ()

    def _gen(self):
        try:
            for packet in self.container.demux(self.stream):
                if packet.size:
                    self.packets += 1
                for frame in self._decode(packet):  # the empty packet flushes the decoder
                    self.frames += 1
                    yield frame
        except (av.FFmpegError, OSError) as e:
            raise VideoError(
                f"{self.path}: corrupt data at frame {self.frames} ({reason(e)})"
            ) from e

    def __iter__(self):
        return self._it

    def check_complete(self, last_end_s: float | None) -> None:
        """Raise VideoError if the file ended before what its header promised.

        FFmpeg's demuxers stop quietly at a premature end of file, so a
        half-downloaded video would otherwise read as a shorter clip.  mp4/mov
        carry a sample index in their header: fewer packets demuxed than index
        entries means the data ends early.  (The index is compared rather than
        the header's frame count because edit lists can drop samples from the
        index; a fragmented mp4 grows its index as it is read, so a cut-off
        fragment goes unnoticed.)  Matroska writers store a per-stream DURATION
        tag, checked with two frames of slack.  Other containers cannot be checked.
        """
        if "mov" in self.container.format.name.split(","):
            expected = len(self.stream.index_entries)
            if self.packets < expected:
                raise VideoError(
                    f"{self.path}: truncated or corrupt: {self.packets} of {expected} "
                    "frames present"
                )
        tag_s = _stream_duration_tag(self.stream)
        rate = self.stream.average_rate or self.stream.guessed_rate or 25
        if tag_s and last_end_s is not None and last_end_s < tag_s - 2.0 / float(rate) - 0.05:
            raise VideoError(
                f"{self.path}: truncated or corrupt: video ends at {last_end_s:.2f} s "
                f"of {tag_s:.2f} s"
            )


def _first_frame(path: str, decoder: _Decoder):
    try:
        return next(iter(decoder))
    except StopIteration:
        raise VideoError(f"{path}: no frames decoded") from None


# --------------------------------------------------------------------------- probe


def probe(path) -> VideoInfo:
    """Describe the video at ``path`` (decodes only its first frame).

    Raises VideoError if the file is missing, unreadable, not a video or has no frames.
    """
    p = os.fspath(path)
    container, stream = _open_input(p)
    try:
        rate = _pick_rate(p, stream)
        first = _first_frame(p, _Decoder(p, container, stream))
        width, height = _display_size(first)
        count = stream.frames or 0
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = None
        codec = stream.codec_context.codec.canonical_name
        has_audio = bool(container.streams.audio)
    finally:
        container.close()
    if count <= 0:
        count = _count_packets(p)
    if duration is None:
        duration = float(count / rate)
    return VideoInfo(p, width, height, rate, count, duration, codec, has_audio)


# --------------------------------------------------------------------------- reading


def crop_box(path: str, w: int, h: int, crop) -> tuple[int, int, int, int]:
    if crop is None:
        side = min(w, h)
        return ((w - side) // 2, (h - side) // 2, side, side)
    try:
        x, y, cw, ch = (int(v) for v in crop)
    except (TypeError, ValueError) as e:
        raise UsageError(f"crop must be four integers x,y,w,h, got {crop!r}") from e
    if cw <= 0 or ch <= 0 or x < 0 or y < 0 or x + cw > w or y + ch > h:
        raise UsageError(f"crop {x},{y},{cw},{ch} is outside the {w}x{h} frame of {path}")
    if cw != ch:
        # The model wants an undistorted face; resizing a non-square box would stretch it.
        raise UsageError(f"crop {x},{y},{cw},{ch} is not square (w must equal h)")
    return (x, y, cw, ch)


# crop_warnings: the crop is blown up more than this to the model's size, or the frame is
# wider (or taller) than this, so that its centre square keeps little of it.
MAX_UPSCALE = 1.5
MAX_ASPECT = 4.0


def crop_warnings(info: VideoInfo, size: int, crop=None) -> list[str]:
    """Warnings (one line each, naming the file) about the square a `size` model will see of
    the video `info` describes: the crop (default the centred largest square) upscaled more than
    MAX_UPSCALE, or, without `crop`, a frame beyond MAX_ASPECT:1. A bad `crop` raises UsageError."""
    w, h = info.width, info.height
    side = crop_box(info.path, w, h, crop)[2]
    what = "crop" if crop is not None else "centre square"
    out = []
    if size / side > MAX_UPSCALE:
        out.append(f"{info.path}: the {side}x{side} {what} is upscaled {size / side:.1f}x to the model's "
                   f"{size}x{size}, which blurs it (a larger --crop, or a larger input, keeps the detail)")
    if crop is None and max(w, h) / min(w, h) > MAX_ASPECT:
        out.append(f"{info.path}: the {w}x{h} frame is beyond {MAX_ASPECT:g}:1, so its centre square keeps "
                   f"{min(w, h) / max(w, h):.0%} of it (choose the square with --crop x,y,w,h)")
    return out


def to_rgb(frame, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Decoded frame -> rotated, cropped, resized contiguous uint8 RGB array."""
    # rgb24 conversion honours the frame's colour range/matrix tags (full-range phone video).
    img = frame.to_ndarray(format="rgb24")
    k = _rotation_quarters(frame)
    if k:
        img = np.rot90(img, k)
    x, y, w, h = box
    img = img[y : y + h, x : x + w]
    if w != size or h != size:
        # Measured on 1080p->256: Pillow LANCZOS with reducing_gap=2 takes 7.6 ms
        # and is within 52 dB PSNR of exact Lanczos (15 ms); swscale AREA is
        # 7 ms but only 41 dB from it (softer/aliased), swscale LANCZOS 18 ms.
        img = np.asarray(
            Image.fromarray(np.ascontiguousarray(img)).resize(
                (size, size), Image.Resampling.LANCZOS, reducing_gap=2.0
            )
        )
    return np.ascontiguousarray(img)


def read_frames(path, size: int = 256, crop: tuple[int, int, int, int] | None = None,
                *, fps=None, on_error=None) -> Iterator[np.ndarray]:
    """Yield the frames of ``path`` as ``size x size x 3`` uint8 RGB arrays.

    Geometry: a rotation stored in the container is applied first; then the
    frame is cropped to the centred largest square, or to ``crop=(x, y, w, h)``
    in displayed pixel coordinates (must be square and inside the frame, else
    UsageError); then resized to ``size`` with Lanczos antialiasing (no resize
    if the crop already has that size).  Sample aspect ratio is ignored.

    Timing policy (variable frame rate): output frame ``i`` shows the input at
    time ``start + i / rate``, where ``rate`` is ``fps`` if given, else
    ``probe(path).fps`` (the stream's exact nominal rate when constant, its
    average rate when variable) and ``start`` is the first frame's timestamp.
    Each decoded frame goes to slot ``round((pts - start) * rate)``; if several
    land in one slot the last wins (the others are dropped), and an empty slot
    repeats the previous frame (duplicate).  The last frame fills the slots up to
    the end of its duration.  So for constant-frame-rate input, every decoded
    frame is yielded exactly once, in order.  Duplicates are yielded as copies.

    Errors that can be found up front (missing file, not a video, no frames,
    bad crop) are raised by this call itself; corrupt data found later raises
    VideoError("<path>: corrupt data at frame N ...") from the iterator, and a
    file that ends before its header says (truncated download) raises
    VideoError after the last frame.  The file stays open until the iterator
    is exhausted, closed (``.close()``) or garbage-collected.

    ``on_error(frame, reason)``, if given, makes reading go on past a packet that
    does not decode: it is called with the number of frames decoded so far, the
    packet is skipped, and the timing policy above fills its slot with the previous
    frame (a duplicate).  Errors of the container itself still raise.
    """
    p = os.fspath(path)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0:
        raise UsageError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    container, stream = _open_input(p)
    try:
        rate = _as_rate(fps) if fps is not None else _pick_rate(p, stream)
        decoder = _Decoder(p, container, stream, on_error)
        first = _first_frame(p, decoder)
        box = crop_box(p, *_display_size(first), crop)
    except BaseException:
        container.close()
        raise
    return _resampled(p, container, decoder, first, rate, box, size)


def _resampled(path, container, decoder, first, rate, box, size):
    """The constant-rate frame generator behind :func:`read_frames`."""

    def slot_of(frame, prev_slot):
        if frame.pts is None or frame.time_base is None:
            return prev_slot + 1  # no timestamp: assume the next slot
        t = (frame.pts - start_pts) * Fraction(frame.time_base) * rate
        return math.floor(t + Fraction(1, 2))  # exact rational round-half-up

    def end_slot_of(frame, slot):
        dur = getattr(frame, "duration", None)
        if frame.pts is None or not dur or frame.time_base is None:
            return slot + 1
        t = (frame.pts + dur - start_pts) * Fraction(frame.time_base) * rate
        return max(slot + 1, math.floor(t + Fraction(1, 2)))

    start_pts = first.pts if first.pts is not None else 0
    try:
        next_out = 0  # index of the next output frame
        pending, pending_slot = first, 0
        for frame in decoder:
            slot = slot_of(frame, pending_slot)
            if slot > next_out:  # pending is shown for slots next_out .. slot-1
                img = to_rgb(pending, box, size)
                yield img
                next_out += 1
                while next_out < slot:
                    yield img.copy()
                    next_out += 1
            # else: the newer frame lands in the same slot, pending is dropped
            pending, pending_slot = frame, slot
        end = end_slot_of(pending, pending_slot)
        if end > next_out:
            img = to_rgb(pending, box, size)
            yield img
            next_out += 1
            while next_out < end:
                yield img.copy()
                next_out += 1
        last_end_s = None
        if pending.pts is not None and pending.time_base is not None:
            dur = getattr(pending, "duration", 0) or 0
            last_end_s = float((pending.pts + dur) * Fraction(pending.time_base))
            if decoder.stream.start_time is not None:
                last_end_s -= float(decoder.stream.start_time * decoder.stream.time_base)
        decoder.check_complete(last_end_s)
    finally:
        container.close()


# --------------------------------------------------------------------------- writing


def _encoder_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    """Constant-quality options for the encoders we use; others get FFmpeg defaults."""
    if codec in ("libx264", "libx265"):
        opts = {"crf": str(crf), "preset": str(preset)}
        if codec == "libx265":
            opts["x265-params"] = "log-level=error"  # x265 otherwise prints a banner to stderr
        return opts
    if codec == "libsvtav1":
        opts = {"crf": str(crf)}
        if str(preset).isdigit():  # SVT-AV1 presets are numbers 0..13
            opts["preset"] = str(preset)
        return opts
    if codec == "libvpx-vp9":
        return {"crf": str(crf), "b": "0"}  # b=0 makes crf pure constant quality
    return {}


@dataclass(frozen=True)
class Container:
    """An output container: FFmpeg muxer, video encoders in order of preference (the first this
    PyAV build has is used), their pixel format, and whether it carries Opus audio."""

    format: str
    encoders: tuple[str, ...]
    pix_fmt: str
    audio: bool


# What VideoWriter (and so `kpcodec decode`) writes, by the output's suffix; no suffix and "-"
# (stdout, then fragmented) are MP4. GIF frames get a palette of their own (pal8).
CONTAINERS: dict[str, Container] = {
    ".mp4": Container("mp4", ("libx264",), "yuv420p", True),
    ".mov": Container("mov", ("libx264",), "yuv420p", True),
    ".mkv": Container("matroska", ("libx264",), "yuv420p", True),
    ".webm": Container("webm", ("libvpx-vp9", "libsvtav1"), "yuv420p", True),
    ".gif": Container("gif", ("gif",), "pal8", False),
    ".y4m": Container("yuv4mpegpipe", ("rawvideo",), "yuv420p", False),
}


def _suffix(path: str) -> str:
    return "" if path == "-" else Path(path).suffix.lower()


def container_for(path) -> tuple[Container, str]:
    """The container of :data:`CONTAINERS` for output `path` and the video encoder to use.

    UsageError for a suffix not in the table (the message lists those it writes), or when this
    PyAV build has none of its encoders.
    """
    p = os.fspath(path)
    suffix = _suffix(p)
    container = CONTAINERS.get(suffix or ".mp4")
    if container is None:
        raise UsageError(f"cannot write {p}: no video container for {suffix} (writes "
                         f"{', '.join(s.lstrip('.') for s in CONTAINERS)}; '-' for MP4 to stdout)")
    codec = next((c for c in container.encoders if c in av.codecs_available), None)
    if codec is None:
        raise UsageError(f"cannot write {p}: this PyAV build has no {' or '.join(container.encoders)} encoder")
    return container, codec


def _pal8(arr: np.ndarray) -> av.VideoFrame:
    """An RGB frame as a palette frame with its own 256 colours (swscale cannot make pal8)."""
    image = Image.fromarray(arr).quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    rgb = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), np.uint8)
    palette[:, 0] = 255  # ARGB, opaque
    palette[:len(rgb), 1:] = rgb
    return av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")


class VideoWriter:
    """Encode RGB frames to a video file, atomically.

    ``VideoWriter(path, fps, size=(w, h), codec=None, crf=18, preset="medium")``;
    ``write(frame)`` takes an ``h x w x 3`` uint8 RGB array.  Use as a context
    manager, or call :meth:`close` (success) / :meth:`abort` (discard) yourself.

    * Frames are timestamped ``i / fps`` with time base ``1 / fps`` (rational), so
      the file has exactly the frames written, at exactly ``fps``.
    * ``codec=None``: the container and codec :func:`container_for` picks from the
      suffix (UsageError for one it does not write); a named ``codec`` goes into the
      container FFmpeg guesses from the suffix.
    * Pixel format yuv420p (GIF: pal8), so width and height must be even (UsageError
      otherwise).
    * The file is written to a hidden temp file next to ``path`` with the same
      suffix (no suffix -> mp4) and moved onto
      ``path`` with ``os.replace`` when :meth:`close` succeeds.  If an exception
      leaves the ``with`` block, or :meth:`abort` is called, the temp file is
      deleted and ``path`` is untouched.
    * ``path == "-"``: fragmented MP4 (``frag_keyframe+empty_moov``) to
      ``sys.stdout.buffer``; this needs no seeking, so it works into a pipe.
    * Closing a writer that got no frames raises VideoError (no file is made).
    * :meth:`add_audio` (before the first frame) adds an Opus track, muxed as is;
      ``holds_audio`` says whether the container can carry one.
    """

    def __init__(self, path, fps, size=(256, 256), codec: str | None = None,
                 crf: int = 18, preset: str = "medium"):
        self._container = None
        self._tmp: str | None = None
        self._closed = False
        self._audio = None  # an Opus stream, see add_audio()
        self.path = os.fspath(path)
        self.fps = _as_rate(fps)
        try:
            w, h = (int(v) for v in size)
        except (TypeError, ValueError) as e:
            raise UsageError(f"size must be (width, height), got {size!r}") from e
        if w <= 0 or h <= 0 or w % 2 or h % 2:
            raise UsageError(f"video size {w}x{h} must be positive and even (yuv420p)")
        if codec is None:
            container, codec = container_for(self.path)
        else:
            container = CONTAINERS.get(_suffix(self.path) or ".mp4")
            if container is not None and codec not in container.encoders:
                container = Container(container.format, (codec,), "yuvj420p" if codec == "mjpeg" else "yuv420p",
                                      container.audio)
        self.size = (w, h)
        self.codec = codec
        self.holds_audio = container.audio if container is not None else True
        self.frames_written = 0

        if self.path == "-":
            # Fragmented MP4 never seeks back to patch a header, so a pipe works.
            target = sys.stdout.buffer
            fmt, opts = "mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
        else:
            directory = os.path.dirname(os.path.abspath(self.path))
            suffix = Path(self.path).suffix
            # A suffix not in CONTAINERS (with a named codec): FFmpeg guesses the container from it.
            # Each packet goes out as it is made: a decode fed by a pipe shows its output growing.
            fmt, opts = (container.format if container is not None else None), {"flush_packets": "1"}
            try:
                fd, self._tmp = tempfile.mkstemp(
                    prefix=f".{Path(self.path).name}.", suffix=f".tmp{suffix or '.mp4'}",
                    dir=directory,
                )
                os.close(fd)
            except OSError as e:
                raise VideoError(f"cannot write {self.path}: {e.strerror or e}") from e
            target = self._tmp
        try:
            try:
                self._container = av.open(target, mode="w", format=fmt, options=opts)
            except (av.FFmpegError, ValueError) as e:
                raise UsageError(
                    f"cannot write {self.path}: unknown container for its suffix ({reason(e)})"
                ) from e
            try:
                stream = self._container.add_stream(
                    codec, rate=self.fps, options=_encoder_options(codec, crf, preset)
                )
            except (av.FFmpegError, ValueError, KeyError) as e:
                raise UsageError(f"video encoder {codec!r} is not available") from e
            stream.width, stream.height = w, h
            # mjpeg only takes full-range "j" formats; GIF a palette; everything else plain yuv420p.
            self._pix_fmt = container.pix_fmt if container is not None else (
                "yuvj420p" if codec == "mjpeg" else "yuv420p")
            stream.pix_fmt = self._pix_fmt
            stream.codec_context.time_base = 1 / self.fps
            try:  # open now, so a bad crf/preset is a UsageError here, not at write()
                stream.codec_context.open()
            except (av.FFmpegError, ValueError) as e:
                raise UsageError(
                    f"cannot set up encoder {codec} (crf={crf}, preset={preset}): {reason(e)}"
                ) from e
            self._stream = stream
        except BaseException:
            self.abort()
            raise

    def add_audio(self, track) -> None:
        """Mux an Opus track (a :class:`kpcodec.media.audio.OpusTrack`) unchanged, next to the video.

        Call it before the first :meth:`write` (the container header is written with
        the first packet).  The packets keep their timestamps (48 kHz ticks from
        frame 0); they are interleaved with the video as frames are written, and an
        ``OpusHead`` with the track's pre-skip goes into the stream's extradata, so
        players drop the encoder priming.  mp4/mov/mkv/webm carry Opus.
        """
        from kpcodec.media.audio import opus_head

        self.open_audio(track.channels, opus_head(track))
        for packet, pts, duration in zip(track.packets, track.pts, track.durations()):
            self.queue_audio(packet, int(pts), int(duration))

    def open_audio(self, channels: int, head: bytes) -> None:
        """An Opus stream (its ``OpusHead``) for packets handed in by :meth:`queue_audio`; before
        the first :meth:`write`."""
        from kpcodec.media.audio import CLOCK

        if self.frames_written or self._audio is not None or self._closed:
            raise ValueError("add_audio() must come once, before the first write()")
        if not self.holds_audio:
            raise VideoError(f"cannot add Opus audio to {self.path}: its container holds no audio")
        try:
            stream = self._container.add_stream("libopus", rate=CLOCK)
            stream.layout = "mono" if channels == 1 else "stereo"
            stream.time_base = Fraction(1, CLOCK)
            # Opening sets the encoder's own OpusHead; ours (the track's pre-skip) replaces it.
            stream.codec_context.open()
            stream.codec_context.extradata = head
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"cannot add Opus audio to {self.path}: {reason(e)}") from e
        self._audio = stream
        self._audio_packets = []
        self._audio_next = 0

    @property
    def audio_open(self) -> bool:
        return self._audio is not None

    def queue_audio(self, data: bytes, pts: int, duration: int) -> bool:
        """One more Opus packet for an audio stream opened by :meth:`add_audio` (live mode's come as
        they arrive): muxed when the video reaches it; False (dropped) if it comes after a later one."""
        if self._audio is None or (self._audio_packets and pts <= self._audio_packets[-1][1]):
            return False
        self._audio_packets.append((bytes(data), int(pts), int(duration)))
        return True

    def _mux_audio(self, until_s: float | None) -> None:
        """Mux the queued audio packets that start before ``until_s`` (None: all)."""
        if self._audio is None:
            return
        from kpcodec.media.audio import CLOCK

        limit = None if until_s is None else until_s * CLOCK
        while self._audio_next < len(self._audio_packets):
            data, pts, duration = self._audio_packets[self._audio_next]
            if limit is not None and pts >= limit:
                break
            packet = av.Packet(data)
            packet.pts = packet.dts = pts
            packet.duration = duration
            packet.time_base = self._audio.time_base
            packet.stream = self._audio
            self._container.mux(packet)
            self._audio_next += 1

    def write(self, frame: np.ndarray) -> None:
        """Encode one ``h x w x 3`` uint8 RGB frame."""
        if self._closed:
            raise ValueError("write() on a closed VideoWriter")
        arr = np.asarray(frame)
        w, h = self.size
        if arr.dtype != np.uint8 or arr.shape != (h, w, 3):
            raise ValueError(
                f"expected a {h}x{w}x3 uint8 frame, got {arr.shape} {arr.dtype}"
            )
        arr = np.ascontiguousarray(arr)
        vf = _pal8(arr) if self._pix_fmt == "pal8" else av.VideoFrame.from_ndarray(arr, format="rgb24")
        vf.pts = self.frames_written
        vf.time_base = 1 / self.fps
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self._mux_audio((self.frames_written + 1) / self.fps)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"cannot write {self.path}: {reason(e)}") from e
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and move it into place."""
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            raise VideoError(f"cannot write {self.path}: no frames were written")
        try:
            for packet in self._stream.encode(None):  # drain delayed (B-)frames
                self._container.mux(packet)
            self._mux_audio(None)
            self._container.close()
            if self._tmp is not None:
                # mkstemp made the file 0600; give it the mode a plain open() would.
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self._tmp, 0o666 & ~umask)
                os.replace(self._tmp, self.path)
                self._tmp = None
            else:
                sys.stdout.buffer.flush()
        except (av.FFmpegError, OSError) as e:
            self.abort()
            raise VideoError(f"cannot write {self.path}: {reason(e)}") from e
        self._closed = True

    def abort(self) -> None:
        """Discard everything: close the container and delete the temp file."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # already failing; the temp file goes anyway
                pass
            self._container = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __del__(self):
        # A writer dropped without close() must not leave a temp file behind.
        if not getattr(self, "_closed", True):
            self.abort()


# --------------------------------------------------------------------------- codecs


def check_codecs() -> dict[str, bool]:
    """Which of the codecs kpcodec uses this PyAV build has (decoder for libdav1d)."""
    wanted = {"libx264": "w", "libx265": "w", "libsvtav1": "w", "libdav1d": "r",
              "libvpx-vp9": "w"}
    found = {}
    for name, mode in wanted.items():
        try:
            av.codec.Codec(name, mode)
            found[name] = True
        except Exception:  # UnknownCodecError and friends
            found[name] = False
    return found
