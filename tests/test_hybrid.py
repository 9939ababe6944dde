"""Hybrid mode: the base layer's codec, the fused generator, the BASE chunk end to end from the
CLI with the tiny-hybrid model, rate control, and bad base-layer data."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kpcodec.media import baselayer

from kpcodec import bitstream

from kpcodec.codec import ratecontrol
from kpcodec.errors import UsageError
from kpcodec.models.registry import build_model, get_config, load_model
from kpcodec.train.grow import grow

from conftest import make_clip, run

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "astronaut.mp4"


def moving_frames(n: int = 12, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([np.stack([(x * 4 + 9 * t) % 256, (y * 4) % 256, np.full_like(x, 60 + 10 * t)], -1)
                     for t in range(n)]).astype(np.uint8)


# --------------------------------------------------------------------------- the base layer codec

def test_settings_parse_and_check():
    assert baselayer.parse_settings("96") == baselayer.BaseLayerSettings(96, 3, 63)
    assert str(baselayer.parse_settings("128@2:50")) == "128@2:50"
    for bad in ("95", "96@0", "96@2:70", "x", "96:"):
        with pytest.raises(UsageError):
            baselayer.parse_settings(bad)


def test_one_packet_per_base_frame_and_back():
    frames = moving_frames(12)
    settings = baselayer.BaseLayerSettings(32, 3, 50)
    packets = baselayer.encode_clip(frames, settings, 25)
    assert len(packets) == 4  # frames 0, 3, 6, 9
    assert not any(p.startswith(baselayer.TEMPORAL_DELIMITER) for p in packets)
    decoded = baselayer.decode_clip(packets)
    assert decoded.shape == (4, 32, 32, 3)
    # Base frame n is video frame 3n, downscaled: close to it, and closer than to the others.
    small = [np.asarray(baselayer.downscale(f, 32).to_ndarray(format="rgb24"), np.float32) for f in frames[::3]]
    err = np.array([[np.abs(d.astype(np.float32) - s).mean() for s in small] for d in decoded])
    assert np.all(np.argmin(err, axis=1) == np.arange(4))


# --------------------------------------------------------------------------- the model

def test_grown_hybrid_starts_as_its_generator_and_the_base_changes_it():
    torch.manual_seed(0)
    small = load_model("tiny")
    hybrid = build_model("tiny-hybrid")
    hybrid.load_state_dict(grow(small.state_dict(), "tiny-hybrid"))
    hybrid.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        kp, jac = small.detect(x)
        a = small.render(small.prepare_source(x[:1]), kp, jac)
        state = hybrid.prepare_source(x[:1])
        base = torch.rand(2, 3, 16, 16)
        assert hybrid.base_image(base).shape == (2, 3, 64, 64)
        assert torch.equal(a, hybrid.render(state, kp, jac, base, kp.flip(0), jac.flip(0)))  # zero-initialised fusion
        assert torch.equal(a, hybrid.render(state, kp, jac))
        shipped = load_model("tiny-hybrid")  # random fusion weights: the base matters
        s2 = shipped.prepare_source(x[:1])
        assert not torch.allclose(shipped.render(s2, kp, jac, base), shipped.render(s2, kp, jac))


@pytest.mark.parametrize("extra", [{"base_skips": True}, {"flow_refine": True}])
def test_a_hybrid_grown_into_more_base_paths_renders_the_same_until_they_train(extra):
    from dataclasses import replace

    from kpcodec.models.fomm import MotionModel
    from kpcodec.models.registry import CONFIGS

    hybrid = load_model("tiny-hybrid")
    cfg = replace(CONFIGS["tiny-hybrid"], name="tiny-hybrid-more", **extra)
    more = MotionModel(cfg).eval()
    more.load_state_dict(grow(hybrid.state_dict(), cfg))
    new = [m for m in (more.generator.base_skips, more.generator.flow_refine) if m]
    assert len(new) == 1
    torch.manual_seed(3)
    x, base = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        kp, jac = hybrid.detect(x)
        a = hybrid.render(hybrid.prepare_source(x[:1]), kp, jac, base)
        state = more.prepare_source(x[:1])
        assert torch.equal(a, more.render(state, kp, jac, base))  # zero-initialised
        last = [stack[-1] for stack in more.generator.base_skips] or [more.generator.flow_refine[-1]]
        for conv in last:  # as training would move them
            conv.weight.normal_(0, 0.1)
            conv.bias.normal_(0, 0.1)
        b = more.render(state, kp, jac, base)
        assert (a - b).abs().mean() > 1e-3
        # a frame without a base (zeros) renders as the plain hybrid does
        zero = base.clone()
        zero[1] = 0
        c = more.render(state, kp, jac, zero)
        d = hybrid.render(hybrid.prepare_source(x[:1]), kp, jac, zero)
        if extra.get("flow_refine"):
            torch.testing.assert_close(c[1], d[1])
            assert (c[0] - d[0]).abs().mean() > 1e-3


def test_a_base_frame_moves_only_when_the_keypoints_do():
    net = load_model("tiny-hybrid")
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        kp, jac = net.detect(x)
        state = net.prepare_source(x)
        mask = net.dense_motion(state.small, state.kp, state.jac, kp, jac)["mask"]
        small = torch.rand(1, 3, 32, 32)
        up = net.base_image(small)
        assert torch.allclose(net.move_base(small, mask, kp, jac, kp, jac), up, atol=1e-5)
        shifted = net.move_base(small, mask, kp + 0.2, jac, kp, jac)
        assert (shifted - up).abs().mean() > 0.05


def test_hybrid_config_is_fast_wide_plus_fusion():
    a, b = get_config("fomm-256-fast-wide"), get_config("fomm-256-hybrid")
    assert b.base_fusion and not a.base_fusion
    assert {k: v for k, v in a.to_dict().items() if k not in ("name", "base_fusion")} == \
        {k: v for k, v in b.to_dict().items() if k not in ("name", "base_fusion")}


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def clip48(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("hybrid") / "c.mp4", frames=24, size=(96, 96))


def test_encode_decode_info_with_a_base_layer(runner, clip48, tmp_path):
    kpc, mp4 = tmp_path / "h.kpc", tmp_path / "h.mp4"
    r = run(runner, "encode", clip48, "-o", kpc, "--model", "tiny-hybrid", "--base-layer", "32@2:50")
    assert r.exit_code == 0, r.stderr
    assert "base layer 32@2:50" in r.stderr
    stream = bitstream.read_file(kpc)
    assert stream.version == (2, 2) and stream.base is not None  # 2.2: its base frames in one BASE packet
    assert (stream.base.size, stream.base.divisor, stream.base.crf, len(stream.base.packets)) == (32, 2, 50, 12)
    info = json.loads(run(runner, "info", kpc, "--json").stdout)
    assert info["base_layer"]["frames"] == 12 and info["budget"]["base"]["bytes"] > 12 * 2
    # encode's summary counts the base layer as info does (every BASE packet, framing included)
    kbps = float(r.stderr.split("base layer 32@2:50 ")[1].split(" kb/s")[0])
    assert kbps == pytest.approx(info["budget"]["base"]["kbps"], abs=0.006)
    assert "base layer (AV1 32x32" in run(runner, "info", kpc).stdout
    r = run(runner, "decode", kpc, "-o", mp4)
    assert r.exit_code == 0, r.stderr
    # The base layer is used: rendering without it gives other frames.
    from kpcodec import api

    api.decode(kpc, tmp_path / "ignored.mp4", model="tiny")  # same detector, no fusion: base ignored
    from kpcodec.media.video import read_frames

    with_base = np.stack(list(read_frames(str(mp4), size=64)))
    without = np.stack(list(read_frames(str(tmp_path / "ignored.mp4"), size=64)))
    assert with_base.shape == without.shape == (24, 64, 64, 3)
    assert np.abs(with_base.astype(int) - without).mean() > 0.5


def test_the_mix_weighs_the_rendering_against_the_moved_base():
    net = load_model("tiny-hybrid")
    torch.manual_seed(2)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        kp, jac = net.detect(x)
        state = net.prepare_source(x[:1])
        base = torch.rand(3, 3, 32, 32)
        image, moved = net.render_parts(state, kp, jac, base, kp.flip(0), jac.flip(0))
        assert torch.equal(net.render(state, kp, jac, base, kp.flip(0), jac.flip(0)), image)
        assert torch.equal(net.render(state, kp, jac, base, kp.flip(0), jac.flip(0), mix=torch.ones(3)), image)
        zero = net.render(state, kp, jac, base, kp.flip(0), jac.flip(0), mix=torch.zeros(3))  # no generator run
        assert torch.allclose(zero, moved, atol=1e-6)
        half = net.render(state, kp, jac, base, kp.flip(0), jac.flip(0), mix=torch.tensor([0.5, 1.0, 0.0]))
        assert torch.allclose(half[0], (image[0] + moved[0]) / 2, atol=1e-6)
        assert torch.allclose(half[1], image[1]) and torch.allclose(half[2], moved[2], atol=1e-6)


def test_the_encoder_fits_the_mix_and_the_decoder_applies_it(runner, clip48, tmp_path):
    """--base-mix auto fits the least-squares weight on a sample of frames (kpcodec.codec.fusion);
    a fixed one is recorded as asked; the decoded frames follow it; a 2.0 reader's file (mix 1)
    has no mix field."""
    from kpcodec.codec import fusion
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    out = {}
    for mix in ("auto", "1", "0", "0.5"):
        kpc = tmp_path / f"m{mix}.kpc"
        r = run(runner, "encode", clip48, "-o", kpc, "--model", "tiny-hybrid", "--base-layer", "32@2:50",
                "--base-mix", mix)
        assert r.exit_code == 0, r.stderr
        info = json.loads(run(runner, "info", kpc, "--json").stdout)
        out[mix] = info["base_layer"]["mix"]
        assert info["format_version"] == "2.2"  # a base layer (2.2's BASE packets), with or without a mix
        assert run(runner, "decode", kpc, "-o", tmp_path / f"m{mix}.mp4").exit_code == 0
    assert (out["1"], out["0"], out["0.5"]) == (1.0, 0.0, 0.5) and 0.0 <= out["auto"] <= 1.0
    frames = {m: np.stack(list(Decoder(bitstream.read_file(tmp_path / f"m{m}.kpc"), DecodeOptions(threads=1))
                                .frames())).astype(np.float32) for m in out}
    np.testing.assert_allclose(frames["0.5"], (frames["0"] + frames["1"]) / 2, atol=1.01)
    assert np.abs(frames["0"] - frames["1"]).mean() > 1  # the mix changes the picture
    # The fit: the least-squares weight of the sample's frames (here the original is the base's mean
    # with the rendering, so w = 0.5).
    r = run(runner, "encode", clip48, "-o", tmp_path / "x.kpc", "--model", "tiny-hybrid", "--base-mix", "0.5")
    assert r.exit_code == 2 and "--base-mix needs a base layer" in r.stderr
    r = run(runner, "encode", clip48, "-o", tmp_path / "x.kpc", "--base-layer", "32", "--model", "tiny-hybrid",
            "--base-mix", "2")
    assert r.exit_code == 2 and "--base-mix must be auto or a number from 0 to 1" in r.stderr


def test_the_sample_is_flat_spans_the_clip_and_every_phase_of_a_divisor():
    """The frames a mix is fitted and a choice judged on: at most `cap` held, over the whole input,
    and not only base frames (every stride-th frame would be, for divisors 2 and 4)."""
    from kpcodec.codec import fusion

    sample = fusion.FrameSample(cap=48)
    before = None
    for i in range(2000):
        sample.push(i, None)
        if sample.stride == 16 and before is None:
            before = set(sample.frames)
        assert len(sample.frames) <= 48
    held = sorted(sample.frames)
    assert sample.stride > 16 and len(held) >= 12 and held[-1] > 1500
    for d in (2, 3, 4):
        assert {t % d for t in held} == set(range(d)), d
    assert set(held) <= before | set(range(max(before) + 1, 2000))  # a doubled stride keeps a subset


def test_fit_mix_is_the_least_squares_weight(clip48):
    from kpcodec import api
    from kpcodec.codec import fusion
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        kpc = Path(d) / "a.kpc"
        api.encode(clip48, kpc, model="tiny-hybrid", base_layer="32@2:50", base_mix=1.0)
        stream = bitstream.read_file(kpc)
    dec = Decoder(stream, DecodeOptions(threads=1))
    dec.parts = True
    pairs = list(dec.frames())
    # an "input" half-way between each rendering and its moved base: the fit finds 0.5
    sample = {t: ((g.astype(np.float32) + b) / 2).round().astype(np.uint8) for t, (g, b) in enumerate(pairs)
              if t % 3 == 0}
    assert abs(fusion.fit_mix(stream, sample, threads=1) - bitstream.MIX_FULL // 2) <= 1
    sample = {t: b for t, (g, b) in enumerate(pairs) if t % 3 == 0}  # the base itself: 0
    assert fusion.fit_mix(stream, sample, threads=1) == 0


@pytest.mark.parametrize("keep", [1, 2, 4])
def test_a_fixed_base_layer_keeps_the_keep_every_asked_for(runner, clip48, tmp_path, keep):
    kpc = tmp_path / "h.kpc"
    r = run(runner, "encode", clip48, "-o", kpc, "--model", "tiny-hybrid", "--base-layer", "32@2:63",
            "--keep-every", str(keep))
    assert r.exit_code == 0, r.stderr
    s = bitstream.read_file(kpc)
    assert s.header.keep_every == keep and list(s.sent_indices) == list(range(0, 24, keep))


def test_base_layer_needs_a_hybrid_model(runner, clip48, tmp_path):
    r = run(runner, "encode", clip48, "-o", tmp_path / "x.kpc", "--model", "tiny", "--base-layer", "32")
    assert r.exit_code == 2 and "cannot use a base layer" in r.stderr
    assert not (tmp_path / "x.kpc").exists()


def test_bad_base_packets_are_one_line_or_keypoint_only_frames(runner, clip48, tmp_path):
    kpc = tmp_path / "h.kpc"
    assert run(runner, "encode", clip48, "-o", kpc, "--model", "tiny-hybrid", "--base-layer", "32@2").exit_code == 0
    stream = bitstream.read_file(kpc)
    stream.base.packets[0] = b"\xff" * 40  # the key frame, garbage
    bad = tmp_path / "bad.kpc"
    bitstream.write_file(bad, stream)
    r = run(runner, "decode", bad, "-o", tmp_path / "bad.mp4")
    assert r.exit_code == 1 and "base-layer frame 0" in r.stderr and str(bad) in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "bad.mp4").exists()
    r = run(runner, "decode", bad, "-o", tmp_path / "ok.mp4", "--ignore-errors")
    assert r.exit_code == 0 and "did not decode" in r.stderr
    assert (tmp_path / "ok.mp4").is_file()


# --------------------------------------------------------------------------- rate control

def test_bitrate_parsing_and_plan():
    assert ratecontrol.parse_bitrate("6k") == 6.0 and ratecontrol.parse_bitrate("6500") == 6.5
    for bad in ("fast", "0k", "-3k", "5000k"):
        with pytest.raises(UsageError):
            ratecontrol.parse_bitrate(bad)
    assert ratecontrol.plan().mode == "off" and ratecontrol.plan(bitrate="6k").mode == "auto"
    with pytest.raises(UsageError):
        ratecontrol.plan("96@3", "6k")


@pytest.mark.parametrize("target", [6.0, 10.0])
def test_bitrate_lands_within_15_percent_on_the_sample(runner, tmp_path, target):
    kpc = tmp_path / "s.kpc"
    r = run(runner, "encode", SAMPLE, "-o", kpc, "--model", "tiny-hybrid", "--bitrate", f"{target:g}k",
            "--no-audio")
    assert r.exit_code == 0, r.stderr
    assert "choices by their decoded pictures" in r.stderr  # 8 s: the whole clip in the look-ahead
    info = json.loads(run(runner, "info", kpc, "--json").stdout)
    assert info["base_layer"] is not None
    assert abs(info["kbps"] / target - 1) <= 0.15, info["kbps"]


def test_below_the_cheapest_base_layer_the_file_is_keypoint_only(runner, tmp_path):
    kpc = tmp_path / "s.kpc"
    r = run(runner, "encode", SAMPLE, "-o", kpc, "--model", "tiny-hybrid", "--bitrate", "1k", "--no-audio")
    assert r.exit_code == 0, r.stderr
    assert bitstream.read_file(kpc).base is None


def test_a_rate_target_judges_its_choices_by_their_pictures_and_keeps_the_best():
    """A clip that fits the look-ahead: one candidate per source quality tried (with the base layer
    that fits what it leaves) and the keypoint-only file, each decoded on the sample; the file
    written is the one whose sample looked best."""
    from kpcodec.codec.encoder import Encoder
    from kpcodec.media import video
    from kpcodec.options import EncodeOptions

    frames = list(video.read_frames(SAMPLE, 64))
    with Encoder(EncodeOptions(bitrate="10k", model="tiny-hybrid", audio=False), video.probe(SAMPLE).fps,
                 len(frames)) as enc:
        packets = [p for f in frames for p in enc.push(f)]
        data = bitstream.packets.join(packets + enc.flush())
    judged = enc.rdo
    assert len(judged) >= 2 and any(c.base is None for c, _ in judged) and any(c.base is not None for c, _ in judged)
    assert all(0 < score <= 1 for _, score in judged)
    best, _ = max(judged, key=lambda j: j[1])
    stream = bitstream.loads(data)
    assert (stream.base is None) == (best.base is None)
    if best.base is not None:  # judged at the search's fast preset; written at the file's, at the CRF that fits
        assert (stream.base.size, stream.base.divisor, stream.base.alone) == (best.base.size, best.base.divisor,
                                                                             best.base.alone)
        s = baselayer.BaseLayerSettings(stream.base.size, stream.base.divisor, stream.base.crf, stream.base.alone,
                                        stream.base.placed)
        assert stream.base.placed == stream.base.alone  # the rate control places a base layer alone's frames
        assert stream.base.packets == baselayer.encode_clip(frames, s, video.probe(SAMPLE).fps,
                                                            positions=stream.base.frames)
    if stream.base is not None and stream.base.alone:  # no source image to raise
        assert enc.source_quality is None and stream.source_data == b""
    else:
        assert stream.base is None or enc.source_quality >= best.quality


def test_the_crf_search_finds_the_lowest_crf_that_fits_in_few_encodes():
    """lowest_fitting_crf against a scan of every CRF, on monotone rate curves of many slopes, levels
    and budgets (some only CRF 63 fits, some the lowest fits): the same answer, and fewer encodes on
    average than a bisection's."""
    import math
    import random

    rng = random.Random(7)
    calls_total = cases = 0
    for _ in range(400):
        slope, level = rng.uniform(0.02, 0.12), rng.uniform(1, 20)
        rates = {c: level * math.exp(slope * (63 - c)) * (1 + rng.uniform(-0.03, 0.03)) for c in range(1, 64)}
        for c in range(62, 0, -1):  # the search assumes the rate falls as the CRF rises
            rates[c] = max(rates[c], rates[c + 1] * 1.001)
        lo = rng.choice([30, 45])
        budget = rng.uniform(rates[63], rates[lo] * 1.2)
        calls = []

        def rate(c):
            calls.append(c)
            return rates[c]

        got = ratecontrol.lowest_fitting_crf(rate, lo, 63, rates[63], budget)
        assert got == min(c for c in range(lo, 64) if rates[c] <= budget)
        assert all(lo <= c < 63 for c in calls) and len(calls) <= 12
        calls_total, cases = calls_total + len(calls), cases + 1
    assert calls_total / cases < 4.5  # a bisection of 30..63 or 45..63 takes 5-7


