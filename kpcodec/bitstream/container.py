"""The .kpc container, format version 1.4, and the reader and writer of 1.0 to 1.3 (man/kpc.5).

Holds the in-memory stream (:class:`Header`, :class:`KpcStream`), the
serialiser (:func:`dumps`, :func:`write_file`), the parser (:func:`loads`,
:func:`read_file`), :func:`chunk_table` for inspecting a file's layout, and
the raw file helpers :func:`write_bytes` / :func:`read_bytes`.

A file is ``MAGIC``, a major and a minor version byte, then chunks until
``KEND``. Each chunk is a 4-letter type, a u32 LE payload length, the payload
and a u32 LE CRC-32 of type+payload. Every parse failure raises
KpcFormatError (KpcVersionError for an unknown major version).

The two versions differ in the keypoint chunk: 1.0's KPTS holds plain DPCM residuals
packed as varints + zstd; 1.1's KPRC holds residuals of an integer in-loop predictor
(kpcodec.bitstream.quantize), range-coded with adaptive models (kpcodec.bitstream.entropy). A stream
remembers its version, so a 1.0 file re-serialises byte for byte.
1.2 adds source refreshes: critical SRCR chunks after KPRC, each a frame index and a new source
image from that frame on. A 1.1 reader refuses them ("unknown critical chunk SRCR") instead of
rendering the whole video from the first image.
1.3 adds KPRC coder 1: the same residuals, decorrelated within each frame by a fixed integer
linear prediction (kpcodec.bitstream.decorrelate) before range coding, for fewer bits and the same
decoded keypoints. A stream is written as 1.3 when the shipped decorrelation table fits its
keypoint count; otherwise as 1.2 with refreshes and 1.1 without.
1.4 adds the hybrid mode's base layer: one critical BASE chunk after the refreshes, a tiny
low-resolution AV1 stream (kpcodec.media.baselayer) as one temporal unit per base frame. A 1.3 reader
refuses it ("unknown critical chunk BASE"); a stream with a base layer is written as 1.4.

Only numpy, zstandard, constriction and the standard library are used: no torch.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from kpcodec.bitstream import decorrelate, entropy
from kpcodec.bitstream import quantize as q
from kpcodec.errors import KpcFormatError, KpcodecError, KpcVersionError

FORMAT_VERSION = (2, 6)  # the newest kpcodec writes (kpcodec.bitstream.packets; 2.0 where a file needs no more)
LATEST_MINOR_1 = 4  # the newest 1.x minor version (1.4)
READABLE_MINORS = (0, 1, 2, 3, 4)  # of major 1, and any newer minor of major 1, leniently
PACKET_MAJOR = 2
MAGIC = b"\x89KPC\r\n\x1a\n"

PREAMBLE_SIZE = len(MAGIC) + 2  # magic, major u8, minor u8
_FRAMING_SIZE = 12  # type, length, CRC
_ORDER_1_0 = ("HEAD", "SRCF", "KPTS", "KEND")
_ORDER_1_1 = ("HEAD", "SRCF", "KPRC", "KEND")
_ORDER_1_2 = ("HEAD", "SRCF", "KPRC", "SRCR", "KEND")  # SRCR: zero or more
_ORDER_1_4 = ("HEAD", "SRCF", "KPRC", "SRCR", "BASE", "KEND")  # BASE: zero or one
_REPEATED = frozenset({"SRCR"})
_SKIPPABLE = frozenset({"SRCR", "BASE"})  # critical chunks that may be absent
_CRITICAL = frozenset(_ORDER_1_0 + _ORDER_1_4)
REFRESH_MINOR = 2  # the first minor version with SRCR chunks
DECORRELATED_MINOR = 3  # the first minor version with KPRC coder 1
BASE_MINOR = 4  # the first minor version with a BASE chunk
BASE_CODECS = {0: "av1"}  # BASE codec byte: 0 = AV1 temporal units, temporal delimiter left out
MAX_BASE_SIZE = 1024
# A hybrid decoder shows base + mix/MIX_FULL * (render - base) (format 2.1's HEAD field, chosen by the
# encoder); MIX_FULL (the render alone) is what files without the field mean.
MIX_FULL = 64
MAX_BASE_DIVISOR = 255
MAX_BASE_GAP = 16  # frames between two placed base frames (format 2.5), at most
FLAG_ADAPTIVE = 0x0001  # HEAD flag (1.1): sent frames chosen by the encoder's error test
_KNOWN_FLAGS = {0: 0, 1: FLAG_ADAPTIVE, 2: FLAG_ADAPTIVE, 3: FLAG_ADAPTIVE, 4: FLAG_ADAPTIVE}  # per minor version
CODER_CONTEXT = 0  # KPRC coder 0: the adaptive context coder of kpcodec.bitstream.entropy
CODER_DECORRELATED = 1  # KPRC coder 1 (1.3): kpcodec.bitstream.decorrelate, then the context coder
_U32_MAX = 2**32 - 1
# Decoder limit on S*K: keeps a hostile file from asking for gigabytes.
MAX_SENT_KEYPOINTS = 2**24


@dataclass
class Header:
    """Stream-wide parameters (the HEAD chunk)."""

    model: str
    weights_sha256: str  # 64 hex characters
    width: int
    height: int
    fps_num: int
    fps_den: int
    frame_count: int
    keep_every: int
    num_keypoints: int
    kp_step: float
    jac_step: float
    predictor: str
    adaptive: bool = False  # 1.1 flag: keep_every is then the mean spacing, rounded

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    @property
    def duration_s(self) -> float:
        return self.frame_count * self.fps_den / self.fps_num


@dataclass
class Refresh:
    """A new source image (an SRCR chunk): frames from `frame` on are rendered from it."""

    frame: int
    codec: str
    data: bytes


@dataclass
class Motion:
    """Format 2.6 (a stream of the base layer alone): the keypoints' offsets from their path for the
    frames between base frames, in levels of HEAD's kp_step: `frames` (F,) in order, `levels` (F, 2K),
    each row a frame's K (x, y) pairs. An offset is how far the encoder's keypoints, detected on the
    original frame, lie from the same path through the keypoints it detected on the original base
    frames; a decoder adds it to its path through the keypoints it detects on the decoded ones."""

    frames: list[int]
    levels: np.ndarray

    @classmethod
    def empty(cls, num_keypoints: int) -> Motion:
        return cls([], np.zeros((0, 2 * num_keypoints), np.int64))

    def offsets(self, step: float) -> np.ndarray:
        """(F, K, 2) float32 offsets in the keypoints' units."""
        levels = np.asarray(self.levels, np.int64)
        return (levels.reshape(len(levels), -1, 2) * np.float64(step)).astype(np.float32)


