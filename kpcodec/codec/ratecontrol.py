"""Rate control and the base-layer pass of `encode` (the hybrid mode).

`--bitrate R` is a target for everything the video costs: header, source image(s), keypoints
and base layer (the audio has its own --audio-bitrate). The encoder knows the source image's
bytes once frame 0 is coded and the keypoints' rate well enough from keep-every (measured on
val, below); the base layer takes the rest. Its settings are chosen on a look-ahead window
(the first WINDOW_S seconds): the largest candidate (size, divisor) whose rate at CRF 63 fits
the base budget, then the lowest CRF (lowest_fitting_crf) so the window's rate is just under it. Where the
whole clip fits in the window (a 10-s clip), the choice is made again at the end with the
keypoints' exact bytes. Below the cheapest base layer's rate the file is keypoint-only.

With the encoder's judge (every `encode --bitrate`), the split of the target is a rate-distortion
choice instead (`BaseLayerPass.candidates`): one candidate per source quality of RDO_QUALITIES,
each with the base layer that fits what its source image leaves, the keypoint-only file, and files
of the base layer alone (format 2.3: no source image, no keypoints; the decoder moves the base
frames around each frame to it by keypoints it detects on them) at ALONE_CANDIDATES; the
encoder decodes each on the same sample of frames (kpcodec.codec.fusion.judge) and keeps the best
picture. A clip that fits the window is judged whole, on exact sizes; a longer one on the window's
frames when it fills (its fixed costs estimated as above), and the base layer goes on with the winner.
A file of the base layer alone carries its keypoint offsets (format 2.6, kpcodec.codec.motion; not with
--no-motion): their exact rate on the buffered frames comes out of its base layer's budget, and on a clip
judged whole the winner is judged again without them, their bits in its base layer (`without_motion`).

The CRF search codes at SVT-AV1's fast preset (baselayer.SEARCH_PRESET); the file's base layer is
coded at the slow one (baselayer.PRESET) at the CRF that fits there (settle_layer). On a clip judged
whole, the choices within FINAL_MARGIN of the best are coded at the slow preset and judged again (a
longer clip's look-ahead keeps the fast preset's verdict). A base layer alone places its base frames
(kpcodec.codec.placement, format 2.5) unless the plan says uniform.

`--base-layer SIZE[@DIV][:CRF]` fixes the settings (no look-ahead); `off` never sends one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from kpcodec.media import baselayer, source_image

from kpcodec import bitstream
from kpcodec.codec import placement
from kpcodec.errors import UsageError

WINDOW_S = 10.0
# Keypoint stream of format 1.3 on the val split, kb/s by keep-every (benchmarks/results/bitrate.md).
KEYPOINT_KBPS = {1: 1.863, 2: 1.295, 4: 0.842}
HEADER_BYTES = 120  # magic, HEAD, KEND and the chunk framing of SRCF/KPRC/BASE, about
# Candidates from the most to the least costly at CRF 63. Fewer frames cost less than fewer
# pixels (AV1 pays a fixed cost per coded frame), and the keypoints move a base frame to the
# frames after it, so the larger sizes come at a lower frame rate. Sizes and ages as trained
# (kpcodec.train.hybrid: 64-128 px, base frames up to 4 video frames old).
CANDIDATES = ((128, 2), (128, 3), (96, 3), (64, 3), (64, 4))
CRF_MIN = 45
CRF_RANGE_TOP = baselayer.CRF_RANGE[1]
# The source image's quality where a base layer may carry the picture's low frequencies (and below
# 2.5k): on six val clips at 96@3:56 with a fitted mix, quality 30 costs 1.4 kb/s less than 50 for
# -0.003 SSIM, 20 another 0.36 kb/s for -0.001, 10 another 0.25 kb/s for -0.002 (runs of
# 2026-12-04); low-resolution AV1 gains ~0.004 SSIM a kb/s there, so 30 it is.
HYBRID_SOURCE_QUALITY = 30
DEFAULT_SETTINGS = baselayer.BaseLayerSettings()  # 96@3:63
MIN_TARGET_KBPS, MAX_TARGET_KBPS = 0.5, 1000.0
BASE_FRAMING = 21  # the BASE chunk's framing and fields, bytes
# Source-image qualities a hybrid file under a rate target is judged at (candidates). Before the base
# layer alone, the best of 5, 15 and 30 differed by clip (runs/exp/rcq, 2026-12-07: 5 on a short clip
# with a detailed background, +0.06 SSIM at 8k against 30; 30 on a still face, +0.017 against 5 at 6k).
# Since, the base layer alone won 104 of 105 val encodes at 3-12k and a hybrid none (hybrid.md,
# 2026-12-07), losing by 0.013-0.021 at 8k (runs/exp/rdo_margin.log): one quality is judged, not three,
# for a third of their cost (each is a CRF search and a decode with the generator).
RDO_QUALITIES = (30,)
# The choices are judged with their base layers coded at the search's fast preset; those within
# FINAL_MARGIN SSIM of the best (at most FINALISTS of them) are coded at the file's preset and judged
# again, and the best of those is the file: the slow preset lowers the CRF that fits by 1-2 steps, by
# more for some sizes than others, which can reorder close choices (the shipped sample at 4k: 192@4:63
# 0.8506 against 128@6:56 0.8498 at the fast preset, 0.868 against 0.876 once coded at preset 2 as
# 192@4:63 and 128@6:54; the whole clip 0.867 against 0.875).
FINAL_MARGIN = 0.01
FINALISTS = 2
# (size, divisor) of the files of the base layer alone a rate target is judged at, the most costly
# first, each at the lowest CRF (down to ALONE_CRF_MIN) that fits. The decoder moves the base frames
# on both sides of a frame to it, so a lower frame rate costs less than a held frame does: on six val
# clips at CRF 52-55, against the base frame held, +0.013 SSIM at 96@3, +0.021 at 128@4, +0.032 at
# 128@6 (+0.004 to +0.008 over a linear blend of the two). 192@4 and 160@3 beat 128@3 by 0.003-0.006
# at 8-12k; 64@6 fits 3k on a clip where nothing else does (runs/exp/alone_cands, 2026-12-07). The
# full size at the same frame rate, 256@4, beat 192@4 on four val clips by -0.000 to +0.004 (mean +0.002)
# at 8k and +0.001 to +0.003 at 12k, where 224@4, 256@6 and 256@8 did not (runs/exp/alone_big.log).
ALONE_CANDIDATES = ((256, 4), (192, 4), (160, 3), (128, 3), (128, 4), (128, 6), (96, 4), (64, 6))
ALONE_CRF_MIN = 30


def parse_bitrate(text) -> float:
    """'6k', '6.5k', '6kb/s' (kb/s) or '6000' (b/s) -> kb/s."""
    if isinstance(text, (int, float)):
        value = float(text) / 1000
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(k|kb/s|kbps|kbit/s)?\s*", str(text).lower())
        if not m:
            raise UsageError(f"--bitrate {text!r}: expected kb/s like 6k or 6.5k, or b/s like 6000")
        value = float(m.group(1)) / (1 if m.group(2) else 1000)
    if not MIN_TARGET_KBPS <= value <= MAX_TARGET_KBPS:
        raise UsageError(f"--bitrate {text!r}: must be {MIN_TARGET_KBPS:g}k..{MAX_TARGET_KBPS:g}k")
    return value


@dataclass(frozen=True)
class Plan:
    """What encode was asked for: base-layer mode and settings, a rate target, and what the rate
    control decided up front (keep-every, source quality)."""

    mode: str  # "off", "auto" or "fixed"
    settings: baselayer.BaseLayerSettings | None = None
    target_kbps: float | None = None
    keep_every: int = 2
    source_quality: int = source_image.DEFAULT_QUALITY
    placed: bool = True  # a base layer alone that the rate control picks places its base frames (2.5)
    motion: bool = True  # a base layer alone sends its keypoints' offsets between base frames (2.6)

    @property
    def wants_base(self) -> bool:
        return self.mode != "off"

    @property
    def sends_motion(self) -> bool:
        """Whether a file of the base layer alone may come and carry keypoint offsets (kpcodec.codec.motion):
        the encoder then detects keypoints on every frame."""
        return self.motion and (self.target_kbps is not None and self.wants_base or
                                (self.settings is not None and self.mode == "fixed" and self.settings.alone))


BASE_FRAMES = ("placed", "uniform")


def plan(base_layer=None, bitrate=None, base_frames: str = "placed", motion: bool = True) -> Plan:
    """Check --base-layer, --bitrate, --base-frames and --motion together."""
    if base_frames not in BASE_FRAMES:
        raise UsageError(f"--base-frames {base_frames!r}: expected {' or '.join(BASE_FRAMES)}")
    target = parse_bitrate(bitrate) if bitrate is not None else None
    if isinstance(base_layer, baselayer.BaseLayerSettings):
        mode, settings = "fixed", base_layer
    else:
        text = (base_layer or ("auto" if target is not None else "off")).strip().lower()
        if text in ("off", "auto"):
            mode, settings = text, None
        else:
            mode, settings = "fixed", baselayer.parse_settings(text, DEFAULT_SETTINGS)
    if target is None:
        return Plan(mode, settings if mode == "fixed" else DEFAULT_SETTINGS if mode == "auto" else None,
                    motion=bool(motion))
    if mode == "fixed":
        raise UsageError("--bitrate picks the base layer itself: use --base-layer auto or off with it")
    # The keypoints' share: keep-every 2 (causal, no latency) unless the target is tiny.
    keep = 2 if target >= 2.5 else 4
    quality = source_image.DEFAULT_QUALITY if target >= 2.5 and mode == "off" else HYBRID_SOURCE_QUALITY
    return Plan(mode, None, target, keep, quality, base_frames == "placed", bool(motion))


def hybrid_models() -> list[str]:
    from kpcodec.models.registry import WEIGHTS, get_config

    return sorted(n for n, w in WEIGHTS.items() if get_config(w.config).base_fusion)


def default_hybrid_model() -> str:
    from kpcodec.models.registry import DEFAULT_HYBRID_MODEL

    if DEFAULT_HYBRID_MODEL is None:
        raise UsageError("this kpcodec ships no hybrid model: use --base-layer off")
    return DEFAULT_HYBRID_MODEL


@dataclass(frozen=True)
class Choice:
    """One way to spend a file's bits: keep-every, the base layer (None: keypoint-only) and the
    source image's quality (the encoder may still raise or lower it to meet the target, fit_source)."""

    keep: int
    base: bitstream.BaseLayer | None
    quality: int
    # A base layer coded at the search's fast preset to be judged: the budget (kb/s) and lowest CRF its
    # own encode settles at (BaseLayerPass.settle); None: the base layer is the file's already.
    budget_kbps: float | None = None
    crf_min: int = CRF_MIN
    # A base layer alone with its keypoint offsets (format 2.6, kpcodec.codec.motion), and their rate, which
    # the budget leaves out.
    motion: bool = False
    motion_kbps: float = 0.0


