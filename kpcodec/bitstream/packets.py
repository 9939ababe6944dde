""".kpc format 2.0: the stream as self-delimiting packets, written and read one at a time (man/kpc.5).

A 2.x file is ``MAGIC``, major 2, minor 0 to 4, then packets until an END packet (2.1 adds the
base layer's mix to HEAD, 2.2 several base frames to a BASE packet, 2.3 a stream of the base layer
alone: no SOURCE, no KEYPOINTS, 2.4 its cubic keypoint path, 2.5 its base frames placed by the
encoder, each BASE packet saying where; a writer marks a file alone 2.5, 2.4 or 2.3, one with a base
layer 2.2, others 2.0, the oldest minor that reads it). Each packet is

    type (1 byte, an ASCII letter) | seq (varint) | frame (varint) | length (varint) | payload | CRC-32

with the CRC (u32 LE, as zlib) over everything before it. ``seq`` counts packets from 0 (a gap is a
lost packet); ``frame`` is the video frame the packet is about. The types:

* ``H`` HEAD: the stream's parameters (kpcodec.bitstream.container.Header without the frame count,
  which END carries) and the base layer's settings, if it has one. Always packet 0.
* ``S`` SOURCE: a source image, shown from ``frame`` on. The next keypoint packet restarts at
  ``frame``: a SOURCE and that KEYPOINTS packet are a keyframe, from which the stream decodes alone.
* ``K`` KEYPOINTS: sent frames from ``frame`` on, range coded (kpcodec.bitstream.entropy) after the
  in-loop prediction and decorrelation of format 1.3's KPRC coder 1 (kpcodec.bitstream.decorrelate).
  A restart packet codes its first frame absolutely and starts the adaptive models from their
  prior; the others carry on the levels, the models and the decoder's predictor from the packet
  before, so only the coder's flush and the framing (about 10 bytes) are paid per packet.
* ``B`` BASE: temporal units of the hybrid mode's base layer, the first for video frame ``frame``,
  the next for the base frames after it (2.2: a count and the sizes first; 2.0/2.1: one unit; 2.5
  placed: the count, then each later unit's distance in frames from the one before it). A
  packet costs ~9 bytes of framing: one a base frame was 0.7 kb/s at 10 base frames a second, 22%
  of a 96-px CRF 63 base layer; a file bundles the base frames of each keypoint packet.
* ``A`` AUDIO: a second or so of the Opus sound: u32 the whole track's length (48-kHz ticks), then
  an ``opus`` chunk (kpcodec.bitstream.opus) of its packets; the first comes before any keypoints,
  so a decoder knows the sound before its first frame.
* ``X`` EXTRA: an optional chunk of format 1.x (a 4-letter name and its payload).
* ``I`` INDEX (optional, just before END): the byte offset of every SOURCE and restart packet.
* ``E`` END: the frame count and where the INDEX starts (0: none).

:class:`PacketWriter` turns stream content into packets as it comes; :class:`PacketReader` takes
bytes as they arrive and gives back the decoded content (:class:`SourceImage`, :class:`SentFrames`,
:class:`BaseFrame`, :class:`Extra`, :class:`End`, after the :class:`Header`).

Only numpy, constriction and the standard library are used: no torch.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace

import numpy as np

from kpcodec.bitstream import container as kc
from kpcodec.bitstream import decorrelate, entropy, opus
from kpcodec.bitstream import quantize as q
from kpcodec.bitstream.container import varint
from kpcodec.errors import KpcFormatError

VERSION = (2, 6)  # the newest this module reads and writes
MINORS = (0, 1, 2, 3, 4, 5, 6)  # of major 2
MIX_MINOR = 1  # the first minor with the HEAD's base-layer mix
BUNDLE_MINOR = 2  # the first minor whose BASE packets hold a count of units
ALONE_MINOR = 3  # the first minor with a stream of the base layer alone
CUBIC_MINOR = 4  # the first minor with the base layer alone's cubic keypoint path
PLACED_MINOR = 5  # the first minor with the base layer alone's base frames placed by the encoder
MOTION_MINOR = 6  # the first minor with MOTION packets (keypoint offsets between base frames)
PREAMBLE = kc.MAGIC + bytes((2, 0))  # every 2.x preamble is this long; 2.1 differs in its last byte
TYPES = {"H": "HEAD", "S": "SOURCE", "K": "KEYPOINTS", "B": "BASE", "M": "MOTION", "A": "AUDIO", "X": "EXTRA",
         "I": "INDEX", "E": "END"}
AUDIO_SLICE_S = 1.0  # seconds of sound per AUDIO packet
# Sent frames per keypoint packet in a file: the framing and the coder's flush (~14 bytes) against
# 7-17 bytes per sent frame at keep-every 2 (the smooth 2-min sample loop: +1.5% bits against 1.3 at
# 128, +2.9% at 64; the val clips: -1.6% median; benchmarks/results/packets.md); live mode sends one
# per sent frame.
DEFAULT_PACKET_FRAMES = 128
MAX_PAYLOAD = 1 << 28  # a packet claiming more is malformed (the largest source image is far smaller)
_FLAG_RESTART = 0x01
_HEAD_FLAG_BASE = 0x0002  # HEAD flags bit 1 (2.0): base-layer settings follow
_HEAD_FLAG_MIX = 0x0004  # HEAD flags bit 2 (2.1): the base layer's mix (u8) follows its settings
_HEAD_FLAG_ALONE = 0x0008  # HEAD flags bit 3 (2.3): the frames come from the base layer alone
_HEAD_FLAG_CUBIC = 0x0010  # HEAD flags bit 4 (2.4, with bit 3): the keypoint path between base frames is cubic
_HEAD_FLAG_PLACED = 0x0020  # HEAD flags bit 5 (2.5, with bit 3): BASE packets say where each base frame is
_HEAD_FLAG_MOTION = 0x0040  # HEAD flags bit 6 (2.6, with bit 4): MOTION packets offset the keypoint path
_MAX_VARINT = 10


# --------------------------------------------------------------------------
# Content


@dataclass
class SourceImage:
    """A source image (``S``): frames from `frame` on are rendered from it."""

    frame: int
    codec: str
    data: bytes


@dataclass
class SentFrames:
    """Sent frames of a keypoint packet (``K``), dequantised; `restart` on a keyframe's."""

    indices: np.ndarray  # (n,) int64
    keypoints: np.ndarray  # (n, K, 2) float32
    jacobians: np.ndarray  # (n, K, 2, 2) float32
    restart: bool = False


@dataclass
class BaseFrame:
    """One base-layer temporal unit for video frame `frame` (a ``B`` packet holds one or more)."""

    frame: int
    data: bytes


@dataclass
class Extra:
    """An optional chunk carried in a packet (``X``)."""

    kind: str
    payload: bytes


@dataclass
class AudioSlice:
    """Some of the sound (an ``A`` packet): `track` holds its packets (absolute times) and the
    stream's settings; `length` is the whole track's."""

    track: object  # kpcodec.bitstream.opus.OpusTrack
    length: int


