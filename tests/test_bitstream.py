"""Tests for the .kpc container (kpcodec.bitstream.container) and kpcodec.bitstream.quantize."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpcodec import bitstream as bs
from kpcodec.bitstream import quantize as q
from kpcodec.errors import KpcFormatError, KpcodecError, KpcVersionError

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
EXAMPLES = 200  # keep CI short: the machine is shared

FAST = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# Helpers written from the spec, independent of the module's own framing code


def chunk(kind: str, payload: bytes) -> bytes:
    tag = kind.encode("ascii")
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return tag + struct.pack("<I", len(payload)) + payload + struct.pack("<I", crc)


def split(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(preamble, [(type, payload), ...]) of a well-formed file."""
    pos, chunks = 10, []
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos + 4)
        chunks.append((data[pos:pos + 4].decode(), data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return data[:10], chunks


def join(preamble: bytes, chunks: list[tuple[str, bytes]]) -> bytes:
    return preamble + b"".join(chunk(k, p) for k, p in chunks)


def replace_chunk(data: bytes, kind: str, payload: bytes) -> bytes:
    pre, chunks = split(data)
    return join(pre, [(k, payload if k == kind else p) for k, p in chunks])


def make_header(**over) -> bs.Header:
    fields = dict(model="tiny", weights_sha256="ab" * 32, width=64, height=48,
                  fps_num=25, fps_den=1, frame_count=10, keep_every=2,
                  num_keypoints=3, kp_step=1 / 256, jac_step=1 / 64, predictor="dpcm")
    fields.update(over)
    return bs.Header(**fields)


V1_0, V1_1 = (1, 0), (1, 1)


def make_stream(s: int = 5, k: int = 3, seed: int = 0, version=V1_0, **over) -> bs.KpcStream:
    rng = np.random.default_rng(seed)
    header = make_header(num_keypoints=k, frame_count=2 * s, **over)
    kp = np.cumsum(rng.normal(0, 0.02, (s, k, 2)), axis=0).astype(np.float32)
    jac = (np.eye(2) + rng.normal(0, 0.1, (s, k, 2, 2))).astype(np.float32)
    return bs.KpcStream(header, "png", b"\x89PNG fake", np.arange(0, 2 * s, 2), kp, jac, version=version)


def small_file(version=V1_0) -> bytes:
    """A 1.0 file by default: most container rules are the same in both versions."""
    return bs.dumps(make_stream(s=3, k=2, version=version))


def assert_rejects(data: bytes, match: str | None = None) -> None:
    with pytest.raises(KpcFormatError, match=match):
        bs.loads(data)


# --------------------------------------------------------------------------
# Strategies

names = st.text(max_size=40).filter(lambda t: len(t.encode("utf-8")) <= 255)
steps = st.one_of(st.sampled_from([1 / 256, 1 / 64, 1 / 100, 0.3, 2.0**-16]),
                  st.floats(2.0**-16, 4.0))


@st.composite
def headers(draw, frame_count: int, k: int) -> bs.Header:
    return bs.Header(
        model=draw(names),
        weights_sha256=draw(st.binary(min_size=32, max_size=32)).hex(),
        width=draw(st.integers(1, 65535)), height=draw(st.integers(1, 65535)),
        fps_num=draw(st.integers(1, 2**32 - 1)), fps_den=draw(st.integers(1, 2**32 - 1)),
        frame_count=frame_count, keep_every=draw(st.integers(1, 65535)),
        num_keypoints=k, kp_step=draw(steps), jac_step=draw(steps),
        predictor=draw(names),
    )


def random_arrays(rng: np.random.Generator, mode: str, shape: tuple, step: float) -> np.ndarray:
    """Keypoint-like data: random walks, wide values (clipping), exact ties."""
    if mode == "walk":
        return np.cumsum(rng.normal(0, 0.05, shape), axis=0)
    if mode == "wide":
        return rng.uniform(-12, 12, shape)
    if mode == "ties":  # halfway between levels: the encoder's rounding must be stable
        return (rng.integers(-50, 50, shape) + 0.5) * step
    return rng.choice([-1e30, -8.0, -2.0, 0.0, 2.0, 8.0, 1e30], shape)


@st.composite
def streams(draw) -> bs.KpcStream:
    version = draw(st.sampled_from([V1_0, V1_1]))
    s = draw(st.integers(1, 40 if version == V1_0 else 12))  # the 1.1 coder is slower
    k = draw(st.integers(1, 20 if version == V1_0 else 8))
    deltas = draw(st.lists(st.integers(1, 1000), min_size=s - 1, max_size=s - 1))
    indices = np.cumsum([0] + deltas).astype(np.int64)
    frame_count = int(indices[-1]) + 1 + draw(st.integers(0, 1000))
    header = draw(headers(frame_count, k))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    modes = st.sampled_from(["walk", "wide", "ties", "extreme"])
    kp = random_arrays(rng, draw(modes), (s, k, 2), header.kp_step)
    jac = random_arrays(rng, draw(modes), (s, k, 2, 2), header.jac_step)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    codec = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8))
    extra = draw(st.lists(st.tuples(
        st.from_regex(r"\A[a-z][A-Za-z]{3}\Z"), st.binary(max_size=20)), max_size=3))
    header.adaptive = version == V1_1 and draw(st.booleans())
    return bs.KpcStream(header, codec, draw(st.binary(max_size=64)), indices,
                        kp.astype(dtype), jac.astype(dtype), extra, version)


# --------------------------------------------------------------------------
# Round trips


