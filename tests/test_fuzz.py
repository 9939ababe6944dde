"""Fuzzing the .kpc parser: random bytes, truncations, bit flips, chunk-aware mutations.

Whatever the input, parsing (bitstream.loads, bitstream.chunk_table and the opus chunk's
audio.unpack) either succeeds or raises KpcFormatError; nothing else may escape.

Each fuzz test runs KPCODEC_FUZZ_EXAMPLES cases (default 100, so a few hundred in all);
the nightly-size run is

    KPCODEC_FUZZ_EXAMPLES=10000 nice -n 10 python -m pytest tests/test_fuzz.py -s

and prints how many inputs were parsed and refused.
"""
from __future__ import annotations

import os
import struct
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpcodec.media import audio

from kpcodec import bitstream
from kpcodec.errors import KpcFormatError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("KPCODEC_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
COUNTS: Counter = Counter()  # (test name, outcome) -> inputs


def _count(outcome: str) -> str:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    COUNTS[test, outcome] += 1
    return outcome


def _synthetic_track(n: int = 12) -> audio.OpusTrack:
    rng = np.random.default_rng(5)
    packets = [rng.integers(0, 256, int(rng.integers(20, 60)), dtype=np.uint8).tobytes() for _ in range(n)]
    pts = -312 + 2880 * np.arange(n, dtype=np.int64)
    return audio.OpusTrack(16000, 1, 312, 12000, 2880 * n - 500, pts, packets)


def _seeds() -> list[bytes]:
    """The golden files, each also with audio and an unknown optional chunk; the 1.1 and 1.2
    (source refreshes) ones last, as chunk-level mutations rebuild files with the current
    version's preamble."""
    seeds = []
    for name in ("v1_0", "v1_1", "v1_2", "v1_4"):
        golden = (ROOT / "tests" / "golden" / f"{name}.kpc").read_bytes()
        stream = bitstream.loads(golden)
        with_audio = bitstream.KpcStream(**{**stream.__dict__, "extra_chunks": [
            ("opus", audio.pack(_synthetic_track())), ("zzzz", b"unknown optional chunk")]})
        seeds += [golden, bitstream.dumps(with_audio)]
    return seeds


SEEDS = _seeds()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of each chunk of a valid file."""
    out, pos = [], bitstream.PREAMBLE_SIZE
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos + 4)
        out.append((data[pos:pos + 4], data[pos + 8:pos + 8 + n]))
        pos += n + 12
    return out


def _join(chunks) -> bytes:
    body = b"".join(t + struct.pack("<I", len(p)) + p + struct.pack("<I", zlib.crc32(p, zlib.crc32(t)))
                    for t, p in chunks)
    return bitstream.MAGIC + bytes(bitstream.FORMAT_VERSION) + body


def parse(data: bytes) -> str:
    """Parse like `kpcodec info` and `decode` do; return "parsed" or "refused"."""
    try:
        stream = bitstream.loads(data)
        bitstream.chunk_table(data)
        audio.from_stream(stream)
    except KpcFormatError:
        return _count("refused")
    return _count("parsed")


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    tests = sorted({t for t, _ in COUNTS})
    print(file=sys.stderr)
    for t in tests:
        print(f"fuzz: {t}: {COUNTS[t, 'parsed'] + COUNTS[t, 'refused']} inputs, {COUNTS[t, 'parsed']} parsed, "
              f"{COUNTS[t, 'refused']} refused", file=sys.stderr)
    parsed = sum(n for (_, o), n in COUNTS.items() if o == "parsed")
    print(f"fuzz: total {sum(COUNTS.values())} inputs, {parsed} parsed, {sum(COUNTS.values()) - parsed} refused "
          "with KpcFormatError, no other exception", file=sys.stderr)


def test_seeds_parse():
    for seed in SEEDS:
        assert parse(seed) == "parsed"
    assert audio.from_stream(bitstream.loads(SEEDS[1])).packets == _synthetic_track().packets


# ------------------------------------------------------------------ strategies

seeds = st.sampled_from(SEEDS)


@st.composite
def truncated(draw):
    data = draw(seeds)
    return data[:draw(st.integers(0, len(data) - 1))]


@st.composite
def bit_flipped(draw):
    data = bytearray(draw(seeds))
    for pos in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=16)):
        data[pos // 8] ^= 1 << (pos % 8)
    return bytes(data)


@st.composite
def payload_mutated(draw):
    """Mutate one chunk's payload and fix its length and CRC, to get past the framing checks."""
    chunks = _chunks(draw(seeds))
    i = draw(st.integers(0, len(chunks) - 1))
    kind, payload = chunks[i]
    p = bytearray(payload)
    how = draw(st.sampled_from(["flip", "overwrite", "cut", "extend", "replace", "u32"]))
    if how == "flip" and p:
        for pos in draw(st.lists(st.integers(0, len(p) * 8 - 1), min_size=1, max_size=8)):
            p[pos // 8] ^= 1 << (pos % 8)
    elif how == "overwrite" and p:
        at = draw(st.integers(0, len(p) - 1))
        junk = draw(st.binary(min_size=1, max_size=16))
        p[at:at + len(junk)] = junk
    elif how == "cut" and p:
        at = draw(st.integers(0, len(p) - 1))
        del p[at:at + draw(st.integers(1, 64))]
    elif how == "extend":
        at = draw(st.integers(0, len(p)))
        p[at:at] = draw(st.binary(min_size=1, max_size=32))
    elif how == "u32" and len(p) >= 4:  # a length or count field set to something extreme
        at = draw(st.integers(0, len(p) - 4))
        p[at:at + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 2**16, 2**24, 2**31, 2**32 - 1])))
    else:
        p = bytearray(draw(st.binary(max_size=200)))
    chunks[i] = (kind, bytes(p))
    return _join(chunks)


