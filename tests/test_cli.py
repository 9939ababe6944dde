"""The command line, end to end with the tiny model: round trip, summaries, every error case."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kpcodec.codec import adaptive

from kpcodec import bitstream
from kpcodec.media.video import probe

from conftest import run


def encode_tiny(runner, clip, out, *extra):
    return run(runner, "encode", clip, "-o", out, "--model", "tiny", *extra)


def one_line_error(result, code, needle):
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kpcodec: error:"), result.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr


@pytest.fixture
def kpc(runner, clip, tmp_path):
    out = tmp_path / "clip.kpc"
    assert encode_tiny(runner, clip, out, "--keep-every", "3").exit_code == 0
    return out


def test_round_trip_keeps_frame_count_rate_and_model_size(runner, clip, kpc, tmp_path):
    mp4 = tmp_path / "out.mp4"
    result = run(runner, "decode", kpc, "-o", mp4)
    assert result.exit_code == 0, result.stderr
    src, dec = probe(clip), probe(mp4)
    assert dec.frame_count == src.frame_count == 12
    assert dec.fps == src.fps
    assert (dec.width, dec.height) == (64, 64)
    assert "decoded 12 frames" in result.stderr and result.stdout == ""
    stream = bitstream.read_file(kpc)
    assert list(stream.sent_indices) == [0, 3, 6, 9] and stream.header.keep_every == 3


def test_encode_summary_line(runner, clip, tmp_path):
    result = encode_tiny(runner, clip, tmp_path / "a.kpc")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "encoded 12 frames" in result.stderr and "kb/s" in result.stderr and "KiB" in result.stderr


def test_info_json_and_table(runner, kpc):
    result = run(runner, "info", kpc, "--json")
    assert result.exit_code == 0
    d = json.loads(result.stdout)
    assert d["header"]["frame_count"] == 12 and d["header"]["model"] == "tiny"
    assert sum(p["bytes"] for p in d["chunks"]) == d["bytes"] == kpc.stat().st_size
    assert d["format_version"] == "2.0"
    b = d["budget"]
    assert b["total"]["bytes"] == d["bytes"] and b["audio"]["bytes"] == 0
    assert sum(b[k]["bytes"] for k in ("header", "source", "keypoints", "audio", "other")) == d["bytes"]
    assert b["keypoints"]["bytes"] == sum(p["bytes"] for p in d["chunks"] if p["chunk"] == "KPRC")
    assert b["keypoints"]["bits_per_sent_frame"] == pytest.approx(b["keypoints"]["bytes"] * 8 / 4)
    assert b["without_source"]["bytes"] == d["bytes"] - b["source"]["bytes"]
    assert b["total"]["kbps"] == pytest.approx(d["bytes"] * 8 / d["duration_s"] / 1000)
    table = run(runner, "info", kpc)
    assert "SRCF" in table.stdout and "KPRC" in table.stdout and "bit budget" in table.stdout
    assert "bits per sent frame" in table.stdout and "without the source image" in table.stdout


def test_keep_every_auto(runner, clip, tmp_path):
    out = tmp_path / "auto.kpc"
    result = encode_tiny(runner, clip, out, "--keep-every", "auto", "--max-error", "0.5", "--predictor", "linear")
    assert result.exit_code == 0, result.stderr
    stream = bitstream.read_file(out)
    assert stream.header.adaptive and stream.header.predictor == "linear"
    n = len(stream.sent_indices)
    assert stream.sent_indices[0] == 0 and 1 <= n <= 12
    assert stream.header.keep_every == max(1, round(12 / n))
    assert "chosen by the encoder" in run(runner, "info", out).stdout
    # a bound no prediction misses: only frame 0 goes out; the default bound also works
    assert encode_tiny(runner, clip, out, "-f", "-k", "auto", "--max-error", "1000").exit_code == 0
    assert bitstream.read_file(out).sent_indices.tolist() == [0]
    assert encode_tiny(runner, clip, out, "-f", "-k", "AUTO").exit_code == 0
    assert bitstream.read_file(out).header.adaptive
    # interpolation: the encoder stretches gaps while the interpolated frames stay within the bound
    assert encode_tiny(runner, clip, out, "-f", "-k", "auto", "--predictor", "interp").exit_code == 0
    interp = bitstream.read_file(out)
    assert interp.header.predictor == "interp" and interp.sent_indices[-1] == 11
    assert np.diff(interp.sent_indices).max() <= adaptive.MAX_INTERP_GAP
    # a fixed spacing is not adaptive
    assert encode_tiny(runner, clip, out, "-f", "-k", "2").exit_code == 0
    assert not bitstream.read_file(out).header.adaptive


@pytest.mark.parametrize("args, needle", [
    (["--keep-every", "often"], "keep-every"),
    (["--keep-every", "-2"], "keep-every"),
    (["--max-error", "2"], "needs --keep-every auto"),
    (["--keep-every", "3", "--max-error", "2"], "needs --keep-every auto"),
    (["--keep-every", "auto", "--max-error", "0"], "--max-error"),
    (["--keep-every", "auto", "--max-error", "-1"], "--max-error"),
    (["--keep-every", "auto", "--max-error", "nan"], "--max-error"),
    (["--keep-every", "auto", "--keep-pattern", "2:2"], "exclude each other"),
    (["--keep-every", "auto", "--predictor", "rnn-interp"], "causal predictor or interp"),
])
def test_keep_every_auto_errors(runner, clip, tmp_path, args, needle):
    one_line_error(encode_tiny(runner, clip, tmp_path / "a.kpc", *args), 2, needle)
    assert no_outputs(tmp_path, "a.kpc")


def test_library_api(clip, tmp_path):
    import kpcodec

    s = kpcodec.encode(clip, tmp_path / "x.kpc", keep_every=2, model="tiny")
    assert s.frames == 12 and s.bytes == (tmp_path / "x.kpc").stat().st_size
    d = kpcodec.decode(tmp_path / "x.kpc", tmp_path / "x.mp4")
    assert d.frames == 12 and (tmp_path / "x.mp4").is_file()
    assert kpcodec.info(tmp_path / "x.kpc")["sent_frames"] == 6


def test_existing_output_needs_force(runner, clip, kpc, tmp_path):
    before = kpc.read_bytes()
    one_line_error(encode_tiny(runner, clip, kpc), 2, "exists")
    assert kpc.read_bytes() == before
    assert encode_tiny(runner, clip, kpc, "-f", "--keep-every", "1").exit_code == 0
    assert kpc.read_bytes() != before
    mp4 = tmp_path / "o.mp4"
    mp4.write_bytes(b"keep me")
    one_line_error(run(runner, "decode", kpc, "-o", mp4), 2, "exists")
    assert mp4.read_bytes() == b"keep me"


def no_outputs(tmp_path, name):
    return not any(p.name.startswith(name) for p in tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["missing", "text", "empty"])
def test_bad_video_inputs(runner, tmp_path, kind):
    src = tmp_path / f"in-{kind}.mp4"
    if kind == "text":
        src.write_text("hello, I am not a video\n")
    elif kind == "empty":
        src.write_bytes(b"")
    result = encode_tiny(runner, src, tmp_path / "out.kpc")
    one_line_error(result, 1, src.name)
    assert no_outputs(tmp_path, "out.kpc")


def test_video_with_no_frames(runner, tmp_path):
    import av

    src = tmp_path / "noframes.mp4"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 64
    result = encode_tiny(runner, src, tmp_path / "out.kpc")
    assert result.exit_code == 1 and "noframes.mp4" in result.stderr
    assert no_outputs(tmp_path, "out.kpc")


def corrupt(data: bytes, kind: str) -> bytes:
    if kind == "magic":
        return b"\x00" + data[1:]
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "crc":
        b = bytearray(data)
        b[30] ^= 0x40  # inside HEAD's payload
        return bytes(b)
    if kind == "version":
        return data[:8] + bytes([9, 0]) + data[10:]
    if kind == "not-kpc":
        return b"RIFF....WEBPVP8 this is something else entirely"
    raise ValueError(kind)


@pytest.mark.parametrize("kind,needle", [("magic", "magic"), ("truncated", "truncated"), ("crc", "CRC"),
                                         ("version", "version"), ("not-kpc", "magic")])
def test_malformed_kpc(runner, kpc, tmp_path, kind, needle):
    bad = tmp_path / f"bad-{kind}.kpc"
    bad.write_bytes(corrupt(kpc.read_bytes(), kind))
    out = tmp_path / "out.mp4"
    one_line_error(run(runner, "decode", bad, "-o", out), 1, needle)
    assert no_outputs(tmp_path, "out.mp4")
    assert run(runner, "info", bad).exit_code == 1


def test_missing_kpc(runner, tmp_path):
    one_line_error(run(runner, "decode", tmp_path / "nope.kpc", "-o", tmp_path / "o.mp4"), 1, "nope.kpc")


def _restamp(stream: bitstream.KpcStream, **changes) -> bytes:
    for k, v in changes.items():
        setattr(stream.header, k, v)
    return bitstream.dumps(stream)


def test_kpc_from_unknown_weights(runner, kpc, tmp_path):
    other = tmp_path / "other.kpc"
    other.write_bytes(_restamp(bitstream.read_file(kpc), weights_sha256="ab" * 32))
    one_line_error(run(runner, "decode", other, "-o", tmp_path / "o.mp4"), 1, "other weights")
    unknown = tmp_path / "unknown.kpc"
    unknown.write_bytes(_restamp(bitstream.read_file(kpc), model="fomm-from-the-future"))
    one_line_error(run(runner, "decode", unknown, "-o", tmp_path / "o.mp4"), 1, "fomm-from-the-future")
    assert no_outputs(tmp_path, "o.mp4")


def test_decode_with_another_model_of_the_same_detector(runner, clip, tmp_path):
    from kpcodec.media import video
    from kpcodec.models.registry import DEFAULT_MODEL

    kpc = tmp_path / "real.kpc"
    assert run(runner, "encode", clip, "-o", kpc, "--no-audio", "--threads", "1").exit_code == 0
    own, other = tmp_path / "own.mp4", tmp_path / "other.mp4"
    assert run(runner, "decode", kpc, "-o", own, "--threads", "1").exit_code == 0
    cheaper = "fomm-256-fast" if DEFAULT_MODEL != "fomm-256-fast" else "fomm-256-quarter"
    assert run(runner, "decode", kpc, "-o", other, "--model", cheaper, "--threads", "1").exit_code == 0
    a = np.stack(list(video.read_frames(str(own), size=256))).astype(float)
    b = np.stack(list(video.read_frames(str(other), size=256))).astype(float)
    assert a.shape == b.shape and a.shape[0] == 12
    # Same keypoints, another generator: close pictures, not the same ones.
    assert 0 < np.abs(a - b).mean() < 20
    # The test model's detector is not the shipped ones': refused, nothing written.
    one_line_error(run(runner, "decode", kpc, "-o", tmp_path / "t.mp4", "--model", "tiny"), 1,
                   "another keypoint detector")
    one_line_error(run(runner, "decode", kpc, "-o", tmp_path / "t.mp4", "--model", "nope"), 1, "nope")
    assert no_outputs(tmp_path, "t.mp4")


def test_usage_errors(runner, clip, tmp_path):
    one_line_error(encode_tiny(runner, clip, tmp_path / "a.kpc", "--keep-every", "0"), 2, "keep-every")
    one_line_error(encode_tiny(runner, clip, tmp_path / "a.kpc", "--crop", "1,2,3"), 2, "crop")
    one_line_error(encode_tiny(runner, clip, tmp_path / "a.kpc", "--crop", "0,0,500,500"), 2, "crop")
    one_line_error(run(runner, "encode", clip, "-o", tmp_path / "a.kpc", "--model", "nope"), 1, "nope")
    assert no_outputs(tmp_path, "a.kpc")


def test_explicit_crop_and_predictors(runner, clip, tmp_path):
    out = tmp_path / "c.kpc"
    assert encode_tiny(runner, clip, out, "--crop", "8,0,80,80", "--keep-every", "4").exit_code == 0
    for name in ("hold", "linear", "interp"):
        mp4 = tmp_path / f"{name}.mp4"
        assert run(runner, "decode", out, "-o", mp4, "--predictor", name).exit_code == 0
        assert probe(mp4).frame_count == 12
    one_line_error(run(runner, "decode", out, "-o", tmp_path / "z.mp4", "--predictor", "psychic"), 2, "psychic")


def test_version(runner):
    result = run(runner, "--version")
    assert result.exit_code == 0
    assert "kpcodec 0.1.0" in result.stdout and ".kpc format 2.6" in result.stdout


def test_threads_option_decodes_the_same_video_and_rejects_nonsense(runner, clip, tmp_path):
    import numpy as np

    from kpcodec.media.video import read_frames

    kpc = tmp_path / "c.kpc"
    r = encode_tiny(runner, clip, kpc, "--no-audio", "--threads", "2", "-q")
    assert r.exit_code == 0, r.output
    outs = []
    for n in ("1", "2"):
        mp4 = tmp_path / f"t{n}.y4m"  # raw: the rendered frames, no H.264 encoder in between
        r = run(runner, "decode", kpc, "-o", mp4, "--threads", n, "-q")
        assert r.exit_code == 0, r.output
        outs.append(np.stack(list(read_frames(str(mp4)))))
    assert outs[0].shape[0] == 12
    np.testing.assert_array_equal(outs[0], outs[1])  # workers change the speed, never the frames
    r = run(runner, "decode", kpc, "-o", tmp_path / "x.mp4", "--threads", "0")
    assert r.exit_code == 2 and "--threads" in r.stderr and not (tmp_path / "x.mp4").exists()


def test_info_of_a_1_0_file(runner):
    from pathlib import Path

    golden = Path(__file__).resolve().parent / "golden" / "v1_0.kpc"
    d = json.loads(run(runner, "info", golden, "--json").stdout)
    assert d["format_version"] == "1.0" and not d["header"]["adaptive"]
    kpts = next(p["bytes"] for p in d["chunks"] if p["chunk"] == "KPTS")
    assert d["budget"]["keypoints"]["bytes"] == kpts
    assert "KPTS" in run(runner, "info", golden).stdout