def test_the_file_s_base_layer_settles_at_the_slow_preset_on_the_lowest_crf_that_fits():
    """The CRF search codes at the fast preset; settle_layer codes at the file's own, stepping the CRF
    down while the rate still fits the budget (or up until it does)."""
    from kpcodec.media import video

    frames = list(video.read_frames(SAMPLE, 64))[:60]
    fps = video.probe(SAMPLE).fps

    def kbps(packets):
        return sum(len(p) + 1 for p in packets) * 8 / (len(frames) / float(fps)) / 1000

    searched = baselayer.BaseLayerSettings(64, 2, 50)
    budget = kbps(baselayer.encode_clip(frames, searched, fps, preset=baselayer.SEARCH_PRESET))
    layer = ratecontrol.settle_layer(frames, fps, searched, budget, crf_min=40)
    assert kbps(layer.packets) <= budget
    settled = baselayer.BaseLayerSettings(64, 2, layer.crf)
    assert layer.packets == baselayer.encode_clip(frames, settled, fps)  # the file's preset
    if layer.crf > 40:
        lower = baselayer.encode_clip(frames, baselayer.BaseLayerSettings(64, 2, layer.crf - 1), fps)
        assert kbps(lower) > budget
    tight = ratecontrol.settle_layer(frames, fps, searched, budget * 0.5, crf_min=40)  # too tight: CRF up
    assert tight.crf > layer.crf


