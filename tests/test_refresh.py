"""Source refresh: the SRCR chunk of format 1.2, the encoder's choice, the decoder's switch."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from skimage.data import astronaut, coffee
from skimage.transform import resize

from kpcodec import bitstream as bs
from kpcodec.codec import refresh as rf

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "astronaut.mp4"
from kpcodec.errors import KpcFormatError, UsageError
from kpcodec.media.video import VideoWriter

from conftest import run

GOLDEN = Path(__file__).resolve().parent / "golden"


def one_line_error(result, code, needle):
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kpcodec: error:") and needle in lines[0], result.stderr


def make_cut_clip(path: Path, frames: int = 40, cut: int = 20, size: int = 64) -> Path:
    """The astronaut, then from frame `cut` on a cup of coffee: a scene cut between checks."""
    a, b = ((resize(img, (size, size), anti_aliasing=True) * 255).astype(np.uint8) for img in (astronaut(), coffee()))
    with VideoWriter(path, 25, (size, size)) as writer:
        for i in range(frames):
            writer.write(a if i < cut else b)
    return path


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory) -> Path:
    return make_cut_clip(tmp_path_factory.mktemp("cut") / "cut.mp4")


# ------------------------------------------------------------------ format


def stream_with_refresh(frames=(4, 7)) -> bs.KpcStream:
    s = bs.loads((GOLDEN / "v1_1.kpc").read_bytes())
    s.version = None
    s.refreshes = [bs.Refresh(f, "png", b"image %d" % f) for f in frames]
    return s


def test_round_trip_with_refresh_is_format_1_2():
    data = bs.dumps(stream_with_refresh())
    assert data[8:10] == b"\x01\x02"
    assert [k for k, _ in bs.chunk_table(data)] == ["magic", "HEAD", "SRCF", "KPRC", "SRCR", "SRCR", "KEND"]
    out = bs.loads(data)
    assert out.version == (1, 2)
    assert [(r.frame, r.codec, r.data) for r in out.refreshes] == [(4, "png", b"image 4"), (7, "png", b"image 7")]
    assert bs.dumps(out) == data


def test_stream_without_refresh_stays_1_1():
    data = (GOLDEN / "v1_1.kpc").read_bytes()
    s = bs.loads(data)
    s.version = None
    assert bs.dumps(s) == data and bs.loads(data).refreshes == []


def test_golden_1_2_decodes_exactly():
    import sys

    sys.path.insert(0, str(GOLDEN))
    try:
        import make_golden
    finally:
        sys.path.remove(str(GOLDEN))
    data = (GOLDEN / "v1_2.kpc").read_bytes()
    assert bs.dumps(make_golden.golden_stream_1_2()) == data
    out = bs.loads(data)
    expected = np.load(GOLDEN / "v1_2.npz")
    for name in ("sent_indices", "keypoints", "jacobians"):
        assert np.array_equal(getattr(out, name), expected[name]), name
    assert [r.frame for r in out.refreshes] == [4, 7] and out.version == (1, 2)
    assert all(r.data.startswith(b"\x89PNG") for r in out.refreshes)


@pytest.mark.parametrize("frames, needle", [
    ((5,), "not a sent frame"),  # 5 is not sent in the golden stream
    ((7, 4), "does not follow"),
    ((4, 4), "does not follow"),
    ((0,), "does not follow"),
])
def test_bad_refresh_frames_rejected_both_ways(frames, needle):
    with pytest.raises(KpcFormatError, match=needle):
        bs.dumps(stream_with_refresh(frames))
    # the same chunks written by hand are refused by the reader
    good = bs.dumps(stream_with_refresh((4, 7)))
    chunks = []
    for kind, payload, _ in bs.container._split_chunks(good):
        chunks.append((kind, payload))
    srcr = [i for i, (k, _) in enumerate(chunks) if k == "SRCR"]
    for i, f in zip(srcr, list(frames) + [None]):
        if f is None:
            chunks[i] = None
        else:
            chunks[i] = ("SRCR", int(f).to_bytes(4, "little") + chunks[i][1][4:])
    data = bs.MAGIC + b"\x01\x02" + b"".join(bs.container._chunk(k, p) for k, p in (c for c in chunks if c))
    with pytest.raises(KpcFormatError, match=needle):
        bs.loads(data)


def test_refresh_needs_1_2_and_its_place():
    s = stream_with_refresh()
    s.version = (1, 1)
    with pytest.raises(KpcFormatError, match="need format 1.2"):
        bs.dumps(s)
    data = bs.dumps(stream_with_refresh())
    with pytest.raises(KpcFormatError, match="chunk SRCR where KEND was expected"):
        bs.loads(data[:8] + b"\x01\x01" + data[10:])  # a 1.1 file has no SRCR
    chunks = [(k, p) for k, p, _ in bs.container._split_chunks(data)]
    order = [chunks[0], chunks[1], chunks[3], chunks[2]] + chunks[4:]  # SRCR before KPRC
    with pytest.raises(KpcFormatError, match="chunk SRCR where KPRC was expected"):
        bs.loads(bs.MAGIC + b"\x01\x02" + b"".join(bs.container._chunk(k, p) for k, p in order))


def test_a_1_1_reader_refuses_a_refreshed_file(monkeypatch):
    """What this package's 1.1 reader did with a chunk it did not know: a clear error."""
    monkeypatch.setattr(bs.container, "_CRITICAL", frozenset(bs.container._ORDER_1_0 + bs.container._ORDER_1_1))
    with pytest.raises(KpcFormatError, match="unknown critical chunk SRCR"):
        bs.loads(bs.dumps(stream_with_refresh()))


def test_every_truncation_of_a_refreshed_file_rejected():
    data = (GOLDEN / "v1_2.kpc").read_bytes()
    for n in range(len(data)):
        with pytest.raises(KpcFormatError):
            bs.loads(data[:n])