@FAST
@given(streams())
def test_round_trip(stream):
    data = bs.dumps(stream)
    out = bs.loads(data)
    h = stream.header
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    assert out.header == bs.Header(**{**vars(h), "kp_step": f32(h.kp_step), "jac_step": f32(h.jac_step)})
    assert (out.source_codec, out.source_data) == (stream.source_codec, stream.source_data)
    assert out.extra_chunks == stream.extra_chunks
    assert out.sent_indices.dtype == np.int64 and np.array_equal(out.sent_indices, stream.sent_indices)
    assert out.keypoints.dtype == np.float32 and out.jacobians.dtype == np.float32

    if stream.version == V1_0:
        q_kp, q_jac = q.quantize_keypoints(stream.keypoints, stream.jacobians,
                                           out.header.kp_step, out.header.jac_step)
        kp, jac = q.dequantize_keypoints(q_kp, q_jac, out.header.kp_step, out.header.jac_step)
    else:  # integer in-loop prediction: every value is its own nearest level
        kp = nearest_levels(stream.keypoints, q.KP_CLIP, out.header.kp_step)
        jac = nearest_levels(stream.jacobians, q.JAC_CLIP, out.header.jac_step)
    assert np.array_equal(out.keypoints, kp) and np.array_equal(out.jacobians, jac)
    assert out.version == stream.version
    assert_within_half_step(stream.keypoints, out.keypoints, q.KP_CLIP, out.header.kp_step)
    assert_within_half_step(stream.jacobians, out.jacobians, q.JAC_CLIP, out.header.jac_step)

    assert bs.dumps(out) == data
    table = bs.chunk_table(data)
    assert sum(size for _, size in table) == len(data)
    kpts = "KPTS" if stream.version == V1_0 else "KPRC"
    assert [name for name, _ in table] == (
        ["magic", "HEAD", "SRCF", kpts] + [k for k, _ in stream.extra_chunks] + ["KEND"])


def nearest_levels(x, clip, step) -> np.ndarray:
    target = np.clip(np.asarray(x, dtype=np.float64), -clip, clip) / np.float64(step)
    return (np.floor(target + 0.5) * np.float64(step)).astype(np.float32)


def assert_within_half_step(original, decoded, clip, step):
    target = np.clip(np.asarray(original, dtype=np.float64), -clip, clip)
    err = np.abs(decoded.astype(np.float64) - target)
    # float32 storage adds at most half an ulp of the decoded value
    slack = np.spacing(np.float32(clip + step)).astype(np.float64)
    assert err.max(initial=0) <= step / 2 + slack


@FAST
@given(st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**32 - 1), steps)
def test_dpcm_error_does_not_drift(s, k, seed, step):
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.normal(0, 0.1, (s, k, 2)), axis=0)
    jac = rng.normal(0, 3, (s, k, 2, 2))
    q_kp, q_jac = q.quantize_keypoints(values, jac, step, step)
    assert q_kp.dtype == np.int32 and q_jac.dtype == np.int32
    kp, jj = q.dequantize_keypoints(q_kp, q_jac, step, step)
    assert_within_half_step(values, kp, q.KP_CLIP, step)
    assert_within_half_step(jac, jj, q.JAC_CLIP, step)


def test_residuals_are_differences_of_levels():
    values = np.array([[[0.0, 0.5]], [[0.01, 0.5]], [[0.02, -0.5]]])
    q_kp, _ = q.quantize_keypoints(values, np.zeros((3, 1, 2, 2)), 0.01, 1 / 64)
    assert q_kp[:, 0, :].tolist() == [[0, 50], [1, 0], [1, -100]]


def test_quantize_rejects_nan_and_tiny_steps():
    with pytest.raises(ValueError):
        q.quantize_keypoints(np.full((1, 1, 2), np.nan), np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError):
        q.quantize_keypoints(np.zeros((1, 1, 2)), np.zeros((1, 1, 2, 2)), 1e-9, 1 / 64)


@FAST
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=300))
def test_pack_symbols_round_trip(values):
    arr = np.array(values, dtype=np.int64)
    packed = q.pack_symbols(arr)
    out = q.unpack_symbols(packed, len(values))
    assert out.dtype == np.int32 and out.tolist() == values


def test_pack_symbols_format():
    raw = zstandard.ZstdDecompressor().decompress(q.pack_symbols(np.array([0, -1, 1, 64, -65, 2**31 - 1])))
    # zigzag 0,1,2,128,129,2**32-2 as LEB128
    assert raw == bytes([0, 1, 2, 0x80, 0x01, 0x81, 0x01, 0xFE, 0xFF, 0xFF, 0xFF, 0x0F])


