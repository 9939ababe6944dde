""".kpc 2.0: packets (kpcodec.bitstream.packets), the streaming encoder and decoder, cut files, seeking."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kpcodec import api, bitstream
from kpcodec.bitstream import packets as pk
from kpcodec.errors import KpcFormatError
from kpcodec.media.video import read_frames

from conftest import make_clip, run

GOLDEN = Path(__file__).resolve().parent / "golden"


def as_2_0(stream, **changes):
    return dataclasses.replace(stream, version=pk.VERSION, **changes)


@pytest.fixture(scope="module")
def clip40(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("packets") / "c.mp4", frames=40)


@pytest.fixture(scope="module")
def kpc40(clip40, tmp_path_factory):
    out = tmp_path_factory.mktemp("kpc") / "c.kpc"
    api.encode(clip40, out, model="tiny", keep_every=2, packet_frames=4)
    return out


# ------------------------------------------------------------------ the bitstream


@pytest.mark.parametrize("name", ["v1_0", "v1_1", "v1_2", "v1_3", "v1_4"])
@pytest.mark.parametrize("packet_frames", [1, 3, 64])
def test_every_golden_stream_round_trips_through_2_0(name, packet_frames):
    s = bitstream.read_file(GOLDEN / f"{name}.kpc")
    data = pk.join(pk.stream_packets(as_2_0(s), packet_frames))
    r = bitstream.loads(data)
    # 2.0, the oldest 2.x that reads it; with a base layer (1.4) 2.2, whose BASE packets it has
    assert r.version == ((2, 2) if s.base else (2, 0)) and r.header.frame_count == s.header.frame_count
    assert np.array_equal(r.sent_indices, s.sent_indices)
    assert np.array_equal(r.keypoints, s.keypoints) and np.array_equal(r.jacobians, s.jacobians)
    assert [(x.frame, x.data) for x in r.refreshes] == [(x.frame, x.data) for x in s.refreshes]
    assert (r.base and r.base.packets) == (s.base and s.base.packets)
    assert bitstream.dumps(r) == pk.join(pk.stream_packets(r))  # re-serialised alike
    # the same content whether the bytes come whole or one at a time
    reader = pk.PacketReader()
    items = [x for b in range(len(data)) for x in reader.feed(data[b:b + 1])]
    reader.close()
    whole = list(pk.read_items([data]))
    assert [type(x) for x in items] == [type(x) for x in whole]
    sent = [x for x in items if isinstance(x, pk.SentFrames)]
    assert np.array_equal(np.concatenate([x.indices for x in sent]), s.sent_indices)


def test_golden_2_0_decodes_exactly():
    data = (GOLDEN / "v2_0.kpc").read_bytes()
    ref = np.load(GOLDEN / "v2_0.npz")
    s = bitstream.loads(data)
    assert s.version == (2, 0) and data[8:10] == b"\x02\x00"
    assert np.array_equal(s.sent_indices, ref["sent_indices"])
    assert np.array_equal(s.keypoints, ref["keypoints"]) and np.array_equal(s.jacobians, ref["jacobians"])
    assert [r.frame for r in s.refreshes] == ref["refreshes"].tolist() and s.restarts == ref["restarts"].tolist()
    assert [k for k, _ in bitstream.chunk_table(data)].count("KPRC") > 2  # several keypoint packets


def _cuts_and_flips_are_refused(data: bytes, every: int) -> None:
    """Every `every`-th truncation and one bit of each byte (a different one from byte to byte)."""
    for n in range(0, len(data), every):
        with pytest.raises(KpcFormatError):
            bitstream.loads(data[:n])
    for byte in range(len(data)):
        flipped = bytearray(data)
        flipped[byte] ^= 1 << (byte * 5 % 8)
        with pytest.raises(KpcFormatError):
            bitstream.loads(bytes(flipped))


def _golden_with_base(name: str, version: tuple[int, int], base: tuple):
    """(bytes, stream) of golden file `name`.kpc, checked against its .npz: its version (header and
    bytes 8-9), base layer (size, divisor, CRF, mix, packet count) and sent keypoints."""
    data = (GOLDEN / f"{name}.kpc").read_bytes()
    ref = np.load(GOLDEN / f"{name}.npz")
    s = bitstream.loads(data)
    assert s.version == version and data[8:10] == bytes(version)
    assert (s.base.size, s.base.divisor, s.base.crf, s.base.mix, len(s.base.packets)) == base
    assert np.array_equal(s.sent_indices, ref["sent_indices"]) and np.array_equal(s.keypoints, ref["keypoints"])
    return data, s


def test_golden_2_1_decodes_exactly_with_its_base_layer_mix():
    """2.1 adds the base layer's mix to HEAD (one base frame a BASE packet); written again it is 2.2."""
    data, s = _golden_with_base("v2_1", (2, 1), (16, 2, 60, 40, 20))
    assert [k for k, _ in bitstream.chunk_table(data)].count("BASE") == 20
    again = pk.join(pk.stream_packets(s, 3))
    assert again[8:10] == b"\x02\x02" and bitstream.loads(again).base == s.base  # the same stream, in 2.2
    assert len(again) < len(data)  # fewer BASE packets
    with pytest.raises(KpcFormatError, match="reserved HEAD flags"):  # the mix flag in a file that says 2.0
        bitstream.loads(data[:9] + b"\x00" + data[10:])
    with pytest.raises(KpcFormatError, match="2.7 stream needs a newer kpcodec"):
        bitstream.loads(data[:9] + b"\x07" + data[10:])
    with pytest.raises(KpcFormatError, match="mix needs format 2.1"):  # 1.4 has no field for it
        bitstream.dumps(dataclasses.replace(s, version=(1, 4)))
    _cuts_and_flips_are_refused(data, every=7)


