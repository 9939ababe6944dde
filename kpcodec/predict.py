"""Filling in the keypoints of frames that were not sent.

A predictor turns the sent frames' keypoints into one (keypoints, Jacobians) pair for every
frame, streaming, in frame order. Causal predictors use only frames already received (no
added latency); `interp` waits for the next sent frame. numpy only: learned predictors plug
in behind the same `PREDICTORS` registry.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .errors import UsageError


def _hold(indices, kps, jacs, frame_count) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    s = 0
    for t in range(frame_count):
        while s + 1 < len(indices) and indices[s + 1] <= t:
            s += 1
        yield kps[s], jacs[s]


def _linear(indices, kps, jacs, frame_count, damping: float = 0.8) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Damped-velocity extrapolation from the last two sent frames (causal)."""
    s = 0
    for t in range(frame_count):
        while s + 1 < len(indices) and indices[s + 1] <= t:
            s += 1
        gap = t - indices[s]
        if gap == 0 or s == 0:
            yield kps[s], jacs[s]
            continue
        span = indices[s] - indices[s - 1]
        velocity = (kps[s] - kps[s - 1]) / span
        # Sum of a geometric series: each further frame moves `damping` times the last.
        travel = damping * (1 - damping ** gap) / (1 - damping)
        yield kps[s] + velocity * travel, jacs[s]


def _interp(indices, kps, jacs, frame_count) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Linear interpolation between the sent frames around each frame (adds latency)."""
    s = 0
    for t in range(frame_count):
        while s + 1 < len(indices) and indices[s + 1] <= t:
            s += 1
        if indices[s] == t or s + 1 == len(indices):
            yield kps[s], jacs[s]
            continue
        a = (t - indices[s]) / (indices[s + 1] - indices[s])
        yield (1 - a) * kps[s] + a * kps[s + 1], (1 - a) * jacs[s] + a * jacs[s + 1]


PREDICTORS = {"hold": _hold, "linear": _linear, "interp": _interp}
DEFAULT_PREDICTOR = "interp"


def fill_keypoints(indices: np.ndarray, kps: np.ndarray, jacs: np.ndarray, frame_count: int,
                   predictor: str = DEFAULT_PREDICTOR) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keypoints (K,2), Jacobians (K,2,2)) for frames 0..frame_count-1, in order."""
    try:
        fn = PREDICTORS[predictor]
    except KeyError:
        raise UsageError(f"unknown predictor {predictor!r} (known: {', '.join(PREDICTORS)})") from None
    return fn(np.asarray(indices), kps, jacs, frame_count)
