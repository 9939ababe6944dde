#!/usr/bin/env python3
"""Make samples/astronaut.mp4: a synthetic 8 s talking-head clip for demos and tests.

Source: scikit-image's ``astronaut()`` image (NASA portrait of Eileen Collins,
public domain), 512x512.  The whole picture is moved like a head on camera —
a slowly varying similarity transform (roll within +-6 degrees, translation
within +-10 px, zoom within +-4%) pivoting on the face, each parameter a sum of
two low-frequency sines with fixed phases — and the chin/lower lip is nudged
down by up to 3 px in a speech-like rhythm.  A fixed 256x256 window around the
face is cut out of every frame (no scaling: 1 output px = 1 source px), and the
200 frames (25 fps) are encoded as H.264 yuv420p CRF 20.

Deterministic: no randomness; reruns give the same frames, and the same bytes
with the same PyAV/x264 build.  Run from anywhere:

    python samples/make_sample.py [--out samples/astronaut.mp4]
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import data

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # so this script runs without installing kpcodec

from kpcodec.media.video import VideoWriter  # noqa: E402

FPS = Fraction(25)
N_FRAMES = 200  # 8 s
SIZE = 256
FACE = (224.0, 110.0)  # (x, y) of the face centre in the 512x512 source: the pivot
WINDOW = (96, 12)  # top-left (x, y) of the fixed 256x256 window: face + shoulders
MOUTH_Y, CHIN_Y, MOUTH_X = 143.0, 168.0, 222.0


def wave(t: float, terms) -> float:
    """Sum of sines: terms are (amplitude, frequency Hz, phase rad)."""
    return sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in terms)


def pose(t: float) -> tuple[float, float, float, float]:
    """(roll radians, tx px, ty px, scale) at time t; amplitudes sum to the limits."""
    roll = np.deg2rad(wave(t, [(3.6, 0.13, 0.4), (2.4, 0.31, 1.9)]))  # +-6 deg
    tx = wave(t, [(6.0, 0.11, 2.1), (4.0, 0.27, 0.7)])  # +-10 px
    ty = wave(t, [(4.0, 0.17, 1.3), (3.0, 0.41, 2.8)])  # +-7 px: nods are smaller
    scale = 1.0 + wave(t, [(0.028, 0.09, 0.3), (0.012, 0.23, 2.2)])  # +-4%
    return roll, tx, ty, scale


def jaw(t: float) -> float:
    """Downward chin offset in px: ~4 Hz syllables under a slow phrase envelope."""
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4.1 * t + 0.9)
    phrase = np.clip(0.5 + 0.7 * np.sin(2 * np.pi * 0.35 * t + 0.2), 0.0, 1.0)
    return 3.0 * syllables * phrase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "samples" / "astronaut.mp4"))
    args = ap.parse_args()

    src = data.astronaut().astype(np.float32)  # 512x512x3 RGB
    # Output pixel grid in source coordinates of the fixed window.
    v, u = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    qx, qy = u + WINDOW[0], v + WINDOW[1]
    cx, cy = FACE

    with VideoWriter(args.out, FPS, (SIZE, SIZE), codec="libx264", crf=20,
                     preset="veryslow") as out:
        for i in range(N_FRAMES):
            t = i / float(FPS)
            roll, tx, ty, s = pose(t)
            # Inverse of x' = c + s R(roll) (x - c) + t: where each window pixel comes from.
            dx, dy = qx - cx - tx, qy - cy - ty
            cos, sin = np.cos(roll), np.sin(roll)
            sx = cx + (cos * dx + sin * dy) / s
            sy = cy + (-sin * dx + cos * dy) / s
            # Jaw: below the mouth line, sample from higher up (content moves down),
            # fading out sideways and below the chin so the collar stays put.
            wx = np.exp(-(((sx - MOUTH_X) / 30.0) ** 2))
            wy = 1.0 / (1.0 + np.exp(-(sy - MOUTH_Y) / 2.0))
            wy *= np.exp(-(np.maximum(sy - CHIN_Y, 0.0) / 14.0) ** 2)
            sy = sy - jaw(t) * wx * wy
            frame = np.empty((SIZE, SIZE, 3), np.float32)
            for c in range(3):  # bicubic; "nearest" replicates edges off the picture
                frame[..., c] = ndimage.map_coordinates(
                    src[..., c], [sy, sx], order=3, mode="nearest"
                )
            out.write(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    print(f"wrote {args.out}: {N_FRAMES} frames, {SIZE}x{SIZE}, {FPS} fps, "
          f"{Path(args.out).stat().st_size} bytes")


if __name__ == "__main__":
    main()