# ------------------------------------------------------------------ encoder pieces


def test_cut_test_and_check_frames():
    grey = np.full((64, 64, 3), 100, np.uint8)
    moved = np.roll(grey, 2, axis=1)
    other = np.full((64, 64, 3), 200, np.uint8)
    assert rf.thumbnail(grey).shape == (32, 32)
    assert not rf.is_cut(None, rf.thumbnail(grey)) and not rf.is_cut(rf.thumbnail(grey), rf.thumbnail(moved))
    assert rf.is_cut(rf.thumbnail(grey), rf.thumbnail(other))
    checks = rf.CheckFrames(5)
    for i in range(12):
        checks.add(i, grey if i < 7 else other)
    assert checks.cuts == [7] and sorted(checks.frames) == [5, 7, 10]
    assert rf.check_spacing(25) == 25 and rf.check_spacing(30000 / 1001) == 30


@pytest.mark.parametrize("call", [lambda: rf.check_mode("sometimes"), lambda: rf.check_threshold(0),
                                  lambda: rf.check_threshold(1.5), lambda: rf.check_threshold(float("nan"))])
def test_option_checks(call):
    with pytest.raises(UsageError):
        call()


def test_batches_never_straddle_a_refresh(tmp_path):
    import dataclasses

    from kpcodec import api, bitstream
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    api.encode(SAMPLE, tmp_path / "a.kpc", keep_every=1, audio=False)
    s = bitstream.read_file(tmp_path / "a.kpc")
    s = dataclasses.replace(s, header=dataclasses.replace(s.header, frame_count=10), sent_indices=s.sent_indices[:10],
                            keypoints=s.keypoints[:10], jacobians=s.jacobians[:10],
                            refreshes=[bitstream.Refresh(4, s.source_codec, s.source_data),
                                       bitstream.Refresh(7, s.source_codec, s.source_data)])
    dec = Decoder(bitstream.loads(bitstream.dumps(s)), DecodeOptions(batch=3, threads=1))
    prepared, batches = [], []
    dec._renderer.prepare = lambda image: prepared.append(len(prepared)) or len(prepared) - 1
    dec._renderer.render = lambda state, kp, jac, base, mix=None: batches.append((state, len(kp))) or [None] * len(kp)
    assert len(list(dec.frames())) == 10
    assert batches == [(0, 3), (0, 1), (1, 3), (2, 3)] and prepared == [0, 1, 2]


# ------------------------------------------------------------------ end to end (tiny model)


def test_scene_cut_triggers_a_refresh_and_decodes(runner, cut_clip, tmp_path):
    out = tmp_path / "cut.kpc"
    result = run(runner, "encode", cut_clip, "-o", out, "--model", "tiny", "--refresh", "auto",
                 "--refresh-threshold", "0.99", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert "source refresh" in result.stderr
    s = bs.read_file(out)
    frames = [r.frame for r in s.refreshes]
    assert s.version == (2, 0) and 20 in frames and set(frames) <= {20, 25}
    assert set(frames) <= set(s.sent_indices.tolist())
    info = run(runner, "info", out)
    assert "source refreshes" in info.stdout
    import json

    d = json.loads(run(runner, "info", out, "--json").stdout)
    srcr = [n for kind, n in bs.chunk_table(out.read_bytes()) if kind == "SRCR"]
    assert [r["frame"] for r in d["refreshes"]] == frames and [r["bytes"] for r in d["refreshes"]] == srcr
    assert d["budget"]["refresh"]["bytes"] == sum(srcr) and d["format_version"] == "2.0"
    mp4 = tmp_path / "cut.mp4"
    assert run(runner, "decode", out, "-o", mp4, "--threads", "2").exit_code == 0
    with av.open(str(mp4)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 40


def test_refresh_off_and_a_low_threshold_send_none(runner, cut_clip, tmp_path):
    for args in ([], ["--refresh", "off"], ["--refresh", "auto", "--refresh-threshold", "0.0001"]):
        out = tmp_path / "x.kpc"
        assert run(runner, "encode", cut_clip, "-o", out, "--model", "tiny", "-f", *args).exit_code == 0
        s = bs.read_file(out)
        assert s.refreshes == [] and s.version == (2, 0), args


@pytest.mark.parametrize("args, needle", [
    (["--refresh", "sometimes"], "--refresh"),
    (["--refresh", "auto", "--refresh-threshold", "1.5"], "--refresh-threshold"),
    (["--refresh", "auto", "--refresh-threshold", "0"], "--refresh-threshold"),
    (["--refresh-threshold", "0.5"], "needs --refresh auto"),
    (["--refresh", "off", "--refresh-threshold", "0.5"], "needs --refresh auto"),
])
def test_refresh_option_errors(runner, cut_clip, tmp_path, args, needle):
    one_line_error(run(runner, "encode", cut_clip, "-o", tmp_path / "a.kpc", "--model", "tiny", *args), 2, needle)
    assert not any(p.name.startswith("a.kpc") for p in tmp_path.iterdir())


def test_bad_refresh_image_fails_decode_without_output(runner, cut_clip, tmp_path):
    out = tmp_path / "cut.kpc"
    assert run(runner, "encode", cut_clip, "-o", out, "--model", "tiny", "--refresh", "auto",
               "--refresh-threshold", "0.99").exit_code == 0
    s = bs.read_file(out)
    s.refreshes[-1].data = b"not an image"
    bs.write_file(out, s)
    one_line_error(run(runner, "decode", out, "-o", tmp_path / "bad.mp4"), 1, "source image")
    assert not any(p.name.startswith(("bad.mp4", ".bad.mp4")) for p in tmp_path.iterdir())