@st.composite
def reordered(draw):
    """Drop, duplicate, swap or rename whole chunks (each with a good CRC)."""
    chunks = _chunks(draw(seeds))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["drop", "dup", "swap", "rename"]))
        i = draw(st.integers(0, len(chunks) - 1))
        j = draw(st.integers(0, len(chunks) - 1))
        if how == "drop" and len(chunks) > 1:
            del chunks[i]
        elif how == "dup":
            chunks.insert(j, chunks[i])
        elif how == "swap":
            chunks[i], chunks[j] = chunks[j], chunks[i]
        else:
            name = draw(st.sampled_from([b"opus", b"OPUS", b"head", b"KPTS", b"KPRC", b"SRCF", b"SRCR", b"KEND", b"a1b2"]))
            chunks[i] = (name, chunks[i][1])
    return _join(chunks)


# ------------------------------------------------------------------ the fuzz tests


@FUZZ
@given(st.one_of(st.binary(max_size=3000),
                 st.binary(max_size=3000).map(lambda b: bitstream.MAGIC + bytes(bitstream.FORMAT_VERSION) + b)))
def test_random_bytes(data):
    parse(data)


@FUZZ
@given(truncated())
def test_truncations(data):
    assert parse(data) == "refused"


@FUZZ
@given(bit_flipped())
def test_bit_flips(data):
    parse(data)


@FUZZ
@given(payload_mutated())
def test_payload_mutations_with_good_crc(data):
    parse(data)


@FUZZ
@given(reordered())
def test_chunk_reordering(data):
    parse(data)


@FUZZ
@given(st.binary(max_size=400), st.binary(max_size=400))
def test_opus_payloads(head, tail):
    """audio.unpack alone: a valid payload's first bytes followed by junk, and pure junk."""
    valid = audio.pack(_synthetic_track(3))
    for payload in (head, valid[:len(head) % len(valid)] + tail, valid[:19] + head):
        try:
            audio.unpack(payload)
        except KpcFormatError:
            _count("refused")
        else:
            _count("parsed")


# ------------------------------------------------------------------ through the command line


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(st.one_of(truncated(), bit_flipped(), payload_mutated(), st.binary(max_size=100)).filter(
    lambda d: parse(d) == "refused"))
def test_info_on_broken_files_is_one_line(tmp_path_factory, data):
    from typer.testing import CliRunner

    from kpcodec.cli import app

    path = tmp_path_factory.mktemp("fuzz") / "broken.kpc"
    path.write_bytes(data)
    for args in (["info", str(path)], ["info", str(path), "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, (result.exit_code, result.output)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("kpcodec: error: "), result.stderr
        assert result.stdout == "" and "Traceback" not in result.stderr


# ------------------------------------------------------------------ format 2.x packets

PACKET_SEEDS = [(ROOT / "tests" / "golden" / f"{name}.kpc").read_bytes() for name in ("v2_0", "v2_1", "v2_2", "v2_3", "v2_4", "v2_5", "v2_6")]


def _packets_of(data: bytes) -> tuple[bytes, list]:
    from kpcodec.bitstream import packets as pk

    out, pos = [], len(pk.PREAMBLE)
    while pos < len(data):
        packet, size = pk.split_packet(data[pos:], pos)
        out.append(packet)
        pos += size
    return data[:len(pk.PREAMBLE)], out


@FUZZ
@given(st.sampled_from(PACKET_SEEDS), st.data())
def test_2x_packet_payload_mutations_with_good_framing(seed, data):
    """One packet's payload mutated (BASE bundles, HEAD, KEYPOINTS...), its length and CRC made good
    again: the reader parses it or refuses it with KpcFormatError, nothing else."""
    from kpcodec.bitstream import packets as pk

    preamble, packets = _packets_of(seed)
    kinds = sorted({p.kind for p in packets})
    kind = data.draw(st.sampled_from(kinds))
    i = data.draw(st.sampled_from([n for n, p in enumerate(packets) if p.kind == kind]))
    p = bytearray(packets[i].payload)
    how = data.draw(st.sampled_from(["flip", "overwrite", "cut", "extend", "varint"]))
    if how == "flip" and p:
        for pos in data.draw(st.lists(st.integers(0, len(p) * 8 - 1), min_size=1, max_size=8)):
            p[pos // 8] ^= 1 << (pos % 8)
    elif how == "overwrite" and p:
        at = data.draw(st.integers(0, len(p) - 1))
        p[at:at + 4] = data.draw(st.binary(min_size=1, max_size=4))
    elif how == "cut" and p:
        del p[data.draw(st.integers(0, len(p) - 1)):]
    elif how == "varint":  # a count or size field set to something extreme
        p[:1] = data.draw(st.sampled_from([b"\x00", b"\x7f", b"\xff\xff\xff\x7f", b"\x80\x00"]))
    else:
        p[len(p):] = data.draw(st.binary(min_size=1, max_size=16))
    packets[i] = pk.Packet(kind, packets[i].seq, packets[i].frame, bytes(p))
    parse(preamble + b"".join(bytes(x) for x in packets))