def test_a_clip_longer_than_the_look_ahead_is_judged_on_it(tmp_path):
    """15 s at 3 fps: the rate control's look-ahead (10 s) fills before the end; the choices are
    judged on its frames (the detector caught up first) and the base layer goes on with the winner."""
    from kpcodec.codec.encoder import Encoder
    from kpcodec.media import video
    from kpcodec.options import EncodeOptions

    path = make_clip(tmp_path / "long.mp4", frames=45, size=(96, 96), fps=3)
    frames = list(video.read_frames(path, 64))
    with Encoder(EncodeOptions(bitrate="6k", model="tiny-hybrid", audio=False), video.probe(path).fps,
                 len(frames)) as enc:
        packets = [p for f in frames for p in enc.push(f)]
        assert enc.rdo, "judged when the look-ahead filled, before the end"
        data = bitstream.packets.join(packets + enc.flush())
    judged = enc.rdo
    assert len(judged) >= 2 and any(c.base is None for c, _ in judged) and all(0 < score <= 1 for _, score in judged)
    best, _ = max(judged, key=lambda j: j[1])
    stream = bitstream.loads(data)
    assert stream.header.frame_count == 45
    if best.base is None:
        assert stream.base is None
    else:
        assert stream.base.label == best.base.label
        assert len(stream.base.packets) == stream.base.frame_count(45)  # the whole clip, one stream