def test_golden_2_2_bundles_base_frames_and_decodes_exactly():
    """2.2: a BASE packet holds the base frames of a keypoint packet (a count, the sizes but the
    last's, the units); a file without a base layer stays 2.0."""
    data, s = _golden_with_base("v2_2", (2, 2), (16, 3, 55, 24, 14))
    sys.path.insert(0, str(GOLDEN))
    try:
        import make_golden
    finally:
        sys.path.remove(str(GOLDEN))
    assert s.base.packets == make_golden.golden_stream_2_2().base.packets
    assert pk.join(pk.stream_packets(s, 3)) == data  # written back byte for byte (3 sent frames a packet)
    bases = [p for p in pk.PacketReader().feed(data) if isinstance(p, pk.BaseFrame)]
    assert [b.frame for b in bases] == list(range(0, 40, 3))
    assert 1 < [k for k, _ in bitstream.chunk_table(data)].count("BASE") < 14  # bundled, not one a frame
    assert bitstream.dumps(dataclasses.replace(s, base=None))[8:10] == b"\x02\x00"
    _cuts_and_flips_are_refused(data, every=5)


@pytest.mark.parametrize("payload, why", [
    (b"\x00ab", "count 0"), (b"\x03\x01\x01", "run past"), (b"\x02\x00ab", "unit size of 0"),
    (b"\x02\x05abc", "run past"), (b"\x02\x02ab", "run past"), (b"\x80", "count None"),
])
def test_a_malformed_bundle_of_base_frames_is_a_format_error(payload, why):
    with pytest.raises(KpcFormatError, match=why):
        pk.split_base_units(payload)
    assert pk.split_base_units(b"\x02\x02abc") == ([0], [b"ab", b"c"]) and pk.split_base_units(b"\x01z") == ([0], [b"z"])
    assert pk.split_base_units(b"\x02\x05\x02abc", placed=True) == ([0, 5], [b"ab", b"c"])
    with pytest.raises(KpcFormatError, match="distance"):
        pk.split_base_units(b"\x02\x00\x02abc", placed=True)


def test_every_truncation_and_bit_flip_is_a_format_error():
    data = (GOLDEN / "v2_0.kpc").read_bytes()
    for n in range(len(data)):
        with pytest.raises(KpcFormatError):
            bitstream.loads(data[:n])
    for byte in range(len(data)):  # one bit of each byte, a different one from byte to byte
        flipped = bytearray(data)
        flipped[byte] ^= 1 << (byte * 3 % 8)
        with pytest.raises(KpcFormatError):
            bitstream.loads(bytes(flipped))


def test_packet_framing_is_as_the_man_page_says():
    p = pk.Packet("K", 300, 5, b"abc")
    raw = bytes(p)
    assert raw[:1] == b"K" and raw[1:3] == bytes([0xAC, 0x02]) and raw[3:4] == b"\x05" and raw[4:5] == b"\x03"
    assert raw[5:8] == b"abc" and int.from_bytes(raw[8:], "little") == __import__("zlib").crc32(raw[:8])
    assert pk.split_packet(raw) == (p, len(raw))
    assert pk.split_packet(raw[:-1]) == (None, 0)  # not whole yet