def zstd(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(raw)


@pytest.mark.parametrize("packed, count", [
    (zstd(b"\x80\x00"), 1),  # overlong varint
    (zstd(b"\x80\x80\x80\x80\x10"), 1),  # more than 32 bits
    (zstd(b"\x80\x80\x80\x80\x80\x01"), 1),  # six bytes
    (zstd(b"\x01\x02"), 1),  # too many symbols
    (zstd(b"\x01\x82"), 2),  # last varint unfinished
    (zstd(b"\x01"), 2),  # too few
    (zstd(b"\x01") + b"junk", 1),  # data after the frame
    (zstd(b"\x01") + zstd(b"\x01"), 1),  # two frames
    (b"not zstd", 1),
    (b"", 1),
    (zstd(b"\x01")[:-2], 1),  # truncated frame
    (zstandard.ZstdCompressor().compress(bytes(10_000)), 10),  # claims too much output
])
def test_unpack_symbols_rejects(packed, count):
    with pytest.raises(KpcFormatError):
        q.unpack_symbols(packed, count)


def test_default_steps():
    assert q.V1_0_KP_STEP == 1 / 256 and q.V1_0_JAC_STEP == 1 / 64
    assert q.DEFAULT_KP_STEP == 1 / 64 and q.DEFAULT_JAC_STEP == 1 / 32


def test_header_properties():
    h = make_header(fps_num=30000, fps_den=1001, frame_count=300)
    assert h.fps == Fraction(30000, 1001)
    assert h.duration_s == pytest.approx(10.01)


# --------------------------------------------------------------------------
# Layout and chunk rules


def test_layout_matches_spec():
    data = small_file()
    assert data[:8] == bs.MAGIC == b"\x89KPC\r\n\x1a\n"
    assert data[8:10] == b"\x01\x00" and bs.FORMAT_VERSION == (2, 6) and bs.LATEST_MINOR_1 == 4
    pre, chunks = split(data)
    assert [k for k, _ in chunks] == ["HEAD", "SRCF", "KPTS", "KEND"]
    assert join(pre, chunks) == data  # framing and CRC as the spec says
    head = chunks[0][1]
    assert head[:5] == b"\x04tiny" and head[5:37] == bytes.fromhex("ab" * 32)
    assert struct.unpack_from("<HHIIIHBff", head, 37) == (64, 48, 25, 1, 6, 2, 2, 1 / 256, 1 / 64)
    assert head[37 + 27:] == b"\x04dpcm\x00\x00"
    assert chunks[1][1] == b"\x03png\x89PNG fake"
    assert struct.unpack_from("<I", chunks[2][1])[0] == 3
    assert bs.chunk_table(data) == [("magic", 10)] + [(k, len(p) + 12) for k, p in chunks]


def test_optional_chunk_is_skipped_and_kept():
    data = bs.dumps(make_stream())
    pre, chunks = split(data)
    # unknown optional chunks anywhere after HEAD
    moved = join(pre, chunks[:1] + [("zzZZ", b"one")] + chunks[1:3] + [("meta", b"two")] + chunks[3:])
    out = bs.loads(moved)
    assert out.extra_chunks == [("zzZZ", b"one"), ("meta", b"two")]
    # the writer puts them after KPTS (the canonical layout)
    canonical = join(pre, chunks[:3] + [("zzZZ", b"one"), ("meta", b"two")] + chunks[3:])
    assert bs.dumps(out) == canonical
    assert bs.dumps(bs.loads(canonical)) == canonical


def test_optional_chunk_before_head_rejected():
    pre, chunks = split(small_file())
    assert_rejects(join(pre, [("meta", b"")] + chunks), "before HEAD")


@pytest.mark.parametrize("kind", ["XTRA", "Meta", "KPTs"])
def test_unknown_critical_chunk_rejected(kind):
    pre, chunks = split(small_file())
    assert_rejects(join(pre, chunks[:3] + [(kind, b"x")] + chunks[3:]), f"unknown critical chunk {kind}")


@pytest.mark.parametrize("order", [
    [1, 0, 2, 3], [0, 2, 1, 3], [0, 1, 3], [0, 2, 3], [1, 2, 3], [0, 1, 2],
    [0, 0, 1, 2, 3], [0, 1, 1, 2, 3], [0, 1, 2, 2, 3], [0, 1, 2, 3, 3],
])
def test_chunk_order_enforced(order):
    pre, chunks = split(small_file())
    assert_rejects(join(pre, [chunks[i] for i in order]))


def test_bad_chunk_type_rejected():
    pre, chunks = split(small_file())
    assert_rejects(join(pre, chunks[:3] + [("me1a", b"")] + chunks[3:]), "bad chunk type")


def test_data_after_kend_rejected():
    assert_rejects(small_file() + b"\x00", "after KEND")
    assert_rejects(small_file() + chunk("meta", b""), "after KEND")


def test_kend_must_be_empty():
    assert_rejects(replace_chunk(small_file(), "KEND", b"x"))


def test_error_messages_name_the_problem():
    data = small_file()
    assert_rejects(b"GIF89a" + data[6:], r"not a \.kpc file \(bad magic\)")
    pre, chunks = split(data)
    kpts_at = 10 + sum(12 + len(p) for _, p in chunks[:2])
    assert_rejects(data[:kpts_at + 20], f"truncated chunk KPTS at byte {kpts_at}")
    broken = bytearray(data)
    broken[10 + 12 + len(chunks[0][1]) + 9] ^= 1  # inside SRCF payload
    assert_rejects(bytes(broken), "CRC mismatch in chunk SRCF")


def test_absurd_length_rejected():
    pre, chunks = split(small_file())
    data = bytearray(join(pre, chunks))
    data[14:18] = struct.pack("<I", 2**32 - 1)  # HEAD length
    assert_rejects(bytes(data), "truncated chunk HEAD")


# --------------------------------------------------------------------------
# Versions


def with_version(data: bytes, major: int, minor: int) -> bytes:
    return data[:8] + bytes([major, minor]) + data[10:]


@pytest.mark.parametrize("major", [0, 3, 255])
def test_unknown_major_version(major):
    data = with_version(small_file(), major, 0)
    with pytest.raises(KpcVersionError, match=f"unsupported .kpc major version {major} "
                                              r"\(this decoder reads 1 and 2\)"):
        bs.loads(data)
    with pytest.raises(KpcVersionError):
        bs.chunk_table(data)


def test_newer_minor_version_appends_fields():
    data = small_file(V1_1)
    head, kprc = split(data)[1][0][1], split(data)[1][2][1]
    flagged = head[:-2] + b"\x03\x80" + b"new field"  # bit 0 known since 1.1, the others not
    newer = replace_chunk(replace_chunk(with_version(data, 1, 7), "HEAD", flagged), "KPRC", kprc + b"more")
    out = bs.loads(newer)
    assert out.header.adaptive and out.version == V1_1
    out.header.adaptive = False
    assert bs.dumps(out) == data  # rewritten as 1.1
    # the same bytes in a 1.1 file are errors
    assert_rejects(replace_chunk(data, "HEAD", head + b"x"), "unexpected bytes at end of chunk HEAD")
    assert_rejects(replace_chunk(data, "HEAD", flagged[:len(head)]), "reserved HEAD flags")
    assert_rejects(replace_chunk(data, "KPRC", kprc + b"x"), "unexpected bytes at end of chunk KPRC")
    # and in a 1.0 file even the adaptive flag is
    head10 = split(small_file())[1][0][1]
    assert_rejects(replace_chunk(small_file(), "HEAD", head10[:-2] + b"\x01\x00"), "reserved HEAD flags")


def test_keypoint_chunk_follows_the_version():
    old, new = small_file(V1_0), small_file(V1_1)
    assert new[8:10] == b"\x01\x01" and [k for k, _ in split(new)[1]] == ["HEAD", "SRCF", "KPRC", "KEND"]
    assert_rejects(with_version(old, 1, 1), "chunk KPTS where KPRC was expected")
    assert_rejects(with_version(new, 1, 0), "chunk KPRC where KPTS was expected")
    with pytest.raises(KpcFormatError, match="cannot write"):
        bs.dumps(make_stream(version=(1, 5)))
    with pytest.raises(KpcFormatError, match="1.4 is written with a base layer"):
        bs.dumps(make_stream(version=(1, 4)))
    adaptive = make_stream(version=V1_0)
    adaptive.header.adaptive = True
    with pytest.raises(KpcFormatError, match="need format 1.1"):
        bs.dumps(adaptive)


def test_v1_1_is_smaller_and_closed_loop():
    """Same keypoints at the same steps: 1.1's prediction and range coder beat 1.0's zstd."""
    old = make_stream(s=40, k=10, version=V1_0)
    new = make_stream(s=40, k=10, version=V1_1)
    a, b = bs.loads(bs.dumps(old)), bs.loads(bs.dumps(new))
    assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.jacobians, b.jacobians)
    sizes = [dict(bs.chunk_table(bs.dumps(x)))[c] for x, c in ((old, "KPTS"), (new, "KPRC"))]
    assert sizes[1] < sizes[0]


