"""Keypoint offsets between base frames (format 2.6, MOTION packets) for a stream of the base layer alone.

A decoder moves the base frames around a frame between them to keypoints on a path through the
keypoints it detects on the base frames (MotionModel.between); the frames between lose the motion
that the path does not follow (a mouth opening and closing within a span). The encoder sees the
original frames: it detects keypoints on every one, takes the same path through those of the
original base frames, and sends each frame's deviation from it, quantised at HEAD's kp_step (STEP).
Measured on six val clips at 256@4:58 (runs/exp/kpdev.py, zero-order entropy of the levels), the frames
between gain +0.0047 SSIM for ~0.13 kb/s at a step of 1/32 (4 px at 256 px), +0.0079 for ~0.35 kb/s at
1/64, +0.0093 for ~0.65 kb/s at 1/128; offsets of the Jacobians too add nothing. At 6-8 kb/s 0.2 kb/s more
of the base layer is about +0.002 on every frame: 1/32 it is. The decoder adds the offset to its own path, so the two detections
never mix (true keypoints in place of the decoder's path, without the base frames' own, were worse).
"""
from __future__ import annotations

import numpy as np

from kpcodec import bitstream
from kpcodec.bitstream import packets as pk

STEP = 1.0 / 32.0  # HEAD's kp_step in a stream with keypoint offsets
# A MOTION packet's framing (type, seq, frame, length, CRC) and span: what a packet costs beyond its coded levels.
PACKET_OVERHEAD = 12


def offsets(kps: np.ndarray, jacs: np.ndarray, base_frames, step: float, placed: bool) -> bitstream.Motion:
    """The levels of every frame strictly between base frames (video frames `base_frames`, in order),
    from `kps`/`jacs` detected on every original frame (N, K, 2) / (N, K, 2, 2): the frame's keypoints
    less the cubic path (`placed`: on the base frames' knots, format 2.5; else uniform, 2.4) through those
    of the base frames, as MotionModel.between takes it, divided by `step` and rounded."""
    import torch

    from kpcodec.models.fomm import keypoint_path

    pos = [int(f) for f in base_frames]
    k = kps.shape[1]
    rows = [(n, t) for n in range(len(pos) - 1) for t in range(pos[n] + 1, pos[n + 1])]
    if not rows:
        return bitstream.Motion.empty(k)
    kp, jac = torch.from_numpy(np.asarray(kps, np.float32)), torch.from_numpy(np.asarray(jacs, np.float32))
    ns = [n for n, _ in rows]
    at = [[pos[max(n - 1, 0)], pos[n], pos[n + 1], pos[min(n + 2, len(pos) - 1)]] for n in ns]
    idx = torch.tensor(at)
    a = torch.tensor([(t - pos[n]) / (pos[n + 1] - pos[n]) for n, t in rows], dtype=torch.float32)
    knots = None
    if placed:
        knots = torch.tensor([[pos[n - 1] if n else 2 * pos[n] - pos[n + 1], pos[n], pos[n + 1],
                               pos[n + 2] if n + 2 < len(pos) else 2 * pos[n + 1] - pos[n]] for n in ns],
                             dtype=torch.float32)
    outer = (kp[idx[:, 0]], jac[idx[:, 0]], kp[idx[:, 3]], jac[idx[:, 3]])
    path, _ = keypoint_path(kp[idx[:, 1]], jac[idx[:, 1]], kp[idx[:, 2]], jac[idx[:, 2]], a, outer, knots)
    frames = [t for _, t in rows]
    dev = (kp[frames] - path).double().numpy() / np.float64(step)
    return bitstream.Motion(frames, np.rint(dev).astype(np.int64).reshape(len(frames), 2 * k))


def motion_bytes(motion: bitstream.Motion, packets: int = 1) -> int:
    """What `motion`'s MOTION packets cost, about (one packet of the levels, `packets` framings)."""
    if not motion.frames:
        return 0
    return len(pk.encode_motion(motion.levels)) + PACKET_OVERHEAD * packets