def test_the_index_finds_every_keyframe():
    s = bitstream.read_file(GOLDEN / "v1_2.kpc")
    data = pk.join(pk.stream_packets(as_2_0(s), 2))
    index = pk.read_index(data)
    assert [(k, f) for k, f, _ in index] == [("S", 0), ("K", 0), ("S", 4), ("K", 4), ("S", 7), ("K", 7)]
    for kind, frame, offset in index:
        packet, _ = pk.split_packet(data[offset:], offset)
        assert packet.kind == kind and packet.frame == frame
    assert pk.read_index(data[:-1]) is None


def test_writer_refuses_what_a_reader_would_refuse():
    s = bitstream.read_file(GOLDEN / "v1_3.kpc")
    w = pk.PacketWriter(s.header)
    with pytest.raises(KpcFormatError, match="before any source image"):
        w.keypoints(0, s.keypoints[0], s.jacobians[0])
    w.source(0, s.source_codec, s.source_data)
    with pytest.raises(KpcFormatError, match="needs its frame sent first"):
        w.keypoints(1, s.keypoints[0], s.jacobians[0])
    w.keypoints(0, s.keypoints[0], s.jacobians[0])
    with pytest.raises(KpcFormatError, match="does not follow"):
        w.keypoints(0, s.keypoints[0], s.jacobians[0])
    with pytest.raises(KpcFormatError, match="does not cover"):
        w.end(0)


def test_writer_bundles_base_frames_before_the_keypoints_and_keeps_extras_last():
    s = bitstream.read_file(GOLDEN / "v1_4.kpc")
    base = dataclasses.replace(s.base, packets=[])
    w = pk.PacketWriter(s.header, base, packet_frames=3)
    out = w.take() + w.source(0, s.source_codec, s.source_data)
    units = [bytes([n + 1]) * (n + 2) for n in range(6)]
    for n, unit in enumerate(units[:4]):  # base frames 0..3 (every 2nd video frame), then keypoints
        out += w.base_frame(n * base.divisor, unit)
    with pytest.raises(KpcFormatError, match="go in order"):
        w.base_frame(6 * base.divisor, units[4])
    for i, kp, jac in zip(s.sent_indices[:4].tolist(), s.keypoints, s.jacobians):
        out += w.keypoints(i, kp, jac)
    out += w.base_frame(4 * base.divisor, units[4]) + w.extra("note", b"x") + w.end(s.header.frame_count)
    kinds = [p.kind for p in out]
    assert kinds[:3] == ["H", "S", "B"] and kinds.count("B") == 3  # 3 + 1 units, then the last alone
    assert kinds[-3:] == ["X", "I", "E"] and kinds.index("B", 3) < kinds.index("X")  # nothing after EXTRA
    got = [p for p in pk.PacketReader().feed(pk.join(out)) if isinstance(p, pk.BaseFrame)]
    assert [(b.frame, b.data) for b in got] == [(n * base.divisor, u) for n, u in enumerate(units[:5])]


# ------------------------------------------------------------------ streaming encode and decode


def test_encoder_hands_out_packets_as_frames_come(clip40):
    from kpcodec.codec.encoder import Encoder
    from kpcodec.options import EncodeOptions

    with Encoder(EncodeOptions(model="tiny", keep_every=2, packet_frames=2, batch=2), 25) as enc:
        pushed = [[p.kind for p in enc.push(f)] for f in read_frames(clip40, size=enc.size)]
        last = [p.kind for p in enc.flush()]
    assert pushed[0] == ["H", "S"]
    assert sum(kinds.count("K") for kinds in pushed[:20]) >= 4  # keypoints out long before the end
    assert last[-2:] == ["I", "E"]


def test_stream_decoder_gives_the_frames_of_the_whole_file_decoder(kpc40):
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    data = kpc40.read_bytes()
    whole = list(Decoder(bitstream.loads(data), DecodeOptions(threads=1)).frames())
    reader, dec, frames = pk.PacketReader(), None, []
    tail = dict(bitstream.chunk_table(data))["INDX"] + dict(bitstream.chunk_table(data))["KEND"]
    for b in range(0, len(data), 7):
        for item in reader.feed(data[b:b + 7]):
            if dec is None:
                dec = Decoder(item, DecodeOptions(threads=1))
            else:
                frames += dec.push(item)
        if b + 7 == len(data) - tail - (len(data) - tail) % 7 + 7:
            before_end = len(frames)
    frames += dec.flush()
    assert len(frames) == len(whole) == 40 and all(np.array_equal(a, b) for a, b in zip(frames, whole))
    assert before_end >= 32  # frames came out before the END (all but the last batch and the filled tail)