def audio_slices(track, seconds: float = AUDIO_SLICE_S) -> list[AudioSlice]:
    """A whole Opus track cut into slices of about `seconds`, in time order."""
    durations = track.durations()
    step = max(1, round(seconds * opus.CLOCK))
    out, start = [], 0
    while start < len(track.packets):
        t0 = int(track.pts[start])
        end = start
        while end < len(track.packets) and int(track.pts[end]) < t0 + step:
            end += 1
        pts = np.asarray(track.pts[start:end], np.int64)
        span = int(pts[-1] + durations[end - 1]) - int(pts[0]) - (track.pre_skip if start == 0 else 0)
        piece = opus.OpusTrack(track.sample_rate, track.channels, track.pre_skip if start == 0 else 0,
                               track.bitrate, max(1, span), pts, list(track.packets[start:end]))
        out.append(AudioSlice(piece, int(track.length)))
        start = end
    return out


def encode_audio_slice(s: AudioSlice) -> bytes:
    return struct.pack("<I", s.length) + opus.pack(s.track)


def decode_audio_slice(payload: bytes, at: int) -> AudioSlice:
    if len(payload) < 4:
        raise KpcFormatError(f"truncated AUDIO packet at byte {at}")
    (length,) = struct.unpack_from("<I", payload)
    try:
        return AudioSlice(opus.unpack(payload[4:]), length)
    except KpcFormatError as exc:
        raise KpcFormatError(f"AUDIO packet at byte {at}: {exc}") from None


def join_audio(slices: list[AudioSlice]):
    """The whole track of a stream's AUDIO slices (its first's settings, the stream's length)."""
    first = slices[0].track
    pts = np.concatenate([s.track.pts for s in slices])
    if np.any(np.diff(pts) < 1):
        raise KpcFormatError("AUDIO packets overlap or come out of order")
    return opus.OpusTrack(first.sample_rate, first.channels, first.pre_skip, first.bitrate, slices[0].length, pts,
                          [p for s in slices for p in s.track.packets])


@dataclass
class End:
    frame_count: int


@dataclass(frozen=True)
class Packet:
    kind: str  # one of TYPES
    seq: int
    frame: int
    payload: bytes

    def __bytes__(self) -> bytes:
        body = b"".join((self.kind.encode("ascii"), varint(self.seq), varint(self.frame),
                         varint(len(self.payload)), self.payload))
        return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def read_varint(data, pos: int) -> tuple[int | None, int]:
    """(value, position after it), or (None, pos) when the data ends inside it; a varint longer
    than 10 bytes or not minimally coded is malformed."""
    n = shift = 0
    start = pos
    while True:
        if pos >= len(data):
            return None, start
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if pos - start > 1 and byte == 0:
                raise KpcFormatError(f"varint at byte {start} is not minimally coded")
            return n, pos
        shift += 7
        if pos - start >= _MAX_VARINT:
            raise KpcFormatError(f"varint at byte {start} is longer than {_MAX_VARINT} bytes")


def preamble(head: Packet) -> bytes:
    """The preamble of a file whose HEAD packet is `head`: 2.5 when its frames come from the base
    layer alone from placed base frames, 2.4 on a cubic keypoint path, 2.3 on a linear one, 2.2 when
    it has a base layer (its BASE packets are 2.2's), else 2.0 (the oldest version that reads it)."""
    _, base = decode_head(head.payload)
    minor = 0 if base is None else MOTION_MINOR if base.motion is not None else PLACED_MINOR if base.placed else \
        CUBIC_MINOR if base.cubic else ALONE_MINOR if base.alone else BUNDLE_MINOR
    return kc.MAGIC + bytes((VERSION[0], minor))


def check_preamble(data) -> int:
    """The minor version of a 2.x preamble at the start of `data` (at least len(PREAMBLE) bytes)."""
    if bytes(data[:len(kc.MAGIC)]) != kc.MAGIC:
        raise KpcFormatError("not a .kpc file (bad magic)")
    major, minor = data[len(kc.MAGIC)], data[len(kc.MAGIC) + 1]
    if major != VERSION[0]:
        raise KpcFormatError(f"not a .kpc 2.x stream (version {major}.{minor})")
    if minor not in MINORS:
        raise KpcFormatError(f"a .kpc 2.{minor} stream needs a newer kpcodec (this one reads 2.0 to 2.{MINORS[-1]})")
    return minor


def join(packets) -> bytes:
    """A whole 2.x file from its packets (HEAD first)."""
    packets = list(packets)
    return preamble(packets[0]) + b"".join(bytes(p) for p in packets)


# --------------------------------------------------------------------------
# HEAD


def encode_head(h: kc.Header, base: kc.BaseLayer | None) -> bytes:
    fields = replace(h, frame_count=1)  # not in a 2.0 HEAD: END has it
    kc._check_header(fields)
    mix = base is not None and base.mix != kc.MIX_FULL
    flags = (kc.FLAG_ADAPTIVE if h.adaptive else 0) | (_HEAD_FLAG_BASE if base is not None else 0) | \
        (_HEAD_FLAG_MIX if mix else 0) | (_HEAD_FLAG_ALONE if base is not None and base.alone else 0) | \
        (_HEAD_FLAG_CUBIC if base is not None and base.cubic else 0) | \
        (_HEAD_FLAG_PLACED if base is not None and base.placed else 0) | \
        (_HEAD_FLAG_MOTION if base is not None and base.motion is not None else 0)
    if base is not None and base.motion is not None and not base.cubic:
        raise KpcFormatError("keypoint offsets (motion) are for a cubic keypoint path")
    out = [kc._short_string(h.model, "utf-8", "model name"), kc._sha_bytes(h.weights_sha256),
           struct.pack("<HHIIHB", h.width, h.height, h.fps_num, h.fps_den, h.keep_every, h.num_keypoints),
           struct.pack("<ff", h.kp_step, h.jac_step), kc._short_string(h.predictor, "utf-8", "predictor name"),
           struct.pack("<H", flags)]
    if base is not None:
        kc._check_base(replace(base, packets=[], frames=[] if base.placed else None,
                               motion=None if base.motion is None else kc.Motion.empty(h.num_keypoints)), 0)
        codec = next(k for k, v in kc.BASE_CODECS.items() if v == base.codec)
        out.append(struct.pack("<BHBB", codec, base.size, base.divisor, base.crf))
        if mix:
            out.append(struct.pack("<B", base.mix))
    return b"".join(out)


