"""`kpcodec compare`: rows, honest byte counts, outputs, and the headline logic."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from kpcodec import api

from kpcodec import bitstream

from kpcodec.eval import classic, compare as cmp
from kpcodec.cli import app
from kpcodec.media.video import read_frames

CRFS = (30, 45)
HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None


@pytest.fixture(scope="module")
def result(clip):
    return cmp.compare(clip, codecs=("kpcodec", "x264"), keep_every=(2,), crfs={"x264": CRFS}, model="tiny",
                       landmarks=HAS_MEDIAPIPE)


def test_rows_and_same_input(result, clip):
    assert [(r.codec, r.param) for r in result.rows] == [("kpcodec", 2), ("x264", 30), ("x264", 45)]
    assert result.size == 64 and result.frames == 12 and result.fps == Fraction(25)
    # Every codec saw the frames `encode` sees: read_frames at the model's resolution.
    expected = list(read_frames(clip, size=64))
    assert all(np.array_equal(a, b) for a, b in zip(result.originals, expected))
    for r in result.rows:
        assert r.frames == 12 and 0 < r.ssim <= 1 and 0 < r.ms_ssim <= 1 and r.psnr > 5
        assert len(r.per_frame["ssim"]) == 12 and r.encode_fps > 0 and r.decode_fps > 0
    x30, x45 = result.rows[1], result.rows[2]
    assert x30.kbps > x45.kbps and x30.ssim > x45.ssim
    if HAS_MEDIAPIPE:
        assert result.landmarks and x30.face_found is not None
        assert len(x30.per_frame["landmark_px"]) == 12


def test_kbps_from_sizes_by_hand(result, clip, tmp_path):
    duration = 12 / 25
    x30 = result.rows[1]
    packets = x30.payload[1]
    assert x30.bytes == sum(len(p) for p in packets) and x30.first_bytes == len(packets[0])
    assert b"x264 - core" not in packets[0]  # the encoder's banner SEI is not counted
    assert x30.kbps == pytest.approx(x30.bytes * 8 / duration / 1000)
    assert x30.steady_kbps == pytest.approx((x30.bytes - len(packets[0])) * 8 / duration / 1000)
    # kpcodec: the whole .kpc that `kpcodec encode` writes for this clip, SRCF as the first frame's cost.
    kpc = tmp_path / "same.kpc"
    api.encode(clip, kpc, keep_every=2, model="tiny")
    data = kpc.read_bytes()
    kp = result.rows[0]
    assert kp.bytes == len(data)
    assert kp.first_bytes == dict(bitstream.chunk_table(data))["SRCF"]
    assert kp.kbps == pytest.approx(len(data) * 8 / duration / 1000)


def test_steady_state_below_total(result):
    for r in result.rows:
        assert 0 < r.steady_kbps < r.kbps


def test_decoded_frames_rebuild(result):
    frames = cmp.decoded_frames(result, result.rows[2])
    assert len(frames) == 12 and frames[0].shape == (64, 64, 3)
    assert np.mean([cmp.metrics.ssim(a, b) for a, b in zip(result.originals, frames)]) == pytest.approx(
        result.rows[2].ssim)


def test_json_round_trip(result):
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert [r["setting"] for r in d["rows"]] == ["k=2", "crf 30", "crf 45"]
    assert d["rows"][1]["bytes"] == result.rows[1].bytes and "payload" not in d["rows"][1]


def test_strip_h264_sei():
    sps, pps = b"\x00\x00\x00\x01\x67\x64\x00", b"\x00\x00\x00\x01\x68\xe8"
    sei, idr = b"\x00\x00\x01\x06\x05\xff\xff", b"\x00\x00\x01\x65\x88\x81"
    assert classic.strip_h264_sei(sps + pps + sei + idr) == sps + pps + idr
    assert classic.strip_h264_sei(idr) == idr


def test_classic_codecs_report_availability():
    for key in classic.CODECS:
        reason = classic.missing_reason(key)
        assert reason is None or key in reason


# --------------------------------------------------------------------------- headline on synthetic curves


def row(codec, param, kbps, ssim, lmk=None):
    return SimpleNamespace(codec=codec, param=param, setting=f"k={param}" if codec == "kpcodec" else f"crf {param}",
                           kbps=kbps, steady_kbps=kbps / 2, ssim=ssim, landmark_px=lmk, face_found=1.0)


X264 = [row("x264", 51, 10.0, 0.70, 4.0), row("x264", 45, 20.0, 0.80, 3.0), row("x264", 39, 40.0, 0.90, 2.0)]


def only(items, metric="ssim", rate="total"):
    (item,) = [h for h in items if h.metric == metric and h.rate == rate]
    return item


def test_headline_interpolates_log_rate():
    h = only(cmp.headline(X264 + [row("kpcodec", 2, 4.0, 0.75, 3.5)]))
    # Halfway between SSIM 0.70 (10 kb/s) and 0.80 (20 kb/s): sqrt(10*20) kb/s, log-linear.
    assert h.verdict == "ratio" and h.bound is None
    assert h.classic_kbps == pytest.approx(math.sqrt(200))
    assert h.ratio == pytest.approx(math.sqrt(200) / 4.0)
    assert "x264 needs 14.1 kb/s" in h.text and "3.54x" in h.text
    lm = only(cmp.headline(X264 + [row("kpcodec", 2, 4.0, 0.75, 3.5)]), "landmark_px")
    assert lm.ratio == pytest.approx(math.sqrt(200) / 4.0)  # lower is better, same geometry


def test_headline_classic_wins_when_cheaper_at_same_quality():
    h = only(cmp.headline(X264 + [row("kpcodec", 2, 30.0, 0.75)]))
    assert h.verdict == "ratio" and h.ratio < 1 and "x264 wins" in h.text


def test_headline_no_overlap_statement():
    h = only(cmp.headline(X264 + [row("kpcodec", 2, 3.1, 0.60)]))
    assert h.verdict == "no-overlap" and h.bound == "<=" and h.ratio == pytest.approx(10 / 3.1)
    assert "never gets as low as 3.10 kb/s" in h.text and "floor is 10.0 kb/s (crf 51)" in h.text
    assert "do not overlap" in h.text


def test_headline_classic_wins_outright_and_above_sweep():
    h = only(cmp.headline(X264 + [row("kpcodec", 2, 12.0, 0.60)]))
    assert h.verdict == "classic-wins" and "wins outright" in h.text
    h = only(cmp.headline(X264 + [row("kpcodec", 1, 12.0, 0.95)]))
    assert h.verdict == "above-sweep" and h.bound == ">=" and h.ratio == pytest.approx(40 / 12)


def test_frontier_drops_dominated_points():
    where, kbps, _, frontier = cmp.rate_at_quality([(10, 0.7), (15, 0.69), (20, 0.8)], 0.75)
    assert frontier == [(10.0, 0.7), (20.0, 0.8)] and where == "inside"
    assert kbps == pytest.approx(math.sqrt(200))


# --------------------------------------------------------------------------- notes and CLI


def test_missing_mediapipe_and_codec_are_notes(clip, monkeypatch):
    monkeypatch.setattr(cmp, "landmarks_available", lambda: "landmark columns empty: no mediapipe")
    real = classic.missing_reason
    monkeypatch.setattr(classic, "missing_reason", lambda key: "libx265 missing" if key == "x265" else real(key))
    r = cmp.compare(clip, codecs=("x264", "x265"), crfs={"x264": (40,)}, model="tiny")
    assert [x.codec for x in r.rows] == ["x264"] and r.rows[0].landmark_px is None
    assert "libx265 missing" in r.notes and any("mediapipe" in n for n in r.notes)


def test_cli_outputs(runner, clip, tmp_path):
    out = {k: tmp_path / f"o.{k}" for k in ("csv", "png", "mp4")}
    args = ["compare", str(clip), "--codecs", "x264,kpcodec", "--crf-x264", "30,45", "-k", "2", "--model",
            "tiny", "--no-landmarks", "--csv", str(out["csv"]), "--side-by-side", str(out["mp4"])]
    has_plot = importlib.util.find_spec("matplotlib") is not None
    if has_plot:
        args += ["--plot", str(out["png"])]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert "crf 45" in res.stdout and "headline" in res.stdout
    assert res.stderr.strip().splitlines()[-1].startswith("compared 3 settings")
    with open(out["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [t["setting"] for t in table] == ["k=2", "crf 30", "crf 45"] and float(table[1]["kbps"]) > 0
    from kpcodec.eval.report import _umask

    assert out["csv"].stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    from kpcodec.media.video import probe

    sbs = probe(out["mp4"])
    assert sbs.frame_count == 12 and (sbs.width, sbs.height) == (768, 276)
    if has_plot:
        assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Existing outputs are refused up front (before any work), -f overwrites.
    res = runner.invoke(app, args[:-2] if has_plot else args)
    assert res.exit_code == 2 and "exists" in res.stderr


def test_cli_predictor(runner, clip):
    """--predictor reaches the kpcodec files: the interpolating one renders from both neighbours."""
    args = ["compare", str(clip), "--codecs", "kpcodec", "-k", "3", "--model", "tiny", "--no-landmarks", "-q"]
    plain = runner.invoke(app, args + ["--json"])
    interp = runner.invoke(app, args + ["--json", "--predictor", "interp"])
    assert plain.exit_code == 0 and interp.exit_code == 0, interp.stderr
    a, b = json.loads(plain.stdout), json.loads(interp.stdout)
    assert b["kpcodec"]["predictor"] == "interp" and a["kpcodec"]["predictor"] != "interp"
    names = len(b["kpcodec"]["predictor"]) - len(a["kpcodec"]["predictor"])  # the header names it
    assert b["rows"][0]["bytes"] - a["rows"][0]["bytes"] == names  # the same keypoints are sent
    assert a["rows"][0]["ssim"] != b["rows"][0]["ssim"]  # but the unsent frames are filled otherwise
    assert "predictor interp" in runner.invoke(app, args + ["--predictor", "interp"]).stdout
    bad = runner.invoke(app, args + ["--predictor", "oracle"])
    assert bad.exit_code == 2 and "unknown predictor 'oracle'" in bad.stderr


def test_cli_json_and_usage_errors(runner, clip):
    res = runner.invoke(app, ["compare", str(clip), "--codecs", "x264", "--crf-x264", "45", "--model", "tiny",
                              "--no-landmarks", "--json", "-q"])
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["rows"][0]["codec"] == "x264" and d["size"] == 64 and res.stderr == ""
    for bad, needle in [(["--codecs", "mpeg2"], "mpeg2"), (["--crf-x264", "70"], "0..51"),
                        (["--keep-every", "0"], "keep-every"), (["--codecs", "x264", "--side-by-side", "a.mp4"],
                                                              "side-by-side")]:
        res = runner.invoke(app, ["compare", str(clip), "--model", "tiny", *bad])
        assert res.exit_code == 2 and needle in res.stderr, (bad, res.stderr)


def test_the_summary_line_formats_only_its_own_verdict():
    """An interpolated ratio has no classic end point (classic_value None): the summary must not
    format the no-overlap text for it (it raised a TypeError, a traceback after a whole compare)."""
    from types import SimpleNamespace

    from kpcodec.cli import _compare_summary

    head = cmp.Headline("ssim", "total", "av1-low", 2, 22.4, 0.774, "ratio", 0.24, None, 5.4, None, None, "t")
    row = SimpleNamespace(param=2, kbps=22.4, ssim=0.774, codec="kpcodec")
    result = SimpleNamespace(rows=[row], frames=40, size=256, seconds=26.0, headline=[head],
                             rows_for=lambda codec: [row] if codec == "kpcodec" else [])
    line = _compare_summary(result, [])
    assert line.endswith("av1-low wins (0.24x its rate for that SSIM)")