def test_decode_start_end_render_the_frames_of_a_full_decode(runner, clip40, tmp_path):
    api.encode(clip40, tmp_path / "a.kpc", model="tiny", keep_every=1, packet_frames=3)
    s = bitstream.read_file(tmp_path / "a.kpc")
    keyed = tmp_path / "k.kpc"
    bitstream.write_file(keyed, dataclasses.replace(s, restarts=[12, 24]))  # keypoint keyframes
    assert [f for k, f, _ in pk.read_index(keyed.read_bytes()) if k == "K"] == [0, 12, 24]
    assert run(runner, "decode", keyed, "-o", tmp_path / "all.y4m", "--threads", "1").exit_code == 0
    r = run(runner, "decode", keyed, "-o", tmp_path / "part.y4m", "--threads", "1", "--start", "0.6", "--end", "1.2")
    assert r.exit_code == 0, r.stderr
    full = list(read_frames(tmp_path / "all.y4m", size=s.header.width))
    part = list(read_frames(tmp_path / "part.y4m", size=s.header.width))
    assert len(part) == 15  # frames 15..29 at 25 fps
    assert all(np.array_equal(a, b) for a, b in zip(part, full[15:30]))


def test_a_cut_file_is_an_error_or_with_ignore_errors_its_whole_packets(runner, kpc40, tmp_path):
    data = kpc40.read_bytes()
    keypoints_at = [o for k, _, o in pk.read_index(data) if k == "K"][0]
    at = keypoints_at + (len(data) - keypoints_at) // 2  # within the keypoint packets
    cut = tmp_path / "cut.kpc"
    cut.write_bytes(data[:at])
    r = run(runner, "decode", cut, "-o", tmp_path / "x.mp4")
    assert r.exit_code == 1 and "cut at byte" in r.stderr and not (tmp_path / "x.mp4").exists()
    assert not list(tmp_path.glob("x.mp4*"))
    r = run(runner, "decode", cut, "-o", tmp_path / "y.y4m", "--ignore-errors")
    assert r.exit_code == 0 and "warning" in r.stderr and "cut at byte" in r.stderr
    got = len(list(read_frames(tmp_path / "y.y4m", size=64)))
    whole = pk.PacketReader()
    sent = [x for x in whole.feed(data[:at]) if isinstance(x, pk.SentFrames)]
    assert got == int(sent[-1].indices[-1]) + 1 and 0 < got < 40


