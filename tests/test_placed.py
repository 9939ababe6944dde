"""Format 2.5, placed base frames: a stream of the base layer alone whose BASE packets say which video
frame each base frame is (kpcodec.codec.placement puts them where the picture changes most). The
bitstream, the placement, the decoder's non-uniform keypoint path, encode and info."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kpcodec import bitstream
from kpcodec.bitstream import packets as pk
from kpcodec.codec import placement, ratecontrol
from kpcodec.errors import KpcFormatError, UsageError
from kpcodec.media import baselayer, video

from conftest import GOLDEN, SAMPLE, golden_module, run, sample_kpc


# --------------------------------------------------------------------------- bitstream

def test_golden_2_5_decodes_exactly_and_is_written_back_byte_for_byte():
    data = (GOLDEN / "v2_5.kpc").read_bytes()
    s = bitstream.loads(data)
    want = golden_module().golden_stream_2_5()
    assert s.version == (2, 5) and data[8:10] == b"\x02\x05"
    assert s.base.placed and s.base.alone and s.base.cubic and s.base.label == "16@4:52,alone,placed"
    assert s.base.frames == [0, 2, 3, 8, 14, 18, 22, 27, 32] and s.base.packets == want.base.packets
    assert pk.join(pk.stream_packets(s, 3)) == data
    bases = [b.frame for b in pk.PacketReader().feed(data) if isinstance(b, pk.BaseFrame)]
    assert bases == s.base.frames
    # the same stream with its base frames every 4th is 2.4 again
    uniform = dataclasses.replace(s, base=dataclasses.replace(s.base, frames=None))
    assert pk.join(pk.stream_packets(uniform, 3))[8:10] == b"\x02\x04"


def test_an_older_minor_refuses_the_placed_flag_and_1x_cannot_hold_it():
    data = (GOLDEN / "v2_5.kpc").read_bytes()
    with pytest.raises(KpcFormatError, match="reserved HEAD flags"):  # the same bytes called 2.4
        bitstream.loads(data[:9] + b"\x04" + data[10:])
    with pytest.raises(KpcFormatError, match="needs format 2.3"):
        bitstream.dumps(dataclasses.replace(bitstream.loads(data), version=(1, 4)))


@pytest.mark.parametrize("frames, why", [
    ([1, 2, 3], "start at frame 0"), ([0, 2, 2], "follow each other"), ([0, 17, 20], "follow each other"),
    ([0, 10, 20, 33], "a base frame at frame 33"),
])
def test_placed_base_frames_out_of_order_or_too_far_apart_are_refused(frames, why):
    s = bitstream.loads((GOLDEN / "v2_5.kpc").read_bytes())
    bad = dataclasses.replace(s, base=dataclasses.replace(s.base, frames=frames, packets=s.base.packets[:len(frames)]))
    with pytest.raises(KpcFormatError, match=why):
        pk.stream_packets(bad)
    with pytest.raises(KpcFormatError, match="for a stream of the base layer alone"):
        bitstream.container._check_base(bitstream.BaseLayer(16, 4, 52, [b"x"], alone=False, frames=[0]), 1)


def _rewrite(packet: pk.Packet, payload: bytes) -> bytes:
    return bytes(dataclasses.replace(packet, payload=payload))


@pytest.mark.parametrize("gap", [0, 17])
def test_a_damaged_distance_in_a_base_packet_is_one_line(gap):
    data = (GOLDEN / "v2_5.kpc").read_bytes()
    pos, out, done = len(pk.PREAMBLE), bytearray(data[:len(pk.PREAMBLE)]), False
    while pos < len(data):
        packet, size = pk.split_packet(data[pos:], pos)
        if packet.kind == "B" and not done:  # count 3, then the distances: the first one made bad
            payload = bytearray(packet.payload)
            payload[1] = gap
            out += _rewrite(packet, bytes(payload))
            done = True
        else:
            out += data[pos:pos + size]
        pos += size
    with pytest.raises(KpcFormatError, match=f"distance of {gap} frames"):
        bitstream.loads(bytes(out))


def test_a_later_packet_must_follow_the_placed_base_frames_before_it():
    s = bitstream.loads((GOLDEN / "v2_5.kpc").read_bytes())
    w = pk.PacketWriter(s.header, dataclasses.replace(s.base, packets=[], frames=[]), packet_frames=2)
    w.base_frame(0, b"a")
    w.base_frame(3, b"b")
    with pytest.raises(KpcFormatError, match="1..16 frames"):
        w.base_frame(20, b"c")
    with pytest.raises(KpcFormatError, match="1..16 frames"):
        w.base_frame(3, b"c")
    fresh = pk.PacketWriter(s.header, dataclasses.replace(s.base, packets=[], frames=[]))
    with pytest.raises(KpcFormatError, match="not 0"):
        fresh.base_frame(4, b"a")


# --------------------------------------------------------------------------- placement

def _moving_clip(count=120, size=64):
    """A bar that creeps, then sweeps fast (frames 40-70), then creeps again."""
    frames, x = np.full((count, size, size, 3), 40, np.uint8), 0.0
    for t in range(count):
        x += 3.0 if 40 <= t < 70 else 0.2
        c = int(x) % (size - 8)
        frames[t, 10:50, c:c + 8] = 230
    return frames


def test_placement_keeps_the_uniform_count_and_puts_base_frames_where_the_picture_moves():
    frames = _moving_clip()
    for div in (2, 4, 6):
        pos = placement.place(frames, div)
        assert pos[0] == 0 and pos[-1] == len(frames) - 1
        gaps = np.diff(pos)
        assert gaps.min() >= 1 and gaps.max() <= placement.max_gap(div)
        assert abs(len(pos) - (len(frames) - 1) / div - 1) <= 2, (div, len(pos))
    pos = np.array(placement.place(frames, 4))
    fast = np.sum((pos >= 40) & (pos < 70)) / 30
    slow = np.sum(pos >= 75) / (len(frames) - 75)
    assert fast > 1.3 * slow, (fast, slow)


@pytest.mark.parametrize("count", [1, 2, 3, 9])
def test_a_short_clip_has_its_first_and_last_frames_as_base_frames(count):
    frames = _moving_clip(count)
    pos = placement.place(frames, 4)
    assert pos[0] == 0 and pos[-1] == count - 1 and sorted(set(pos)) == pos


def test_the_placer_holds_a_window_not_the_clip():
    frames = _moving_clip(200)
    p = placement.Placer(4)
    got, held = [], 0
    for i, f in enumerate(frames):
        got += [t for t, _ in p.push(i, f)]
        held = max(held, len(p._frames))
    got += [t for t, _ in p.flush()]
    assert got == placement.place(frames, 4) == p.placed
    assert held <= placement.WINDOW_SPANS * 4 + 1
    with pytest.raises(ValueError):
        p.push(5, frames[0])


def test_settings_and_options_say_placed():
    s = baselayer.parse_settings("128@4:55,alone,placed")
    assert s.placed and s.alone and str(s) == "128@4:55,alone,placed"
    assert not baselayer.parse_settings("128@4:55,alone").placed
    with pytest.raises(UsageError, match="base layer alone"):
        baselayer.parse_settings("128@4:55,placed")
    assert ratecontrol.plan(None, "8k").placed and not ratecontrol.plan(None, "8k", "uniform").placed
    with pytest.raises(UsageError, match="--base-frames"):
        ratecontrol.plan(None, "8k", "sometimes")


def test_hermite_on_uniform_knots_is_catmull_rom():
    import torch

    from kpcodec.models.fomm import catmull_rom, hermite

    g = torch.Generator().manual_seed(0)
    p = [torch.randn(3, 10, 2, generator=g) for _ in range(4)]
    a = torch.rand(3, generator=g).view(-1, 1, 1)
    knots = torch.tensor([[0.0, 4, 8, 12], [4, 8, 12, 16], [-4, 0, 4, 8]]).view(-1, 4, 1, 1)
    assert torch.allclose(hermite(*p, a, knots), catmull_rom(*p, a), atol=1e-5)
    # non-uniform: the ends are kept, and the curve differs
    uneven = torch.tensor([[0.0, 1, 8, 9]] * 3).view(-1, 4, 1, 1)
    assert torch.allclose(hermite(*p, torch.zeros_like(a), uneven), p[1])
    assert torch.allclose(hermite(*p, torch.ones_like(a), uneven), p[2], atol=1e-6)
    assert not torch.allclose(hermite(*p, a, uneven), catmull_rom(*p, a), atol=1e-3)


# --------------------------------------------------------------------------- encode and decode

@pytest.fixture(scope="module")
def sample_frames():
    return np.stack(list(video.read_frames(SAMPLE, 256)))[:24]


@pytest.fixture(scope="module")
def placed_file(tmp_path_factory):
    """24 sample frames at 128@4:45 alone with placed base frames, encoded as encode does."""
    return sample_kpc(tmp_path_factory.mktemp("placed"), "128@4:45,alone,placed", motion=False)  # 2.5 as such


def test_encode_places_the_base_frames(placed_file, sample_frames):
    s = bitstream.read_file(placed_file)
    assert s.version == (2, 5) and s.base.placed and s.base.cubic and s.base.divisor == 4
    assert s.base.frames == placement.place(sample_frames, 4) and s.base.frames[-1] == 23
    assert len(s.base.packets) == len(s.base.frames)


def test_base_frames_show_where_they_are_placed_and_frames_between_follow_the_uneven_path(placed_file):
    import torch

    from kpcodec.codec.decoder import Decoder
    from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
    from kpcodec.options import DecodeOptions

    s = bitstream.read_file(placed_file)
    dec = Decoder(s, DecodeOptions(threads=1))
    out = list(dec.frames())
    assert len(out) == 24
    net, pos = dec.net, s.base.frames
    with torch.inference_mode():
        up = net.base_image(frames_to_tensor(baselayer.decode_clip(s.base.packets)), restore=True)
        kp, jac = net.detect(up)
    frames = tensor_to_frames(up)
    for n, t in enumerate(pos):
        assert np.array_equal(out[t], frames[n])
    n = next(k for k in range(1, len(pos) - 2) if pos[k + 1] - pos[k] > 1)
    t = pos[n] + 1
    a = torch.tensor([(t - pos[n]) / (pos[n + 1] - pos[n])])
    knots = torch.tensor([[pos[n - 1], pos[n], pos[n + 1], pos[n + 2]]], dtype=torch.float32)
    with torch.inference_mode():
        want = net.between(up[n:n + 1], kp[n:n + 1], jac[n:n + 1], up[n + 1:n + 2], kp[n + 1:n + 2],
                           jac[n + 1:n + 2], a, (kp[n - 1:n], jac[n - 1:n], kp[n + 2:n + 3], jac[n + 2:n + 3]), knots)
    assert np.abs(out[t].astype(int) - tensor_to_frames(want)[0].astype(int)).max() <= 1


def test_placed_every_divisor_th_frame_decodes_as_2_4(placed_file):
    """The same base frames every 4th frame, said as placed (2.5) or implied (2.4): the same frames."""
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    s = bitstream.read_file(placed_file)
    packets = s.base.packets[:6]
    uniform = dataclasses.replace(s, base=dataclasses.replace(s.base, frames=None, packets=packets))
    placed = dataclasses.replace(s, base=dataclasses.replace(s.base, frames=list(range(0, 24, 4)), packets=packets))
    one = DecodeOptions(threads=1)
    a = list(Decoder(uniform, one).frames())
    b = list(Decoder(placed, one).frames())
    assert all(np.abs(x.astype(int) - y.astype(int)).max() <= 1 for x, y in zip(a, b))


def test_packet_by_packet_gives_the_same_frames(placed_file):
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    one = DecodeOptions(threads=1)
    data = placed_file.read_bytes()
    whole = list(Decoder(bitstream.loads(data), one).frames())
    s = bitstream.loads(data)
    packets = pk.stream_packets(s, 1)  # one base frame a BASE packet: the decoder waits for the next
    dec = Decoder(packets[0], one)
    got = [f for p in packets[1:] for f in dec.push(p)] + dec.flush()
    dec.close()
    assert len(got) == len(whole) and all(np.array_equal(a, b) for a, b in zip(got, whole))


def test_cli_encode_info_and_decode(runner, placed_file, tmp_path):
    d = json.loads(run(runner, "info", placed_file, "--json").stdout)
    assert d["format_version"] == "2.5" and d["base_layer"]["placed"] and d["sent_frames"] == 0
    assert "placed, 1/4 frame rate on average" in run(runner, "info", placed_file).stdout
    mp4 = tmp_path / "p.mp4"
    r = run(runner, "decode", placed_file, "-o", mp4)
    assert r.exit_code == 0, r.stderr
    assert len(list(video.read_frames(str(mp4), 64))) == 24
    r = run(runner, "encode", SAMPLE, "-o", tmp_path / "x.kpc", "--bitrate", "8k", "--base-frames", "often")
    assert r.exit_code == 2 and "--base-frames 'often'" in r.stderr and "Traceback" not in r.stderr
    r = run(runner, "encode", SAMPLE, "-o", tmp_path / "x.kpc", "--base-layer", "128@4:45,placed")
    assert r.exit_code == 2 and "base layer alone" in r.stderr