def _kbps(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / seconds / 1000 if seconds > 0 else 0.0


class BaseLayerPass:
    """Runs beside encode's frame loop: push(i, frame) every frame; finish() -> the choices.

    With `source_at(q)` (frame 0's bytes at quality q) and `pick(choices, frames)` (the index of the
    choice whose picture is best on the first `frames` frames), a rate target is split by
    rate-distortion choice (`candidates`): on the whole clip where it fits the look-ahead (the
    encoder judges the choices finish() returns), else on the look-ahead as it fills (`pick`)."""

    def __init__(self, plan: Plan, fps: Fraction, source_quality: int, source_codec: str,
                 expected_frames: int | None = None, source_at=None, pick=None, motion_kbps=None):
        self.plan = plan
        self.fps = Fraction(fps)
        # The clip's length as the container states it (None: unknown, e.g. a pipe or a camera):
        # the source image's bytes are spread over it, not over the look-ahead alone.
        self.expected_frames = expected_frames
        self.source_quality, self.source_codec = source_quality, source_codec
        self.settings = plan.settings
        self.window = max(1, int(round(WINDOW_S * float(self.fps)))) if plan.target_kbps is not None else 0
        self._buffer: list[np.ndarray] = []
        self._encoder = None
        self._placer = None  # placed base frames (format 2.5): where the frames coded go
        self._packets: list[bytes] = []
        self._placements: dict[int, list[int]] = {}  # divisor -> base frames placed on the buffer
        self._source_bytes = 0
        self.source_at, self.pick = source_at, pick
        # motion_kbps(base frames, frames): the keypoint offsets' rate of a base layer alone with base
        # frames at those video frames, over the first `frames` frames (None: none are sent)
        self.motion_kbps = motion_kbps
        self._decided = False
        self.count = 0
        if self.window == 0:
            self._start(self.settings)

    def _start(self, settings) -> None:
        self.settings = settings
        if settings is not None:
            self._encoder = baselayer.BaseLayerEncoder(settings, self.fps)
            self._placer = placement.Placer(settings.divisor) if settings.placed else None

    def _code(self, i: int, frame: np.ndarray) -> None:
        """Video frame i into the base layer being coded (if it is or makes a base frame)."""
        if self._placer is None:
            self._packets += [p for _, p in self._encoder.push(i, frame)]
        else:
            self._code_placed(self._placer.push(i, frame))

    def _code_placed(self, placed) -> None:
        """The base frames the placer put down, [(video frame, frame)], into the base layer."""
        for _, frame in placed:
            self._packets += [p for _, p in self._encoder.code(frame)]

    def _place(self, divisor: int) -> list[int]:
        """The base frames placed on the buffered frames at a mean spacing of `divisor` (once each)."""
        if divisor not in self._placements:
            self._placements[divisor] = placement.place(self._buffer, divisor)
        return self._placements[divisor]

    def _positions(self, settings) -> list[int] | None:
        return self._place(settings.divisor) if settings is not None and settings.placed else None

    def push(self, i: int, frame: np.ndarray) -> None:
        self.count = i + 1
        if i == 0 and self.window:
            self._source_bytes = len(source_image.encode_image(frame, self.source_codec, self.source_quality))
        if self.window and not self._decided:
            self._buffer.append(frame)
            if len(self._buffer) > self.window:  # a clip of exactly the window decides at the end
                if self.pick is not None:
                    self._choose()
                else:
                    self._decide(self._estimated_fixed_kbps())
            return
        if self._encoder is not None:
            self._code(i, frame)

    def _estimated_fixed_kbps(self, source_bytes: int | None = None) -> float:
        """Header, source image (`source_bytes`, default at the plan's quality) and keypoints, kb/s:
        the source spread over the clip's stated length (at least the look-ahead), the keypoints at
        their val rate."""
        source = self._source_bytes if source_bytes is None else source_bytes
        return _kbps(HEADER_BYTES + source, self._spread_s()) + KEYPOINT_KBPS.get(self.plan.keep_every, KEYPOINT_KBPS[2])

    def _spread_s(self) -> float:
        """Seconds a clip's one-off bytes are spread over: its stated length, at least the look-ahead."""
        return max(len(self._buffer), self.expected_frames or 0) / float(self.fps)

    def _choose(self) -> None:
        """A clip longer than the look-ahead: the candidates on the look-ahead's frames, on the
        estimated fixed cost, judged by the encoder (`pick`); the base layer goes on with the winner's
        settings, and the winner's source quality is the file's."""
        keep = self.plan.keep_every
        choices = self._candidates(lambda q: self._estimated_fixed_kbps(len(self.source_at(q))), keep,
                                   Choice(keep, None, self.source_quality),
                                   _kbps(HEADER_BYTES, self._spread_s()))
        buffer = self._buffer
        best = self.settle(choices[self.pick(choices, len(buffer))])
        self.source_quality = best.quality
        self._decided = True
        self._start(_settings(best.base))
        if self._encoder is not None:
            for j, frame in enumerate(buffer):
                self._code(j, frame)

    def _decide(self, fixed_kbps: float) -> None:
        """Settings for the base budget that `fixed_kbps` leaves; codes the buffered frames."""
        budget = self.plan.target_kbps - fixed_kbps
        self._decided = True
        layer = choose_layer(self._buffer, self.fps, budget)
        self._start(_settings(layer))
        if self._encoder is not None:
            for j, frame in enumerate(self._buffer):
                self._code(j, frame)
        self._buffer = []

    def finish(self, stream_at, keep: int) -> list[Choice]:
        """The choices for the whole clip coded at keep-every `keep`: one, or, with `source_at` on a
        rate target whose look-ahead holds the whole clip, those worth judging by their pictures
        (`candidates`). `stream_at(k)` is the stream without
        a base at keep-every k: its bytes are the exact fixed cost. Where no base layer fits a rate
        target, the keypoint-only file takes the keep-every whose rate comes closest to it
        (keep-every 1 where it fits: the best keypoint-only picture)."""
        if self.window and not self._decided:
            if self.source_at is not None:
                return self.candidates(stream_at, keep)
            # The whole clip was the look-ahead: decide on the exact bytes of everything else
            # (+ the BASE chunk's framing and fields).
            self._decide(_kbps(len(bitstream.dumps(stream_at(keep))) + BASE_FRAMING, self.count / float(self.fps)))
        if self._encoder is None:
            return [Choice(settle_keypoint_only(self.plan, stream_at, self.count, self.fps, keep), None,
                           self.source_quality)]
        if self._placer is not None:
            self._code_placed(self._placer.flush())
        self._packets += [p for _, p in self._encoder.flush()]
        frames = self._placer.placed if self._placer is not None else None
        return [Choice(keep, _layer(self.settings, self._packets, frames), self.source_quality,
                       motion=self.plan.sends_motion and self.settings.alone)]

    def candidates(self, stream_at, keep: int) -> list[Choice]:
        """Rate-distortion choices for a clip that fits the look-ahead, on exact sizes (`stream_at(k)`:
        the file without a base layer at keep-every k): see `_candidates`."""
        seconds = self.count / float(self.fps)
        plain = stream_at(keep)
        others = len(bitstream.dumps(plain)) - len(plain.source_data) + BASE_FRAMING
        only = Choice(settle_keypoint_only(self.plan, stream_at, self.count, self.fps, keep), None, self.source_quality)
        out = self._candidates(lambda q: _kbps(others + len(self.source_at(q)), seconds), keep, only,
                               _kbps(HEADER_BYTES, seconds))
        self._decided = True  # the buffer stays for `settle`
        return out

    def _candidates(self, fixed_kbps, keep: int, keypoints_only: Choice, alone_kbps: float) -> list[Choice]:
        """For each of RDO_QUALITIES, the source image at that quality and the base layer that fits
        what it leaves of the target (`fixed_kbps(q)`: everything else at that quality, choose_settings
        on the buffered frames), each base layer once (with the highest quality it fits with); then
        `keypoints_only`; then, for each of ALONE_CANDIDATES that fits, the base layer alone at the
        lowest CRF that fits what `alone_kbps` (its header) leaves (not one at ALONE_CRF_MIN after
        one that fitted above it: it leaves bits unspent that the costlier one uses). The encoder decodes a
        sample of each and keeps the best picture: which split pays depends on the clip (a still face
        gains more from its source image, a short clip with a detailed background from the base layer)."""
        out, seen = [], set()
        for q in sorted(RDO_QUALITIES, reverse=True):  # where two qualities get the same base layer, the higher
            budget = self.plan.target_kbps - fixed_kbps(q)
            settings = choose_settings(self._buffer, self.fps, budget)
            if settings is not None and settings not in seen:
                seen.add(settings)
                out.append(Choice(keep, self._trial(settings), q, budget, CRF_MIN))
        out.append(keypoints_only)
        fitted = False
        place = self._place if self.plan.placed else None
        for candidate in ALONE_CANDIDATES:
            div, motion = candidate[1], 0.0
            if self.motion_kbps is not None:
                motion = self.motion_kbps(place(div) if place is not None else range(0, len(self._buffer), div),
                                          len(self._buffer))
            budget = self.plan.target_kbps - alone_kbps - motion
            settings = choose_settings(self._buffer, self.fps, budget, (candidate,), ALONE_CRF_MIN, place, alone=True)
            # One that cannot spend the budget even at ALONE_CRF_MIN is not judged where a costlier one can.
            if settings is None or (settings.crf == ALONE_CRF_MIN and fitted):
                continue
            fitted = True
            out.append(Choice(keep, self._trial(replace(settings, alone=True, placed=self.plan.placed)), 0,
                              budget, ALONE_CRF_MIN, self.motion_kbps is not None, motion))
        return out

    @staticmethod
    def without_motion(choice: Choice) -> Choice | None:
        """A judged base layer alone with keypoint offsets, without them: their bits go to the base layer
        (its budget; settle codes it at the CRF that fits); None for any other choice. Where the offsets
        cost a larger share of a low target, the base layer's bits can be worth more (hybrid.md, 3k)."""
        if not choice.motion or choice.budget_kbps is None:
            return None
        return replace(choice, motion=False, motion_kbps=0.0, budget_kbps=choice.budget_kbps + choice.motion_kbps)

    def _trial(self, settings: baselayer.BaseLayerSettings) -> bitstream.BaseLayer:
        """The buffered frames' base layer at the search's fast preset, to be judged (`settle` codes the
        winner's again at the file's preset)."""
        positions = self._positions(settings)
        return _layer(settings, baselayer.encode_clip(self._buffer, settings, self.fps, preset=baselayer.SEARCH_PRESET,
                                                      positions=positions), positions)

    def settle(self, choice: Choice, release: bool = True) -> Choice:
        """The judged `choice` with its base layer coded at the file's preset (settle_layer), at the CRF
        that fits its budget there; the look-ahead's frames are let go unless `release` is False."""
        if choice.base is not None and choice.budget_kbps is not None:
            settings = _settings(choice.base)
            choice = replace(choice, base=settle_layer(self._buffer, self.fps, settings, choice.budget_kbps,
                                                       choice.crf_min, self._positions(settings)), budget_kbps=None)
        if release:
            self.release()
        return choice

    def release(self) -> None:
        """Lets the look-ahead's frames go (the choice is made), and the placements made on them."""
        self._buffer = []
        self._placements = {}


def _settings(layer: bitstream.BaseLayer | None) -> baselayer.BaseLayerSettings | None:
    """The settings a base layer was coded at (None: no base layer)."""
    return None if layer is None else baselayer.BaseLayerSettings(layer.size, layer.divisor, layer.crf, layer.alone,
                                                                  layer.placed)


def _layer(settings: baselayer.BaseLayerSettings, packets, frames=None) -> bitstream.BaseLayer:
    """The BASE of `packets` coded at `settings` (`frames`: where placed base frames are)."""
    return bitstream.BaseLayer(settings.size, settings.divisor, settings.crf, list(packets), alone=settings.alone,
                               cubic=settings.alone, frames=None if frames is None else list(frames))


KEEP_CHOICES = (1, 2, 4)


def settle_keypoint_only(plan: Plan, stream_at, frames: int, fps, keep: int) -> int:
    """Keep-every of a file without a base layer: `keep` as asked, or with a rate target the
    one `keypoint_only_keep` picks from the exact sizes of `stream_at(k)`."""
    if plan.target_kbps is None:
        return keep
    seconds = frames / float(fps)
    return keypoint_only_keep(plan.target_kbps,
                              {k: _kbps(len(bitstream.dumps(stream_at(k))), seconds) for k in KEEP_CHOICES})


# Qualities a file under its rate target may raise its source image to (AVIF q30 -> q50: about +1.3 KB
# and +0.005 SSIM on val, benchmarks/results/source_image.md), and those a file over it lowers it to:
# a 3-4 s clip at 3-4k cannot pay for a q30 image (+69-125% over the target, 2026-12-06). On two val
# clips at 96@3:63, q30 -> q15 saved 0.30-0.45 kb/s for -0.001/-0.005 SSIM, q5 0.47-0.66 kb/s for
# -0.003/-0.010 (benchmarks/results/hybrid-levers.md).
SOURCE_QUALITIES = (40, 50, 60, 70)
SAVING_QUALITIES = (20, 10, 5)
OVER_OK = 1.05  # a file this far over its target keeps its source image (the estimates' noise)


def fit_source(target_kbps: float, seconds: float, other_bytes: int, quality: int, current: bytes,
               code) -> tuple[int, bytes | None]:
    """The source image of a file with a rate target, once everything else in it is known
    (`other_bytes`), as (quality, its bytes), or (`quality`, None) to keep `current`: under the target,
    the highest quality above `quality` whose file stays within it; over it by more than OVER_OK, the
    highest of the lower SAVING_QUALITIES that brings it within that, else the lowest of them (the
    nearest to the target)."""
    def fits(data, slack: float = 1.0) -> bool:
        return _kbps(other_bytes + len(data), seconds) <= target_kbps * slack

    best = (quality, None)
    if fits(current, OVER_OK):
        for q in SOURCE_QUALITIES:
            if q <= quality:
                continue
            data = code(q)
            if not fits(data):
                break
            best = (q, data)
        return best
    for q in SAVING_QUALITIES:
        if q >= quality:
            continue
        best = (q, code(q))
        if fits(best[1], OVER_OK):
            break
    return best


def keypoint_only_keep(target_kbps: float, rates: dict[int, float]) -> int:
    """The keep-every of a keypoint-only file at a rate target: the densest (best) one whose
    rate stays within the target, else the cheapest."""
    fits = [k for k, r in rates.items() if r <= target_kbps]
    return min(fits) if fits else max(rates, key=lambda k: (-rates[k], k))


def _packets_kbps(packets, frames, fps) -> float:
    return _kbps(sum(len(p) + 1 for p in packets), len(frames) / float(fps))


def _rate(frames, fps, settings, positions=None) -> float:
    """The base layer's rate on `frames` at the search's fast preset (`positions`: placed base frames)."""
    return _packets_kbps(baselayer.encode_clip(frames, settings, fps, preset=baselayer.SEARCH_PRESET,
                                               positions=positions), frames, fps)


def settle_layer(frames, fps, settings: baselayer.BaseLayerSettings, budget_kbps: float,
                 crf_min: int = CRF_MIN, positions=None) -> bitstream.BaseLayer:
    """The file's own encode (baselayer.PRESET) of `settings` found by the fast search: its rate at a
    CRF is a few per cent (up to ~15%) lower than the search's, so from the searched CRF it steps down
    while the rate still fits `budget_kbps` (not below `crf_min`), or up until it fits (up to 63)."""
    def coded(crf):
        s = replace(settings, crf=crf)
        packets = baselayer.encode_clip(frames, s, fps, positions=positions)
        return s, packets, _packets_kbps(packets, frames, fps) <= budget_kbps

    s, packets, fits = coded(settings.crf)
    if not fits:
        while not fits and s.crf < CRF_RANGE_TOP:
            s, packets, fits = coded(s.crf + 1)
        return _layer(s, packets, positions)
    while s.crf > crf_min:
        lower, lower_packets, fits = coded(s.crf - 1)
        if not fits:
            break
        s, packets = lower, lower_packets
    return _layer(s, packets, positions)


def choose_layer(frames, fps, budget_kbps: float, candidates=CANDIDATES,
                 crf_min: int = CRF_MIN) -> bitstream.BaseLayer | None:
    """choose_settings, then the file's own encode of them (settle_layer); None where nothing fits."""
    settings = choose_settings(frames, fps, budget_kbps, candidates, crf_min)
    return None if settings is None else settle_layer(frames, fps, settings, budget_kbps, crf_min)


def choose_settings(frames, fps, budget_kbps: float, candidates=CANDIDATES,
                    crf_min: int = CRF_MIN, place=None, alone: bool = False) -> baselayer.BaseLayerSettings | None:
    """The base-layer settings whose rate on `frames` comes closest under `budget_kbps` (CRF down to
    `crf_min`), or None when even the cheapest of `candidates` at CRF 63 does not fit (keypoint-only
    wins there). `place(divisor)`: the base frames placed at that mean spacing (None: every
    divisor-th frame). `alone`: measured as a base layer alone is coded (its in-loop filters off
    where it is restored, BaseLayerSettings.restored)."""
    for size, div in candidates:
        top = baselayer.BaseLayerSettings(size, div, CRF_RANGE_TOP, alone=alone)
        positions = place(div) if place is not None else None
        rate_top = _rate(frames, fps, top, positions)
        if rate_top > budget_kbps:
            continue
        crf = lowest_fitting_crf(lambda c: _rate(frames, fps, replace(top, crf=c), positions), crf_min, CRF_RANGE_TOP,
                                 rate_top, budget_kbps)
        return replace(top, crf=crf)
    return None


# How the base layer's rate grows as the CRF falls, for the search's first guess: log rate about +0.05 a
# CRF step at 128-256 px near CRF 45-60 (192@4 on val: x1.46-1.51 over 7-8 steps, runs/exp/alone_big.log).
LOG_RATE_PER_CRF = 0.05


def lowest_fitting_crf(rate, lo: int, hi: int, rate_hi: float, budget: float) -> int:
    """The lowest CRF in lo..hi whose `rate(crf)` is within `budget`, `rate_hi` = rate(hi) being within
    it; the rate falls as the CRF rises. A guess from LOG_RATE_PER_CRF, then interpolation on the log
    rate between the CRFs known to fit and not to, a bisection step whenever one did not halve the
    bracket: three to four encodes where a bisection of 30..63 takes seven."""
    good, r_good = hi, rate_hi  # fits
    bad = r_bad = None  # the highest CRF known not to fit
    width = hi - lo + 1
    while bad is None or good - bad > 1:
        floor = lo if bad is None else bad + 1
        if bad is None:
            guess = good - math.ceil(math.log(budget / max(r_good, 1e-9)) / LOG_RATE_PER_CRF)
        elif good - bad > width / 2:  # the last step did not halve the bracket
            guess = (bad + good) // 2
        else:
            t = math.log(r_bad / budget) / math.log(r_bad / max(r_good, 1e-9)) if r_bad > r_good else 0.5
            guess = bad + round(t * (good - bad))
        guess = min(good - 1, max(floor, guess))
        width = good - (bad if bad is not None else lo - 1)
        r = rate(guess)
        if r <= budget:
            good, r_good = guess, r
            if guess == lo:
                return lo
        else:
            bad, r_bad = guess, r
    return good
