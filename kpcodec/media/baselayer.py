"""The hybrid mode's base layer: a tiny low-resolution AV1 stream of the cropped video.

The encoder downscales every `divisor`-th frame to `size` x `size` (swscale's area filter,
straight to 10-bit 4:2:0), codes it with SVT-AV1 at a constant `crf`, and keeps one packet (an AV1
temporal unit) per coded frame; the decoder (libdav1d) turns each packet back into one RGB
frame at `size`. AV1 outputs exactly one shown frame per temporal unit, in display order, so
packet n is base frame n, which belongs to video frame n * divisor. The generator of a hybrid
model upsamples and fuses it (kpcodec.models.generator).

Training (kpcodec.train.hybrid) codes its frames with these same functions, so the model
learns on the artefacts it will see. No torch here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from kpcodec.errors import UsageError, VideoError

ENCODER = "libsvtav1"
DECODERS = ("libdav1d", "libaom-av1", "av1")
# SVT-AV1 speed 0..13. At these sizes the slow presets pay: on six val clips at 128@4 (CRF 44-62, base
# frames bicubic-upscaled), preset 2 gives +0.012-0.016 SSIM over preset 8 at 3-6% fewer bits, for
# ~17 ms a 128-px frame on one core against ~1.5 ms; preset 1 adds only +0.001 at ~25 ms, 4 gives
# two thirds of the gain (runs of 2026-12-07, benchmarks/results/hybrid.md).
PRESET = 2
# The rate control's trial encodes (CRF search): fast; the file's own encode settles at PRESET.
SEARCH_PRESET = 8
# The encoder's pixel format. 10 bits code these small frames better than 8 at the same CRF: on six val
# clips at 128@4, preset 2, +0.0014 to +0.0017 SSIM at CRF 44-62 for -0.7% to +0.6% bits (runs of
# 2026-12-07, MODEL_CARD session 34). The AV1 stream says its depth; a decoder outputs RGB 8-bit either way.
PIX_FMT = "yuv420p10le"
# AV1's in-loop CDEF and loop-restoration filters, off where the decoder's restorer takes their place
# (a stream of the base layer alone, frames below the model size): on the six monitor val clips, preset
# 2, CRF 42-62, both off need -4.1% bits for the same SSIM of the restored base frames at 96 px, -3.1%
# at 128, -1.9% at 192; at 256 (not restored) +6.2% (benchmarks/results/base-encoder.md); the
# deblocking filter off too: +2.0% at 128 (MODEL_CARD session 39).
RESTORED_SVT_PARAMS = "enable-restoration=0:enable-cdef=0"
SIZES = (32, 256)  # allowed range of the base-layer size (even; 256 = the model's own size)
MAX_DIVISOR = 8
CRF_RANGE = (1, 63)
# Every temporal unit starts with a temporal delimiter OBU (type 2, no payload): the .kpc keeps
# the packets' sizes instead, so the encoder drops it and the decoder puts it back.
TEMPORAL_DELIMITER = b"\x12\x00"


@dataclass(frozen=True)
class BaseLayerSettings:
    """What the BASE chunk records: resolution, frame-rate divisor, CRF, whether the frames come
    from the base layer alone (format 2.3: no source image, no keypoints) and, with alone, whether
    the encoder places the base frames where the picture changes most (format 2.5; the divisor is
    then their mean spacing, kpcodec.codec.placement)."""

    size: int = 96
    divisor: int = 3
    crf: int = 63
    alone: bool = False
    placed: bool = False

    def __post_init__(self):
        lo, hi = SIZES
        if not (lo <= self.size <= hi) or self.size % 2:
            raise UsageError(f"base-layer size must be even and in {lo}..{hi} (got {self.size})")
        if not 1 <= self.divisor <= MAX_DIVISOR:
            raise UsageError(f"base-layer frame-rate divisor must be in 1..{MAX_DIVISOR} (got {self.divisor})")
        if not CRF_RANGE[0] <= self.crf <= CRF_RANGE[1]:
            raise UsageError(f"base-layer CRF must be in {CRF_RANGE[0]}..{CRF_RANGE[1]} (got {self.crf})")
        if self.placed and not self.alone:
            raise UsageError("placed base frames are for a base layer alone (SIZE@DIV:CRF,alone,placed)")

    def __str__(self) -> str:
        return f"{self.size}@{self.divisor}:{self.crf}" + (ALONE_SUFFIX if self.alone else "") + \
            (PLACED_SUFFIX if self.placed else "")

    @property
    def restored(self) -> bool:
        """Whether a decoder restores these frames (a base layer alone, below the model size): coded
        without AV1's CDEF and loop restoration (RESTORED_SVT_PARAMS)."""
        return self.alone and self.size < SIZES[1]

    def frame_indices(self, frame_count: int) -> range:
        return range(0, frame_count, self.divisor)


ALONE_SUFFIX = ",alone"
PLACED_SUFFIX = ",placed"
_SETTING = re.compile(r"^(\d+)(?:@(\d+))?(?::(\d+))?(,alone)?(,placed)?$")


def parse_settings(text: str, default: BaseLayerSettings = BaseLayerSettings()) -> BaseLayerSettings:
    """'SIZE[@DIV][:CRF][,alone[,placed]]' (e.g. '96', '96@2', '128@3:60', '128@4:55,alone',
    '256@4:52,alone,placed') -> settings; missing parts from `default`."""
    m = _SETTING.match(text.strip().lower())
    if not m:
        raise UsageError(f"--base-layer {text!r}: expected off, auto or SIZE[@DIV][:CRF][,alone[,placed]], "
                         "e.g. 96@2:63")
    size, div, crf, alone, placed = m.groups()
    return BaseLayerSettings(int(size), int(div) if div else default.divisor, int(crf) if crf else default.crf,
                             bool(alone), bool(placed))