@dataclass
class BaseLayer:
    """The hybrid mode's base layer (the BASE chunk): base frame n belongs to video frame
    n * divisor and is packet n, coded at size x size (kpcodec.media.baselayer)."""

    size: int
    divisor: int
    crf: int
    packets: list[bytes]
    codec: str = "av1"
    mix: int = MIX_FULL  # the render's weight against the moved base, in 1/MIX_FULL (format 2.1)
    # Format 2.3: the frames come from the base layer alone (no source image, no keypoints): a decoder
    # detects keypoints on each decoded base frame and moves the two base frames around a frame to it.
    alone: bool = False
    # Format 2.4 (with alone): the keypoints of a frame between base frames n and n+1 lie on a
    # Catmull-Rom curve through those of base frames n-1, n, n+1 and n+2, not on the line from n to n+1.
    cubic: bool = False
    # Format 2.5 (with alone): the video frame of each base frame, in order, from 0 (the encoder placed
    # them where the picture changes most); None: base frame n is video frame n * divisor, and the
    # divisor is then their mean spacing.
    frames: list[int] | None = None
    # Format 2.6 (with alone): the keypoints' offsets from their path between base frames (MOTION
    # packets); None: none are sent, the path alone moves the base frames.
    motion: Motion | None = None

    def frame_count(self, video_frames: int) -> int:
        return len(self.frames) if self.frames is not None else -(-video_frames // self.divisor)

    def frame_of(self, n: int) -> int:
        """The video frame base frame n shows."""
        return self.frames[n] if self.frames is not None else n * self.divisor

    @property
    def placed(self) -> bool:
        return self.frames is not None

    @property
    def bytes(self) -> int:
        return sum(len(p) for p in self.packets)

    @property
    def label(self) -> str:
        """Its settings as --base-layer writes them: SIZE@DIV:CRF[,alone]."""
        return f"{self.size}@{self.divisor}:{self.crf}" + (",alone" if self.alone else "") + \
            (",placed" if self.placed else "") + (",motion" if self.motion is not None else "")


@dataclass
class KpcStream:
    """Everything a .kpc file holds, with keypoints already dequantised."""

    header: Header
    source_codec: str
    source_data: bytes
    sent_indices: np.ndarray  # (S,) int64
    keypoints: np.ndarray  # (S, K, 2) float32
    jacobians: np.ndarray  # (S, K, 2, 2) float32
    extra_chunks: list[tuple[str, bytes]] = field(default_factory=list)
    # (1, 0) writes KPTS, (1, 1) KPRC, (1, 2) KPRC and SRCR, (1, 3) KPRC coder 1 where it
    # fits; None: 1.3 where coder 1 fits, else 1.1, or 1.2 with refreshes
    version: tuple[int, int] | None = None
    refreshes: list[Refresh] = field(default_factory=list)  # in frame order
    base: BaseLayer | None = None  # the hybrid mode's base layer (1.4)
    restarts: list[int] = field(default_factory=list)  # 2.0: keyframes other than 0 and the refreshes

    @classmethod
    def base_alone(cls, header: Header, base: BaseLayer, extra_chunks=(), version=None) -> KpcStream:
        """A stream of the base layer alone (format 2.3): no source image, no sent keypoints."""
        k = header.num_keypoints
        return cls(header, "", b"", np.zeros(0, np.int64), np.zeros((0, k, 2), np.float32),
                   np.zeros((0, k, 2, 2), np.float32), list(extra_chunks), version, base=base)

    @property
    def write_version(self) -> tuple[int, int]:
        if self.version is not None:
            return tuple(self.version)
        if self.base is not None:
            return (1, BASE_MINOR)
        if decorrelation_table(self.header.num_keypoints) is not None:
            return (1, DECORRELATED_MINOR)
        return (1, REFRESH_MINOR) if self.refreshes else (1, 1)


def decorrelation_table(num_keypoints: int):
    """Coder 1's table if it is made for this many keypoints, else None."""
    table = decorrelate.shipped_table()
    return table if table is not None and table.keypoints == num_keypoints else None


# --------------------------------------------------------------------------
# Small helpers shared by both directions


def _is_chunk_type(name: str) -> bool:
    return len(name) == 4 and name.isascii() and name.isalpha()


def _is_critical(name: str) -> bool:
    return name[0].isupper()


def _f32(x: float) -> float:
    """The value a float becomes after a round trip through an f32 field."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except (OverflowError, struct.error, TypeError):
        raise KpcFormatError(f"step {x!r} does not fit in an f32") from None


def _check_step(name: str, step: float) -> None:
    if isinstance(step, bool) or not isinstance(step, (int, float, np.floating)) \
            or not (np.isfinite(step) and step >= q.MIN_STEP):
        raise KpcFormatError(f"bad HEAD field {name}={step!r} (must be finite and >= 2**-16)")


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise KpcFormatError(f"bad HEAD field {name}={value!r} (not an integer)")
    if not lo <= value <= hi:
        raise KpcFormatError(f"bad HEAD field {name}={value} (must be {lo}..{hi})")


def _check_header(h: Header) -> None:
    """Raise KpcFormatError unless every field can be written and makes sense."""
    for name, bits in (("width", 16), ("height", 16), ("fps_num", 32), ("fps_den", 32),
                       ("frame_count", 32), ("keep_every", 16), ("num_keypoints", 8)):
        _check_int(name, getattr(h, name), 1, 2**bits - 1)
    _check_step("kp_step", h.kp_step)
    _check_step("jac_step", h.jac_step)


def _check_indices(indices: np.ndarray, frame_count: int) -> None:
    if len(indices) < 1:
        raise KpcFormatError("no sent frames (S must be >= 1)")
    if indices[0] != 0:
        raise KpcFormatError("frame 0 is not among the sent frames")
    if np.any(np.diff(indices) <= 0):
        raise KpcFormatError("sent frame indices are not strictly increasing")
    if indices[-1] >= frame_count:
        raise KpcFormatError(f"sent frame index {int(indices[-1])} >= frame_count {frame_count}")


def _check_levels(levels: np.ndarray, clip: float, step: float, what: str) -> None:
    """Reject levels the encoder cannot produce, so every valid file re-encodes."""
    if levels.size and np.abs(levels).max() > q.max_level(clip, step):
        raise KpcFormatError(f"{what} outside [-{clip:g}, {clip:g}]")


# --------------------------------------------------------------------------
# Writing


def _short_string(text: str, encoding: str, what: str) -> bytes:
    try:
        raw = text.encode(encoding)
    except (UnicodeEncodeError, AttributeError):
        raise KpcFormatError(f"{what} is not {encoding} text") from None
    if len(raw) > 255:
        raise KpcFormatError(f"{what} is longer than 255 bytes")
    return bytes([len(raw)]) + raw


def _sha_bytes(hex_digest: str) -> bytes:
    try:
        raw = bytes.fromhex(hex_digest)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32 or len(hex_digest) != 64:
        raise KpcFormatError("weights_sha256 must be 64 hex characters")
    return raw


def _encode_head(h: Header, minor: int) -> bytes:
    if h.adaptive and not _KNOWN_FLAGS[minor] & FLAG_ADAPTIVE:
        raise KpcFormatError("adaptive sent frames need format 1.1")
    return b"".join((
        _short_string(h.model, "utf-8", "model name"),
        _sha_bytes(h.weights_sha256),
        struct.pack("<HHIIIHB", h.width, h.height, h.fps_num, h.fps_den,
                    h.frame_count, h.keep_every, h.num_keypoints),
        struct.pack("<ff", h.kp_step, h.jac_step),
        _short_string(h.predictor, "utf-8", "predictor name"),
        struct.pack("<H", FLAG_ADAPTIVE if h.adaptive else 0),  # other bits reserved
    ))


def _encode_srcf(codec: str, data: bytes) -> bytes:
    if not (isinstance(codec, str) and codec and _printable_ascii(codec.encode("utf-8"))):
        raise KpcFormatError(f"source codec name {codec!r} is not printable ASCII")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise KpcFormatError("source_data is not bytes")
    return _short_string(codec, "ascii", "source codec name") + bytes(data)


def _encode_srcr(r: Refresh, indices: np.ndarray, after: int) -> bytes:
    _check_refresh_frame(r.frame, indices, after)
    return struct.pack("<I", int(r.frame)) + _encode_srcf(r.codec, r.data)


def _check_refresh_frame(frame, indices: np.ndarray, after: int) -> None:
    """A refresh frame follows the previous one (or frame 0) and is a sent frame: the decoder
    then has the exact keypoints of the frame its new source image shows."""
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise KpcFormatError(f"refresh frame {frame!r} is not an integer")
    if frame <= after:
        raise KpcFormatError(f"refresh frame {frame} does not follow frame {after}")
    pos = np.searchsorted(indices, frame)
    if pos == len(indices) or indices[pos] != frame:
        raise KpcFormatError(f"refresh frame {frame} is not a sent frame")


def varint(n: int) -> bytes:
    """LEB128: 7 bits a byte, low group first, the high bit set on all bytes but the last."""
    if n < 0:
        raise KpcFormatError(f"negative value {n} in a varint field")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _check_base(b: BaseLayer, frame_count: int) -> None:
    for name, value, lo, hi in (("size", b.size, 2, MAX_BASE_SIZE), ("divisor", b.divisor, 1, MAX_BASE_DIVISOR),
                                ("crf", b.crf, 0, 255), ("mix", b.mix, 0, MIX_FULL)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise KpcFormatError(f"bad BASE field {name}={value!r} (must be {lo}..{hi})")
    if b.size % 2:
        raise KpcFormatError(f"bad BASE field size={b.size} (must be even)")
    if b.codec not in BASE_CODECS.values():
        raise KpcFormatError(f"unknown base-layer codec {b.codec!r}")
    if b.cubic and not b.alone:
        raise KpcFormatError("a cubic keypoint path is for a stream of the base layer alone")
    if b.motion is not None and not b.alone:
        raise KpcFormatError("keypoint offsets (motion) are for a stream of the base layer alone")
    if b.placed:
        _check_base_frames(b, frame_count)
    if len(b.packets) != b.frame_count(frame_count):
        raise KpcFormatError(f"base layer has {len(b.packets)} packets, {b.frame_count(frame_count)} expected "
                             f"({frame_count} frames, divisor {b.divisor})")


def _check_base_frames(b: BaseLayer, frame_count: int) -> None:
    """A placed base layer's frames: 0 first, increasing by 1..MAX_BASE_GAP, inside the video."""
    if not b.alone:
        raise KpcFormatError("placed base frames are for a stream of the base layer alone")
    f = np.asarray(b.frames, np.int64).reshape(-1)
    if (frame_count and not len(f)) or (len(f) and f[0] != 0):  # a HEAD's base layer has none yet
        raise KpcFormatError("placed base frames must start at frame 0")
    gaps = np.diff(f)
    if np.any(gaps < 1) or np.any(gaps > MAX_BASE_GAP):
        raise KpcFormatError(f"placed base frames must follow each other by 1..{MAX_BASE_GAP} frames")
    if frame_count and f[-1] >= frame_count:
        raise KpcFormatError(f"a base frame at frame {int(f[-1])} of a stream of {frame_count} frames")


def _encode_base(b: BaseLayer, frame_count: int) -> bytes:
    _check_base(b, frame_count)
    if b.mix != MIX_FULL:
        raise KpcFormatError("a base-layer mix needs format 2.1")
    codec = next(k for k, v in BASE_CODECS.items() if v == b.codec)
    for p in b.packets:
        if not isinstance(p, (bytes, bytearray, memoryview)) or not len(p):
            raise KpcFormatError("empty or non-bytes packet in the base layer")
    return b"".join([struct.pack("<BHBBI", codec, b.size, b.divisor, b.crf, len(b.packets)),
                     *(varint(len(p)) for p in b.packets), *(bytes(p) for p in b.packets)])


def _printable_ascii(raw: bytes) -> bool:
    return all(0x21 <= c <= 0x7E for c in raw)


def _blob(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _checked_indices(s: KpcStream) -> np.ndarray:
    h = s.header
    indices = np.asarray(s.sent_indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise KpcFormatError("sent_indices must be a 1-D integer array")
    indices = indices.astype(np.int64)
    _check_indices(indices, h.frame_count)
    if len(indices) * h.num_keypoints > MAX_SENT_KEYPOINTS:  # loads would refuse it
        raise KpcFormatError("too many sent keypoints for a decoder (S*K > 2**24)")
    shape = (len(indices), h.num_keypoints, 2)
    if np.shape(s.keypoints) != shape or np.shape(s.jacobians) != shape + (2,):
        raise KpcFormatError(
            f"keypoints/jacobians must have shapes {shape} and {shape + (2,)}, "
            f"got {np.shape(s.keypoints)} and {np.shape(s.jacobians)}")
    return indices


def _encode_kpts(s: KpcStream, kp_step: float, jac_step: float) -> bytes:
    """Format 1.0's keypoint chunk: plain DPCM, varints, zstd."""
    indices = _checked_indices(s)
    try:
        q_kp, q_jac = q.quantize_keypoints(s.keypoints, s.jacobians, kp_step, jac_step)
    except ValueError as exc:
        raise KpcFormatError(str(exc)) from None
    deltas = np.diff(indices, prepend=0)
    return b"".join((
        struct.pack("<I", len(indices)),
        _blob(q.pack_symbols(deltas)),
        _blob(q.pack_symbols(q_kp)),
        _blob(q.pack_symbols(q_jac)),
    ))


def _encode_kprc(s: KpcStream, kp_step: float, jac_step: float, minor: int) -> bytes:
    """The keypoint chunk of 1.1 and later (see :func:`kprc_payload`)."""
    indices = _checked_indices(s)
    try:
        kp, jac = q.check_keypoints(s.keypoints, s.jacobians, kp_step, jac_step)
    except ValueError as exc:
        raise KpcFormatError(str(exc)) from None
    return kprc_payload(indices, kp, jac, kp_step, jac_step, minor)


def kprc_payload(indices: np.ndarray, kp: np.ndarray, jac: np.ndarray, kp_step: float, jac_step: float,
                 minor: int) -> bytes:
    """KPRC payload of checked sent frames: in-loop prediction, adaptive range coding; in 1.3
    also with intra-frame decorrelation (coder 1), kept where it is smaller than coder 0."""
    count = len(indices)
    predictors = q.PREDICTORS_1_3 if minor >= DECORRELATED_MINOR else q.PREDICTORS_1_1
    r_kp, r_jac = q.closed_loop_rows(kp, jac, kp_step, jac_step, predictors)
    deltas = np.diff(indices, prepend=0).reshape(count, 1)
    coder, coded = CODER_CONTEXT, entropy.encode([deltas, r_kp, r_jac], CODER_CONTEXT)
    table = decorrelation_table(kp.shape[1]) if minor >= DECORRELATED_MINOR else None
    if table is not None:
        # Coding is cheap (well under a millisecond a frame): try both, keep the smaller.
        other = entropy.encode([deltas, *decorrelate.forward_streams(r_kp, r_jac, deltas, table)],
                               CODER_DECORRELATED)
        if len(other) < len(coded):
            coder, coded = CODER_DECORRELATED, other
    return b"".join((
        struct.pack("<IBBB", count, coder, *predictors),
        _blob(coded),
    ))


def _crc(tag: bytes, payload: bytes) -> int:
    """CRC-32 (as zlib/PNG) over type then payload, without copying the payload."""
    return zlib.crc32(payload, zlib.crc32(tag)) & 0xFFFFFFFF


def _chunk(kind: str, payload: bytes) -> bytes:
    if len(payload) > _U32_MAX:
        raise KpcFormatError(f"chunk {kind} is larger than 4 GiB")
    tag = kind.encode("ascii")
    return tag + struct.pack("<I", len(payload)) + payload + struct.pack("<I", _crc(tag, payload))


def _check_extra(kind, payload) -> None:
    if not (isinstance(kind, str) and _is_chunk_type(kind)) or _is_critical(kind):
        raise KpcFormatError(f"extra chunk type {kind!r} must be 4 ASCII letters, first lowercase")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise KpcFormatError(f"extra chunk {kind} payload is not bytes")


def dumps(stream: KpcStream) -> bytes:
    """Serialise a stream; keypoints are quantised with the header's steps.

    Optional chunks are written after KPTS, in list order. Invalid content
    raises KpcFormatError naming the field.
    """
    h = stream.header
    version = stream.write_version
    if version[0] == _packets.VERSION[0]:
        return _packets.join(_packets.stream_packets(stream))
    if version[0] != 1 or version[1] not in READABLE_MINORS:
        raise KpcFormatError(f"cannot write .kpc version {version} (this writer writes 1.0 to 1.4 and 2.0)")
    if stream.refreshes and version[1] < REFRESH_MINOR:
        raise KpcFormatError("source refreshes need format 1.2")
    if stream.base is not None and stream.base.alone:
        raise KpcFormatError("a base layer alone needs format 2.3")
    if (stream.base is not None) != (version[1] >= BASE_MINOR):
        raise KpcFormatError("a base layer needs format 1.4" if stream.base is not None
                             else "format 1.4 is written with a base layer only")
    _check_header(h)
    # Quantise with the steps exactly as the decoder will read them back.
    kp_step, jac_step = _f32(h.kp_step), _f32(h.jac_step)
    _check_step("kp_step", kp_step)
    _check_step("jac_step", jac_step)
    for kind, payload in stream.extra_chunks:
        _check_extra(kind, payload)
    keypoints = (_chunk("KPTS", _encode_kpts(stream, kp_step, jac_step)) if version == (1, 0)
                 else _chunk("KPRC", _encode_kprc(stream, kp_step, jac_step, version[1])))
    parts = [
        MAGIC, bytes(version),
        _chunk("HEAD", _encode_head(h, version[1])),
        _chunk("SRCF", _encode_srcf(stream.source_codec, stream.source_data)),
        keypoints,
    ]
    after = 0
    for r in stream.refreshes:
        parts.append(_chunk("SRCR", _encode_srcr(r, np.asarray(stream.sent_indices), after)))
        after = r.frame
    if stream.base is not None:
        parts.append(_chunk("BASE", _encode_base(stream.base, h.frame_count)))
    parts += [_chunk(kind, bytes(payload)) for kind, payload in stream.extra_chunks]
    parts.append(_chunk("KEND", b""))
    return b"".join(parts)


# --------------------------------------------------------------------------
# Reading


class _Reader:
    """Cursor over one chunk payload; short reads raise KpcFormatError."""

    def __init__(self, payload: bytes, kind: str, base: int):
        self.payload, self.kind, self.base, self.pos = payload, kind, base, 0

    def take(self, n: int) -> bytes:
        if n > len(self.payload) - self.pos:
            raise KpcFormatError(f"truncated chunk {self.kind} at byte {self.base + self.pos}")
        out = self.payload[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def text(self, encoding: str, what: str) -> str:
        raw = self.take(self.unpack("B")[0])
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            raise KpcFormatError(f"{what} in chunk {self.kind} is not {encoding}") from None

    def rest(self) -> bytes:
        return self.take(len(self.payload) - self.pos)

    def finish(self, strict: bool) -> None:
        """Trailing bytes are fields of a newer minor version: error only if strict."""
        if strict and self.pos != len(self.payload):
            raise KpcFormatError(
                f"{len(self.payload) - self.pos} unexpected bytes at end of chunk {self.kind}")


def _split_chunks(data: bytes):
    """Yield (type, payload, offset) for each chunk up to KEND, checking framing."""
    pos = PREAMBLE_SIZE
    while True:
        if len(data) - pos < 8:
            raise KpcFormatError(f"truncated file: missing chunk header at byte {pos}"
                                 if pos < len(data) else f"file ends without KEND at byte {pos}")
        tag = data[pos:pos + 4]
        kind = tag.decode("latin-1")
        if not _is_chunk_type(kind):
            raise KpcFormatError(f"bad chunk type {tag!r} at byte {pos}")
        (length,) = struct.unpack_from("<I", data, pos + 4)
        if length > len(data) - pos - _FRAMING_SIZE:
            raise KpcFormatError(f"truncated chunk {kind} at byte {pos}")
        payload = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack_from("<I", data, pos + 8 + length)
        if crc != _crc(tag, payload):
            raise KpcFormatError(f"CRC mismatch in chunk {kind}")
        yield kind, payload, pos
        pos += length + _FRAMING_SIZE
        if kind == "KEND":
            if pos != len(data):
                raise KpcFormatError(f"{len(data) - pos} bytes of data after KEND")
            return


def _read_preamble(data) -> tuple[bytes, int]:
    """Check magic and version; returns (data as bytes, minor version)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise KpcFormatError(f"truncated file: only {len(data)} bytes")
        raise KpcFormatError("not a .kpc file (bad magic)")
    if len(data) < PREAMBLE_SIZE:
        raise KpcFormatError("truncated file: version bytes missing")
    major, minor = data[len(MAGIC)], data[len(MAGIC) + 1]
    if major not in (1, PACKET_MAJOR):
        raise KpcVersionError(
            f"unsupported .kpc major version {major} (this decoder reads 1 and {PACKET_MAJOR})")
    return data, minor


def format_major(data) -> int:
    """The major version of a file's bytes (after checking magic and version)."""
    return _read_preamble(data)[0][len(MAGIC)]


def _decode_head(r: _Reader, minor: int) -> Header:
    strict = minor <= LATEST_MINOR_1
    model = r.text("utf-8", "model name")
    sha = r.take(32).hex()
    width, height, fps_num, fps_den, frame_count, keep_every, k = r.unpack("HHIIIHB")
    kp_step, jac_step = r.unpack("ff")
    predictor = r.text("utf-8", "predictor name")
    (flags,) = r.unpack("H")
    known = _KNOWN_FLAGS[min(minor, LATEST_MINOR_1)]
    if strict and flags & ~known:
        raise KpcFormatError(f"reserved HEAD flags are set (0x{flags & ~known:04x})")
    r.finish(strict)
    h = Header(model, sha, width, height, fps_num, fps_den, frame_count,
               keep_every, k, kp_step, jac_step, predictor, bool(flags & known & FLAG_ADAPTIVE))
    _check_header(h)
    return h


def _decode_srcf(r: _Reader) -> tuple[str, bytes]:
    raw = r.take(r.unpack("B")[0])
    if not raw or not _printable_ascii(raw):
        raise KpcFormatError("source codec name in chunk SRCF is not printable ASCII")
    return raw.decode("ascii"), r.rest()


def _decode_srcr(r: _Reader) -> Refresh:
    (frame,) = r.unpack("I")
    codec, data = _decode_srcf(r)
    return Refresh(frame, codec, data)


def _read_blob(r: _Reader, count: int, what: str) -> np.ndarray:
    data = r.take(r.unpack("I")[0])
    try:
        return q.unpack_symbols(data, count)
    except KpcFormatError as exc:
        raise KpcFormatError(f"{what} in chunk KPTS: {exc}") from None


def _check_count(count: int, h: Header) -> None:
    if count < 1 or count > h.frame_count:
        raise KpcFormatError(f"sent frame count {count} not in 1..frame_count")
    if count * h.num_keypoints > MAX_SENT_KEYPOINTS:
        raise KpcFormatError(f"{count} sent frames x {h.num_keypoints} keypoints exceeds decoder limit")


def _decode_kpts(r: _Reader, h: Header, strict: bool):
    (count,) = r.unpack("I")
    k = h.num_keypoints
    _check_count(count, h)
    indices = np.cumsum(_read_blob(r, count, "frame indices").astype(np.int64))
    _check_indices(indices, h.frame_count)
    q_kp = _read_blob(r, count * k * 2, "keypoints").reshape(count, k, 2)
    q_jac = _read_blob(r, count * k * 4, "jacobians").reshape(count, k, 2, 2)
    r.finish(strict)
    kp_levels, jac_levels = q.reconstruct_levels(q_kp), q.reconstruct_levels(q_jac)
    _check_levels(kp_levels, q.KP_CLIP, h.kp_step, "keypoint values")
    _check_levels(jac_levels, q.JAC_CLIP, h.jac_step, "jacobian values")
    keypoints = q.levels_to_values(kp_levels, h.kp_step)
    jacobians = q.levels_to_values(jac_levels, h.jac_step)
    return indices, keypoints, jacobians, None


def _decode_kprc(r: _Reader, h: Header, strict: bool, minor: int):
    count, coder, kp_pred, jac_pred = r.unpack("IBBB")
    k = h.num_keypoints
    _check_count(count, h)
    table = None
    if coder == CODER_DECORRELATED and minor >= DECORRELATED_MINOR:
        table = decorrelation_table(k)
        if table is None:
            raise KpcFormatError(f"keypoint coder 1 in chunk KPRC has no table for {k} keypoints")
    elif coder != CODER_CONTEXT:
        raise KpcFormatError(f"unknown keypoint coder {coder} in chunk KPRC")
    for what, kind in (("keypoint", kp_pred), ("jacobian", jac_pred)):
        if kind not in q.PREDICTORS:
            raise KpcFormatError(f"unknown {what} predictor {kind} in chunk KPRC")
    coded = r.take(r.unpack("I")[0])
    r.finish(strict)
    try:
        deltas, r_kp, r_jac = entropy.decode(coded, count, [1, 2 * k, 4 * k], coder)
    except KpcFormatError as exc:
        raise KpcFormatError(f"chunk KPRC: {exc}") from None
    if table is not None:
        try:
            residuals = decorrelate.inverse(np.concatenate([r_kp, r_jac], 1), deltas, table)
        except ValueError:
            raise KpcFormatError("chunk KPRC: decorrelated residuals out of range") from None
        r_kp, r_jac = residuals[:, :2 * k], residuals[:, 2 * k:]
    indices = np.cumsum(deltas[:, 0])
    _check_indices(indices, h.frame_count)
    levels = []
    for res, kind, clip, step, what in ((r_kp, kp_pred, q.KP_CLIP, h.kp_step, "keypoint values"),
                                        (r_jac, jac_pred, q.JAC_CLIP, h.jac_step, "jacobian values")):
        try:
            levels.append(q.levels_from_residuals(res, kind, q.max_level_rounded_up(clip, step)))
        except ValueError:
            raise KpcFormatError(f"{what} outside [-{clip:g}, {clip:g}]") from None
    keypoints = q.levels_to_values(levels[0], h.kp_step).reshape(count, k, 2)
    jacobians = q.levels_to_values(levels[1], h.jac_step).reshape(count, k, 2, 2)
    return indices, keypoints, jacobians, coder


def _decode_base(r: _Reader, h: Header, strict: bool) -> BaseLayer:
    codec, size, divisor, crf, count = r.unpack("BHBBI")
    if codec not in BASE_CODECS:
        raise KpcFormatError(f"unknown base-layer codec {codec} in chunk BASE")
    if not (2 <= size <= MAX_BASE_SIZE and size % 2 == 0) or divisor < 1:
        raise KpcFormatError(f"bad base layer {size}x{size} / divisor {divisor} in chunk BASE")
    expected = -(-h.frame_count // divisor)
    if count != expected:
        raise KpcFormatError(f"chunk BASE has {count} packets, {expected} expected")
    sizes = []
    payload, pos = r.payload, r.pos
    for _ in range(count):
        n = shift = 0
        while True:
            if pos >= len(payload) or shift > 28:
                raise KpcFormatError("truncated or bad packet sizes in chunk BASE")
            byte = payload[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if n == 0:
            raise KpcFormatError("empty packet in chunk BASE")
        sizes.append(n)
    r.pos = pos
    if sum(sizes) > len(payload) - pos:
        raise KpcFormatError(f"chunk BASE packet sizes add up to {sum(sizes)} bytes, it has {len(payload) - pos}")
    packets = [r.take(n) for n in sizes]
    r.finish(strict)
    return BaseLayer(size, divisor, crf, packets, BASE_CODECS[codec])


def _check_order(kind: str, seen: list[str], order: tuple[str, ...]) -> None:
    """Critical chunks must come exactly as HEAD, SRCF, KPTS (1.0) or KPRC (1.1 on),
    any number of SRCR (1.2 on), KEND."""
    if not _is_critical(kind):
        if not seen:
            raise KpcFormatError(f"optional chunk {kind} before HEAD")
        return
    if kind not in _CRITICAL:
        raise KpcFormatError(f"unknown critical chunk {kind}")
    if seen and seen[-1] == kind and kind in _REPEATED:
        return
    pos = order.index(seen[-1]) + 1 if seen else 0
    while order[pos] in _SKIPPABLE and kind != order[pos]:
        pos += 1  # a repeated or optional critical chunk may be absent
    if kind != order[pos]:
        raise KpcFormatError(f"chunk {kind} where {order[pos]} was expected")
    seen.append(kind)


def loads(data: bytes) -> KpcStream:
    """Parse a .kpc file; keypoints come back dequantised as float32."""
    data, minor = _read_preamble(data)
    if data[len(MAGIC)] == PACKET_MAJOR:
        return _packets.read_stream(data)
    strict = minor <= LATEST_MINOR_1  # a newer minor may append fields
    order = (_ORDER_1_0 if minor == 0 else _ORDER_1_1 if minor == 1 else _ORDER_1_2 if minor < BASE_MINOR
             else _ORDER_1_4)
    seen: list[str] = []
    parts: dict = {}
    extra: list[tuple[str, bytes]] = []
    refreshes: list[Refresh] = []
    base = None
    for kind, payload, offset in _split_chunks(data):
        _check_order(kind, seen, order)
        r = _Reader(payload, kind, offset + 8)
        if kind == "HEAD":
            parts["header"] = _decode_head(r, minor)
        elif kind == "SRCF":
            parts["source"] = _decode_srcf(r)
        elif kind == "KPTS":
            parts["kpts"] = _decode_kpts(r, parts["header"], strict)
        elif kind == "KPRC":
            parts["kpts"] = _decode_kprc(r, parts["header"], strict, minor)
        elif kind == "SRCR":
            refreshes.append(_decode_srcr(r))
            _check_refresh_frame(refreshes[-1].frame, parts["kpts"][0],
                                 refreshes[-2].frame if len(refreshes) > 1 else 0)
        elif kind == "BASE":
            base = _decode_base(r, parts["header"], strict)
        elif kind == "KEND":
            r.finish(True)
        else:
            extra.append((kind, payload))
    indices, keypoints, jacobians, coder = parts["kpts"]
    codec, source = parts["source"]
    # A newer minor is read as the oldest version that holds what was understood.
    version = ((1, 0) if minor == 0 else (1, BASE_MINOR) if base is not None
               else (1, DECORRELATED_MINOR) if coder == CODER_DECORRELATED or minor == DECORRELATED_MINOR
               else (1, REFRESH_MINOR) if refreshes else (1, 1))
    return KpcStream(parts["header"], codec, source, indices, keypoints, jacobians, extra, version, refreshes, base)


def chunk_table(data: bytes) -> list[tuple[str, int]]:
    """List (chunk type, total bytes including 12 bytes framing) in file order.

    The magic and version bytes come first as ("magic", 10). Framing, CRCs
    and version are checked; chunk payloads are not decoded.
    """
    data, _ = _read_preamble(data)
    if data[len(MAGIC)] == PACKET_MAJOR:
        return _packets.packet_table(data)
    table = [("magic", PREAMBLE_SIZE)]
    for kind, payload, _ in _split_chunks(data):
        table.append((kind, len(payload) + _FRAMING_SIZE))
    return table


# --------------------------------------------------------------------------
# Files


def write_file(path, stream: KpcStream) -> None:
    """Serialise ``stream`` and write it with :func:`write_bytes`."""
    write_bytes(path, dumps(stream))


def read_file(path) -> KpcStream:
    """Read a .kpc file with :func:`read_bytes` and parse it; "-" reads stdin."""
    return loads(read_bytes(path))


def write_bytes(path, data: bytes) -> None:
    """Write atomically (path + ".tmp", then rename); "-" writes to stdout.

    Failure raises KpcodecError("cannot write X: reason") and leaves no .tmp.
    """
    if path == "-":
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except OSError as exc:  # e.g. the reader of a pipe went away
            raise KpcodecError(f"cannot write <stdout>: {exc.strerror or exc}") from None
        return
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not expose a half-written file
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise KpcodecError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:  # Ctrl-C or SIGTERM mid-write: no .tmp may stay behind
        _remove_quietly(tmp)
        raise


class StreamWriter:
    """A file written as its bytes come (path + ".tmp", renamed by `commit`), or stdout for "-",
    flushed after each write so a reader sees it grow. Leaving the `with` block without `commit`
    (an error, Ctrl-C) removes the .tmp: no partial output is left."""

    def __init__(self, path):
        self.path, self.size, self._done = path, 0, False
        self.tmp = None if path == "-" else os.fspath(path) + ".tmp"
        try:
            self._f = sys.stdout.buffer if path == "-" else open(self.tmp, "wb")
        except OSError as exc:
            raise KpcodecError(f"cannot write {path}: {exc.strerror or exc}") from None

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
            self._f.flush()
        except OSError as exc:
            raise KpcodecError(f"cannot write {'<stdout>' if self.tmp is None else self.path}: "
                               f"{exc.strerror or exc}") from None
        self.size += len(data)

    def write_packets(self, packets) -> None:
        if packets:
            self.write(b"".join(bytes(p) for p in packets))

    def commit(self) -> None:
        if self.tmp is None:
            self._done = True
            return
        try:
            os.fsync(self._f.fileno())  # the rename must not expose a half-written file
            self._f.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise KpcodecError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.tmp is not None:
            if not self._f.closed:
                self._f.close()
            if not self._done:
                _remove_quietly(self.tmp)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def read_pieces(path, size: int = 1 << 16):
    """A file's bytes (stdin for "-") in pieces as they can be read (a pipe's as they arrive);
    failure raises KpcodecError("cannot read X: reason")."""
    try:
        f = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as exc:
        raise KpcodecError(f"cannot read {os.fsdecode(path)}: {exc.strerror or exc}") from None
    try:
        while True:
            try:
                piece = f.read1(size) if hasattr(f, "read1") else f.read(size)
            except OSError as exc:
                raise KpcodecError(f"cannot read {os.fsdecode(path)}: {exc.strerror or exc}") from None
            if not piece:
                return
            yield piece
    finally:
        if path != "-":
            f.close()


def read_bytes(path) -> bytes:
    """All bytes of a file; "-" reads stdin.

    Failure raises KpcodecError("cannot read X: reason") (not KpcFormatError:
    the file may be fine, it just could not be read).
    """
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise KpcodecError(f"cannot read {os.fsdecode(path)}: {exc.strerror or exc}") from None


from kpcodec.bitstream import packets as _packets  # noqa: E402  (2.0, built on the helpers above)
