"""Datagrams of kpcodec's live mode: .kpc 2.0 packets (kpcodec.bitstream.packets) over UDP.

Every datagram is at most MAX_DATAGRAM bytes:

    magic "KL" | version u8 (1) | kind u8 | stream u32 | dseq u32 | time_ms u32 | body | CRC-32 u32

`stream` is the sender's random id (datagrams of another stream are dropped), `dseq` counts the
sender's datagrams, `time_ms` is the sender's clock when it sent it (for latency), and the CRC covers
everything before it, so a damaged or foreign datagram is dropped and counted, never parsed. Kinds:

* DATA: fragments of packets, each `packet seq varint | index u8 | count u8 | length varint | bytes`;
  a packet larger than one datagram (a source image) is cut into `count` fragments. A DATA datagram
  may also repeat the last keypoint packet before (redundancy: one lost datagram costs nothing).
* HEAD: the stream's HEAD packet, repeated by the sender (a receiver that joins late needs it).
* FEEDBACK (receiver to sender): `request u8 | last seq varint`: RESTART (the keypoint context is
  lost: send a keypoint keyframe) or KEYFRAME (a source image is missing too, or nothing came yet).
* END: `last seq varint | frame count varint`, sent several times; the receiver finishes when the
  packets up to `last seq` are in, or after a short grace period.
* AUDIO: `sample rate u32 | channels u8 | pre-skip u16`, then Opus packets, each `pts varint
  (48 kHz ticks from frame 0, zigzag: the first is before 0 by the pre-skip) | duration varint |
  length varint | bytes`, sent when their time comes.

Only the standard library is used: no torch, no PyAV, no numpy.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from kpcodec.bitstream.container import varint
from kpcodec.bitstream.packets import read_varint
from kpcodec.errors import KpcFormatError

MAGIC = b"KL"
VERSION = 1
MAX_DATAGRAM = 1200  # fits every path MTU in practice (QUIC's and WebRTC's choice)
DATA, HEAD, FEEDBACK, END, AUDIO = 0, 1, 2, 3, 4
RESTART, KEYFRAME = 1, 2
_HEADER = struct.Struct("<2sBBIII")
OVERHEAD = _HEADER.size + 4  # header and CRC: 20 bytes a datagram
_FRAGMENT_OVERHEAD = 8  # a fragment's own fields, at most (seq varint <= 5, index, count, length <= 2)


@dataclass
class Datagram:
    kind: int
    stream: int
    dseq: int
    time_ms: int
    body: bytes

    def __bytes__(self) -> bytes:
        head = _HEADER.pack(MAGIC, VERSION, self.kind, self.stream, self.dseq & 0xFFFFFFFF,
                            self.time_ms & 0xFFFFFFFF)
        raw = head + self.body
        return raw + struct.pack("<I", zlib.crc32(raw) & 0xFFFFFFFF)


def parse(data: bytes) -> Datagram:
    """A datagram's fields; KpcFormatError (one line) for anything that is not a whole one."""
    if len(data) < OVERHEAD:
        raise KpcFormatError(f"datagram of {len(data)} bytes is too short")
    if len(data) > MAX_DATAGRAM:
        raise KpcFormatError(f"datagram of {len(data)} bytes is too long")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if crc != zlib.crc32(data[:-4]) & 0xFFFFFFFF:
        raise KpcFormatError("datagram CRC mismatch")
    magic, version, kind, stream, dseq, time_ms = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise KpcFormatError("not a kpcodec live datagram")
    if kind not in (DATA, HEAD, FEEDBACK, END, AUDIO):
        raise KpcFormatError(f"unknown datagram kind {kind}")
    return Datagram(kind, stream, dseq, time_ms, bytes(data[_HEADER.size:-4]))


@dataclass
class Fragment:
    seq: int  # the packet's sequence number
    index: int
    count: int
    data: bytes