def test_the_judge_scores_the_frames_a_receiver_decodes(clip48):
    """fusion.judge's SSIM is the mean SSIM of the sample's frames as the Decoder hands them out (at the
    file's mix; up to the rounding of the two parts it mixes)."""
    from kpcodec import api
    from kpcodec.codec import fusion
    from kpcodec.codec.decoder import Decoder
    from kpcodec.eval import metrics
    from kpcodec.media import video
    from kpcodec.options import DecodeOptions
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        kpc = Path(d) / "a.kpc"
        api.encode(clip48, kpc, model="tiny-hybrid", base_layer="32@2:50", base_mix=0.5)
        stream = bitstream.read_file(kpc)
    originals = list(video.read_frames(clip48, 64))
    sample = {t: originals[t] for t in (0, 3, 5, 8, 13)}
    verdict = fusion.judge(stream, sample, threads=1, fit=False)
    shown = list(Decoder(stream, DecodeOptions(threads=1)).frames())
    expected = np.mean([metrics.ssim(f, shown[t]) for t, f in sample.items()])
    assert verdict.mix == stream.base.mix == bitstream.MIX_FULL // 2
    assert abs(verdict.ssim - expected) < 2e-3
    # keypoint-only: judged as it decodes, no mix
    plain = replace(stream, base=None)
    v = fusion.judge(plain, sample, threads=1)
    shown = list(Decoder(plain, DecodeOptions(threads=1)).frames())
    assert v.mix == bitstream.MIX_FULL
    assert abs(v.ssim - np.mean([metrics.ssim(f, shown[t]) for t, f in sample.items()])) < 1e-6