def head_motion(s: int = 60, seed: int = 0) -> bs.KpcStream:
    """Ten keypoints carried by one moving head (a shared random walk) plus their own jitter."""
    rng = np.random.default_rng(seed)
    head = np.cumsum(rng.normal(0, 0.03, (s, 1, 2)), axis=0)
    kp = (head + rng.uniform(-0.5, 0.5, (1, 10, 2)) + rng.normal(0, 0.004, (s, 10, 2))).astype(np.float32)
    jac = (np.eye(2) + rng.normal(0, 0.02, (s, 10, 2, 2))).astype(np.float32)
    header = make_header(num_keypoints=10, frame_count=2 * s, kp_step=1 / 64, jac_step=1 / 32)
    return bs.KpcStream(header, "png", b"\x89PNG fake", np.arange(0, 2 * s, 2), kp, jac)


def test_v1_3_decorrelates_the_same_levels_into_fewer_bits():
    """Coder 1 is lossless on top of coder 0: same decoded keypoints, smaller KPRC for a moving head."""
    new = head_motion()
    assert new.write_version == (1, 3)
    old = head_motion()
    old.version = V1_1
    data_new, data_old = bs.dumps(new), bs.dumps(old)
    a, b = bs.loads(data_new), bs.loads(data_old)
    assert data_new[8:10] == b"\x01\x03" and a.version == (1, 3) and b.version == V1_1
    assert dict(split(data_new)[1])["KPRC"][4] == bs.CODER_DECORRELATED
    assert dict(split(data_old)[1])["KPRC"][4] == bs.CODER_CONTEXT
    assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.jacobians, b.jacobians)
    assert bs.dumps(a) == data_new  # re-serialises byte for byte
    assert dict(bs.chunk_table(data_new))["KPRC"] < dict(bs.chunk_table(data_old))["KPRC"]


def test_v1_3_keeps_coder_0_where_decorrelation_does_not_pay():
    """Keypoints that move independently gain nothing from coder 1: the writer keeps coder 0
    (with 1.3's in-loop predictors, both 'previous')."""
    for seed in range(3):
        stream = make_stream(s=40, k=10, seed=seed, kp_step=1 / 64, jac_step=1 / 32)
        stream.version = None
        data = bs.dumps(stream)
        kprc = dict(split(data)[1])["KPRC"]
        assert data[8:10] == b"\x01\x03" and kprc[4:7] == bytes([bs.CODER_CONTEXT, q.PREVIOUS, q.PREVIOUS])
        back = bs.loads(data)
        assert back.version == (1, 3) and bs.dumps(back) == data
        stream.version = V1_1
        assert np.array_equal(back.keypoints, bs.loads(bs.dumps(stream)).keypoints)


def test_v1_3_falls_back_to_coder_0_without_a_table():
    """The shipped table is made for 10 keypoints: other counts are written as before."""
    stream = make_stream(s=6, k=3)
    stream.version = None
    assert stream.write_version == V1_1
    forced = make_stream(s=6, k=3, version=(1, 3))
    data = bs.dumps(forced)
    assert data[8:10] == b"\x01\x03" and dict(split(data)[1])["KPRC"][4] == bs.CODER_CONTEXT
    assert np.array_equal(bs.loads(data).keypoints, bs.loads(bs.dumps(stream)).keypoints)


def test_coder_1_is_refused_where_it_is_not_defined():
    data = bs.dumps(head_motion(s=8))
    assert_rejects(with_version(data, 1, 2), "unknown keypoint coder 1")  # a 1.2 file cannot hold it
    pre, chunks = split(data)
    kprc = dict(chunks)["KPRC"]
    head = dict(chunks)["HEAD"]
    k_at = head.index(b"tiny") + 4 + 32 + 2 + 2 + 4 + 4 + 4 + 2  # model name, sha, w, h, fps, count, keep
    lying = replace_chunk(data, "HEAD", head[:k_at] + bytes([9]) + head[k_at + 1:])
    assert_rejects(lying, "no table for 9 keypoints")
    assert_rejects(replace_chunk(data, "KPRC", kprc[:4] + bytes([2]) + kprc[5:]), "unknown keypoint coder 2")