def decode_head(payload: bytes, minor: int = VERSION[1]) -> tuple[kc.Header, kc.BaseLayer | None]:
    """The Header and base-layer settings of a HEAD payload of a 2.`minor` stream."""
    r = kc._Reader(payload, "HEAD", 0)
    model = r.text("utf-8", "model name")
    sha = r.take(32).hex()
    width, height, fps_num, fps_den, keep_every, k = r.unpack("HHIIHB")
    kp_step, jac_step = r.unpack("ff")
    predictor = r.text("utf-8", "predictor name")
    (flags,) = r.unpack("H")
    known = kc.FLAG_ADAPTIVE | _HEAD_FLAG_BASE | (_HEAD_FLAG_MIX if minor >= MIX_MINOR else 0) | \
        (_HEAD_FLAG_ALONE if minor >= ALONE_MINOR else 0) | (_HEAD_FLAG_CUBIC if minor >= CUBIC_MINOR else 0) | \
        (_HEAD_FLAG_PLACED if minor >= PLACED_MINOR else 0) | (_HEAD_FLAG_MOTION if minor >= MOTION_MINOR else 0)
    if flags & ~known:
        raise KpcFormatError(f"reserved HEAD flags are set (0x{flags & ~known:04x})")
    if flags & (_HEAD_FLAG_MIX | _HEAD_FLAG_ALONE) and not flags & _HEAD_FLAG_BASE:
        raise KpcFormatError("a base-layer mix or a base layer alone in a HEAD without a base layer")
    if flags & (_HEAD_FLAG_CUBIC | _HEAD_FLAG_PLACED) and not flags & _HEAD_FLAG_ALONE:
        raise KpcFormatError("a cubic keypoint path or placed base frames in a HEAD without a base layer alone")
    if flags & _HEAD_FLAG_MOTION and not flags & _HEAD_FLAG_CUBIC:
        raise KpcFormatError("keypoint offsets (motion) in a HEAD without a cubic keypoint path")
    base = None
    if flags & _HEAD_FLAG_BASE:
        codec, size, divisor, crf = r.unpack("BHBB")
        if codec not in kc.BASE_CODECS:
            raise KpcFormatError(f"unknown base-layer codec {codec} in HEAD")
        (mix,) = r.unpack("B") if flags & _HEAD_FLAG_MIX else (kc.MIX_FULL,)
        placed = bool(flags & _HEAD_FLAG_PLACED)
        base = kc.BaseLayer(size, divisor, crf, [], kc.BASE_CODECS[codec], mix, bool(flags & _HEAD_FLAG_ALONE),
                            bool(flags & _HEAD_FLAG_CUBIC), [] if placed else None,  # BASE packets say where
                            kc.Motion.empty(k) if flags & _HEAD_FLAG_MOTION else None)  # MOTION packets, what
        kc._check_base(base, 0)
    r.finish(True)
    h = kc.Header(model, sha, width, height, fps_num, fps_den, 1, keep_every, k, kp_step, jac_step, predictor,
                  bool(flags & kc.FLAG_ADAPTIVE))
    kc._check_header(h)
    return replace(h, frame_count=0), base


# --------------------------------------------------------------------------
# KEYPOINTS: the closed loop and the adaptive models, carried from packet to packet


class KeypointCoder:
    """Both ends' keypoint state between keyframes: the last sent frame and its levels (the in-loop
    prediction is format 1.3's: the previous level) and the adaptive models of both KPRC coders.
    Each packet is coded by both and keeps the smaller (its flags say which); both coders' models
    learn from every packet, so either may code the next (a decoder re-codes the residuals it
    decoded with the other coder, which costs it well under a millisecond a frame)."""

    def __init__(self, num_keypoints: int, kp_step: float, jac_step: float):
        self.k = num_keypoints
        self.kp_step, self.jac_step = kc._f32(kp_step), kc._f32(jac_step)
        self.table = kc.decorrelation_table(num_keypoints)
        self.limits = (q.max_level_rounded_up(q.KP_CLIP, self.kp_step), q.max_level_rounded_up(q.JAC_CLIP, self.jac_step))
        self.contexts = None  # {coder: entropy.Context}; None: the next packet must restart
        self.last_frame = -1
        self.levels = None  # (kp levels (2K,), Jacobian levels (4K,)) of the last sent frame

    def _restart(self) -> None:
        coders = [kc.CODER_CONTEXT] + ([kc.CODER_DECORRELATED] if self.table is not None else [])
        self.contexts = {c: entropy.Context([1, 2 * self.k, 4 * self.k], c) for c in coders}
        self.levels = None

    def _streams(self, coder: int, deltas, r_kp, r_jac, first: bool) -> list[np.ndarray]:
        if coder == kc.CODER_DECORRELATED:
            return [deltas, *decorrelate.forward_streams(r_kp, r_jac, deltas, self.table, first=first)]
        return [deltas, r_kp, r_jac]

    def encode(self, indices: np.ndarray, kp: np.ndarray, jac: np.ndarray, restart: bool) -> bytes:
        """A KEYPOINTS payload for sent frames (checked, increasing, after the last one sent)."""
        n = len(indices)
        if restart or self.contexts is None:
            restart = True
            self._restart()
        lv_kp = np.floor(np.clip(np.asarray(kp, np.float64), -q.KP_CLIP, q.KP_CLIP) / self.kp_step + 0.5)
        lv_jac = np.floor(np.clip(np.asarray(jac, np.float64), -q.JAC_CLIP, q.JAC_CLIP) / self.jac_step + 0.5)
        lv_kp, lv_jac = lv_kp.astype(np.int64).reshape(n, -1), lv_jac.astype(np.int64).reshape(n, -1)
        prev = (np.zeros_like(lv_kp[:1]), np.zeros_like(lv_jac[:1])) if restart else \
            (self.levels[0][None], self.levels[1][None])
        r_kp = np.diff(lv_kp, axis=0, prepend=prev[0])
        r_jac = np.diff(lv_jac, axis=0, prepend=prev[1])
        deltas = np.diff(np.asarray(indices, np.int64), prepend=indices[0] if restart else self.last_frame)
        deltas = deltas.reshape(n, 1)
        coded = {c: entropy.encode_group(ctx, self._streams(c, deltas, r_kp, r_jac, restart))
                 for c, ctx in self.contexts.items()}
        coder = min(coded, key=lambda c: (len(coded[c]), -c))  # a tie goes to coder 1
        self.levels, self.last_frame = (lv_kp[-1], lv_jac[-1]), int(indices[-1])
        flags = (_FLAG_RESTART if restart else 0) | (coder << 1)
        return bytes([flags]) + varint(n) + coded[coder]

    def decode(self, payload: bytes, frame: int) -> SentFrames:
        if len(payload) < 2:
            raise KpcFormatError("truncated KEYPOINTS packet")
        flags = payload[0]
        restart, coder = bool(flags & _FLAG_RESTART), flags >> 1
        n, pos = read_varint(payload, 1)
        if n is None or not 1 <= n <= kc.MAX_SENT_KEYPOINTS // max(1, self.k):
            raise KpcFormatError("bad sent frame count in a KEYPOINTS packet")
        if restart:
            if frame <= self.last_frame:
                raise KpcFormatError(f"keyframe at frame {frame} does not follow frame {self.last_frame}")
            self._restart()
        elif self.contexts is None:
            raise KpcFormatError("a KEYPOINTS packet continues a keyframe this decoder does not have")
        contexts = self.contexts
        if coder not in contexts:
            raise KpcFormatError(f"unknown keypoint coder {coder} in a KEYPOINTS packet")
        self.contexts = None  # spent unless this packet decodes whole
        deltas, s_kp, s_jac = entropy.decode_group(contexts[coder], payload[pos:], n)
        if coder == kc.CODER_DECORRELATED:
            try:
                res = decorrelate.inverse(np.concatenate([s_kp, s_jac], 1), deltas, self.table, first=restart)
            except ValueError:
                raise KpcFormatError("KEYPOINTS: decorrelated residuals out of range") from None
            s_kp, s_jac = res[:, :2 * self.k], res[:, 2 * self.k:]
        d = deltas[:, 0]
        if (restart and d[0] != 0) or np.any(d[0 if not restart else 1:] < 1):
            raise KpcFormatError("sent frame indices in a KEYPOINTS packet are not increasing")
        indices = (frame if restart else self.last_frame) + np.cumsum(d)
        if indices[0] != frame:
            raise KpcFormatError(f"KEYPOINTS packet says frame {frame}, its first sent frame is {int(indices[0])}")
        levels = []
        for res, limit, last, what in ((s_kp, self.limits[0], None if restart else self.levels[0], "keypoint"),
                                       (s_jac, self.limits[1], None if restart else self.levels[1], "jacobian")):
            try:
                levels.append(q.levels_from_residuals(res, q.PREVIOUS, limit, last))
            except ValueError:
                raise KpcFormatError(f"{what} values in a KEYPOINTS packet are out of range") from None
        for other, ctx in contexts.items():  # the other coder's models learn from the same residuals
            if other != coder:
                entropy.encode_group(ctx, self._streams(other, deltas, s_kp, s_jac, restart))
        self.contexts, self.levels, self.last_frame = contexts, (levels[0][-1], levels[1][-1]), int(indices[-1])
        kp = q.levels_to_values(levels[0], self.kp_step).reshape(n, self.k, 2)
        jac = q.levels_to_values(levels[1], self.jac_step).reshape(n, self.k, 2, 2)
        return SentFrames(indices.astype(np.int64), kp, jac, restart)


