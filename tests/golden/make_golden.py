"""Build the golden .kpc files that pin down formats 1.0 to 1.4 and 2.0 to 2.3 byte for byte.

Run from anywhere: ``python tests/golden/make_golden.py [NAME ...]``. It writes
``v1_0.kpc`` to ``v1_4.kpc``, ``v2_0.kpc`` to ``v2_3.kpc`` (the encoded streams) and their ``.npz``
(the sent indices, keypoints and Jacobians a decoder must return) next to this script. Only rerun it on purpose: a changed golden file means a
changed format (v1_0 is frozen: the 1.0 writer must keep reproducing it).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for kpcodec

from kpcodec.bitstream import packets  # noqa: E402
from kpcodec.bitstream.container import BaseLayer, Header, KpcStream, Motion, Refresh, dumps, loads  # noqa: E402


def tiny_png(width: int = 8, height: int = 8) -> bytes:
    """A valid 8-bit RGB PNG with a colour gradient, built by hand."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in (x * 32, y * 32, 128))
        for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def random_motion(seed: int, indices: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A random walk of k keypoints over the sent frames, Jacobians near identity (float32)."""
    rng = np.random.default_rng(seed)
    s = len(indices)
    keypoints = np.cumsum(rng.normal(0.0, 0.05, (s, k, 2)), axis=0) + rng.uniform(-0.8, 0.8, (1, k, 2))
    jacobians = np.eye(2) + rng.normal(0.0, 0.1, (s, k, 2, 2))
    return keypoints.astype(np.float32), jacobians.astype(np.float32)


def tiny_header(num_keypoints: int = 4, **fields) -> Header:
    """A 64x64, 25 fps header of the `tiny` model (4 keypoints); `fields` fill in the rest."""
    return Header(model="tiny", weights_sha256=hashlib.sha256(b"golden").hexdigest(), width=64, height=64,
                  fps_num=25, fps_den=1, num_keypoints=num_keypoints, **fields)


def golden_stream() -> KpcStream:
    """Small deterministic stream: 10 frames at 25 fps, every 2nd sent, K=4."""
    indices = np.arange(0, 10, 2, dtype=np.int64)
    header = tiny_header(frame_count=10, keep_every=2, kp_step=1 / 256, jac_step=1 / 64, predictor="dpcm")
    return KpcStream(header, "png", tiny_png(), indices, *random_motion(0, indices), version=(1, 0))


def golden_stream_1_1() -> KpcStream:
    """The same motion in format 1.1: 12 frames, sent adaptively (uneven gaps), 1.1 steps."""
    indices = np.array([0, 1, 3, 4, 7, 11], dtype=np.int64)
    header = tiny_header(frame_count=12, keep_every=2, kp_step=1 / 64, jac_step=1 / 32, predictor="linear",
                         adaptive=True)
    return KpcStream(header, "png", tiny_png(), indices, *random_motion(1, indices), version=(1, 1))


def golden_stream_1_2() -> KpcStream:
    """1.1's stream with two source refreshes (format 1.2), at sent frames 4 and 7."""
    stream = golden_stream_1_1()
    stream.version = (1, 2)
    stream.refreshes = [Refresh(4, "png", tiny_png(8, 8)), Refresh(7, "png", tiny_png(4, 4))]
    return stream


def golden_stream_1_3() -> KpcStream:
    """1.1's settings with 10 keypoints, the count KPRC coder 1's table is made for (format 1.3)."""
    indices = np.array([0, 1, 3, 4, 7, 11], dtype=np.int64)
    header = tiny_header(num_keypoints=10, frame_count=12, keep_every=2, kp_step=1 / 64, jac_step=1 / 32,
                         predictor="linear", adaptive=True)
    return KpcStream(header, "png", tiny_png(), indices, *random_motion(3, indices, k=10), version=(1, 3))


def golden_stream_1_4() -> KpcStream:
    """1.3's stream with a base layer (format 1.4): 16x16 at half the frame rate, 6 packets.

    The packets are fixed stand-in bytes, not AV1: the format test needs no codec."""
    stream = golden_stream_1_3()
    stream.version = (1, 4)
    packets = [hashlib.sha256(b"base %d" % i).digest()[: 3 + 5 * i] for i in range(6)]
    stream.base = BaseLayer(size=16, divisor=2, crf=63, packets=packets)
    return stream


def golden_stream_2_0() -> KpcStream:
    """Format 2.0: 40 frames, 10 keypoints, uneven gaps, a source refresh at frame 12, a keypoint
    keyframe at 26, an extra chunk; written in packets of 3 sent frames (several per keyframe)."""
    indices = np.array([0, 1, 2, 4, 6, 9, 12, 13, 15, 18, 20, 23, 26, 27, 30, 33, 36, 39], dtype=np.int64)
    header = tiny_header(num_keypoints=10, frame_count=40, keep_every=2, kp_step=1 / 64, jac_step=1 / 32,
                         predictor="linear")
    return KpcStream(header, "png", tiny_png(), indices, *random_motion(20, indices, k=10),
                     extra_chunks=[("note", b"golden 2.0")], version=(2, 0),
                     refreshes=[Refresh(12, "png", tiny_png(4, 4))], restarts=[26])


def golden_stream_2_1() -> KpcStream:
    """Format 2.1: 2.0's stream with a base layer (16x16, every 2nd frame, stand-in bytes as in 1.4)
    whose HEAD has a mix of 40/64."""
    stream = golden_stream_2_0()
    stream.version = (2, 1)
    stream.extra_chunks = [("note", b"golden 2.1")]
    packets = [hashlib.sha256(b"base 2.1 %d" % i).digest()[: 2 + i % 7] for i in range(20)]
    stream.base = BaseLayer(size=16, divisor=2, crf=60, packets=packets, mix=40)
    return stream


def golden_stream_2_2() -> KpcStream:
    """Format 2.2: 2.1's stream, its base frames bundled in BASE packets (of at most 3 base frames,
    as the packets of 3 sent frames; 30 frames of stand-in bytes, every 3rd frame, mix 24/64)."""
    stream = golden_stream_2_0()
    stream.version = (2, 2)
    stream.extra_chunks = [("note", b"golden 2.2")]
    packets = [hashlib.sha256(b"base 2.2 %d" % i).digest()[: 1 + i % 9] * (1 + i % 3) for i in range(14)]
    stream.base = BaseLayer(size=16, divisor=3, crf=55, packets=packets, mix=24)
    return stream


def golden_stream_2_3() -> KpcStream:
    """Format 2.3: a stream of the base layer alone (no source image, no keypoints): 2.0's header,
    40 frames, 10 base frames of stand-in bytes (16x16, every 4th frame, CRF 58), bundled 3 a packet,
    an extra chunk."""
    header = golden_stream_2_0().header
    packets = [hashlib.sha256(b"base 2.3 %d" % i).digest()[: 2 + i % 11] for i in range(10)]
    return KpcStream.base_alone(header, BaseLayer(size=16, divisor=4, crf=58, packets=packets, alone=True),
                                [("note", b"golden 2.3")], (2, 3))


def golden_stream_2_4() -> KpcStream:
    """Format 2.4: 2.3's stream of the base layer alone on the cubic keypoint path, 9 base frames
    (33 frames, every 4th: the last base frame alone at frame 32)."""
    header = replace(golden_stream_2_0().header, frame_count=33)
    packets = [hashlib.sha256(b"base 2.4 %d" % i).digest()[: 3 + i % 13] for i in range(9)]
    return KpcStream.base_alone(header, BaseLayer(size=16, divisor=4, crf=52, packets=packets, alone=True, cubic=True),
                                [("note", b"golden 2.4")], (2, 4))


def golden_stream_2_5() -> KpcStream:
    """Format 2.5: 2.4's stream with its base frames placed by the encoder, 9 base frames at frames
    0, 2, 3, 8, 14, 18, 22, 27, 32 of 33 (spans 1 to 6), written 3 base frames a BASE packet."""
    header = replace(golden_stream_2_0().header, frame_count=33)
    packets = [hashlib.sha256(b"base 2.5 %d" % i).digest()[: 3 + i % 13] for i in range(9)]
    base = BaseLayer(size=16, divisor=4, crf=52, packets=packets, alone=True, cubic=True,
                     frames=[0, 2, 3, 8, 14, 18, 22, 27, 32])
    return KpcStream.base_alone(header, base, [("note", b"golden 2.5")], (2, 5))


def golden_stream_2_6() -> KpcStream:
    """Format 2.6: 2.5's stream with the keypoint offsets of its frames between base frames (MOTION
    packets), levels drawn from a fixed generator (mostly 0 and +-1, a few far out), written 3 base
    frames a BASE packet."""
    s = golden_stream_2_5()
    between = [t for t in range(33) if t not in s.base.frames and t < s.base.frames[-1]]
    rng = np.random.default_rng(26)
    levels = rng.choice([0, 0, 0, 1, -1, 2, -3], size=(len(between), 20)).astype(np.int64)
    levels[3, 5], levels[-1, 0] = 40, -300  # escapes
    base = replace(s.base, motion=Motion(between, levels))
    return KpcStream.base_alone(s.header, base, [("note", b"golden 2.6")], (2, 6))


def write(name: str, stream: KpcStream) -> None:
    data = packets.join(packets.stream_packets(stream, 3)) if stream.version[0] == 2 else dumps(stream)
    decoded = loads(data)
    (HERE / f"{name}.kpc").write_bytes(data)
    np.savez(HERE / f"{name}.npz", sent_indices=decoded.sent_indices,
             keypoints=decoded.keypoints, jacobians=decoded.jacobians,
             refreshes=np.array([r.frame for r in decoded.refreshes], np.int64),
             restarts=np.array(decoded.restarts, np.int64))
    print(f"wrote {HERE / name}.kpc ({len(data)} bytes) and {name}.npz")


STREAMS = {"v1_0": golden_stream, "v1_1": golden_stream_1_1, "v1_2": golden_stream_1_2,
           "v1_3": golden_stream_1_3, "v1_4": golden_stream_1_4, "v2_0": golden_stream_2_0,
           "v2_1": golden_stream_2_1, "v2_2": golden_stream_2_2, "v2_3": golden_stream_2_3,
           "v2_4": golden_stream_2_4, "v2_5": golden_stream_2_5,
           "v2_6": golden_stream_2_6}


def main() -> None:
    for name in sys.argv[1:] or STREAMS:
        write(name, STREAMS[name]())


if __name__ == "__main__":
    main()