def test_keypoint_only_takes_the_densest_keep_every_within_the_target():
    rates = {1: 3.4, 2: 2.9, 4: 2.4}
    assert ratecontrol.keypoint_only_keep(4.0, rates) == 1
    assert ratecontrol.keypoint_only_keep(3.0, rates) == 2
    assert ratecontrol.keypoint_only_keep(1.0, rates) == 4  # nothing fits: the cheapest


def test_a_file_under_its_target_spends_the_rest_on_the_source_image_and_one_over_it_saves_there():
    """Under: the highest quality that keeps the file within the target (none above the current: as
    is). Over: the highest lower quality that brings it within, else the lowest."""
    sizes = {5: 600, 10: 800, 20: 1100, 30: 1400, 40: 2000, 50: 2800, 60: 3800, 70: 5000}
    code = lambda q: bytes(sizes[q])  # noqa: E731
    at30 = bytes(1400)
    # 10 s: 1000 other bytes + 2800 = 3.04 kb/s fits 3.1k; 3800 more does not
    assert ratecontrol.fit_source(3.1, 10.0, 1000, 30, at30, code) == (50, bytes(2800))
    assert ratecontrol.fit_source(1.92, 10.0, 1000, 30, at30, code) == (30, None)  # 1.92 kb/s: just fits
    assert ratecontrol.fit_source(100.0, 10.0, 1000, 30, at30, code)[0] == 70
    assert ratecontrol.fit_source(100.0, 10.0, 1000, 70, bytes(5000), code) == (70, None)
    assert ratecontrol.fit_source(1.84, 10.0, 1000, 30, at30, code) == (30, None)  # 4% over: kept
    # over: 1000 + 1100 = 1.68 kb/s is within 1.65k + 5% (q20); 1.5k needs q10 (1.44); 1.0k fits nothing: q5
    assert ratecontrol.fit_source(1.65, 10.0, 1000, 30, at30, code) == (20, bytes(1100))
    assert ratecontrol.fit_source(1.5, 10.0, 1000, 30, at30, code) == (10, bytes(800))
    assert ratecontrol.fit_source(1.0, 10.0, 1000, 30, at30, code) == (5, bytes(600))
    assert ratecontrol.fit_source(1.0, 10.0, 1000, 5, bytes(600), code) == (5, None)  # nothing lower


