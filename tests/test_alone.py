"""Format 2.3, a stream of the base layer alone: no source image, no keypoints; the decoder moves the
base frames on both sides of a frame to it by keypoints it detects on them (2.4: on a cubic path). The bitstream, the
decoder (with the shipped hybrid model), encode --base-layer SIZE@DIV:CRF,alone and the rate
control's choice of it."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kpcodec import bitstream
from kpcodec.bitstream import packets as pk
from kpcodec.errors import KpcFormatError, UsageError
from kpcodec.media import baselayer, video

from conftest import GOLDEN, SAMPLE, golden_module, run, sample_kpc


# --------------------------------------------------------------------------- bitstream

def test_golden_2_3_decodes_exactly_and_is_written_back_byte_for_byte():
    data = (GOLDEN / "v2_3.kpc").read_bytes()
    s = bitstream.loads(data)
    assert s.version == (2, 3) and data[8:10] == b"\x02\x03"
    assert s.base.alone and s.base.label == "16@4:58,alone" and len(s.base.packets) == 10
    assert s.source_data == b"" and len(s.sent_indices) == 0 and s.keypoints.shape == (0, 10, 2)
    assert s.base.packets == golden_module().golden_stream_2_3().base.packets
    assert pk.join(pk.stream_packets(s, 3)) == data
    kinds = [k for k, _ in bitstream.chunk_table(data)]
    assert "SRCF" not in kinds and "KPRC" not in kinds and 1 < kinds.count("BASE") < 10


def test_an_older_minor_refuses_the_alone_flag_and_1x_cannot_hold_it():
    data = (GOLDEN / "v2_3.kpc").read_bytes()
    with pytest.raises(KpcFormatError, match="reserved HEAD flags"):  # the same bytes called 2.2
        bitstream.loads(data[:9] + b"\x02" + data[10:])
    with pytest.raises(KpcFormatError, match="2.7 stream needs a newer kpcodec"):
        bitstream.loads(data[:9] + b"\x07" + data[10:])
    with pytest.raises(KpcFormatError, match="needs format 2.3"):
        bitstream.dumps(dataclasses.replace(bitstream.loads(data), version=(1, 4)))


def test_golden_2_4_the_cubic_path_decodes_exactly_and_is_written_back_byte_for_byte():
    data = (GOLDEN / "v2_4.kpc").read_bytes()
    s = bitstream.loads(data)
    assert s.version == (2, 4) and data[8:10] == b"\x02\x04"
    assert s.base.alone and s.base.cubic and s.base.label == "16@4:52,alone" and len(s.base.packets) == 9
    assert s.header.frame_count == 33 and s.base.packets == golden_module().golden_stream_2_4().base.packets
    assert pk.join(pk.stream_packets(s, 3)) == data
    # 2.3's linear path is still written as 2.3
    assert pk.join(pk.stream_packets(dataclasses.replace(s, base=dataclasses.replace(s.base, cubic=False)), 3))[8:10] \
        == b"\x02\x03"


def test_an_older_minor_refuses_the_cubic_flag_which_needs_a_base_layer_alone():
    data = (GOLDEN / "v2_4.kpc").read_bytes()
    with pytest.raises(KpcFormatError, match="reserved HEAD flags"):  # the same bytes called 2.3
        bitstream.loads(data[:9] + b"\x03" + data[10:])
    s = bitstream.loads(data)
    with pytest.raises(KpcFormatError, match="cubic keypoint path is for a stream of the base layer alone"):
        pk.encode_head(s.header, dataclasses.replace(s.base, alone=False, packets=[]))
    # A HEAD with the cubic flag but not the alone flag (CRC and all made right): one line, no crash.
    head = pk.PacketWriter(s.header, dataclasses.replace(s.base, packets=[])).take()[0]
    flags_at = len(head.payload) - 5 - 2  # the flags u16 come before the base settings (5 bytes)
    payload = bytearray(head.payload)
    assert payload[flags_at] & 0x18 == 0x18
    payload[flags_at] &= ~0x08
    with pytest.raises(KpcFormatError, match="cubic keypoint path or placed base frames in a HEAD without a base layer alone"):
        pk.decode_head(bytes(payload))


def test_a_source_image_or_keypoints_in_a_stream_alone_are_refused():
    g = golden_module()
    alone = g.golden_stream_2_3()
    with pytest.raises(KpcFormatError, match="no source image and no keypoints"):
        pk.stream_packets(dataclasses.replace(alone, source_codec="png", source_data=g.tiny_png()))
    writer = pk.PacketWriter(alone.header, dataclasses.replace(alone.base, packets=[]))
    with pytest.raises(KpcFormatError, match="alone"):
        writer.source(0, "png", g.tiny_png())
    # A reader: an alone HEAD followed by a SOURCE packet (seq 1) of an ordinary stream.
    head = writer.take()[0]
    other = pk.PacketWriter(alone.header, None)
    other.take()
    source = other.source(0, "png", g.tiny_png())[0]
    with pytest.raises(KpcFormatError, match="SOURCE packet at byte .* base layer alone"):
        pk.PacketReader().feed(pk.preamble(head) + bytes(head) + bytes(source))


def test_settings_parse_alone():
    s = baselayer.parse_settings("128@4:55,alone")
    assert (s.size, s.divisor, s.crf, s.alone) == (128, 4, 55, True) and str(s) == "128@4:55,alone"
    assert not baselayer.parse_settings("128@4:55").alone
    with pytest.raises(UsageError):
        baselayer.parse_settings("128@4:55,lonely")


# --------------------------------------------------------------------------- decode

@pytest.fixture(scope="module")
def sample_frames():
    return np.stack(list(video.read_frames(SAMPLE, 256)))[:24]


@pytest.fixture(scope="module")
def alone_file(tmp_path_factory):
    """24 sample frames at 128@4:45 alone, encoded as encode does, with the shipped hybrid model."""
    return sample_kpc(tmp_path_factory.mktemp("alone"), "128@4:45,alone", motion=False)  # 2.4 as such: 2.6 in test_motion


def test_encode_writes_the_base_layer_alone(alone_file):
    s = bitstream.read_file(alone_file)
    assert s.version == (2, 4) and s.base.alone and s.base.cubic and (s.base.size, s.base.divisor, s.base.crf) == (128, 4, 45)
    assert len(s.base.packets) == 6 and s.source_data == b"" and len(s.sent_indices) == 0
    assert s.header.frame_count == 24 and s.header.keep_every == 4


def test_base_frames_show_as_they_are_and_frames_between_are_moved_to_them(alone_file, sample_frames):
    """Frames 0, 4, 8... are their base frames upsampled (by the model's restorer); the frames between are closer to the input
    than the base frame before them held (the baseline low-resolution AV1 is scored at)."""
    import torch

    from kpcodec.codec.decoder import Decoder
    from kpcodec.eval.metrics import ssim
    from kpcodec.models.frames import frames_to_tensor, tensor_to_frames

    s = bitstream.read_file(alone_file)
    dec = Decoder(s)
    out = list(dec.frames())
    assert len(out) == 24 and all(f.shape == (256, 256, 3) for f in out)
    small = baselayer.decode_clip(s.base.packets)
    with torch.inference_mode():
        up = tensor_to_frames(dec.net.base_image(frames_to_tensor(small), restore=True))
    for n in range(6):
        assert np.array_equal(out[4 * n], up[n])
    between = [t for t in range(20) if t % 4]
    moved = np.mean([ssim(sample_frames[t], out[t]) for t in between])
    held = np.mean([ssim(sample_frames[t], up[t // 4]) for t in between])
    assert moved > held + 0.005, (moved, held)
    for t in range(21, 24):  # after the last base frame: it, held
        assert np.array_equal(out[t], up[5])


def test_frames_between_follow_the_cubic_keypoint_path(alone_file):
    """Format 2.4: frame t between base frames n and n+1 is moved to the Catmull-Rom point through the
    keypoints of base frames n-1..n+2 (an end's missing neighbour: the end itself); the same file read
    as 2.3 (linear path) decodes those frames differently and base frames alike."""
    import torch

    from kpcodec.codec.decoder import Decoder
    from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
    from kpcodec.options import DecodeOptions

    one = DecodeOptions(threads=1)
    s = bitstream.read_file(alone_file)
    dec = Decoder(s, one)
    cubic = list(dec.frames())
    linear = list(Decoder(dataclasses.replace(s, base=dataclasses.replace(s.base, cubic=False)), one).frames())
    net = dec.net
    with torch.inference_mode():
        up = net.base_image(frames_to_tensor(baselayer.decode_clip(s.base.packets)), restore=True)
        kp, jac = net.detect(up)
    for t, (p, n, m, q) in ((1, (0, 0, 1, 2)), (6, (0, 1, 2, 3)), (18, (3, 4, 5, 5))):
        a = torch.tensor([(t % 4) / 4])
        with torch.inference_mode():
            want = net.between(up[n:n + 1], kp[n:n + 1], jac[n:n + 1], up[m:m + 1], kp[m:m + 1], jac[m:m + 1], a,
                               (kp[p:p + 1], jac[p:p + 1], kp[q:q + 1], jac[q:q + 1]))
        assert np.abs(cubic[t].astype(int) - tensor_to_frames(want)[0].astype(int)).max() <= 1, t
        assert not np.array_equal(cubic[t], linear[t])
    assert all(np.array_equal(cubic[t], linear[t]) for t in range(0, 24, 4))


def test_decode_from_the_cli_and_info(runner, alone_file, tmp_path):
    mp4 = tmp_path / "a.mp4"
    r = run(runner, "decode", alone_file, "-o", mp4)
    assert r.exit_code == 0, r.stderr
    assert len(list(video.read_frames(str(mp4), 64))) == 24
    d = json.loads(run(runner, "info", alone_file, "--json").stdout)
    assert d["format_version"] == "2.4" and d["base_layer"]["alone"] and d["base_layer"]["cubic"] and d["sent_frames"] == 0
    assert d["budget"]["source"]["bytes"] == 0 and d["budget"]["keypoints"]["bytes"] == 0
    assert "alone, cubic path: no source image, no keypoints" in run(runner, "info", alone_file).stdout


def test_packet_by_packet_gives_the_same_frames(alone_file):
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    one = DecodeOptions(threads=1)  # the same torch threads both ways (their count may change the last bit)
    data = alone_file.read_bytes()
    whole = list(Decoder(bitstream.loads(data), one).frames())
    reader = pk.PacketReader()
    items = reader.feed(data[:40])
    items += reader.feed(data[40:])
    dec = Decoder(items[0], one)
    got = [f for item in items[1:] for f in dec.push(item)] + dec.flush()
    dec.close()
    assert len(got) == len(whole) and all(np.array_equal(a, b) for a, b in zip(got, whole))


def test_a_bad_or_missing_base_frame_is_one_line_or_skipped(runner, alone_file, tmp_path):
    s = bitstream.read_file(alone_file)
    s.base.packets[0] = b"\xff" * 40
    bad = tmp_path / "bad.kpc"
    bitstream.write_file(bad, s)
    r = run(runner, "decode", bad, "-o", tmp_path / "bad.mp4")
    assert r.exit_code == 1 and "base-layer frame 0" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.mp4").exists()
    r = run(runner, "decode", bad, "-o", tmp_path / "ok.mp4", "--ignore-errors")
    assert r.exit_code == 0, r.stderr
    assert len(list(video.read_frames(str(tmp_path / "ok.mp4"), 64))) == 24


# --------------------------------------------------------------------------- rate control

def test_the_rate_control_judges_files_of_the_base_layer_alone(monkeypatch):
    """A rate target's choices include the base layer alone at each of ALONE_CANDIDATES that fits
    (no source image to pay for), judged with the others by their decoded pictures; its CRF search
    measures them coded as a base layer alone is (without the in-loop filters below 256 px)."""
    from kpcodec.codec import ratecontrol
    from kpcodec.codec.encoder import Encoder
    from kpcodec.options import EncodeOptions

    searched = []  # (settings, placed) of every trial rate of the CRF search
    rate = ratecontrol._rate
    monkeypatch.setattr(ratecontrol, "_rate", lambda f, fps, s, positions=None:
                        searched.append((s, positions is not None)) or rate(f, fps, s, positions))
    frames = list(video.read_frames(SAMPLE, 256))[:75]
    with Encoder(EncodeOptions(bitrate="12k", audio=False), video.probe(SAMPLE).fps, len(frames)) as enc:
        packets = [p for f in frames for p in enc.push(f)]
        data = pk.join(packets + enc.flush())
    alone = [(c, score) for c, score in enc.rdo if c.base is not None and c.base.alone]
    assert len(alone) >= 2 and {(c.base.size, c.base.divisor) for c, _ in alone} <= set(ratecontrol.ALONE_CANDIDATES)
    # the most costly that fits is judged; one after it only where it spends the budget (CRF above the floor)
    assert all(c.base.crf > ratecontrol.ALONE_CRF_MIN for c, _ in alone[1:])
    best, _ = max(enc.rdo, key=lambda j: j[1])
    s = bitstream.loads(data)
    assert (s.base is not None and s.base.alone) == (best.base is not None and best.base.alone)
    seconds = len(frames) / float(video.probe(SAMPLE).fps)
    for c, _ in alone:  # each fits the target with the header
        assert (c.base.bytes + ratecontrol.HEADER_BYTES) * 8 / seconds / 1000 <= 12
    # the search measured the alone candidates (placed) as alone, the hybrid ones (not placed) as hybrid
    assert {placed for _, placed in searched} == {True, False}
    assert all(st.alone == placed for st, placed in searched)
    assert any(st.restored for st, _ in searched)