def test_a_pipe_decodes_as_it_is_read(kpc40, tmp_path):
    """`decode -` renders while the stream still comes: the first frames are out before the writer
    of the pipe has sent its last bytes."""
    out = tmp_path / "p.y4m"
    proc = subprocess.Popen([sys.executable, "-m", "kpcodec", "decode", "-", "-o", str(out), "--no-audio"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    data = kpc40.read_bytes()
    half = len(data) - 29  # all but the INDEX and END
    proc.stdin.write(data[:half])
    proc.stdin.flush()
    grown = False
    for _ in range(600):  # up to 60 s for torch to load and render what came
        if any(t.stat().st_size > 0 for t in tmp_path.glob(".p.y4m.*")):
            grown = True
            break
        if proc.poll() is not None:
            break
        __import__("time").sleep(0.1)
    proc.stdin.write(data[half:])
    proc.stdin.close()
    assert proc.wait(120) == 0, proc.stderr.read()
    assert grown and len(list(read_frames(out, size=64))) == 40


def test_a_y4m_pipe_encodes_as_it_comes(clip40, tmp_path):
    """`encode -` reads a y4m stream frame by frame: packets are in the output before the producer
    has sent its last frame, and the file is the one a file input gives."""
    from fractions import Fraction

    from kpcodec.media.video import VideoWriter

    raw = tmp_path / "in.y4m"
    with VideoWriter(raw, Fraction(25), (64, 64)) as w:
        for frame in read_frames(clip40, size=64):
            w.write(frame)
    data = raw.read_bytes()
    out = tmp_path / "p.kpc"
    args = [sys.executable, "-m", "kpcodec", "encode", "-", "-o", str(out), "--model", "tiny", "--packet-frames", "2"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(data[:len(data) // 2])
    proc.stdin.flush()
    tmp = Path(str(out) + ".tmp")
    kinds = []
    for _ in range(600):
        if tmp.exists():
            kinds = [p.kind for p in _whole_packets(tmp.read_bytes())]
            if kinds.count("K") >= 2:
                break
        if proc.poll() is not None:
            break
        __import__("time").sleep(0.1)
    proc.stdin.write(data[len(data) // 2:])
    proc.stdin.close()
    assert proc.wait(120) == 0, proc.stderr.read()
    assert kinds[:2] == ["H", "S"] and kinds.count("K") >= 2  # keypoint packets out mid-stream
    api.encode(raw, tmp_path / "f.kpc", model="tiny", packet_frames=2)
    assert out.read_bytes() == (tmp_path / "f.kpc").read_bytes()


def _whole_packets(data: bytes) -> list:
    out, pos = [], len(pk.PREAMBLE)
    while pos < len(data):
        packet, size = pk.split_packet(data[pos:], pos)
        if packet is None:
            break
        out.append(packet)
        pos += size
    return out


def test_decoder_takes_the_encoders_packets_one_by_one(clip40):
    import kpcodec
    from kpcodec.options import DecodeOptions, EncodeOptions

    with kpcodec.Encoder(EncodeOptions(model="tiny", keep_every=2, packet_frames=1), 25) as enc:
        packets = [p for f in read_frames(clip40, size=enc.size) for p in enc.push(f)]
        packets += enc.flush()
    dec, frames, out_before_end = kpcodec.Decoder(packets[0], DecodeOptions(threads=1)), [], 0
    for p in packets[1:]:
        frames += dec.push(p)
        if p.kind != "E":
            out_before_end = len(frames)
    frames += dec.flush()
    whole = list(kpcodec.Decoder(bitstream.loads(pk.join(packets)), DecodeOptions(threads=1)).frames())
    assert len(frames) == 40 and all(np.array_equal(a, b) for a, b in zip(frames, whole))
    assert out_before_end >= 36  # a frame is out once the next sent frame (and its batch) is in
    with pytest.raises(KpcFormatError, match="where packet"):  # a lost packet is noticed
        d = kpcodec.Decoder(packets[0], DecodeOptions(threads=1))
        d.push(packets[1])
        d.push(packets[3])


def test_the_decoder_renders_unsent_frames_ahead_in_a_live_stream(clip40):
    """Decoder.ahead (live receive at keep-every 2 with a causal predictor): a frame that will not be
    sent is out before the next sent frame arrives, and the frames equal a file decode's; a sent
    frame that comes after its slot was rendered ahead is left out, not an error."""
    import kpcodec
    from kpcodec.options import DecodeOptions, EncodeOptions

    with kpcodec.Encoder(EncodeOptions(model="tiny", keep_every=2, packet_frames=1, predictor="linear"), 25) as enc:
        packets = [p for f in read_frames(clip40, size=enc.size) for p in enc.push(f)]
        packets += enc.flush()
    dec = kpcodec.Decoder(packets[0], DecodeOptions(threads=1, batch=1))
    dec.unsent = lambda t: t % 2 == 1
    frames, early = [], 0
    for p in packets[1:]:
        frames += dec.push(p)
        if p.kind == "K":
            before = len(frames)
            frames += dec.ahead(p.frame + 1)
            early += len(frames) > before
            assert len(frames) == p.frame + 2  # the unsent frame after it is out now
    frames += dec.flush()
    whole = list(kpcodec.Decoder(bitstream.loads(pk.join(packets)), DecodeOptions(threads=1, batch=1)).frames())
    assert len(frames) == 40 and early >= 19 and all(np.array_equal(a, b) for a, b in zip(frames, whole))
    d = kpcodec.Decoder(packets[0], DecodeOptions(threads=1, batch=1))
    d.unsent = lambda t: True  # wrongly: frame 2 is sent
    got = d.push(packets[1]) + d.push(packets[2])  # SOURCE, K 0
    got += d.ahead(2)  # frames 1, 2 predicted
    got += d.push(packets[3])  # K 2 comes after its slot
    assert len(got) == 3 and d.late_sent == 1


def test_the_sound_comes_before_the_keypoints_and_a_pipe_keeps_it(tmp_path):
    """2.0 carries the sound in AUDIO packets of about a second, the first before any keypoints, so
    `decode -` streams a file with audio and keeps its sound."""
    import av

    from conftest import make_clip_with_audio

    clip = make_clip_with_audio(tmp_path / "a.mp4", seconds=3.0)
    kpc = tmp_path / "a.kpc"
    api.encode(clip, kpc, model="tiny", packet_frames=8)
    kinds = [k for k, _ in bitstream.chunk_table(kpc.read_bytes())]
    assert kinds.index("opus") < kinds.index("KPRC") and kinds.count("opus") >= 3
    track = bitstream.opus.from_stream(bitstream.read_file(kpc))
    assert abs(track.duration_s - 3.0) < 1e-6
    out = tmp_path / "p.mkv"
    r = subprocess.run([sys.executable, "-m", "kpcodec", "decode", "-", "-o", str(out)], input=kpc.read_bytes(),
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        assert sum(f.samples for f in c.decode(audio=0)) >= 0.9 * 3.0 * c.streams.audio[0].rate
