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


class Chooser:
    """The adaptive choice made as frames come: `push(t, kp, jac)` with every frame's detected
    keypoints in order gives the frames it now decides to send, as (t, kp, jac); `flush()` the rest.
    A causal predictor decides each frame at once; `interp` holds at most MAX_INTERP_GAP frames
    (its look-ahead: the gap it may stretch)."""

    def __init__(self, predictor: str, max_error: float, kp_step: float = q.DEFAULT_KP_STEP,
                 jac_step: float = q.DEFAULT_JAC_STEP):
        self.max_error = check_max_error(max_error)
        self.interp = predict.get_predictor(check_predictor(predictor)).kind == "interp"
        self.predictor, self.kp_step, self.jac_step = predictor, kp_step, jac_step
        self.fill = None
        self.held: list = []  # interp: (t, kp, jac, decoder kp) from the last sent frame on

    def push(self, t: int, kp: np.ndarray, jac: np.ndarray, force: bool = False) -> list[tuple]:
        """`force`: send t whatever the test says, as a keyframe (the predictor restarts there, as
        the decoder's does; causal predictors only)."""
        if force and not self.interp:
            self.fill = None
        if self.interp:
            self.held.append((t, kp, jac, q.decoder_values(kp, self.kp_step, q.KP_CLIP)))
            return [self.held[0][:3]] + self._gaps(False) if len(self.held) == 1 and t == 0 else self._gaps(False)
        if self.fill is None:  # frame 0: always sent
            self.fill = predict.OnlineFill(self.predictor, *self._decoded(kp, jac))
            return [(t, kp, jac)]
        guess, _ = self.fill.predict()
        if keypoint_error_px(guess, kp) > self.max_error:
            self.fill.commit(self._decoded(kp, jac))
            return [(t, kp, jac)]
        self.fill.commit(None)
        return []

    def flush(self) -> list[tuple]:
        return self._gaps(True) if self.interp else []

    def _decoded(self, kp, jac):
        return q.decoder_values(kp, self.kp_step, q.KP_CLIP), q.decoder_values(jac, self.jac_step, q.JAC_CLIP)

    def _gaps(self, final: bool) -> list[tuple]:
        """Greedy gaps for linear interpolation: from the sent frame a (held[0]), send the furthest b
        (b - a <= MAX_INTERP_GAP) whose interpolation keeps every frame between within max_error."""
        out = []
        while len(self.held) > MAX_INTERP_GAP or (final and len(self.held) > 1):
            held = self.held
            a = held[0][3]
            best = 1
            for b in range(2, min(MAX_INTERP_GAP, len(held) - 1) + 1):
                w = (np.arange(1, b) / b)[:, None, None]
                guess = predict.between(a, held[b][3], w)  # what the decoder's interp renders
                truth = np.stack([h[1] for h in held[1:b]])
                err = np.linalg.norm(guess - truth, axis=-1).mean(axis=-1) * PX_AT_256
                if err.max() > self.max_error:
                    break
                best = b
            out.append(held[best][:3])
            self.held = held[best:]
        return out


def choose_sent_frames(kps: np.ndarray, jacs: np.ndarray, predictor: str, max_error: float,
                       kp_step: float = q.DEFAULT_KP_STEP, jac_step: float = q.DEFAULT_JAC_STEP) -> np.ndarray:
    """Indices of the frames to send, given every frame's keypoints (T,K,2) and Jacobians: a
    :class:`Chooser` over them."""
    chooser = Chooser(predictor, max_error, kp_step, jac_step)
    sent = [t for k in range(len(kps)) for t, _, _ in chooser.push(k, kps[k], jacs[k])]
    return np.asarray(sent + [t for t, _, _ in chooser.flush()], dtype=np.int64)
