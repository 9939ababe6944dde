"""The encoder's choice of a hybrid file's mix: how far the decoder trusts the generator's
rendering against the moved base-layer frame (format 2.1, the HEAD's base-layer mix).

A hybrid decoder shows, per frame with a base frame, moved base + w * (rendering - moved base).
The generator was trained on a few dozen people; on others it under-uses a good base layer (it
trusts the warped source it knows), and on a poor base it should not follow it. Only the encoder,
which has the input, can tell which holds. It decodes its own file (the same Decoder, in `parts`
mode) on a sample of the frames and takes the least-squares w over them:

    w = sum <input - base, rendering - base> / sum |rendering - base|^2,   clipped to [0, 1]

quantized to 1/MIX_FULL. Measured on six val clips (the monitor set, 90 frames each): per-clip w
gains +0.001 SSIM on a 96 px CRF 63 base, +0.010 on 96 px CRF 55 and +0.015 on 128 px CRF 55
(against w = 1); one w per frame would add only +0.001 more.

The sample is every `stride`-th frame, the stride doubling whenever `cap` frames are held, so the
memory stays flat on long inputs and the sample spans the whole clip.
"""
from __future__ import annotations

import numpy as np

from kpcodec import bitstream

SAMPLE_CAP = 48  # frames held for the fit (256x256: 9 MB)


class FrameSample:
    """Every stride-th frame pushed, at most `cap` of them (the stride doubles as needed)."""

    def __init__(self, cap: int = SAMPLE_CAP):
        self.cap, self.stride = cap, 1
        self.frames: dict[int, np.ndarray] = {}

    def push(self, i: int, frame: np.ndarray) -> None:
        if i % self.stride:
            return
        self.frames[i] = frame
        if len(self.frames) > self.cap:
            self.stride *= 2
            self.frames = {t: f for t, f in self.frames.items() if t % self.stride == 0}


def fit_mix(stream: bitstream.KpcStream, sample: dict[int, np.ndarray], threads: int | None = None) -> int:
    """The mix (0..MIX_FULL) of `stream` (a hybrid file, its base layer in) that best matches the
    input frames of `sample` (frame number -> frame); MIX_FULL where nothing can be fitted."""
    from kpcodec.codec.decoder import Decoder
    from kpcodec.options import DecodeOptions

    if stream.base is None or not sample:
        return bitstream.MIX_FULL
    num = den = 0.0
    dec = Decoder(stream, DecodeOptions(threads=threads, audio=False))
    dec.parts = True
    wanted = set(sample)
    dec.late = lambda t: t not in wanted  # the other frames are not rendered (the last one is repeated)
    last = max(wanted)
    for pair in dec.frames():
        t = dec.frame_index
        if t in wanted and not dec.frame_repeated:
            image, moved = pair
            if moved is not None:
                x, g, b = (a.astype(np.float32) for a in (sample[t], image, moved))
                d = g - b
                num += float(np.vdot(x - b, d))
                den += float(np.vdot(d, d))
        if t >= last:
            break
    if not den > 0:
        return bitstream.MIX_FULL
    w = min(1.0, max(0.0, num / den))
    return int(round(w * bitstream.MIX_FULL))