def test_coder_1_rejects_symbols_that_undo_out_of_range():
    """Huge symbols in every column grow through the prediction: a clean error, no overflow."""
    from kpcodec.bitstream import entropy

    data = bs.dumps(head_motion(s=4))
    kprc = dict(split(data)[1])["KPRC"]
    big = np.full((4, 60), 2**32 - 1, dtype=np.int64)
    coded = entropy.encode([np.array([[0], [2], [2], [2]]), big[:, :20], big[:, 20:]], 1)
    forged = kprc[:4] + bytes([1]) + kprc[5:7] + struct.pack("<I", len(coded)) + coded  # S, coder, predictors
    assert_rejects(replace_chunk(data, "KPRC", forged), "out of range")


def test_man_page_version_matches_format_version():
    text = (ROOT / "man" / "kpc.5").read_text()
    m = re.search(r'^\.TH KPC 5 \S+ "kpcodec" "format (\d+)\.(\d+)"', text, re.M)
    assert m, "no .TH line with the format version"
    assert (int(m[1]), int(m[2])) == bs.FORMAT_VERSION


# --------------------------------------------------------------------------
# Damaged and hostile input


def test_every_truncation_rejected():
    data = small_file()
    for n in range(len(data)):
        with pytest.raises(KpcFormatError):
            bs.loads(data[:n])
        with pytest.raises(KpcFormatError):
            bs.chunk_table(data[:n])


@pytest.mark.parametrize("name", ["v1_0", "v1_1"])
def test_every_single_bit_flip(name):
    data = (GOLDEN / f"{name}.kpc").read_bytes()
    minor_bits = set(range(9 * 8 + 1, 10 * 8)) if name == "v1_1" else set()
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            out = bs.loads(bytes(flipped))
        except KpcFormatError:
            continue
        # only a newer minor version of a 1.1 file still parses, to the same content
        # (1.0 <-> 1.1 flips are caught: the keypoint chunk does not match the version)
        assert bit in minor_bits, f"bit {bit} flipped and the file still loaded"
        out.version = V1_1  # read as the newer minor it claims; written back as 1.1, the same file
        assert bs.dumps(out) == data


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_rejected(junk):
    for data in (junk, bs.MAGIC + junk, bs.MAGIC + b"\x01\x00" + junk):
        with pytest.raises(KpcFormatError):
            bs.loads(data)


@FAST
@given(st.sampled_from([("HEAD", V1_0), ("SRCF", V1_0), ("KPTS", V1_0), ("HEAD", V1_1), ("KPRC", V1_1),
                        ("KPRC", V1_1)]), st.data())