# --------------------------------------------------------------------------
# Writing


def _motion_context(num_keypoints: int) -> entropy.Context:
    """MOTION packets' levels: one stream of 2K per frame, models from flat counts in each packet (a
    packet decodes without the ones before it)."""
    return entropy.Context([2 * num_keypoints], models=[entropy._StreamModels()])


def encode_motion(levels: np.ndarray) -> bytes:
    """(F, 2K) levels of keypoint offsets -> a MOTION packet's coded part."""
    levels = np.asarray(levels, np.int64)
    return entropy.encode_group(_motion_context(levels.shape[1] // 2), [levels])


def decode_motion(data: bytes, frames: int, num_keypoints: int) -> np.ndarray:
    return entropy.decode_group(_motion_context(num_keypoints), data, frames)[0]


class PacketWriter:
    """Stream content in, packets out, in stream order (see the module's docstring).

    `packet_frames` sent frames go in one keypoint packet (1: every sent frame at once, as live
    mode wants); a source image, an extra or the end flushes the ones waiting first. Base frames
    wait the same way, at most `packet_frames` of them, and go out as one BASE packet before any
    packet but AUDIO.
    """

    def __init__(self, header: kc.Header, base: kc.BaseLayer | None = None,
                 packet_frames: int = DEFAULT_PACKET_FRAMES):
        if not isinstance(packet_frames, int) or packet_frames < 1:
            raise ValueError(f"packet_frames must be a positive integer (got {packet_frames!r})")
        self.header, self.base, self.packet_frames = header, base, packet_frames
        self.coder = KeypointCoder(header.num_keypoints, header.kp_step, header.jac_step)
        self.seq, self.offset = 0, len(PREAMBLE)
        self.index: list[tuple[str, int, int]] = []  # (type, frame, byte offset) of S and restart K
        self._waiting: list = []  # (index, kp, jac) of sent frames not yet in a packet
        self._base_waiting: list[tuple[int, bytes]] = []  # (frame, unit) of base frames not yet in a packet
        self._base_last: int | None = None  # the frame of the last base frame in a packet
        self._base_done: set[int] = set()  # the frames of the base frames in packets (motion: placed ones)
        self._motion_waiting: list[tuple[int, np.ndarray]] = []  # (frame, levels) not yet in a MOTION packet
        self._motion_next = 0  # the first frame no MOTION packet covers yet
        self._restart = True
        self._source_frame = None  # the frame of the last source image
        self._out: list[Packet] = [self._packet("H", 0, encode_head(header, base))]

    def _packet(self, kind: str, frame: int, payload: bytes) -> Packet:
        p = Packet(kind, self.seq, int(frame), payload)
        if kind == "S" or (kind == "K" and payload[0] & _FLAG_RESTART):
            self.index.append((kind, int(frame), self.offset))
        self.seq += 1
        self.offset += len(bytes(p))
        return p

    def _take(self) -> list[Packet]:
        out, self._out = self._out, []
        return out

    def source(self, frame: int, codec: str, data: bytes) -> list[Packet]:
        """A source image from `frame` on; `frame` must be the next sent frame (a keyframe)."""
        self._not_alone("source image")
        self._flush_keypoints()  # and the base frames waiting
        if frame <= self.coder.last_frame and frame != 0:
            raise KpcFormatError(f"source image at frame {frame} does not follow sent frame {self.coder.last_frame}")
        self._out.append(self._packet("S", frame, kc._encode_srcf(codec, data)))
        self._restart, self._source_frame = True, int(frame)
        return self._take()

    def keypoints(self, index: int, kp: np.ndarray, jac: np.ndarray) -> list[Packet]:
        """One sent frame; a packet comes out when `packet_frames` are waiting."""
        self._not_alone("keypoints")
        last = self._waiting[-1][0] if self._waiting else self.coder.last_frame
        if isinstance(index, bool) or int(index) <= last:
            raise KpcFormatError(f"sent frame {index} does not follow frame {last}")
        if self._source_frame is None:
            raise KpcFormatError("keypoints before any source image")
        if self._source_frame > last and index != self._source_frame:
            raise KpcFormatError(f"sent frame {index}: the source image at frame {self._source_frame} needs "
                                 "its frame sent first")
        try:
            kp, jac = q.check_keypoints(np.asarray(kp)[None], np.asarray(jac)[None], self.coder.kp_step,
                                        self.coder.jac_step)
        except ValueError as exc:
            raise KpcFormatError(str(exc)) from None
        if kp.shape[1] != self.header.num_keypoints:
            raise KpcFormatError(f"{kp.shape[1]} keypoints, HEAD says {self.header.num_keypoints}")
        self._waiting.append((int(index), kp[0], jac[0]))
        if len(self._waiting) >= self.packet_frames:
            self._flush_keypoints()
        return self._take()

    def _not_alone(self, what: str) -> None:
        if self.base is not None and self.base.alone:
            raise KpcFormatError(f"{what} in a stream of the base layer alone")

    def restart(self) -> list[Packet]:
        """Make the next sent frame a keypoint keyframe (without a new source image)."""
        self._flush_keypoints()
        self._restart = True
        return self._take()

    def _flush_keypoints(self) -> None:
        self._flush_base()  # a base frame goes no later than the keypoints of the frames after it
        if not self._waiting:
            return
        idx = np.array([i for i, _, _ in self._waiting], np.int64)
        kp = np.stack([k for _, k, _ in self._waiting])
        jac = np.stack([j for _, _, j in self._waiting])
        payload = self.coder.encode(idx, kp, jac, self._restart)
        self._out.append(self._packet("K", int(idx[0]), payload))
        self._waiting, self._restart = [], False

    def base_frame(self, frame: int, data: bytes) -> list[Packet]:
        if self.base is None:
            raise KpcFormatError("a base-layer packet in a stream whose HEAD has no base layer")
        if not self.base.placed and frame % self.base.divisor:
            raise KpcFormatError(f"base frame at frame {frame}, not a multiple of divisor {self.base.divisor}")
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise KpcFormatError("empty or non-bytes packet in the base layer")
        last = self._base_waiting[-1][0] if self._base_waiting else self._base_last
        check_base_step(self.base, last, frame)
        self._base_waiting.append((int(frame), bytes(data)))
        if len(self._base_waiting) >= self.packet_frames:
            self._flush_base()
        return self._take()

    def _flush_base(self) -> None:
        if not self._base_waiting:
            return
        units = [u for _, u in self._base_waiting]
        gaps = b"".join(varint(b - a) for (a, _), (b, _) in zip(self._base_waiting, self._base_waiting[1:])) \
            if self.base.placed else b""
        payload = varint(len(units)) + gaps + b"".join(varint(len(u)) for u in units[:-1]) + b"".join(units)
        self._out.append(self._packet("B", self._base_waiting[0][0], payload))
        self._base_last = self._base_waiting[-1][0]
        self._base_done.update(f for f, _ in self._base_waiting)
        self._base_waiting = []
        self._flush_motion()

    def motion(self, motion: kc.Motion) -> list[Packet]:
        """Keypoint offsets of frames between base frames (format 2.6), in frame order; each goes out
        in a MOTION packet right after the BASE packet of the base frame after it."""
        if self.base is None or self.base.motion is None:
            raise KpcFormatError("keypoint offsets (motion) in a stream whose HEAD has none")
        last = self._motion_waiting[-1][0] if self._motion_waiting else self._motion_next - 1
        levels = np.asarray(motion.levels, np.int64).reshape(len(motion.frames), 2 * self.header.num_keypoints)
        for f, row in zip(motion.frames, levels):
            if int(f) <= last:
                raise KpcFormatError(f"keypoint offsets of frame {f} after those of frame {last}")
            self._motion_waiting.append((int(f), row))
            last = int(f)
        return self._take()

    def _is_base(self, frame: int) -> bool:
        return frame in self._base_done if self.base.placed else frame % self.base.divisor == 0

    def _flush_motion(self) -> None:
        """A MOTION packet for the frames from the last one's end to the last base frame in a packet:
        each that is not a base frame needs its offsets waiting."""
        if self.base.motion is None or self._base_last is None or self._base_last <= self._motion_next:
            return
        first, end = self._motion_next, self._base_last
        between = [f for f in range(first, end) if not self._is_base(f)]
        rows = self._motion_waiting[:len(between)]
        if [f for f, _ in rows] != between:
            raise KpcFormatError(f"keypoint offsets missing for the frames between base frames in {first}..{end - 1}")
        if not between:  # base frames only: the next packet covers them
            return
        self._motion_waiting = self._motion_waiting[len(between):]
        self._motion_next = end
        self._base_done = {f for f in self._base_done if f >= end}  # flat memory: only those still to cover
        self._out.append(self._packet("M", first, varint(end - first) + encode_motion(np.stack([r for _, r in rows]))))

    def audio(self, s: AudioSlice) -> list[Packet]:
        """Some of the sound; the keypoints waiting go out first (packets stay in time order)."""
        self._out.append(self._packet("A", 0, encode_audio_slice(s)))
        return self._take()

    def extra(self, kind: str, payload: bytes) -> list[Packet]:
        """An optional chunk; keypoints and base frames waiting go out first (EXTRA comes last)."""
        kc._check_extra(kind, payload)
        self._flush_keypoints()
        self._out.append(self._packet("X", 0, kind.encode("ascii") + bytes(payload)))
        return self._take()

    def end(self, frame_count: int, index: bool = True) -> list[Packet]:
        """The rest: waiting base frames and keypoints, the INDEX (unless `index` is False) and END."""
        self._flush_keypoints()
        if self._motion_waiting:
            raise KpcFormatError(f"keypoint offsets of frame {self._motion_waiting[0][0]}, after the last base frame")
        if not isinstance(frame_count, (int, np.integer)) or frame_count < max(1, self.coder.last_frame + 1):
            raise KpcFormatError(f"frame count {frame_count} does not cover the sent frames")
        at = 0
        if index:
            at = self.offset
            body = varint(len(self.index)) + b"".join(
                k.encode("ascii") + varint(f) + varint(o) for k, f, o in self.index)
            self._out.append(self._packet("I", 0, body))
        self._out.append(self._packet("E", int(frame_count), varint(int(frame_count)) + struct.pack("<I", at)))
        return self._take()

    def take(self) -> list[Packet]:
        """Packets made so far and not yet handed out (HEAD, after construction)."""
        return self._take()


def stream_events(stream: kc.KpcStream):
    """A whole in-memory stream's content in stream order, as a PacketReader gives it: the Header
    (with the frame count), the base layer's settings, source images before the sent frames shown
    with them, base frames before the sent frames that follow them, extras, End. Keypoint runs
    restart at frame 0 and at `stream.restarts` (a 2.0 stream's keyframes) only."""
    h = stream.header
    base = stream.base
    yield h
    if base is not None:
        yield replace(base, packets=[])
        if base.motion is not None:
            yield base.motion
    sources = [SourceImage(r.frame, r.codec, r.data) for r in stream.refreshes]
    bases = [] if base is None else [BaseFrame(base.frame_of(n), p) for n, p in enumerate(base.packets)]
    restarts = {int(f) for f in stream.restarts}
    if tuple(stream.write_version)[0] >= 2:  # a 2.0 keyframe at every source image
        restarts |= {r.frame for r in sources}
    cuts = sorted({0, *restarts, *(r.frame for r in sources)})
    idx = np.asarray(stream.sent_indices, np.int64)
    starts = np.searchsorted(idx, cuts)
    if base is not None and base.alone:  # no source image, no keypoints
        cuts, starts = [], []
    else:
        yield SourceImage(0, stream.source_codec, stream.source_data)
    sound = opus.from_chunks(stream.extra_chunks)
    if sound is not None:  # before any keypoints: a decoder knows the sound before its first frame
        yield from audio_slices(sound)
    b = 0
    for n, (frame, lo) in enumerate(zip(cuts, starts)):
        hi = starts[n + 1] if n + 1 < len(cuts) else len(idx)
        if n and sources and sources[0].frame == frame:
            yield sources.pop(0)
        while b < len(bases) and bases[b].frame <= (idx[hi - 1] if hi > lo else frame):
            yield bases[b]
            b += 1
        if hi > lo:
            yield SentFrames(idx[lo:hi], stream.keypoints[lo:hi], stream.jacobians[lo:hi], frame == 0 or frame in restarts)
    yield from bases[b:]
    for kind, payload in stream.extra_chunks:
        if sound is None or kind != opus.CHUNK_TYPE:
            yield Extra(kind, payload)
    yield End(h.frame_count)


def stream_packets(stream: kc.KpcStream, packet_frames: int = DEFAULT_PACKET_FRAMES) -> list[Packet]:
    """A whole in-memory stream as 2.0 packets (keyframes at its refreshes and `restarts`)."""
    h = stream.header
    if stream.base is None or not stream.base.alone:
        kc._checked_indices(stream)
    elif len(stream.sent_indices) or stream.source_data or stream.refreshes:
        raise KpcFormatError("a stream of the base layer alone has no source image and no keypoints")
    if stream.base is not None:
        kc._check_base(stream.base, h.frame_count)
    restarts = {int(f) for f in stream.restarts} | {int(r.frame) for r in stream.refreshes}
    w = out = None
    for item in stream_events(replace(stream, restarts=sorted(restarts), version=VERSION)):
        if isinstance(item, kc.Header):
            w = PacketWriter(item, stream.base and replace(stream.base, packets=[], frames=stream.base.frames and []),
                             packet_frames)
            out = w.take()
        elif isinstance(item, SourceImage):
            out += w.source(item.frame, item.codec, item.data)
        elif isinstance(item, SentFrames):
            if item.restart and int(item.indices[0]) != 0 and int(item.indices[0]) not in \
                    {r.frame for r in stream.refreshes}:
                out += w.restart()
            for i, kp, jac in zip(item.indices.tolist(), item.keypoints, item.jacobians):
                out += w.keypoints(i, kp, jac)
        elif isinstance(item, BaseFrame):
            out += w.base_frame(item.frame, item.data)
        elif isinstance(item, kc.Motion):
            out += w.motion(item)
        elif isinstance(item, AudioSlice):
            out += w.audio(item)
        elif isinstance(item, Extra):
            out += w.extra(item.kind, item.payload)
        elif isinstance(item, End):
            out += w.end(item.frame_count)
    return out


def read_stream(data: bytes) -> kc.KpcStream:
    """A whole 2.0 file as an in-memory stream (keypoints dequantised)."""
    reader = PacketReader()
    items = reader.feed(data)
    reader.close()
    h, base = reader.header, None
    source, refreshes, restarts, extra = None, [], [], []
    idx, kps, jacs, base_packets, base_frames = [], [], [], [], []
    motion_frames, motion_levels = [], []
    sound: list[AudioSlice] = []
    frame_count = 0
    for item in items:
        if isinstance(item, kc.BaseLayer):
            base = item
        elif isinstance(item, SourceImage):
            if source is None:
                source = item
            else:
                refreshes.append(kc.Refresh(item.frame, item.codec, item.data))
        elif isinstance(item, SentFrames):
            if item.restart and item.indices[0] != 0 and not (refreshes and refreshes[-1].frame == item.indices[0]):
                restarts.append(int(item.indices[0]))
            idx.append(item.indices)
            kps.append(item.keypoints)
            jacs.append(item.jacobians)
        elif isinstance(item, BaseFrame):
            if base is not None and not base.placed and item.frame != len(base_packets) * base.divisor:
                raise KpcFormatError(f"base frame {item.frame} out of order")
            base_packets.append(item.data)
            base_frames.append(item.frame)
        elif isinstance(item, kc.Motion):
            motion_frames += item.frames
            motion_levels.append(item.levels)
        elif isinstance(item, Extra):
            extra.append((item.kind, item.payload))
        elif isinstance(item, AudioSlice):
            sound.append(item)
        elif isinstance(item, End):
            frame_count = item.frame_count
    if sound:  # the sound as the in-memory stream holds it: one opus chunk, first among the extras
        extra.insert(0, (opus.CHUNK_TYPE, opus.pack(join_audio(sound))))
    if base is not None:
        motion = None if base.motion is None else kc.Motion(
            motion_frames, np.concatenate([base.motion.levels, *motion_levels]))
        base = replace(base, packets=base_packets, frames=base_frames if base.placed else None, motion=motion)
        kc._check_base(base, frame_count)
        if base.alone:
            return kc.KpcStream.base_alone(replace(h, frame_count=frame_count), base, extra, (VERSION[0], reader.minor))
    if not idx:
        raise KpcFormatError("no sent frames (S must be >= 1)")
    sent = np.concatenate(idx)
    h = replace(h, frame_count=frame_count)
    if h.adaptive:  # 1.x meaning: the mean spacing
        h = replace(h, keep_every=min(65535, max(1, round(frame_count / len(sent)))))
    return kc.KpcStream(h, source.codec, source.data, sent, np.concatenate(kps), np.concatenate(jacs), extra,
                        (VERSION[0], reader.minor), refreshes, base, restarts)


# --------------------------------------------------------------------------
# Reading


def split_packet(buf, at: int = 0) -> tuple[Packet | None, int]:
    """The packet at the start of `buf` (which sits at byte `at` of its file) and its size, with
    framing and CRC checked; (None, 0) if `buf` ends before the packet does."""
    kind = chr(buf[0])
    if kind not in TYPES:
        raise KpcFormatError(f"bad packet type {bytes(buf[:1])!r} at byte {at}")
    seq, pos = read_varint(buf, 1)
    frame, pos = read_varint(buf, pos) if seq is not None else (None, pos)
    length, pos = read_varint(buf, pos) if frame is not None else (None, pos)
    if length is None:
        return None, 0
    if length > MAX_PAYLOAD:
        raise KpcFormatError(f"packet at byte {at} claims {length} bytes")
    if len(buf) < pos + length + 4:
        return None, 0
    body = bytes(buf[:pos + length])
    (crc,) = struct.unpack_from("<I", buf, pos + length)
    if crc != zlib.crc32(body) & 0xFFFFFFFF:
        raise KpcFormatError(f"CRC mismatch in the {TYPES[kind]} packet at byte {at}")
    return Packet(kind, seq, frame, body[pos:]), pos + length + 4


def check_base_step(base: kc.BaseLayer, last: int | None, frame: int) -> None:
    """A base frame at `frame` after the one at `last` (None: the first): every divisor-th frame from
    0, or placed (2.5) from 0 on by 1..MAX_BASE_GAP frames."""
    if not base.placed:
        if last is not None and frame != last + base.divisor:
            raise KpcFormatError(f"base frame at frame {frame} after the one at {last}: base frames go in order")
    elif last is None and frame != 0:
        raise KpcFormatError(f"the first base frame is at frame {frame}, not 0")
    elif last is not None and not 1 <= frame - last <= kc.MAX_BASE_GAP:
        raise KpcFormatError(f"base frame at frame {frame} after the one at {last}: placed base frames follow "
                             f"each other by 1..{kc.MAX_BASE_GAP} frames")


def split_base_units(payload: bytes, at: int = 0, placed: bool = False) -> tuple[list[int], list[bytes]]:
    """The frame offsets (from the packet's frame) and temporal units of a 2.2 BASE payload: varint
    n >= 1, (2.5 placed: the distances of units 2..n from the one before, varints >= 1), the sizes
    (varints >= 1) of the first n - 1, then the n units, the last taking the rest (at least a byte)."""
    n, pos = read_varint(payload, 0)
    if not n or n > len(payload):
        raise KpcFormatError(f"bad base-layer packet at byte {at} (count {n})")
    offsets = [0]
    for _ in range(n - 1 if placed else 0):
        gap, pos = read_varint(payload, pos)
        if gap is None or not 1 <= gap <= kc.MAX_BASE_GAP:
            raise KpcFormatError(f"bad base-layer packet at byte {at} (a distance of {gap} frames)")
        offsets.append(offsets[-1] + gap)
    sizes = []
    for _ in range(n - 1):
        size, pos = read_varint(payload, pos)
        if not size:
            raise KpcFormatError(f"bad base-layer packet at byte {at} (a unit size of {size})")
        sizes.append(size)
    if pos + sum(sizes) >= len(payload):
        raise KpcFormatError(f"bad base-layer packet at byte {at} (its units run past its end)")
    units = []
    for size in sizes:
        units.append(payload[pos:pos + size])
        pos += size
    return offsets, units + [payload[pos:]]


class PacketReader:
    """Bytes in (`feed`, as they arrive), content out: the Header first, then SourceImage,
    SentFrames, BaseFrame, Extra and End, in stream order.

    A packet is handed on only whole and with its CRC right; `pending` bytes are those of a packet
    not yet whole, which at the end (`close`) mean a cut file. Malformed data raises KpcFormatError
    naming the byte it is at.
    """

    def __init__(self, preamble: bool = True):
        self._buf = bytearray()
        self._pos = 0  # file offset of _buf[0]
        self._need_preamble = preamble
        self.minor = VERSION[1]  # of the preamble read (without one: the newest)
        self.header: kc.Header | None = None
        self.base: kc.BaseLayer | None = None
        self.coder: KeypointCoder | None = None
        self.seq = 0
        self.ended = False
        self.last_frame = -1  # the last sent frame read
        self.packets: list[tuple[str, int]] = []  # (type, bytes) of every packet read
        self._source_at = None  # frame of the last source image
        self._source_pending = False  # a source image whose keyframe has not come yet
        self._base_last = None  # the frame of the last placed base frame read
        self._base_joined = False  # True after a jump, until a base frame is read
        self._base_seen: set[int] = set()  # the frames of the base frames read (MOTION packets skip them)
        self._base_top = -1  # the frame of the last base frame read
        self._motion_next = 0  # the frame the next MOTION packet starts at

    @classmethod
    def after_head(cls, header: kc.Header, base: kc.BaseLayer | None = None, seq: int | None = None) -> PacketReader:
        """A reader of the packets after a HEAD already read (packets alone, no preamble), the
        first of them numbered `seq` (None: whatever number it has)."""
        r = cls(preamble=False)
        r.header, r.base, r.seq = header, base, seq
        r.coder = KeypointCoder(header.num_keypoints, header.kp_step, header.jac_step)
        return r

    @property
    def pending(self) -> int:
        return len(self._buf)

    def jump(self, offset: int) -> None:
        """The next bytes fed are the packet at file offset `offset` (a seek to a keyframe through
        the INDEX): any sequence number is taken there, and keypoints must restart."""
        self._buf.clear()
        self._pos, self.seq = offset, None
        self.coder.contexts, self.coder.last_frame = None, -1
        self.last_frame, self._source_pending = -1, False
        self._base_last, self._base_joined = None, True

    def feed(self, data: bytes) -> list:
        self._buf += data
        out = []
        if self._need_preamble:
            if len(self._buf) < len(PREAMBLE):
                if not PREAMBLE.startswith(bytes(self._buf[:len(kc.MAGIC)])[:len(self._buf)]):
                    raise KpcFormatError("not a .kpc file (bad magic)")
                return out
            self.minor = check_preamble(self._buf)
            del self._buf[:len(PREAMBLE)]
            self._pos += len(PREAMBLE)
            self._need_preamble = False
        while self._buf and not self.ended:
            packet, size = self._split()
            if packet is None:
                break
            del self._buf[:size]
            at = self._pos
            self._pos += size
            self.packets.append((packet.kind, size))
            out += self._content(packet, at)
        if self.ended and self._buf:
            raise KpcFormatError(f"{len(self._buf)} bytes of data after END at byte {self._pos}")
        return out

    def _split(self) -> tuple[Packet | None, int]:
        packet, size = split_packet(self._buf, self._pos)
        if packet is not None:
            if self.seq is None:  # after a jump
                self.seq = packet.seq
            if packet.seq != self.seq:
                raise KpcFormatError(f"packet {packet.seq} at byte {self._pos} where packet {self.seq} was expected")
            self.seq += 1
        return packet, size

    def _content(self, p: Packet, at: int) -> list:
        if (p.kind == "H") != (self.header is None):
            raise KpcFormatError(f"{TYPES[p.kind]} packet at byte {at} where " +
                                 ("HEAD was expected" if self.header is None else "no second HEAD may be"))
        if p.kind == "H":
            self.header, self.base = decode_head(p.payload, self.minor)
            h = self.header
            self.coder = KeypointCoder(h.num_keypoints, h.kp_step, h.jac_step)
            return [self.header] + ([self.base] if self.base is not None else [])
        if p.kind in "SK" and self.base is not None and self.base.alone:
            raise KpcFormatError(f"{TYPES[p.kind]} packet at byte {at} in a stream of the base layer alone")
        if p.kind == "S":
            codec, data = kc._decode_srcf(kc._Reader(p.payload, "SOURCE", at))
            if p.frame <= self.last_frame:
                raise KpcFormatError(f"source image at frame {p.frame} does not follow frame {self.last_frame}")
            self._source_at, self._source_pending = p.frame, True
            return [SourceImage(p.frame, codec, data)]
        if p.kind == "K":
            restart = bool(p.payload[:1]) and bool(p.payload[0] & _FLAG_RESTART)
            source = self._source_at
            if source is None:
                raise KpcFormatError(f"keypoints at byte {at} before any source image")
            if self._source_pending and (not restart or p.frame != source):
                raise KpcFormatError(f"the source image at frame {source} is not followed by a keyframe there")
            self._source_pending = False
            sent = self.coder.decode(p.payload, p.frame)
            self.last_frame = int(sent.indices[-1])
            return [sent]
        if p.kind == "B":
            if self.base is None:
                raise KpcFormatError(f"base-layer packet at byte {at} in a stream without a base layer")
            if (not self.base.placed and p.frame % self.base.divisor) or not p.payload:
                raise KpcFormatError(f"bad base-layer packet at byte {at} (frame {p.frame})")
            if self.minor >= BUNDLE_MINOR:
                offsets, units = split_base_units(p.payload, at, self.base.placed)
            else:
                offsets, units = [0], [p.payload]
            if self.base.placed:
                frames = [p.frame + o for o in offsets]
                try:
                    for f in frames:
                        if not self._base_joined:  # after a jump: the first base frame read is any
                            check_base_step(self.base, self._base_last, f)
                        self._base_last, self._base_joined = f, False
                except KpcFormatError as exc:
                    raise KpcFormatError(f"base-layer packet at byte {at}: {exc}") from None
            else:
                frames = [p.frame + n * self.base.divisor for n in range(len(units))]
            self._base_seen.update(frames)
            self._base_top = max(self._base_top, frames[-1])
            return [BaseFrame(f, u) for f, u in zip(frames, units)]
        if p.kind == "M":
            return [self._motion(p, at)]
        if p.kind == "A":
            return [decode_audio_slice(p.payload, at)]
        if p.kind == "X":
            kind = p.payload[:4].decode("latin-1")
            if len(p.payload) < 4 or not kc._is_chunk_type(kind) or kc._is_critical(kind):
                raise KpcFormatError(f"bad EXTRA packet at byte {at}")
            return [Extra(kind, p.payload[4:])]
        if p.kind == "I":
            return []  # checked where it is used (read_index)
        # END
        count, pos = read_varint(p.payload, 0)
        if count is None or count != p.frame or count < self.last_frame + 1 or len(p.payload) != pos + 4:
            raise KpcFormatError(f"bad END packet at byte {at}")
        self.ended = True
        return [End(count)]

    def _motion(self, p: Packet, at: int) -> kc.Motion:
        """A MOTION packet: the span it covers (from where the last one ended, up to a base frame
        already read), then the offsets of its frames that are not base frames, range coded."""
        if self.minor < MOTION_MINOR or self.base is None or self.base.motion is None:
            raise KpcFormatError(f"MOTION packet at byte {at} in a stream without keypoint offsets")
        span, pos = read_varint(p.payload, 0)
        if span is None or span < 1 or p.frame != self._motion_next or p.frame + span > self._base_top:
            raise KpcFormatError(f"bad MOTION packet at byte {at} (frame {p.frame}): it must start at frame "
                                 f"{self._motion_next} and end at a base frame read before it")
        frames = [f for f in range(p.frame, p.frame + span) if f not in self._base_seen]
        if not frames:
            raise KpcFormatError(f"MOTION packet at byte {at} covers no frame between base frames")
        try:
            levels = decode_motion(p.payload[pos:], len(frames), self.header.num_keypoints)
        except KpcFormatError as exc:
            raise KpcFormatError(f"MOTION packet at byte {at}: {exc}") from None
        self._motion_next = p.frame + span
        self._base_seen = {f for f in self._base_seen if f >= self._motion_next}  # flat memory
        return kc.Motion(frames, levels)

    def close(self) -> None:
        """The input has ended: a missing END or a packet not whole is a cut stream."""
        if self._need_preamble:
            raise KpcFormatError(f"truncated file: only {len(self._buf)} bytes")
        if not self.ended:
            whole = f"; the last whole packet ends at byte {self._pos}" if self.header is not None else ""
            raise KpcFormatError(f"the stream is cut at byte {self._pos + len(self._buf)} (no END packet{whole})")


def packet_table(data: bytes) -> list[tuple[str, int]]:
    """(name, bytes) of every packet of a whole 2.0 file, in the chunk names of format 1.x where
    one means the same (HEAD, SRCF for the first source image, SRCR, KPRC, BASE, opus for the
    sound, an extra's own name, INDX, KEND), framing and CRC checked, payloads not decoded."""
    check_preamble(data)
    table, pos, sources = [("magic", len(PREAMBLE))], len(PREAMBLE), 0
    names = {"H": "HEAD", "K": "KPRC", "B": "BASE", "M": "MOTN", "A": "opus", "I": "INDX", "E": "KEND"}
    while pos < len(data):
        packet, size = split_packet(data[pos:], pos)
        if packet is None:
            raise KpcFormatError(f"the file is cut at byte {len(data)} (a packet starts at byte {pos})")
        if packet.kind == "S":
            name, sources = ("SRCF" if not sources else "SRCR"), sources + 1
        elif packet.kind == "X":
            name = packet.payload[:4].decode("latin-1")
        else:
            name = names[packet.kind]
        table.append((name, size))
        pos += size
        if packet.kind == "E":
            break
    if pos != len(data) or table[-1][0] != "KEND":
        raise KpcFormatError("the file does not end with its END packet")
    return table


def frame_count_of(data: bytes) -> int | None:
    """The frame count of a whole file's bytes (any version; a 2.0 file's END, found by its
    framing alone), or None when it cannot be told (a cut or damaged file)."""
    try:
        if kc.format_major(data) == 1:
            return kc.loads(data).header.frame_count
        pos = len(PREAMBLE)
        while pos < len(data):
            packet, size = split_packet(data[pos:], pos)
            if packet is None:
                return None
            if packet.kind == "E":
                return packet.frame
            pos += size
    except KpcFormatError:
        return None
    return None


def read_items(pieces, ignore_errors: bool = False, warn=None, start_frame: int = 0):
    """The content of a .kpc file given as an iterable of byte pieces (any version; a 1.x file is
    read whole, a 2.0 one packet by packet as the pieces come).

    A 2.0 stream cut short or damaged is a KpcFormatError; with `ignore_errors` it ends at its last
    whole packet instead, after `warn(message)`. With `start_frame`, a whole 2.0 file with an INDEX
    is entered at its last keyframe at or before that frame (HEAD, the source image in force, then
    the keyframe's packets on).
    """
    pieces = iter(pieces)
    first = b""
    for piece in pieces:
        first += piece
        if len(first) >= len(PREAMBLE):
            break
    if kc.format_major(first) == 1:
        yield from stream_events(kc.loads(first + b"".join(pieces)))
        return
    reader = PacketReader()
    try:
        if start_frame > 0:
            data = first + b"".join(pieces)
            pieces = iter(())
            yield from _seek(reader, data, start_frame)
        else:
            for piece in _chain(first, pieces):
                yield from reader.feed(piece)
        reader.close()
    except KpcFormatError as exc:
        if not ignore_errors:
            raise
        if warn:
            warn(f"{exc}: decoding what came before it")


def _chain(first: bytes, pieces):
    yield first
    yield from pieces


def _seek(reader: PacketReader, data: bytes, start_frame: int):
    """Feed `reader` the HEAD, then the source image and the keyframe at or before `start_frame`
    and all after it (all of `data` when it has no usable INDEX or a base layer)."""
    index = read_index(data)
    _, size = split_packet(data[len(PREAMBLE):], len(PREAMBLE))
    yield from reader.feed(data[:len(PREAMBLE) + size])  # HEAD
    keys = [(f, o) for k, f, o in index or () if k == "K" and f <= start_frame]
    if reader.base is not None or not keys or keys[-1][0] == 0:
        yield from reader.feed(data[len(PREAMBLE) + size:])
        return
    frame, at = keys[-1]
    source = max((o for k, f, o in index if k == "S" and f <= frame), default=None)
    if source is None:
        raise KpcFormatError("the INDEX has no source image before its keyframe")
    _, size = split_packet(data[source:], source)
    reader.jump(source)
    yield from reader.feed(data[source:source + size])
    reader.jump(at)
    yield from reader.feed(data[at:])


def read_index(data: bytes) -> list[tuple[str, int, int]] | None:
    """The INDEX of a whole 2.0 file, found from its END packet at the end: (type, frame, byte
    offset) of every SOURCE and restart KEYPOINTS packet; None if it has none or it does not check."""
    if len(data) < len(PREAMBLE) + 12:
        return None
    (at,) = struct.unpack_from("<I", data, len(data) - 8)
    if not len(PREAMBLE) <= at < len(data) - 8 or data[at:at + 1] != b"I":
        return None
    try:
        packet, _ = split_packet(data[at:], at)
    except KpcFormatError:
        return None
    if packet is None or packet.kind != "I":
        return None
    body, entries = packet.payload, []
    try:
        count, pos = read_varint(body, 0)
        for _ in range(count or 0):
            kind = chr(body[pos])
            frame, pos = read_varint(body, pos + 1)
            offset, pos = read_varint(body, pos)
            if kind not in "SK" or frame is None or offset is None or offset >= at:
                return None
            entries.append((kind, frame, offset))
    except (KpcFormatError, IndexError):
        return None
    return entries if pos == len(body) else None
