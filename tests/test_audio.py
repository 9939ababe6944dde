"""Audio: Opus in the optional `opus` chunk, through encode, info and decode."""
from __future__ import annotations

import json
import struct

import av
import numpy as np
import pytest
from conftest import make_clip_with_audio, run

from kpcodec.media import audio

from kpcodec import bitstream
from kpcodec.errors import KpcFormatError, UsageError
from kpcodec.media.video import VideoWriter, probe


@pytest.fixture(scope="module")
def sine_clip(tmp_path_factory):
    return make_clip_with_audio(tmp_path_factory.mktemp("audio") / "sine.mp4", seconds=2.0)


@pytest.fixture(scope="module")
def track(sine_clip):
    return audio.encode_audio(sine_clip, 2.0)


def onset_s(x: np.ndarray, rate: int = audio.CLOCK) -> float:
    """Time of the first sample louder than a tenth of the peak."""
    return int(np.argmax(np.abs(x) > 0.1 * np.abs(x).max())) / rate


def dominant_hz(x: np.ndarray, rate: int = audio.CLOCK) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def mp4_audio(path):
    """(stream duration s, decoded float mono samples at 48 kHz) of a file's audio."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        duration = float(s.duration * s.time_base)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=audio.CLOCK)
        blocks = [f.to_ndarray().reshape(-1) for frame in c.decode(s) for f in resampler.resample(frame)]
    return duration, np.concatenate(blocks)


# ------------------------------------------------------------------ the codec


def test_encode_audio_is_in_sync_and_low_rate(track):
    assert track.sample_rate == 16000 and track.channels == 1
    assert track.length == 2 * audio.CLOCK and track.pts[0] == -track.pre_skip
    assert np.all(np.diff(track.pts) == 2880)  # 60 ms packets, contiguous
    pcm = audio.decode_pcm(track)
    assert pcm.shape == (1, 2 * audio.CLOCK)
    assert abs(dominant_hz(pcm[0, 4800:-4800]) - 440) < 3
    assert onset_s(pcm[0]) < 0.01
    kbps = sum(map(len, track.packets)) * 8 / 2.0 / 1000
    assert 8 < kbps < 16, kbps


def test_late_audio_starts_late(tmp_path):
    clip = make_clip_with_audio(tmp_path / "late.mp4", seconds=2.0, audio_delay=0.3)
    t = audio.encode_audio(clip, 2.0)
    assert t.length == 2 * audio.CLOCK
    assert abs(onset_s(audio.decode_pcm(t)[0]) - 0.3) < 0.03


def test_opus_input_and_higher_rate(tmp_path):
    clip = make_clip_with_audio(tmp_path / "o.mp4", seconds=1.0, audio_codec="libopus", rate=48000, tone=1000)
    t = audio.encode_audio(clip, 1.0, kbps=32)
    assert t.sample_rate == 24000 and t.bitrate == 32000
    assert abs(dominant_hz(audio.decode_pcm(t)[0, 2400:-2400]) - 1000) < 5


def test_no_audio_stream_gives_none(clip):
    assert audio.encode_audio(clip, 0.48) is None


@pytest.mark.parametrize("kbps", [5.9, 64.5, -1, "loud"])
def test_bitrate_range(kbps):
    with pytest.raises(UsageError, match="audio-bitrate"):
        audio.check_bitrate(kbps)


def test_pack_unpack_round_trip(track):
    payload = audio.pack(track)
    back = audio.unpack(payload)
    assert back.packets == track.packets and np.array_equal(back.pts, track.pts)
    assert (back.sample_rate, back.channels, back.pre_skip, back.bitrate, back.length) == \
        (track.sample_rate, track.channels, track.pre_skip, track.bitrate, track.length)
    # The layout of man/kpc.5: fixed fields, then two length-prefixed blobs, then the packets.
    assert struct.unpack_from("<IBHIII", payload) == (16000, 1, track.pre_skip, 12000, 96000, len(track.packets))
    pos = 19
    for _ in range(2):
        pos += 4 + struct.unpack_from("<I", payload, pos)[0]
    assert payload[pos:] == b"".join(track.packets)
    assert audio.opus_head(track)[:8] == b"OpusHead"


def _fields(track, **changes):
    values = dict(sample_rate=track.sample_rate, channels=track.channels, pre_skip=track.pre_skip,
                  bitrate=track.bitrate, length=track.length, pts=track.pts, packets=track.packets)
    values.update(changes)
    return audio.OpusTrack(**values)


@pytest.mark.parametrize("changes,needle", [
    (dict(sample_rate=44100), "sample_rate"),
    (dict(channels=3), "channels"),
    (dict(length=0), "length"),
    (dict(length=10**8), "length"),
])
def test_bad_fields_are_refused_both_ways(track, changes, needle):
    with pytest.raises(KpcFormatError, match=needle):
        audio.pack(_fields(track, **changes))
    good = bytearray(audio.pack(track))
    bad = _fields(track, **changes)
    struct.pack_into("<IBHIII", good, 0, bad.sample_rate, bad.channels, bad.pre_skip, bad.bitrate, bad.length,
                     len(bad.packets))
    with pytest.raises(KpcFormatError, match=needle):
        audio.unpack(bytes(good))


def test_malformed_payloads(track):
    payload = audio.pack(track)
    for bad in (b"", payload[:10], payload[:-1], payload + b"x", payload[:15] + b"\xff\xff\xff\xff" + payload[19:]):
        with pytest.raises(KpcFormatError):
            audio.unpack(bad)
    with pytest.raises(KpcFormatError, match="increasing"):
        audio.pack(_fields(track, pts=track.pts[::-1].copy()))


def test_video_writer_muxes_opus(track, tmp_path):
    out = tmp_path / "w.mp4"
    with VideoWriter(out, 25, (32, 32), preset="ultrafast") as w:
        w.add_audio(track)
        for i in range(50):
            w.write(np.full((32, 32, 3), i * 4, np.uint8))
        with pytest.raises(ValueError):
            w.add_audio(track)
    duration, pcm = mp4_audio(out)
    assert abs(duration - 2.0) < 0.02
    assert abs(dominant_hz(pcm[4800:48000]) - 440) < 3
    assert probe(out).frame_count == 50


# ------------------------------------------------------------------ the commands


def test_cli_round_trip_keeps_audio(runner, sine_clip, tmp_path):
    kpc, mp4 = tmp_path / "s.kpc", tmp_path / "s.mp4"
    result = run(runner, "encode", sine_clip, "-o", kpc, "--model", "tiny")
    assert result.exit_code == 0, result.stderr
    assert "(audio " in result.stderr
    stream = bitstream.read_file(kpc)
    assert [k for k, _ in stream.extra_chunks] == ["opus"]
    result = run(runner, "decode", kpc, "-o", mp4)
    assert result.exit_code == 0, result.stderr
    info = probe(mp4)
    duration, pcm = mp4_audio(mp4)
    video_s = info.frame_count / float(info.fps)
    assert info.has_audio and abs(duration - video_s) < 0.1, (duration, video_s)
    assert abs(len(pcm) / audio.CLOCK - video_s) < 0.1
    assert abs(dominant_hz(pcm[4800:-4800]) - 440) < 3
    assert onset_s(pcm) < 0.02

    silent = tmp_path / "silent.mp4"
    assert run(runner, "decode", kpc, "-o", silent, "--no-audio").exit_code == 0
    assert not probe(silent).has_audio


def test_info_reports_audio(runner, sine_clip, tmp_path):
    kpc = tmp_path / "s.kpc"
    assert run(runner, "encode", sine_clip, "-o", kpc, "--model", "tiny", "--audio-bitrate", "8").exit_code == 0
    d = json.loads(run(runner, "info", kpc, "--json").stdout)
    a = d["audio"]
    assert a["codec"] == "opus" and a["sample_rate"] == 16000 and a["channels"] == 1 and a["bitrate_kbps"] == 8
    chunks = [c for c in d["chunks"] if c["chunk"] == "opus"]  # 2.0: AUDIO packets, about a second each
    assert len(chunks) >= 2 and a["bytes"] == sum(c["bytes"] for c in chunks)
    assert a["kbps"] == pytest.approx(sum(c["kbps"] for c in chunks))
    assert abs(a["duration_s"] - d["duration_s"]) < 1e-9
    table = run(runner, "info", kpc)
    assert "audio (opus)" in table.stdout and "(audio " in table.stderr
    quiet = run(runner, "info", kpc, "-q")
    assert quiet.stderr == "" and "audio (opus)" in quiet.stdout


def test_no_audio_and_bad_bitrate(runner, sine_clip, tmp_path):
    kpc = tmp_path / "n.kpc"
    assert run(runner, "encode", sine_clip, "-o", kpc, "--model", "tiny", "--no-audio").exit_code == 0
    assert bitstream.read_file(kpc).extra_chunks == []
    assert json.loads(run(runner, "info", kpc, "--json").stdout)["audio"] is None
    result = run(runner, "encode", sine_clip, "-o", tmp_path / "b.kpc", "--model", "tiny", "--audio-bitrate", "200")
    assert result.exit_code == 2 and "audio-bitrate" in result.stderr
    assert not (tmp_path / "b.kpc").exists()


def test_broken_opus_chunk_is_a_format_error(runner, sine_clip, tmp_path):
    kpc = tmp_path / "s.kpc"
    assert run(runner, "encode", sine_clip, "-o", kpc, "--model", "tiny").exit_code == 0
    stream = bitstream.read_file(kpc)
    stream.extra_chunks = [("opus", stream.extra_chunks[0][1][:-3])]
    stream.version = (1, 3)  # a 1.3 file keeps the chunk as it is (a 2.0 writer refuses it)
    bad = tmp_path / "bad.kpc"
    bad.write_bytes(bitstream.dumps(stream))  # valid CRC, bad content
    result = run(runner, "decode", bad, "-o", tmp_path / "o.mp4")
    assert result.exit_code == 1 and "opus" in result.stderr
    assert not (tmp_path / "o.mp4").exists()
    assert run(runner, "info", bad).exit_code == 1