def test_mutated_payload_with_good_crc(case, data):
    """CRC fixed up, so the payload parsers see the damage; never crash."""
    kind, version = case
    original = small_file(version)
    payload = dict(split(original)[1])[kind]
    action = data.draw(st.sampled_from(["flip", "cut", "grow", "random"]))
    p = bytearray(payload)
    if action == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(p) - 1), min_size=1, max_size=4)):
            p[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "cut":
        del p[data.draw(st.integers(0, len(p) - 1)):]
    elif action == "grow":
        p += data.draw(st.binary(min_size=1, max_size=20))
    else:
        p = bytearray(data.draw(st.binary(max_size=80)))
    try:
        out = bs.loads(replace_chunk(original, kind, bytes(p)))
    except KpcFormatError:
        return
    bs.dumps(out)  # whatever parsed is a consistent stream


def kpts_payload(indices, q_kp, q_jac, s=None) -> bytes:
    blobs = [q.pack_symbols(np.diff(indices, prepend=0)), q.pack_symbols(q_kp), q.pack_symbols(q_jac)]
    s = len(indices) if s is None else s
    return struct.pack("<I", s) + b"".join(struct.pack("<I", len(b)) + b for b in blobs)


@pytest.mark.parametrize("indices, match", [
    ([1, 2, 4], "frame 0"),
    ([0, 2, 2], "strictly increasing"),
    ([0, 4, 2], "strictly increasing"),
    ([0, 2, 6], "frame_count"),
])
def test_bad_sent_indices_rejected(indices, match):
    data = small_file()  # frame_count 6, K 2
    q_kp, q_jac = np.zeros((3, 2, 2), int), np.zeros((3, 2, 2, 2), int)
    assert_rejects(replace_chunk(data, "KPTS", kpts_payload(np.array(indices), q_kp, q_jac)), match)


def test_decoder_limit_applies_to_both_sides(monkeypatch):
    data = small_file()  # S*K = 6
    monkeypatch.setattr(bs.container, "MAX_SENT_KEYPOINTS", 5)
    assert_rejects(data, "decoder limit")
    with pytest.raises(KpcFormatError, match="too many sent keypoints"):
        bs.dumps(make_stream(s=3, k=2))


def test_sent_count_limits():
    data = small_file()
    q_kp, q_jac = np.zeros((3, 2, 2), int), np.zeros((3, 2, 2, 2), int)
    assert_rejects(replace_chunk(data, "KPTS", kpts_payload(np.arange(3), q_kp, q_jac, s=0)))
    assert_rejects(replace_chunk(data, "KPTS", kpts_payload(np.arange(3), q_kp, q_jac, s=2**32 - 1)))


def test_levels_beyond_clip_rejected():
    data = small_file()  # kp_step 1/256: levels up to 512
    q_kp, q_jac = np.zeros((3, 2, 2), int), np.zeros((3, 2, 2, 2), int)
    q_kp[0, 0, 0], q_kp[2, 0, 0] = 512, 1  # second frame fine, third exceeds
    assert_rejects(replace_chunk(data, "KPTS", kpts_payload(np.arange(3), q_kp, q_jac)), "outside")
    q_kp[2, 0, 0] = 0
    out = bs.loads(replace_chunk(data, "KPTS", kpts_payload(np.arange(3), q_kp, q_jac)))
    assert out.keypoints[2, 0, 0] == 2.0


def head_payload(**over) -> bytes:
    f = dict(model=b"tiny", sha=bytes(32), fields=(64, 48, 25, 1, 6, 2, 2), steps=(1 / 256, 1 / 64),
             predictor=b"dpcm", flags=0)
    f.update(over)
    return (bytes([len(f["model"])]) + f["model"] + f["sha"] + struct.pack("<HHIIIHB", *f["fields"])
            + struct.pack("<ff", *f["steps"]) + bytes([len(f["predictor"])]) + f["predictor"]
            + struct.pack("<H", f["flags"]))


@pytest.mark.parametrize("over", [
    dict(model=b"\xff\xfe"), dict(predictor=b"\xc3"),
    dict(fields=(0, 48, 25, 1, 6, 2, 2)), dict(fields=(64, 0, 25, 1, 6, 2, 2)),
    dict(fields=(64, 48, 0, 1, 6, 2, 2)), dict(fields=(64, 48, 25, 0, 6, 2, 2)),
    dict(fields=(64, 48, 25, 1, 0, 2, 2)), dict(fields=(64, 48, 25, 1, 6, 0, 2)),
    dict(fields=(64, 48, 25, 1, 6, 2, 0)), dict(fields=(64, 48, 25, 1, 6, 2, 3)),
    dict(steps=(0.0, 1 / 64)), dict(steps=(1 / 256, -1.0)), dict(steps=(float("nan"), 1 / 64)),
    dict(steps=(float("inf"), 1 / 64)), dict(steps=(1e-9, 1 / 64)),
])
def test_bad_head_fields_rejected(over):
    data = small_file()
    assert bs.loads(replace_chunk(data, "HEAD", head_payload())).header.num_keypoints == 2
    assert_rejects(replace_chunk(data, "HEAD", head_payload(**over)))


@pytest.mark.parametrize("codec", [b"", b"p g", b"\xc3\xa9", b"\x00"])
def test_bad_source_codec_rejected(codec):
    assert_rejects(replace_chunk(small_file(), "SRCF", bytes([len(codec)]) + codec + b"img"), "codec")


# --------------------------------------------------------------------------
# Writer-side validation


@pytest.mark.parametrize("change", [
    lambda s: setattr(s.header, "width", 0),
    lambda s: setattr(s.header, "num_keypoints", 256),
    lambda s: setattr(s.header, "kp_step", float("nan")),
    lambda s: setattr(s.header, "jac_step", 1e39),  # not an f32
    lambda s: setattr(s.header, "weights_sha256", "ab" * 31),
    lambda s: setattr(s.header, "weights_sha256", "zz" * 32),
    lambda s: setattr(s.header, "model", "x" * 256),
    lambda s: setattr(s, "source_codec", ""),
    lambda s: setattr(s, "source_codec", "wébp"),
    lambda s: setattr(s, "sent_indices", s.sent_indices + 1),
    lambda s: setattr(s, "sent_indices", s.sent_indices[::-1]),
    lambda s: setattr(s, "keypoints", s.keypoints[:, :1]),
    lambda s: setattr(s, "jacobians", s.jacobians[:, :, :1]),
    lambda s: s.keypoints.__setitem__((0, 0, 0), np.nan),
    lambda s: s.extra_chunks.append(("Meta", b"")),
    lambda s: s.extra_chunks.append(("me", b"")),
    lambda s: setattr(s, "source_data", "text"),
])
def test_dumps_rejects_invalid_streams(change):
    stream = make_stream()
    change(stream)
    with pytest.raises(KpcFormatError):
        bs.dumps(stream)


# --------------------------------------------------------------------------
# Golden file


@pytest.mark.parametrize("name, frames, version", [("v1_0", 10, V1_0), ("v1_1", 12, V1_1), ("v1_3", 12, (1, 3)),
                                                   ("v1_4", 12, (1, 4))])
def test_golden_file_decodes_exactly(name, frames, version):
    data = (GOLDEN / f"{name}.kpc").read_bytes()
    expected = np.load(GOLDEN / f"{name}.npz")
    out = bs.loads(data)
    assert out.version == version and data[8:10] == bytes(version)
    assert out.header.adaptive == (version != V1_0)
    assert out.header.model == "tiny" and (out.header.width, out.header.height) == (64, 64)
    assert out.header.fps == 25 and out.header.frame_count == frames and out.header.keep_every == 2
    assert out.source_codec == "png" and out.source_data.startswith(b"\x89PNG\r\n\x1a\n")
    for name in ("sent_indices", "keypoints", "jacobians"):
        got = getattr(out, name)
        assert got.dtype == expected[name].dtype and np.array_equal(got, expected[name]), name
    assert bs.dumps(out) == data


def test_golden_script_reproduces_file(tmp_path):
    sys.path.insert(0, str(GOLDEN))
    try:
        import make_golden
    finally:
        sys.path.remove(str(GOLDEN))
    assert bs.dumps(make_golden.golden_stream()) == (GOLDEN / "v1_0.kpc").read_bytes()
    assert bs.dumps(make_golden.golden_stream_1_1()) == (GOLDEN / "v1_1.kpc").read_bytes()
    assert bs.dumps(make_golden.golden_stream_1_3()) == (GOLDEN / "v1_3.kpc").read_bytes()
    assert bs.dumps(make_golden.golden_stream_1_4()) == (GOLDEN / "v1_4.kpc").read_bytes()


# --------------------------------------------------------------------------
# The base layer (BASE chunk, 1.4)


def _golden_1_4() -> bs.KpcStream:
    return bs.loads((GOLDEN / "v1_4.kpc").read_bytes())


def test_base_layer_round_trip():
    out = _golden_1_4()
    assert out.base is not None and (out.base.size, out.base.divisor, out.base.crf) == (16, 2, 63)
    assert len(out.base.packets) == 6 and [len(p) for p in out.base.packets] == [3 + 5 * i for i in range(6)]
    assert [kind for kind, _ in bs.chunk_table(bs.dumps(out))][-2:] == ["BASE", "KEND"]


def test_stream_without_base_is_not_1_4():
    out = _golden_1_4()
    out.base, out.version = None, None
    assert bs.loads(bs.dumps(out)).version == (1, 3)


def test_a_1_3_file_may_not_hold_a_base_chunk():
    data = bytearray((GOLDEN / "v1_4.kpc").read_bytes())
    data[9] = 3  # the minor version byte
    with pytest.raises(KpcFormatError, match="BASE"):
        bs.loads(bytes(data))


@pytest.mark.parametrize("change, message", [
    (lambda b: setattr(b, "packets", b.packets[:-1]), "packets"),
    (lambda b: setattr(b, "size", 15), "size"),
    (lambda b: setattr(b, "divisor", 0), "divisor"),
    (lambda b: setattr(b, "codec", "vp9"), "codec"),
    (lambda b: b.packets.__setitem__(0, b""), "empty"),
])
def test_dumps_rejects_bad_base_layers(change, message):
    out = _golden_1_4()
    change(out.base)
    with pytest.raises(KpcFormatError, match=message):
        bs.dumps(out)


def _with_base_payload(payload: bytes) -> bytes:
    data = (GOLDEN / "v1_4.kpc").read_bytes()
    table = bs.chunk_table(data)
    start = sum(n for kind, n in table[:-2])  # where BASE begins
    return data[:start] + bs.container._chunk("BASE", payload) + bs.container._chunk("KEND", b"")


@pytest.mark.parametrize("payload, message", [
    (struct.pack("<BHBBI", 7, 16, 2, 63, 6) + b"\x01" * 12, "codec"),
    (struct.pack("<BHBBI", 0, 16, 2, 63, 5) + b"\x01" * 10, "packets"),
    (struct.pack("<BHBBI", 0, 17, 2, 63, 6) + b"\x01" * 12, "divisor|BASE"),
    (struct.pack("<BHBBI", 0, 16, 2, 63, 6) + b"\x80" * 3, "sizes"),
    (struct.pack("<BHBBI", 0, 16, 2, 63, 6) + b"\x05" * 6 + b"x" * 7, "add up"),
    (struct.pack("<BHBBI", 0, 16, 2, 63, 6) + b"\x00" * 6, "empty"),
    (struct.pack("<BHB", 0, 16, 2), "truncated"),
])
def test_loads_rejects_bad_base_chunks(payload, message):
    with pytest.raises(KpcFormatError, match=message):
        bs.loads(_with_base_payload(payload))


# --------------------------------------------------------------------------
# Files and imports


def test_write_and_read_file(tmp_path):
    stream = make_stream()
    path = tmp_path / "a.kpc"
    bs.write_file(path, stream)
    assert os.listdir(tmp_path) == ["a.kpc"]  # no .tmp left behind
    assert path.read_bytes() == bs.dumps(stream)
    assert bs.dumps(bs.read_file(path)) == bs.dumps(stream)
    assert bs.dumps(bs.read_file(str(path))) == bs.dumps(stream)


def test_read_file_errors(tmp_path):
    with pytest.raises(KpcodecError, match=r"cannot read .*missing\.kpc: No such file") as err:
        bs.read_file(tmp_path / "missing.kpc")
    assert not isinstance(err.value, KpcFormatError)
    with pytest.raises(KpcodecError, match="cannot read"):
        bs.read_file(tmp_path)  # a directory
    (tmp_path / "bad.kpc").write_bytes(b"hello")
    with pytest.raises(KpcFormatError, match="bad magic"):
        bs.read_file(tmp_path / "bad.kpc")


def test_write_file_error_leaves_nothing(tmp_path):
    with pytest.raises(KpcodecError, match="cannot write"):
        bs.write_file(tmp_path / "no" / "dir.kpc", make_stream())
    assert os.listdir(tmp_path) == []


def test_stdin_and_stdout(monkeypatch):
    stream = make_stream()
    data = bs.dumps(stream)
    out = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", out)
    bs.write_file("-", stream)
    assert out.buffer.getvalue() == data
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert bs.dumps(bs.read_file("-")) == data


def test_bitstream_package_loads_no_torch_and_no_pyav():
    """kpcodec.bitstream is usable alone: importing every module of it, parsing and writing a file
    (its audio chunk included) loads neither torch nor PyAV."""
    code = ("import sys, pkgutil, importlib, kpcodec.bitstream as bs; "
            "names = [m.name for m in pkgutil.iter_modules(bs.__path__)]; "
            "[importlib.import_module('kpcodec.bitstream.' + n) for n in names]; "
            "from kpcodec.bitstream import opus; "
            "s = bs.loads(open('tests/golden/v1_3.kpc', 'rb').read()); bs.dumps(s); "
            "opus.from_stream(s); "
            "assert {'container', 'quantize', 'entropy', 'decorrelate', 'opus'} <= set(names), names; "
            "assert 'constriction' in sys.modules; "
            "bad = [m for m in ('torch', 'av') if m in sys.modules]; "
            "assert not bad, f'imported {bad}'")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_write_bytes_and_read_bytes(tmp_path):
    path = tmp_path / "raw.bin"
    bs.write_bytes(path, b"\x00anything")
    assert bs.read_bytes(path) == b"\x00anything" and os.listdir(tmp_path) == ["raw.bin"]


# --------------------------------------------------------------------------
# Format 1.1: the KPRC chunk


def kprc_payload(deltas, r_kp, r_jac, s=None, coder=0, kp_pred=1, jac_pred=0, coded=None) -> bytes:
    from kpcodec.bitstream import entropy

    deltas = np.asarray(deltas).reshape(-1, 1)
    count = len(deltas) if s is None else s
    if coded is None:
        coded = entropy.encode([deltas, np.asarray(r_kp).reshape(len(deltas), -1),
                                np.asarray(r_jac).reshape(len(deltas), -1)])
    return struct.pack("<IBBBI", count, coder, kp_pred, jac_pred, len(coded)) + coded


def zeros_kprc(**over) -> bytes:
    return kprc_payload([0, 2, 2], np.zeros((3, 4), int), np.zeros((3, 8), int), **over)


def test_kprc_layout():
    data = small_file(V1_1)  # S 3, K 2
    payload = dict(split(data)[1])["KPRC"]
    count, coder, kp_pred, jac_pred, n = struct.unpack_from("<IBBBI", payload)
    assert (count, coder, kp_pred, jac_pred) == (3, 0, q.HALF_VELOCITY, q.PREVIOUS)
    assert n == len(payload) - 11 and n % 4 == 0
    out = bs.loads(replace_chunk(data, "KPRC", zeros_kprc()))
    assert out.sent_indices.tolist() == [0, 2, 4] and not out.keypoints.any()


@pytest.mark.parametrize("over, match", [
    (dict(coder=1), "unknown keypoint coder 1"),
    (dict(kp_pred=2), "unknown keypoint predictor 2"),
    (dict(jac_pred=9), "unknown jacobian predictor 9"),
    (dict(s=0), "sent frame count"),
    (dict(s=7), "sent frame count"),
    (dict(coded=b"abc"), "32-bit words"),
    (dict(coded=b""), None),  # decodes as zeros: indices 0, 0, 0
])
def test_kprc_fields_rejected(over, match):
    assert_rejects(replace_chunk(small_file(V1_1), "KPRC", zeros_kprc(**over)), match)


@pytest.mark.parametrize("deltas, match", [
    ([1, 1, 2], "frame 0"), ([0, 2, 0], "strictly increasing"), ([0, 3, -1], "strictly increasing"),
    ([0, 2, 4], "frame_count"), ([0, 2**32 - 1, 1], "frame_count"),
])
def test_kprc_bad_indices_rejected(deltas, match):
    payload = kprc_payload(deltas, np.zeros((3, 4), int), np.zeros((3, 8), int))
    assert_rejects(replace_chunk(small_file(V1_1), "KPRC", payload), match)


def test_kprc_levels_beyond_clip_rejected():
    data = small_file(V1_1)  # kp_step 1/256: levels up to 512; velocity prediction
    r_kp = np.zeros((3, 4), int)
    r_kp[0, 0], r_kp[1, 0] = 400, 100  # levels 400, 500, then predicted 550: too far
    assert_rejects(replace_chunk(data, "KPRC", kprc_payload([0, 2, 2], r_kp, np.zeros((3, 8), int))),
                   "keypoint values outside")
    r_kp[2, 0] = -50  # back to 500
    out = bs.loads(replace_chunk(data, "KPRC", kprc_payload([0, 2, 2], r_kp, np.zeros((3, 8), int))))
    assert out.keypoints[:, 0, 0].tolist() == [400 / 256, 500 / 256, 500 / 256]
    huge = np.zeros((3, 8), int)
    huge[0, 0] = 2**32 - 1  # the coder's largest value: refused, no overflow
    assert_rejects(replace_chunk(data, "KPRC", kprc_payload([0, 2, 2], np.zeros((3, 4), int), huge)),
                   "jacobian values outside")


def test_kprc_trailing_words_rejected():
    payload = zeros_kprc()
    coded = payload[11:] + b"\x01\x00\x00\x00" * 3  # the coder reads a word or two ahead
    assert_rejects(replace_chunk(small_file(V1_1), "KPRC", zeros_kprc(coded=coded)), "KPRC")


@pytest.mark.parametrize("kind", [q.PREVIOUS, q.HALF_VELOCITY])
def test_closed_loop_levels_are_nearest(kind):
    rng = np.random.default_rng(kind)
    x = np.cumsum(rng.normal(0, 0.05, (30, 3, 2)), axis=0)
    r = q.quantize_closed_loop(x, 1 / 64, q.KP_CLIP, kind)
    levels = q.levels_from_residuals(r, kind, q.max_level_rounded_up(q.KP_CLIP, 1 / 64))
    assert np.array_equal(levels, np.floor(np.clip(x, -2, 2) * 64 + 0.5))
    with pytest.raises(ValueError):
        q.levels_from_residuals(r, kind, 3)


def test_half_velocity_prediction():
    last, before = np.array([10, 10, -3]), np.array([7, 11, 0])
    assert q.predict_level(q.HALF_VELOCITY, last, before, (3,)).tolist() == [12, 10, -4]
    assert q.predict_level(q.PREVIOUS, last, before, (3,)).tolist() == [10, 10, -3]
    assert q.predict_level(q.HALF_VELOCITY, None, None, (3,)).tolist() == [0, 0, 0]


def test_entropy_prior_is_frozen():
    """The coder's starting counts are part of format 1.1 (KPRC coder 0): never change them."""
    import hashlib

    from kpcodec.bitstream import entropy

    path = ROOT / "kpcodec" / "bitstream" / entropy.PRIOR_FILES[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == \
        "1931bfec9024e23a551cdcbe28e2ed5f62a0a0069c25c4cca50cfb04cfdb06f9"
    streams = entropy.prior()
    assert len(streams) == 3 and all(len(s["contexts"]) == entropy.PREV_CLASSES * entropy.ROW_CLASSES
                                     for s in streams)


def test_entropy_round_trip_with_escapes():
    from kpcodec.bitstream import entropy

    rng = np.random.default_rng(3)
    streams = [np.array([[0], [2**32 - 1], [1]]), rng.integers(-40, 40, (3, 6)),
               np.array([[2**32 - 1, -(2**32 - 1), 0, 16, -9, 8]] * 3)]
    back = entropy.decode(entropy.encode(streams), 3, [1, 6, 6])
    assert all(np.array_equal(a, b) for a, b in zip(streams, back))
    with pytest.raises(ValueError):
        entropy.encode([np.array([[2**32]])])