def downscale(frame: np.ndarray, size: int):
    """An RGB uint8 frame -> PyAV frame at size x size (area filter) in the encoder's pixel format."""
    import av

    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return vf.reformat(width=size, height=size, format=PIX_FMT, interpolation="AREA")


class BaseLayerEncoder:
    """push(frame_index, rgb) -> packets [(base frame number, bytes)]; flush() -> the rest.

    Frames whose index is not a multiple of the divisor are ignored, so a caller pushes every
    video frame. SVT-AV1 looks ahead, so packets come out a few frames late."""

    def __init__(self, settings: BaseLayerSettings, fps, threads: int = 1, preset: int = PRESET,
                 restored: bool | None = None):
        import av

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a config banner at its info level
        self.settings = settings
        rate = Fraction(fps) / settings.divisor
        try:
            ctx = av.CodecContext.create(ENCODER, "w")
        except Exception as e:  # noqa: BLE001 - PyAV's missing-codec errors differ by version
            raise VideoError(f"the base layer needs {ENCODER}, which this PyAV build lacks: {e}") from e
        ctx.width = ctx.height = settings.size
        ctx.pix_fmt = PIX_FMT
        ctx.time_base = 1 / rate
        ctx.framerate = rate
        ctx.gop_size = 1 << 20  # one key frame; a source refresh does not need a new one
        restored = settings.restored if restored is None else restored  # a benchmark may set it either way
        params = f"lp={max(1, threads)}" + (f":{RESTORED_SVT_PARAMS}" if restored else "")
        ctx.options = {"crf": str(settings.crf), "preset": str(preset), "svtav1-params": params}
        ctx.open()
        self._ctx = ctx
        self._coded = 0  # base frames given to the encoder
        self._out = 0  # packets returned

    def _take(self, packets) -> list[tuple[int, bytes]]:
        out = []
        for p in packets:
            data = bytes(p)
            if data.startswith(TEMPORAL_DELIMITER):
                data = data[len(TEMPORAL_DELIMITER):]
            out.append((self._out, data))
            self._out += 1
        return out

    def push(self, index: int, frame: np.ndarray) -> list[tuple[int, bytes]]:
        """Video frame `index`: coded if it is a base frame (every divisor-th)."""
        if index % self.settings.divisor:
            return []
        return self.code(frame)

    def code(self, frame: np.ndarray) -> list[tuple[int, bytes]]:
        """The next base frame, whichever video frame it is (placed base frames)."""
        vf = downscale(frame, self.settings.size)
        vf.pts = self._coded
        vf.time_base = self._ctx.time_base
        self._coded += 1
        return self._take(self._ctx.encode(vf))

    def flush(self) -> list[tuple[int, bytes]]:
        out = self._take(self._ctx.encode(None))
        if self._out != self._coded:
            raise VideoError(f"{ENCODER} returned {self._out} packets for {self._coded} base frames")
        return out


class BaseLayerDecoder:
    """push(bytes) -> decoded RGB frames (size x size x 3 uint8), in order; flush() -> the rest."""

    def __init__(self, threads: int = 1):
        import av

        self._av = av
        self._ctx = None
        for name in DECODERS:
            try:
                self._ctx = av.CodecContext.create(name, "r")
                break
            except Exception:  # noqa: BLE001
                continue
        if self._ctx is None:
            raise VideoError(f"no AV1 decoder ({', '.join(DECODERS)}) in this PyAV build: cannot decode the base layer")
        self._ctx.thread_count = max(1, threads)

    def _frames(self, frames) -> list[np.ndarray]:
        return [f.to_ndarray(format="rgb24") for f in frames]

    def push(self, data: bytes) -> list[np.ndarray]:
        try:
            return self._frames(self._ctx.decode(self._av.Packet(TEMPORAL_DELIMITER + bytes(data))))
        except self._av.FFmpegError as e:
            raise VideoError(f"bad base-layer packet: {e}") from e

    def flush(self) -> list[np.ndarray]:
        try:
            return self._frames(self._ctx.decode(None))
        except self._av.FFmpegError as e:
            raise VideoError(f"bad base-layer packet: {e}") from e


def encode_clip(frames, settings: BaseLayerSettings, fps, threads: int = 1, preset: int = PRESET,
                positions=None, restored: bool | None = None) -> list[bytes]:
    """All base packets of a clip of RGB frames (every video frame; the divisor picks, or the video
    frames `positions` where base frames are placed); `restored` (None: settings.restored) codes them
    without AV1's CDEF and loop restoration (RESTORED_SVT_PARAMS)."""
    enc = BaseLayerEncoder(settings, fps, threads, preset, restored)
    packets = []
    for i in settings.frame_indices(len(frames)) if positions is None else positions:
        packets += enc.code(frames[i])
    packets += enc.flush()
    return [data for _, data in packets]


def decode_clip(packets, threads: int = 1) -> np.ndarray:
    """(N, size, size, 3) uint8 frames for the N packets of encode_clip."""
    dec = BaseLayerDecoder(threads)
    out = []
    for data in packets:
        out += dec.push(data)
    out += dec.flush()
    if len(out) != len(packets):
        raise VideoError(f"the base layer decoded to {len(out)} frames for {len(packets)} packets")
    return np.stack(out)