def test_the_rate_control_raises_the_source_quality_of_a_keypoint_only_file(runner, tmp_path):
    """A target above what keep-every 1 costs: the source image takes the rest (not over it)."""
    kpc = tmp_path / "low.kpc"
    r = run(runner, "encode", SAMPLE, "-o", kpc, "--model", "tiny-hybrid", "--no-audio", "--keep-every", "1",
            "--source-quality", "30")
    assert r.exit_code == 0, r.stderr
    floor = json.loads(run(runner, "info", kpc, "--json").stdout)["kbps"]
    target = floor * 1.6
    r = run(runner, "encode", SAMPLE, "-o", tmp_path / "t.kpc", "--model", "tiny-hybrid", "--no-audio",
            "--bitrate", f"{target:.3f}k", "--base-layer", "off")
    assert r.exit_code == 0, r.stderr
    assert "source image q" in r.stderr and "source image q30" not in r.stderr, r.stderr
    got = json.loads(run(runner, "info", tmp_path / "t.kpc", "--json").stdout)["kbps"]
    assert floor < got <= target, (floor, got, target)


def test_the_source_image_is_spread_over_the_stated_clip_length():
    plan = ratecontrol.plan(bitrate="6k")
    short = ratecontrol.BaseLayerPass(plan, 30, 50, "avif")
    long = ratecontrol.BaseLayerPass(plan, 30, 50, "avif", expected_frames=1800)
    for p in (short, long):
        p._source_bytes, p._buffer = 3000, [None] * p.window
    kp = ratecontrol.KEYPOINT_KBPS[2]
    assert short._estimated_fixed_kbps() - kp == pytest.approx((3000 + ratecontrol.HEADER_BYTES) * 8 / 10 / 1000)
    assert long._estimated_fixed_kbps() - kp == pytest.approx((3000 + ratecontrol.HEADER_BYTES) * 8 / 60 / 1000)


