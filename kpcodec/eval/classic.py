"""Classic video codecs (H.264, H.265, AV1) on numpy frames, for `kpcodec compare`.

:func:`encode_frames` codes a list of ``uint8`` RGB frames with a PyAV encoder at a
constant-quality CRF and returns the coded packets; :func:`decode_packets` decodes
them back to RGB frames. Nothing touches the disk.

How bytes are counted (so that the comparison with .kpc files is fair both ways):

* The count is the codec's elementary stream: every packet, in the codec's own
  framing (H.264/H.265 Annex B with start codes, AV1 low-overhead OBUs with temporal
  delimiters), including the in-band parameter sets (SPS/PPS/VPS, AV1 sequence
  header) in the first packet. A decoder needs nothing else.
* No container is added: an MP4 would add a ~0.7 KB header plus ~8 bytes per frame
  of sample tables (~1.6 kb/s at 25 fps), which measures MP4, not the codec.
* The encoders' self-advertisement is left out: x264 writes its version and full
  option string as an SEI message (~700 bytes) and x265 likewise (~1 KB, turned off
  with ``info=0``). Neither is needed to decode, and a low-rate sender would not send
  it; counting it would charge the classic codecs ~1-2 kb/s for a text banner.
* ``first_bytes`` is the first packet in decode order: the key frame with its headers.
  ``bytes - first_bytes`` is the steady-state cost of the remaining frames.

Colour: frames go RGB -> yuv420p (AV1: its 10-bit form, as kpcodec's base layer) -> RGB through
swscale's defaults (BT.601, limited range), the same path :class:`kpcodec.media.video.VideoWriter` and
:func:`kpcodec.media.video.read_frames` take, so every codec in a comparison pays the same
chroma subsampling.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from kpcodec.errors import UsageError, VideoError
from kpcodec.media import baselayer

__all__ = ["ClassicCodec", "CODECS", "Coded", "missing_reason", "encode_frames", "decode_packets",
           "strip_h264_sei", "LowRes", "encode_low_res"]


@dataclass(frozen=True)
class ClassicCodec:
    key: str  # short name used on the command line and in tables
    label: str  # human name for plots and side-by-side labels
    encoder: str  # PyAV/FFmpeg encoder
    decoders: tuple[str, ...]  # first available one is used
    crf_range: tuple[int, int]
    default_crfs: tuple[int, ...]
    preset: str
    pix_fmt: str = "yuv420p"  # what the encoder codes (frames are converted from RGB to it)


CODECS: dict[str, ClassicCodec] = {
    c.key: c
    for c in [
        # CRF 51 is x264's/x265's top: the sweep ends at the lowest rate they can reach.
        ClassicCodec("x264", "H.264", "libx264", ("h264",), (0, 51), (27, 31, 35, 39, 43, 47, 51), "veryslow"),
        # preset medium, not slow: slow is 2-3x slower for ~5% fewer bytes, and this runs on CPUs.
        ClassicCodec("x265", "H.265", "libx265", ("hevc",), (0, 51), (27, 31, 35, 39, 43, 47, 51), "medium"),
        # SVT-AV1 at the preset and pixel format of kpcodec's own base layer (0 slowest .. 13 fastest;
        # 10-bit), so the two are compared at the same effort: preset 2 against 8 gives AV1 +0.015 SSIM at
        # CRF 63 on six val clips at 256 px (0.902 -> 0.917, 11.3 -> 11.7 kb/s) for ~34 ms a frame on one
        # core; 10 bits against 8 about +0.0015 at the same rate.
        ClassicCodec("av1", "AV1", "libsvtav1", ("libdav1d", "libaom-av1"), (1, 63),
                     (35, 41, 47, 53, 58, 63), str(baselayer.PRESET), baselayer.PIX_FMT),
    ]
}


@dataclass
class Coded:
    """One encode: the packets in decode order and the time it took."""

    codec: str
    crf: int
    packets: list[bytes] = field(repr=False)
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(len(p) for p in self.packets)

    @property
    def first_bytes(self) -> int:
        return len(self.packets[0]) if self.packets else 0


def _has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
        return True
    except Exception:  # UnknownCodecError and friends differ between PyAV versions
        return False


def _has_decoder(name: str) -> bool:
    try:
        av.Codec(name, "r")
        return True
    except Exception:
        return False


def _decoder_for(codec: ClassicCodec) -> str | None:
    return next((d for d in codec.decoders if _has_decoder(d)), None)


def missing_reason(key: str) -> str | None:
    """None if codec `key` can be encoded and decoded with this PyAV build, else why not."""
    codec = CODECS[key]
    if not _has_encoder(codec.encoder):
        return f"{codec.encoder} is not in this PyAV/FFmpeg build: {codec.label} ({key}) skipped"
    if _decoder_for(codec) is None:
        return (f"no {codec.label} decoder ({' or '.join(codec.decoders)}) in this PyAV/FFmpeg build: "
                f"{key} skipped")
    return None


def _options(codec: ClassicCodec, crf: int, threads: int | None) -> dict[str, str]:
    opts = {"crf": str(crf), "preset": codec.preset}
    if codec.key == "x265":
        params = ["log-level=error", "info=0"]
        if threads == 1:
            params += ["pools=1", "frame-threads=1"]
        opts["x265-params"] = ":".join(params)
    elif codec.key == "av1" and threads:
        opts["svtav1-params"] = f"lp={threads}"
    return opts


def strip_h264_sei(data: bytes) -> bytes:
    """An H.264 Annex B packet without its SEI NAL units (type 6); everything else kept."""
    out = []
    pos = data.find(b"\x00\x00\x01")
    if pos < 0:
        return data
    if pos > 0:
        out.append(data[:pos])  # leading bytes (the zero of a 4-byte start code)
    while pos >= 0:
        nxt = data.find(b"\x00\x00\x01", pos + 3)
        end = len(data) if nxt < 0 else nxt
        unit = data[pos:end]  # start code + NAL (+ the zero of the next 4-byte start code)
        if len(unit) > 3 and (unit[3] & 0x1F) != 6:
            out.append(unit)
        pos = nxt
    return b"".join(out)


def _check_frames(frames) -> tuple[int, int]:
    if not len(frames):
        raise UsageError("no frames to encode")
    h, w = frames[0].shape[:2]
    if w % 2 or h % 2:
        raise UsageError(f"frames are {w}x{h}: yuv420p needs an even width and height")
    return w, h


def encode_frames(frames, fps, key: str, crf: int, *, keyint: int | None = None,
                  threads: int | None = 1) -> Coded:
    """Code RGB uint8 frames with classic codec `key` ("x264", "x265", "av1") at `crf`.

    4:2:0 (AV1 in 10 bits: the codec's pix_fmt); one key frame interval over the whole clip unless `keyint` is given
    (encoders may still insert key frames at scene cuts, as they would in a real
    stream). `threads`: encoder threads (None: the encoder's default).
    """
    codec = CODECS.get(key)
    if codec is None:
        raise UsageError(f"unknown codec {key!r} (choose from {', '.join(CODECS)})")
    lo, hi = codec.crf_range
    if not lo <= crf <= hi:
        raise UsageError(f"{key} CRF must be in {lo}..{hi} (got {crf})")
    w, h = _check_frames(frames)
    rate = Fraction(fps)
    if codec.key == "av1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a config banner at level 3 (info)
    start = time.perf_counter()
    try:
        ctx = av.CodecContext.create(codec.encoder, "w")
        ctx.width, ctx.height, ctx.pix_fmt = w, h, codec.pix_fmt
        ctx.time_base = 1 / rate
        ctx.framerate = rate
        ctx.gop_size = max(1, keyint or len(frames))
        if threads:
            ctx.thread_count = threads
        ctx.options = _options(codec, crf, threads)
        ctx.open()
        packets: list[bytes] = []
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            vf.time_base = ctx.time_base
            packets.extend(bytes(p) for p in ctx.encode(vf))
        packets.extend(bytes(p) for p in ctx.encode(None))
    except av.FFmpegError as e:
        raise VideoError(f"{codec.encoder} could not code {w}x{h} frames at crf {crf}: {e}") from e
    seconds = time.perf_counter() - start
    if codec.key == "x264":
        packets = [strip_h264_sei(p) for p in packets]
    if not packets:
        raise VideoError(f"{codec.encoder} produced no packets")
    return Coded(key, crf, packets, seconds)


def decode_packets(packets, key: str, *, threads: int | None = 1) -> tuple[list[np.ndarray], float]:
    """Decode packets from :func:`encode_frames` to RGB uint8 frames; returns (frames, seconds)."""
    codec = CODECS[key]
    name = _decoder_for(codec)
    if name is None:
        raise VideoError(missing_reason(key) or f"no decoder for {key}")
    start = time.perf_counter()
    frames: list[np.ndarray] = []
    try:
        ctx = av.CodecContext.create(name, "r")
        if threads:
            ctx.thread_count = threads
        for data in packets:
            for frame in ctx.decode(av.Packet(data)):
                frames.append(frame.to_ndarray(format="rgb24"))
        for frame in ctx.decode(None):
            frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as e:
        raise VideoError(f"{name} could not decode the {key} stream: {e}") from e
    return frames, time.perf_counter() - start


@dataclass(frozen=True)
class LowRes:
    """The baseline a user picks below a codec's floor: the clip downscaled to `size`, every
    `divisor`-th frame coded, decoded, bicubic-upscaled back and held until the next one."""

    size: int
    divisor: int = 1

    def __str__(self) -> str:
        return f"{self.size}px" + (f"@{self.divisor}" if self.divisor > 1 else "")


def encode_low_res(frames, fps, key: str, crf: int, low: LowRes, *, threads: int | None = 1):
    """(Coded, decoded frames at the input's size, decode seconds) for the low-resolution baseline."""
    from PIL import Image

    h, w = frames[0].shape[:2]
    picked = [np.asarray(Image.fromarray(f).resize((low.size, low.size), Image.BOX)) for f in frames[::low.divisor]]
    coded = encode_frames(picked, Fraction(fps) / low.divisor, key, crf, threads=threads)
    small, seconds = decode_packets(coded.packets, key, threads=threads)
    start = time.perf_counter()
    up = [np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in small]
    seconds += time.perf_counter() - start
    if len(up) != len(picked):
        raise VideoError(f"{key} at {low}: decoded {len(up)} frames for {len(picked)}")
    return coded, [up[i // low.divisor] for i in range(len(frames))], seconds
