"""What encode and decode are asked to do, as two small dataclasses checked in one place.

The CLI maps its flags onto these and nothing else; the library (`kpcodec.encode(...)` keyword
arguments), compare and the benchmarks build the same objects. `checked()` returns a copy with
every field validated and its defaults filled in (a UsageError, exit 2, names the flag otherwise),
before any input is read or a model is loaded; torch is not imported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from numbers import Integral

from kpcodec.errors import UsageError

AUTO = "auto"
MAX_THREADS = 256


def parse_keep_every(value) -> int | str:
    """A positive int or "auto" (as --keep-every takes it); UsageError otherwise."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            value = int(value)
        except ValueError:
            raise UsageError(f"--keep-every takes a number >= 1 or 'auto' (got {value!r})") from None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise UsageError(f"--keep-every must be >= 1 or 'auto' (got {value!r})")
    return int(value)


def parse_crop(value) -> tuple[int, int, int, int] | None:
    """None, or x,y,w,h in pixels from "x,y,w,h" or a 4-tuple; UsageError otherwise."""
    if value is None:
        return None
    try:
        x, y, w, h = (int(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise UsageError(f"--crop takes x,y,w,h in pixels (got {value!r})") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise UsageError(f"--crop needs x,y >= 0 and w,h > 0 (got {value!r})")
    return x, y, w, h


def _overridden(cls, options, overrides: dict):
    """`options` (default: `cls()`) with keyword `overrides`; an unknown one is a TypeError."""
    unknown = set(overrides) - {f.name for f in fields(cls) if f.init and f.name != "plan"}
    if unknown:
        raise TypeError(f"unknown option(s) of {cls.__name__}: {', '.join(sorted(unknown))}")
    return replace(options or cls(), **overrides)


def _check_batch(batch) -> None:
    if isinstance(batch, bool) or not isinstance(batch, Integral) or batch < 1:
        raise UsageError(f"batch must be a number >= 1 (got {batch!r})")


def check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not 1 <= int(threads) <= MAX_THREADS):
        raise UsageError(f"--threads must be between 1 and {MAX_THREADS} (got {threads})")
    return None if threads is None else int(threads)


@dataclass(frozen=True)
class EncodeOptions:
    """Options of `kpcodec encode` (each field is the flag of the same name)."""

    keep_every: int | str = 2  # or "auto"
    keep_pattern: str | None = None  # "S:K" replaces keep_every
    max_error: float | None = None  # keep_every "auto" only
    predictor: str | None = None  # recorded in the header as the decoder's default
    refresh: str | None = None  # "off" (default) or "auto"
    refresh_threshold: float | None = None  # refresh "auto" only
    source_codec: str | None = None
    source_quality: int | None = None
    crop: tuple[int, int, int, int] | str | None = None
    model: str | None = None
    audio: bool = True
    audio_bitrate: float = 12.0
    ignore_errors: bool = False
    base_layer: object = None  # "off", "auto", "SIZE[@DIV][:CRF]" or BaseLayerSettings
    bitrate: str | float | None = None  # target total kb/s ("6k"), audio apart
    base_mix: str | float = "auto"  # the rendering's weight against the moved base: fitted, or 0..1
    base_frames: str = "placed"  # a base layer alone under --bitrate: "placed" (format 2.5) or "uniform"
    motion: bool = True  # a base layer alone: send the keypoints' offsets between base frames (format 2.6)
    threads: int | None = None
    batch: int = 8
    packet_frames: int = 128  # sent frames per keypoint packet (kpcodec.bitstream.packets); 1 for live
    keyframe_interval: float | None = None  # seconds between keypoint keyframes (None: only at source images)
    plan: object = field(default=None, compare=False, repr=False)  # set by checked(): the rate plan

    @classmethod
    def of(cls, options: EncodeOptions | None = None, **overrides) -> EncodeOptions:
        """`options` (default: the defaults) with keyword `overrides`, an unknown one a TypeError."""
        return _overridden(cls, options, overrides)

    def checked(self) -> EncodeOptions:
        """A checked copy; checking it again gives the same options."""
        from kpcodec.codec import adaptive, ratecontrol
        from kpcodec.codec import predictors as predict
        from kpcodec.codec import refresh as rf
        from kpcodec.codec.patterns import SendPattern
        from kpcodec.media import audio, source_image

        plan = ratecontrol.plan(self.base_layer, self.bitrate, self.base_frames, self.motion)  # the rate control settles after the look-ahead
        keep_every = parse_keep_every(self.keep_every if plan.target_kbps is None else plan.keep_every)
        source_quality = (plan.source_quality if plan.target_kbps is not None
                          else self.source_quality if self.source_quality is not None
                          else ratecontrol.HYBRID_SOURCE_QUALITY if plan.wants_base else source_image.DEFAULT_QUALITY)
        auto = keep_every == AUTO
        if auto and self.keep_pattern:
            raise UsageError("--keep-every auto and --keep-pattern exclude each other")
        if self.keep_pattern:
            SendPattern.parse(self.keep_pattern)
        if self.max_error is not None and not auto:
            raise UsageError("--max-error needs --keep-every auto")
        max_error = adaptive.check_max_error(adaptive.DEFAULT_MAX_ERROR if self.max_error is None
                                             else self.max_error) if auto else None
        refresh = rf.check_mode(rf.DEFAULT_MODE if self.refresh is None else self.refresh)
        if self.refresh_threshold is not None and refresh != "auto":
            raise UsageError("--refresh-threshold needs --refresh auto")
        threshold = rf.check_threshold(rf.DEFAULT_THRESHOLD if self.refresh_threshold is None
                                       else self.refresh_threshold) if refresh == "auto" else None
        predictor = predict.get_predictor(self.predictor or predict.DEFAULT_PREDICTOR).name
        if auto:
            adaptive.check_predictor(predictor)
        audio_bitrate = audio.check_bitrate(self.audio_bitrate) if self.audio else self.audio_bitrate
        _check_batch(self.batch)
        if isinstance(self.packet_frames, bool) or not isinstance(self.packet_frames, Integral) \
                or not 1 <= self.packet_frames <= 4096:
            raise UsageError(f"--packet-frames must be 1..4096 sent frames (got {self.packet_frames!r})")
        if self.keyframe_interval is not None and (isinstance(self.keyframe_interval, bool) or not isinstance(
                self.keyframe_interval, (int, float)) or not math.isfinite(self.keyframe_interval)
                or self.keyframe_interval <= 0):
            raise UsageError(f"--keyframe-interval must be a positive number of seconds (got {self.keyframe_interval!r})")
        base_mix = check_base_mix(self.base_mix)
        if base_mix != AUTO and not plan.wants_base:
            raise UsageError("--base-mix needs a base layer (--base-layer or --bitrate)")
        return replace(self, keep_every=keep_every, max_error=max_error, predictor=predictor, refresh=refresh,
                       base_mix=base_mix,
                       refresh_threshold=threshold, source_codec=self.source_codec or source_image.DEFAULT_CODEC,
                       source_quality=source_quality, crop=parse_crop(self.crop), audio_bitrate=audio_bitrate,
                       threads=check_threads(self.threads), plan=plan)


def check_base_mix(value) -> str | float:
    """'auto' (the encoder fits it) or a weight in [0, 1] (1: the rendering alone, as format 2.0)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        w = float(value)
    except (TypeError, ValueError):
        w = math.nan
    if isinstance(value, bool) or not 0.0 <= w <= 1.0:
        raise UsageError(f"--base-mix must be auto or a number from 0 to 1 (got {value!r})")
    return w


@dataclass(frozen=True)
class DecodeOptions:
    """Options of `kpcodec decode`."""

    predictor: str | None = None  # default: the one the file names
    model: str | None = None  # render with another shipped model of the same detector
    audio: bool = True
    ignore_errors: bool = False  # a bad base-layer frame is rendered from keypoints alone
    threads: int | None = None
    batch: int = 4
    start: float = 0.0  # seconds: the first frame rendered is the first at or after it
    end: float | None = None  # seconds: frames from it on are not rendered (None: to the end)

    @classmethod
    def of(cls, options: DecodeOptions | None = None, **overrides) -> DecodeOptions:
        return _overridden(cls, options, overrides)

    def checked(self) -> DecodeOptions:
        from kpcodec.codec import predictors as predict

        if self.predictor is not None:
            predict.get_predictor(self.predictor)
        _check_batch(self.batch)
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise UsageError(f"--{name} must be a time in seconds >= 0 (got {value!r})")
        if self.end is not None and self.end <= (self.start or 0):
            raise UsageError(f"--end {self.end:g} is not after --start {self.start or 0:g}")
        return replace(self, threads=check_threads(self.threads))