def fragments(seq: int, packet: bytes, room: int = MAX_DATAGRAM - OVERHEAD) -> list[Fragment]:
    """A serialised packet cut into fragments that each fit a datagram's body of `room` bytes."""
    size = room - _FRAGMENT_OVERHEAD
    count = max(1, -(-len(packet) // size))
    if count > 255:
        raise KpcFormatError(f"packet {seq} of {len(packet)} bytes needs more than 255 datagrams")
    return [Fragment(seq, i, count, packet[i * size:(i + 1) * size]) for i in range(count)]


def encode_fragment(f: Fragment) -> bytes:
    return varint(f.seq) + bytes([f.index, f.count]) + varint(len(f.data)) + f.data


def decode_fragments(body: bytes) -> list[Fragment]:
    out, pos = [], 0
    while pos < len(body):
        seq, pos = read_varint(body, pos)
        if seq is None or pos + 2 > len(body):
            raise KpcFormatError("truncated fragment in a datagram")
        index, count = body[pos], body[pos + 1]
        length, pos = read_varint(body, pos + 2)
        if length is None or pos + length > len(body) or count == 0 or index >= count:
            raise KpcFormatError("bad fragment in a datagram")
        out.append(Fragment(seq, index, count, body[pos:pos + length]))
        pos += length
    return out


def feedback_body(request: int, last_seq: int) -> bytes:
    return bytes([request]) + varint(max(0, last_seq))


def parse_feedback(body: bytes) -> tuple[int, int]:
    if not body or body[0] not in (RESTART, KEYFRAME):
        raise KpcFormatError("bad feedback datagram")
    last, pos = read_varint(body, 1)
    if last is None or pos != len(body):
        raise KpcFormatError("bad feedback datagram")
    return body[0], last


def end_body(last_seq: int, frame_count: int) -> bytes:
    return varint(last_seq) + varint(frame_count)


def parse_end(body: bytes) -> tuple[int, int]:
    last, pos = read_varint(body, 0)
    count, pos = read_varint(body, pos) if last is not None else (None, pos)
    if count is None or pos != len(body):
        raise KpcFormatError("bad END datagram")
    return last, count


@dataclass
class Reassembly:
    """Fragments in, whole packets (bytes, by packet seq) out; incomplete ones are dropped when
    `limit` newer packets have come (a lost fragment loses its packet)."""

    limit: int = 64
    parts: dict = field(default_factory=dict)  # seq -> {index: bytes}

    def add(self, f: Fragment) -> bytes | None:
        if f.count == 1:
            return f.data
        got = self.parts.setdefault(f.seq, {"count": f.count})
        if got["count"] != f.count:
            return None
        got[f.index] = f.data
        if len(got) - 1 == f.count:
            del self.parts[f.seq]
            return b"".join(got[i] for i in range(f.count))
        for old in [s for s in self.parts if s < f.seq - self.limit]:
            del self.parts[old]
        return None


_AUDIO_HEAD = struct.Struct("<IBH")


def audio_body(sample_rate: int, channels: int, pre_skip: int, packets: list[tuple[int, int, bytes]]) -> bytes:
    return _AUDIO_HEAD.pack(sample_rate, channels, pre_skip) + b"".join(
        varint(2 * pts if pts >= 0 else -2 * pts - 1) + varint(duration) + varint(len(data)) + data
        for pts, duration, data in packets)


def parse_audio(body: bytes) -> tuple[tuple[int, int, int], list[tuple[int, int, bytes]]]:
    """((sample rate, channels, pre-skip), [(pts, duration, Opus packet)])."""
    if len(body) < _AUDIO_HEAD.size:
        raise KpcFormatError("truncated AUDIO datagram")
    head = _AUDIO_HEAD.unpack_from(body)
    if head[0] not in (8000, 12000, 16000, 24000, 48000) or head[1] not in (1, 2):
        raise KpcFormatError("bad AUDIO datagram")
    out, pos = [], _AUDIO_HEAD.size
    while pos < len(body):
        pts, pos = read_varint(body, pos)
        duration, pos = read_varint(body, pos) if pts is not None else (None, pos)
        length, pos = read_varint(body, pos) if duration is not None else (None, pos)
        if length is None or not 0 < length <= len(body) - pos or not 0 < duration <= 5760:
            raise KpcFormatError("bad packet in an AUDIO datagram")
        out.append((pts >> 1 if pts % 2 == 0 else -(pts >> 1) - 1, duration, body[pos:pos + length]))
        pos += length
    return head, out
