"""Adaptive keep (kpcodec.codec.adaptive) and the online predictor it runs (kpcodec.codec.predictors.OnlineFill)."""
from __future__ import annotations

import numpy as np
import pytest

from kpcodec.codec import adaptive, predictors as predict
from kpcodec.bitstream import quantize as q
from kpcodec.errors import UsageError


def trajectory(frames: int = 60, k: int = 4, seed: int = 0):
    """Smooth keypoint motion with a few jumps, and Jacobians near the identity."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None]
    kp = 0.3 * np.sin(t / 7.0 + rng.uniform(0, 6, (1, k, 2))) + rng.normal(0, 0.004, (frames, k, 2))
    kp[frames // 2:] += 0.05  # a jump
    jac = np.eye(2) + rng.normal(0, 0.05, (frames, k, 2, 2))
    return kp.astype(np.float32), jac.astype(np.float32)


CAUSAL = ["hold", "linear", "rnn", "vrnn"]


@pytest.mark.parametrize("name", CAUSAL)
def test_online_fill_matches_fill_keypoints(name):
    kp, jac = trajectory()
    sent = np.array([0, 1, 2, 5, 9, 10, 20, 33, 34, 50])
    ref = list(predict.fill_keypoints(sent, kp[sent], jac[sent], len(kp), name))
    fill = predict.OnlineFill(name, kp[0], jac[0])
    for t in range(1, len(kp)):
        pk, pj = fill.predict()
        assert pk is fill.predict()[0] or np.array_equal(pk, fill.predict()[0])  # predict() does not advance
        if t in sent:
            fill.commit((kp[t], jac[t]))
        else:
            assert np.array_equal(pk, ref[t][0]) and np.array_equal(pj, ref[t][1]), t
            fill.commit(None)


@pytest.mark.parametrize("name", ["interp", "rnn-interp", "vrnn-sample"])
def test_online_fill_refuses_predictors_that_look_ahead_or_sample(name):
    kp, jac = trajectory(5)
    with pytest.raises(UsageError):
        predict.OnlineFill(name, kp[0], jac[0])


@pytest.mark.parametrize("name", ["linear", "rnn"])
@pytest.mark.parametrize("max_error", [3.0, 6.0])
def test_every_unsent_frame_is_within_the_bound(name, max_error):
    """The guarantee: the decoder's fill of each frame not sent is within max_error px."""
    kp, jac = trajectory()
    idx = adaptive.choose_sent_frames(kp, jac, name, max_error)
    assert idx[0] == 0 and np.all(np.diff(idx) > 0) and idx[-1] < len(kp)
    dec_kp = q.decoder_values(kp[idx], q.DEFAULT_KP_STEP, q.KP_CLIP)
    dec_jac = q.decoder_values(jac[idx], q.DEFAULT_JAC_STEP, q.JAC_CLIP)
    filled = list(predict.fill_keypoints(idx, dec_kp, dec_jac, len(kp), name))
    unsent = sorted(set(range(len(kp))) - set(idx.tolist()))
    assert unsent, "the bound is loose enough to skip something"
    for t in unsent:
        assert adaptive.keypoint_error_px(filled[t][0], kp[t]) <= max_error


@pytest.mark.parametrize("max_error", [0.5, 2.0, 6.0])
def test_interpolated_gaps_keep_every_frame_within_the_bound(max_error):
    """With interp the decoder interpolates between sent frames; the encoder's gaps keep each
    interpolated frame within max_error px, and no gap is longer than the latency bound."""
    kp, jac = trajectory(80)
    idx = adaptive.choose_sent_frames(kp, jac, "interp", max_error)
    assert idx[0] == 0 and idx[-1] == len(kp) - 1 and np.all(np.diff(idx) >= 1)
    assert np.diff(idx).max() <= adaptive.MAX_INTERP_GAP
    dec_kp = q.decoder_values(kp[idx], q.DEFAULT_KP_STEP, q.KP_CLIP)
    dec_jac = q.decoder_values(jac[idx], q.DEFAULT_JAC_STEP, q.JAC_CLIP)
    filled = list(predict.fill_keypoints(idx, dec_kp, dec_jac, len(kp), "interp"))
    unsent = sorted(set(range(len(kp))) - set(idx.tolist()))
    assert unsent
    for t in unsent:
        assert adaptive.keypoint_error_px(filled[t][0], kp[t]) <= max_error + 1e-4  # float32 rounding
    looser = adaptive.choose_sent_frames(kp, jac, "interp", 2 * max_error)
    assert len(looser) <= len(idx)


def test_bound_controls_the_rate():
    kp, jac = trajectory()
    counts = [len(adaptive.choose_sent_frames(kp, jac, "linear", e)) for e in (0.01, 1.0, 3.0, 1e9)]
    assert counts[0] == len(kp) and counts[-1] == 1
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "2"])
def test_bad_max_error(bad):
    kp, jac = trajectory(5)
    with pytest.raises(UsageError, match="max-error"):
        adaptive.choose_sent_frames(kp, jac, "linear", bad)


def test_decoder_values_are_what_a_1_1_file_holds():
    from kpcodec import bitstream as bs

    kp, jac = trajectory(12, k=3)
    idx = np.array([0, 3, 4, 11])
    header = bs.Header("tiny", "ab" * 32, 64, 64, 25, 1, 12, 3, 3, q.DEFAULT_KP_STEP, q.DEFAULT_JAC_STEP, "linear",
                       adaptive=True)
    out = bs.loads(bs.dumps(bs.KpcStream(header, "png", b"x", idx, kp[idx], jac[idx])))
    assert np.array_equal(out.keypoints, q.decoder_values(kp[idx], q.DEFAULT_KP_STEP, q.KP_CLIP))
    assert np.array_equal(out.jacobians, q.decoder_values(jac[idx], q.DEFAULT_JAC_STEP, q.JAC_CLIP))


def test_documented_default_bound():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "man" / "kpcodec.1").read_text()
    assert adaptive.DEFAULT_MAX_ERROR == 2.0
    assert "predicted and the detected keypoint; default 2)" in text
