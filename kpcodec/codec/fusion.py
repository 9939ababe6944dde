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

The sample is about one frame in `stride`, spread over the phases of the base layer's divisor, the
stride doubling whenever `cap` frames are held, so the memory stays flat on long inputs and the
sample spans the whole clip. A rate target judges its choices on the same sample (`judge`: the
mean SSIM of those frames, decoded as a receiver decodes them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpcodec import bitstream

SAMPLE_CAP = 48  # frames held for the fit (256x256: 9 MB)


class FrameSample:
    """About one frame in `stride` of those pushed, at most `cap` of them (the stride doubles as
    needed): those whose spread number (_spread) the stride divides. Not every stride-th frame: that
    would be the base frames only wherever the base layer's divisor divides the stride (2 and 4), and
    a mix fitted or a choice judged there would never see a frame between base frames."""

    def __init__(self, cap: int = SAMPLE_CAP):
        self.cap, self.stride = cap, 1
        self.frames: dict[int, np.ndarray] = {}

    def push(self, i: int, frame: np.ndarray) -> None:
        if _spread(i) % self.stride:
            return
        self.frames[i] = frame
        if len(self.frames) > self.cap:
            self.stride *= 2
            self.frames = {t: f for t, f in self.frames.items() if _spread(t) % self.stride == 0}


def _spread(i: int) -> int:
    """Frame number i hashed (Knuth's multiplicative hash, its upper 16 bits): the frames a stride
    keeps fall on every phase of any divisor, and a doubled stride keeps a subset of them."""
    return ((i * 2654435761) & 0xFFFFFFFF) >> 16


def fit_mix(stream: bitstream.KpcStream, sample: dict[int, np.ndarray], threads: int | None = None) -> int:
    """The mix (0..MIX_FULL) of `stream` (a hybrid file, its base layer in) that best matches the
    input frames of `sample` (frame number -> frame); MIX_FULL where nothing can be fitted."""
    if stream.base is None or not sample:
        return bitstream.MIX_FULL
    return judge(stream, sample, threads, fit=True, score=False).mix


@dataclass(frozen=True)
class Verdict:
    """What one decode of the sample frames says about a file: its mix (fitted, or the file's own),
    and the mean SSIM of those frames at that mix (None without a sample)."""

    mix: int
    ssim: float | None


def judge(stream: bitstream.KpcStream, sample: dict[int, np.ndarray], threads: int | None = None,
          fit: bool = True, score: bool = True) -> Verdict:
    """Decode the frames of `sample` from `stream` (the same Decoder a receiver runs, the other frames
    not rendered): with `fit` and a base layer, the least-squares mix first; then, with `score`, the
    SSIM of the frames at that mix. A keypoint-only file is judged as it decodes."""
    from kpcodec.codec.decoder import Decoder
    from kpcodec.eval import metrics
    from kpcodec.options import DecodeOptions

    mix = stream.base.mix if stream.base is not None else bitstream.MIX_FULL
    if not sample:
        return Verdict(mix, None)
    dec = Decoder(stream, DecodeOptions(threads=threads, audio=False))
    dec.parts = True
    wanted = set(sample)
    dec.late = lambda t: t not in wanted  # the other frames are not rendered (the last one is repeated)
    last = max(wanted)
    pairs = {}  # frame number -> (rendering, moved base or None), uint8 as decoded (kept to score)
    num = den = 0.0
    for pair in dec.frames():
        t = dec.frame_index
        if t in wanted and not dec.frame_repeated and t not in pairs:
            image, moved = pair
            if score:
                pairs[t] = pair
            if moved is not None:
                x, g, b = (a.astype(np.float32) for a in (sample[t], image, moved))
                d = g - b
                num += float(np.vdot(x - b, d))
                den += float(np.vdot(d, d))
        if t >= last:
            break
    if fit and stream.base is not None:
        mix = int(round(min(1.0, max(0.0, num / den)) * bitstream.MIX_FULL)) if den > 0 else bitstream.MIX_FULL
    if not score:
        return Verdict(mix, None)
    w = mix / bitstream.MIX_FULL
    scores = []
    for t, (image, moved) in pairs.items():
        shown = image if moved is None else np.clip(np.rint(moved + w * (image.astype(np.float32) - moved)), 0, 255)
        scores.append(metrics.ssim(sample[t], shown.astype(np.uint8)))
    return Verdict(mix, float(np.mean(scores)) if scores else None)