def test_a_target_between_keypoint_rates_picks_keep_every_without_a_base(runner, tmp_path):
    """Where no base layer fits, the rate control picks keep-every for the target."""
    def encode(name, *args):
        kpc = tmp_path / f"{name}.kpc"
        r = run(runner, "encode", SAMPLE, "-o", kpc, "--model", "tiny-hybrid", "--no-audio", *args)
        assert r.exit_code == 0, r.stderr
        return bitstream.read_file(kpc), json.loads(run(runner, "info", kpc, "--json").stdout)["kbps"]

    # At these tiny rates the plan codes the source image at quality 30.
    rate = {k: encode(f"k{k}", "--keep-every", str(k), "--source-quality", "30")[1] for k in (1, 2, 4)}
    assert rate[1] > rate[2] > rate[4]
    for target, keep in ((rate[1] * 1.01, 1), ((rate[1] + rate[2]) / 2, 2), (rate[4] * 0.9, 4)):
        s, _ = encode(f"t{target:.3f}", "--bitrate", f"{target:.3f}k", "--base-layer", "off")
        assert s.base is None and s.header.keep_every == keep, (target, rate)


def test_a_file_left_without_a_base_layer_names_the_keypoint_model(runner, tmp_path):
    """The hybrid model's keypoints are the keypoint model's; where the rate control sends no
    base layer, the file is the keypoint model's (its no-base rendering is better)."""
    from kpcodec.models.registry import DEFAULT_MODEL

    kpc = tmp_path / "s.kpc"
    r = run(runner, "encode", SAMPLE, "-o", kpc, "--bitrate", "1k", "--no-audio")
    assert r.exit_code == 0, r.stderr
    s = bitstream.read_file(kpc)
    assert s.base is None and s.header.model == DEFAULT_MODEL


