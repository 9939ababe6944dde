"""Opus packets of a .kpc file's optional ``opus`` chunk: :class:`OpusTrack`, :func:`pack` /
:func:`unpack` (layout in man/kpc.5; :func:`unpack` raises KpcFormatError for every defect),
:func:`from_stream` (the track of a parsed stream) and :func:`opus_head` (the Ogg/MP4 ``OpusHead``
for muxing the packets unchanged).  Torch-free and PyAV-free: coding and decoding the sound is
kpcodec.media.audio's.

All timestamps are counted in 48 kHz samples ("ticks"), Opus's own clock, whatever rate the
audio was coded at.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from kpcodec.errors import KpcFormatError

CHUNK_TYPE = "opus"
CLOCK = 48000  # Opus timestamps and pre-skip are always in 48 kHz samples
SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)  # what an Opus encoder takes
MAX_PACKET_TICKS = 5760  # 120 ms: the longest Opus packet
_FIXED = struct.Struct("<IBHIII")  # sample_rate, channels, pre_skip, bitrate, length, N


@dataclass
class OpusTrack:
    """One Opus stream: what the ``opus`` chunk holds.

    ``pts[i]`` is the time of packet i's first decoded sample, in 48 kHz ticks from
    video frame 0.  The first ``pre_skip`` decoded samples are encoder priming and
    are dropped; after them, ``length`` ticks of audio play, starting at
    ``pts[0] + pre_skip``.
    """

    sample_rate: int  # rate the audio was coded at (Hz); decoders may output at any rate
    channels: int
    pre_skip: int  # 48 kHz ticks
    bitrate: int  # target bit rate, b/s (informational)
    length: int  # 48 kHz ticks of audio after pre-skip
    pts: np.ndarray  # (N,) int64, strictly increasing
    packets: list[bytes]

    @property
    def start_s(self) -> float:
        return (int(self.pts[0]) + self.pre_skip) / CLOCK

    @property
    def duration_s(self) -> float:
        return self.length / CLOCK

    @property
    def end_tick(self) -> int:
        return int(self.pts[0]) + self.pre_skip + self.length

    def durations(self) -> np.ndarray:
        """Each packet's duration in ticks; the last one ends where the audio ends."""
        ends = np.append(self.pts[1:], max(self.end_tick, int(self.pts[-1]) + 1))
        return ends - self.pts


# --------------------------------------------------------------------------- chunk


def pack(track: OpusTrack) -> bytes:
    """The ``opus`` chunk payload for ``track`` (layout in man/kpc.5)."""
    from kpcodec.bitstream.quantize import pack_symbols

    pts = np.asarray(track.pts, dtype=np.int64)
    sizes = np.array([len(p) for p in track.packets], dtype=np.int64)
    _check(track.sample_rate, track.channels, track.pre_skip, track.length, pts, sizes)
    if not 0 <= track.bitrate <= 2**32 - 1:
        raise KpcFormatError(f"bad opus field bitrate={track.bitrate}")
    deltas = np.diff(pts, prepend=0)
    return b"".join((
        _FIXED.pack(track.sample_rate, track.channels, track.pre_skip, track.bitrate, track.length, len(pts)),
        _blob(pack_symbols(sizes)),
        _blob(pack_symbols(deltas)),
        *track.packets,
    ))


def _blob(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _check(sample_rate, channels, pre_skip, length, pts, sizes) -> None:
    if sample_rate not in SAMPLE_RATES:
        raise KpcFormatError(f"bad opus field sample_rate={sample_rate}")
    if channels not in (1, 2):
        raise KpcFormatError(f"bad opus field channels={channels}")
    if not 0 <= pre_skip <= 0xFFFF:
        raise KpcFormatError(f"bad opus field pre_skip={pre_skip}")
    if len(pts) < 1 or len(pts) != len(sizes):
        raise KpcFormatError("opus chunk needs at least one packet")
    if np.any(sizes < 1):
        raise KpcFormatError("empty packet in chunk opus")
    steps = np.diff(pts)
    if np.any(steps < 1) or np.any(steps > MAX_PACKET_TICKS):
        raise KpcFormatError("opus packet times are not increasing by 1..5760 ticks")
    start = int(pts[0]) + pre_skip
    if start < 0 or start > 2**31 - 1:
        raise KpcFormatError(f"opus audio starts at tick {start}, before the video or too late")
    if not 1 <= length <= int(pts[-1]) + MAX_PACKET_TICKS - start:
        raise KpcFormatError(f"bad opus field length={length} (the packets cannot cover it)")


def unpack(payload: bytes) -> OpusTrack:
    """Parse an ``opus`` chunk payload; any defect raises KpcFormatError."""
    from kpcodec.bitstream.quantize import unpack_symbols

    data = bytes(payload)
    if len(data) < _FIXED.size:
        raise KpcFormatError("truncated chunk opus")
    sample_rate, channels, pre_skip, bitrate, length, count = _FIXED.unpack_from(data)
    pos = _FIXED.size
    if count < 1 or count > len(data) - pos:  # every packet has at least one byte
        raise KpcFormatError(f"bad opus packet count {count}")
    blobs = []
    for what in ("packet sizes", "packet times"):
        if len(data) - pos < 4:
            raise KpcFormatError("truncated chunk opus")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n > len(data) - pos:
            raise KpcFormatError("truncated chunk opus")
        try:
            blobs.append(unpack_symbols(data[pos:pos + n], count).astype(np.int64))
        except KpcFormatError as exc:
            raise KpcFormatError(f"{what} in chunk opus: {exc}") from None
        pos += n
    sizes, deltas = blobs
    pts = np.cumsum(deltas)
    _check(sample_rate, channels, pre_skip, length, pts, sizes)
    if int(sizes.sum()) != len(data) - pos:
        raise KpcFormatError(f"opus packet sizes add up to {int(sizes.sum())} bytes, chunk has {len(data) - pos}")
    ends = pos + np.cumsum(sizes)
    packets = [data[int(a):int(b)] for a, b in zip(np.append(pos, ends[:-1]), ends)]
    return OpusTrack(sample_rate, channels, pre_skip, bitrate, length, pts, packets)


def from_stream(stream) -> OpusTrack | None:
    """The audio of a parsed .kpc stream (its first ``opus`` chunk), or None."""
    return from_chunks(stream.extra_chunks)


def from_chunks(chunks) -> OpusTrack | None:
    """The audio among optional chunks [(type, payload)] (its first ``opus`` chunk), or None."""
    for kind, payload in chunks:
        if kind == CHUNK_TYPE:
            return unpack(payload)
    return None


def opus_head(track: OpusTrack) -> bytes:
    """RFC 7845 identification header (``OpusHead``), channel mapping family 0."""
    return opus_head_of(track.channels, track.pre_skip, track.sample_rate)


def opus_head_of(channels: int, pre_skip: int, sample_rate: int) -> bytes:
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, sample_rate, 0, 0)


