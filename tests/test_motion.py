"""Format 2.6, keypoint offsets between base frames (MOTION packets): the encoder sends how the keypoints
of the frames between base frames of a stream of the base layer alone leave the path through the base
frames' keypoints (kpcodec.codec.motion); the decoder adds them to its own path. The bitstream, the
offsets, the decoder and encode."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kpcodec import bitstream
from kpcodec.bitstream import packets as pk
from kpcodec.codec import motion
from kpcodec.errors import KpcFormatError

from conftest import GOLDEN, golden_module, run, sample_kpc


# --------------------------------------------------------------------------- bitstream

def test_golden_2_6_decodes_exactly_and_is_written_back_byte_for_byte():
    data = (GOLDEN / "v2_6.kpc").read_bytes()
    s = bitstream.loads(data)
    want = golden_module().golden_stream_2_6()
    assert s.version == (2, 6) and data[8:10] == b"\x02\x06"
    assert s.base.label == "16@4:52,alone,placed,motion" and s.base.frames == want.base.frames
    assert s.base.motion.frames == want.base.motion.frames
    assert np.array_equal(s.base.motion.levels, want.base.motion.levels)
    assert pk.join(pk.stream_packets(s, 3)) == data
    kinds = [k for k, _ in bitstream.chunk_table(data)]
    assert kinds.count("MOTN") == 3 and kinds.index("MOTN") == kinds.index("BASE") + 1
    # every frame between base frames has its offsets; base frames and none after the last have any
    assert s.base.motion.frames == [t for t in range(32) if t not in s.base.frames]
    # without the offsets the same stream is 2.5 again
    assert pk.join(pk.stream_packets(dataclasses.replace(s, base=dataclasses.replace(s.base, motion=None)), 3))[8:10] \
        == b"\x02\x05"


@pytest.mark.parametrize("packet_frames", [1, 2, 128])
def test_motion_round_trips_at_any_packet_size(packet_frames):
    s = golden_module().golden_stream_2_6()
    back = pk.read_stream(pk.join(pk.stream_packets(s, packet_frames)))
    assert back.base.motion.frames == s.base.motion.frames
    assert np.array_equal(back.base.motion.levels, s.base.motion.levels)


def test_an_older_minor_refuses_the_motion_flag():
    data = (GOLDEN / "v2_6.kpc").read_bytes()
    with pytest.raises(KpcFormatError, match="reserved HEAD flags"):  # the same bytes called 2.5
        bitstream.loads(data[:9] + b"\x05" + data[10:])
    with pytest.raises(KpcFormatError, match="2.7 stream needs a newer kpcodec"):
        bitstream.loads(data[:9] + b"\x07" + data[10:])
    s = bitstream.loads(data)
    with pytest.raises(KpcFormatError, match="motion.*for a stream of the base layer alone"):
        bitstream.container._check_base(dataclasses.replace(s.base, alone=False, cubic=False, frames=None), 33)
    with pytest.raises(KpcFormatError, match="motion.*cubic keypoint path"):
        pk.encode_head(s.header, dataclasses.replace(s.base, cubic=False, frames=None, packets=[]))


def _packets(data: bytes) -> list[tuple[pk.Packet, int]]:
    out, pos = [], len(pk.PREAMBLE)
    while pos < len(data):
        p, size = pk.split_packet(data[pos:], pos)
        out.append((p, pos))
        pos += size
    return out


def _with(data: bytes, at: int, packet: pk.Packet) -> bytes:
    """`data` with the packet at byte `at` replaced by `packet` (its CRC made right)."""
    _, size = pk.split_packet(data[at:], at)
    return data[:at] + bytes(packet) + data[at + size:]


@pytest.mark.parametrize("change, why", [
    (lambda p: dataclasses.replace(p, frame=p.frame + 1), "must start at frame"),
    (lambda p: dataclasses.replace(p, payload=b"\x00" + p.payload[1:]), "must start at frame"),  # span 0
    (lambda p: dataclasses.replace(p, payload=b"\x7f" + p.payload[1:]), "must start at frame"),  # past the base frames
    (lambda p: dataclasses.replace(p, payload=p.payload[:1] + b"\xff\xff\xff"), "MOTION packet at byte"),
    (lambda p: dataclasses.replace(p, payload=p.payload[:-4]), "MOTION packet at byte"),
])
def test_a_malformed_motion_packet_is_one_clear_error(change, why):
    data = (GOLDEN / "v2_6.kpc").read_bytes()
    motion_packet, at = next((p, a) for p, a in _packets(data) if p.kind == "M")
    with pytest.raises(KpcFormatError, match=why):
        bitstream.loads(_with(data, at, change(motion_packet)))


def test_a_motion_packet_in_a_stream_without_offsets_is_refused():
    s = golden_module().golden_stream_2_5()
    data = pk.join(pk.stream_packets(s, 3))
    packets = _packets(data)
    base_packet, at = next((p, a) for p, a in packets if p.kind == "B")
    bogus = pk.Packet("M", base_packet.seq + 1, 1, b"\x01" + pk.encode_motion(np.zeros((1, 20), np.int64)))
    # renumber what follows so only the MOTION packet is wrong
    tail = b"".join(bytes(dataclasses.replace(p, seq=p.seq + 1)) for p, a in packets if a > at)
    bad = data[:at + len(bytes(base_packet))] + bytes(bogus) + tail
    with pytest.raises(KpcFormatError, match="MOTION packet at byte .* without keypoint offsets"):
        bitstream.loads(bad)


def test_the_writer_wants_every_frame_between_base_frames_and_none_after():
    s = golden_module().golden_stream_2_6()
    m = s.base.motion
    missing = dataclasses.replace(s.base, motion=bitstream.Motion(m.frames[1:], m.levels[1:]))
    with pytest.raises(KpcFormatError, match="keypoint offsets missing"):
        pk.stream_packets(dataclasses.replace(s, base=missing), 3)
    late = dataclasses.replace(s.base, motion=bitstream.Motion(m.frames + [32], np.vstack([m.levels, m.levels[:1]])))
    with pytest.raises(KpcFormatError, match="after the last base frame|missing"):
        pk.stream_packets(dataclasses.replace(s, base=late), 3)


# --------------------------------------------------------------------------- the offsets

def _track(n: int, k: int = 10):
    """Keypoints moving at a constant speed (N, K, 2) and still Jacobians (N, K, 2, 2)."""
    t = np.arange(n, dtype=np.float32)[:, None, None]
    start = np.linspace(-0.5, 0.5, 2 * k, dtype=np.float32).reshape(1, k, 2)
    return start + 0.01 * t, np.tile(np.eye(2, dtype=np.float32), (n, k, 1, 1))


@pytest.mark.parametrize("frames, placed", [([0, 4, 8, 12, 16], False), ([0, 2, 7, 12, 16], True)])
def test_offsets_are_zero_where_the_path_follows_the_motion_and_catch_what_it_misses(frames, placed):
    step = 1 / 64
    kps, jacs = _track(17)
    m = motion.offsets(kps, jacs, frames, step, placed)
    assert m.frames == [t for t in range(17) if t not in frames] and m.levels.shape == (len(m.frames), 20)
    assert not m.levels.any()  # a constant speed lies on the cubic path, uniform or not
    kps[5, 3] += (3 * step, -2 * step)  # the mouth opens on a frame between base frames
    m = motion.offsets(kps, jacs, frames, step, placed)
    row = m.levels[m.frames.index(5)]
    assert (row[6], row[7]) == (3, -2) and np.count_nonzero(m.levels) == 2
    assert motion.motion_bytes(m) > motion.PACKET_OVERHEAD


# --------------------------------------------------------------------------- decode and encode

@pytest.fixture(scope="module")
def motion_files(tmp_path_factory):
    """24 sample frames at 128@4:45 alone, placed, with and without the keypoint offsets."""
    d = tmp_path_factory.mktemp("motion")
    (d / "on").mkdir()
    (d / "off").mkdir()
    return sample_kpc(d / "on", "128@4:45,alone,placed"), sample_kpc(d / "off", "128@4:45,alone,placed", motion=False)


def test_encode_sends_the_offsets_of_the_frames_between_base_frames(motion_files):
    on, off = (bitstream.read_file(p) for p in motion_files)
    assert on.version == (2, 6) and off.version == (2, 5)
    assert on.base.frames == off.base.frames and on.base.packets == off.base.packets
    between = [t for t in range(on.base.frames[-1]) if t not in on.base.frames]
    assert on.base.motion.frames == between and on.base.motion.levels.any()


def test_the_offsets_move_only_the_frames_between_base_frames(motion_files):
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    one = DecodeOptions(threads=1)
    on, off = (list(Decoder(bitstream.read_file(p), one).frames()) for p in motion_files)
    s = bitstream.read_file(motion_files[0])
    moved = {t for t, row in zip(s.base.motion.frames, s.base.motion.levels) if row.any()}
    for t, (a, b) in enumerate(zip(on, off)):
        same = np.array_equal(a, b)
        assert same == (t not in moved), t


def test_packet_by_packet_waits_for_the_offsets(motion_files):
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    one = DecodeOptions(threads=1)
    data = motion_files[0].read_bytes()
    whole = list(Decoder(bitstream.loads(data), one).frames())
    for packet_frames in (1, 2):
        packets = pk.stream_packets(bitstream.loads(data), packet_frames)
        dec = Decoder(packets[0], one)
        got = [f for p in packets[1:] for f in dec.push(p)] + dec.flush()
        dec.close()
        assert len(got) == len(whole) and all(np.array_equal(a, b) for a, b in zip(got, whole))


def test_cli_info_shows_the_offsets_and_no_motion_leaves_them_out(runner, motion_files, tmp_path):
    d = json.loads(run(runner, "info", motion_files[0], "--json").stdout)
    motn = [c for c in d["chunks"] if c["chunk"] == "MOTN"]
    assert d["format_version"] == "2.6" and d["base_layer"]["motion"]["bytes"] == sum(c["bytes"] for c in motn) > 0
    assert d["base_layer"]["motion"]["frames"] == len(bitstream.read_file(motion_files[0]).base.motion.frames)
    d = json.loads(run(runner, "info", motion_files[1], "--json").stdout)
    assert d["format_version"] == "2.5" and d["base_layer"]["motion"] is None


def test_the_rate_control_judges_the_winner_without_its_offsets_too():
    """A base layer alone with offsets, judged best, is judged again without them, their bits in its base
    layer: the file is whichever looks better (at a low target the offsets can cost more than they give)."""
    from kpcodec.codec import ratecontrol as rc
    from kpcodec.codec.encoder import Encoder
    from kpcodec.media import video
    from kpcodec.options import EncodeOptions

    from conftest import SAMPLE

    c = rc.Choice(4, None, 0, budget_kbps=5.0, motion=True, motion_kbps=0.3)
    twin = rc.BaseLayerPass.without_motion(c)
    assert not twin.motion and twin.motion_kbps == 0.0 and twin.budget_kbps == pytest.approx(5.3)
    assert rc.BaseLayerPass.without_motion(twin) is None
    assert rc.BaseLayerPass.without_motion(dataclasses.replace(c, budget_kbps=None)) is None

    frames = list(video.read_frames(SAMPLE, 256))[:40]
    with Encoder(EncodeOptions(bitrate="8k", audio=False, threads=1), video.probe(SAMPLE).fps, len(frames)) as enc:
        data = pk.join([p for f in frames for p in enc.push(f)] + enc.flush())
    judged = [c for c, _ in enc.rdo if c.base is not None and c.base.alone]
    with_offsets = [c for c in judged if c.motion]
    assert with_offsets and all(c.motion_kbps > 0 for c in with_offsets)
    assert any(not c.motion for c in judged[-2:])  # the twin, among the finals
    s = bitstream.loads(data)
    assert (s.base.motion is not None) == (s.version == (2, 6))