def test_compare_runs_hybrid_rows_without_keypoint_rows(clip48):
    """kpcodec-hybrid alone: its rate-controlled and its fixed-setting rows, next to av1-low."""
    from kpcodec.eval import classic
    from kpcodec.eval import compare as cmp

    r = cmp.compare(clip48, codecs=("kpcodec-hybrid", "av1-low"), keep_every=(), landmarks=False,
                    hybrid_kbps=(8.0,), hybrid_settings=[(1, "32@2:63")], low_res=[classic.LowRes(32, 2)],
                    low_crfs={"av1-low": (63,)})
    rows = {(row.codec, row.variant) for row in r.rows}
    assert ("kpcodec-hybrid", "k=1 32@2:63") in rows and ("av1-low", "32px@2") in rows
    assert sum(row.codec == "kpcodec-hybrid" for row in r.rows) == 2


def test_evaluate_hybrid_scores_the_three_renderings():
    """The training monitor renders through the decoder's Renderer: with the base layer, without it,
    and the base layer alone, each an SSIM in [0, 1] on a synthetic clip."""
    from kpcodec.models.registry import load_model
    from kpcodec.train.hybrid import MonitorClip, evaluate_hybrid

    model = load_model("tiny-hybrid", inference=True)
    size = model.cfg.image_size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, size, size, 3), dtype=np.uint8)
    base = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    row = evaluate_hybrid(model, MonitorClip("synthetic", frames, base))
    assert row["clip"] == "synthetic"
    assert all(0.0 <= row[k] <= 1.0 for k in ("ssim", "ssim_no_base", "ssim_base_only"))
    assert row["detail"] > 0
    assert row["ssim"] != row["ssim_no_base"]  # the base layer reaches the generator


def test_adversarial_terms_train_the_generator_side_only():
    """The generator's terms send gradients to the generated frames, not to the discriminator; the
    discriminator's loss falls when it trains on real against constant frames; the detail ratio
    of a blurred frame is below 1 and of the frame itself 1."""
    import torch
    from kpcodec.train import adversarial

    torch.manual_seed(0)
    disc = adversarial.MultiScaleDiscriminator(scales=(1.0, 0.5), expansion=4, max_features=8)
    real = torch.rand(2, 3, 128, 128)
    fake = torch.full((2, 3, 128, 128), 0.5, requires_grad=True)
    disc.requires_grad_(False)
    gan, fm = adversarial.generator_terms(disc, fake, real)
    (gan + fm).backward()
    assert fake.grad is not None and float(fake.grad.abs().sum()) > 0
    assert all(p.grad is None for p in disc.parameters())
    disc.requires_grad_(True)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = adversarial.discriminator_loss(disc, fake, real)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (32, 32, 3)).astype(np.float32)
    blurred = (frame + np.roll(frame, 1, 0) + np.roll(frame, 1, 1) + np.roll(frame, (1, 1), (0, 1))) / 4
    assert adversarial.detail_ratio(frame, frame) == 1.0
    assert adversarial.detail_ratio(blurred, frame) < 0.5
