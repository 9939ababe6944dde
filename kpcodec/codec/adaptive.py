"""Adaptive keep (`--keep-every auto`): send a frame's keypoints only when the decoder's
prediction of them would be too far off.

The encoder has the detector's keypoints for every frame. It runs what the decoder will
run, the file's fill predictor (kpcodec.codec.predictors) on the sent frames' keypoints as the
decoder reconstructs them (kpcodec.bitstream.quantize), and sends frame t as soon as the predicted
keypoints of t are more than `max_error` pixels (mean over keypoints of the L2 distance,
at 256x256) from the detector's. Frame 0 is always sent.

Causal predictors (kpcodec.codec.predictors.OnlineFill): their prediction of frame t does not
depend on frames sent after t, so one pass over the frames decides exactly. With `interp`
(linear interpolation between sent frames, which makes the decoder wait for the next one)
the encoder instead stretches each gap from the last sent frame as far as every frame in it
stays within `max_error` of its interpolation, up to MAX_INTERP_GAP frames: the latency bound.
"""
from __future__ import annotations

import numpy as np

from kpcodec.codec import predictors as predict
from kpcodec.bitstream import quantize as q
from kpcodec.errors import UsageError

PX_AT_256 = 127.5  # [-1, 1] coordinates to pixels at 256x256
DEFAULT_MAX_ERROR = 2.0  # px: below keep-every 2 in rate and error on the val split (benchmarks/results/bitrate.md)
MAX_INTERP_GAP = 8  # frames between sent frames with `interp`: at most 7 frames (280 ms at 25 fps) of latency


def check_predictor(name: str) -> str:
    """The predictor's registry name if the encoder can choose frames for it: a causal one or the
    linear `interp`; UsageError otherwise."""
    entry = predict.get_predictor(name)
    if entry.mode != "causal" and entry.kind != "interp":
        raise UsageError(f"--keep-every auto needs a causal predictor or interp ({name!r} is neither)")
    return entry.name


def check_max_error(value: float) -> float:
    if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
        raise UsageError(f"--max-error must be a positive number of pixels (got {value!r})")
    return float(value)


def keypoint_error_px(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over keypoints of the L2 distance, in pixels at 256x256."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b, axis=-1).mean() * PX_AT_256)


def choose_sent_frames(kps: np.ndarray, jacs: np.ndarray, predictor: str, max_error: float,
                       kp_step: float = q.DEFAULT_KP_STEP, jac_step: float = q.DEFAULT_JAC_STEP) -> np.ndarray:
    """Indices of the frames to send, given every frame's keypoints (T,K,2) and Jacobians."""
    max_error = check_max_error(max_error)
    # What the decoder holds for any sent frame (closed-loop levels are the nearest ones).
    dec_kp = q.decoder_values(kps, kp_step, q.KP_CLIP)
    if predict.get_predictor(check_predictor(predictor)).kind == "interp":
        return _interpolated_gaps(kps, dec_kp, max_error)
    dec_jac = q.decoder_values(jacs, jac_step, q.JAC_CLIP)
    fill = predict.OnlineFill(predictor, dec_kp[0], dec_jac[0])
    sent = [0]
    for t in range(1, len(kps)):
        kp, _ = fill.predict()
        if keypoint_error_px(kp, kps[t]) > max_error:
            sent.append(t)
            fill.commit((dec_kp[t], dec_jac[t]))
        else:
            fill.commit(None)
    return np.asarray(sent, dtype=np.int64)


def _interpolated_gaps(kps: np.ndarray, dec_kp: np.ndarray, max_error: float) -> np.ndarray:
    """Greedy gaps for linear interpolation: from each sent frame a, send the furthest b
    (b - a <= MAX_INTERP_GAP) whose interpolation keeps every frame between within max_error."""
    sent, a, last = [0], 0, len(kps) - 1
    while a < last:
        best = a + 1
        for b in range(a + 2, min(a + MAX_INTERP_GAP, last) + 1):
            w = ((np.arange(a + 1, b) - a) / (b - a))[:, None, None]
            guess = predict.between(dec_kp[a], dec_kp[b], w)  # what the decoder's interp renders
            err = np.linalg.norm(guess - kps[a + 1:b], axis=-1).mean(axis=-1) * PX_AT_256
            if err.max() > max_error:
                break
            best = b
        sent.append(best)
        a = best
    return np.asarray(sent, dtype=np.int64)
