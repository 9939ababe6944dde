"""The encoder: frames in, .kpc out, one frame at a time.

    with Encoder(EncodeOptions(keep_every=2), fps=Fraction(25)) as enc:
        for frame in frames:            # (enc.size, enc.size, 3) uint8, already cropped and scaled
            out += enc.push(frame)
        out += enc.flush()              # the .kpc bytes

Frame 0 becomes the source image; the frames the send pattern picks go through the detector in
batches (on `threads` workers while the caller goes on producing frames); with keep_every "auto"
every frame is detected and the choice made at the end (kpcodec.codec.adaptive); refresh "auto"
keeps the checked frames and renders them at the end (kpcodec.codec.refresh); a rate target or a
base layer feeds kpcodec.codec.ratecontrol's BaseLayerPass as frames come.

Format 1.x writes a file whole: its header holds the frame count and one range coder codes every
sent frame's keypoints, so `push` returns nothing yet and `flush` the whole file. Memory stays flat
all the same: only keypoints (a few hundred bytes a frame), the checked frames of --refresh auto
and the base layer's packets are kept, never the frames.
"""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np

from kpcodec import bitstream
from kpcodec.bitstream.quantize import DEFAULT_JAC_STEP, DEFAULT_KP_STEP
from kpcodec.codec import ratecontrol as rc
from kpcodec.codec import refresh as rf
from kpcodec.codec.parallel import OrderedPool, torch_thread_count, torch_threads
from kpcodec.codec.patterns import SendPattern
from kpcodec.errors import UsageError
from kpcodec.media import source_image
from kpcodec.options import AUTO, EncodeOptions


def shipped_model(name: str | None):
    """(name, weights sha256, inference model) of a shipped model (default: the registry's)."""
    from kpcodec.models.registry import DEFAULT_MODEL, get_weights
    from kpcodec.models.registry import load_model as load

    name = name or DEFAULT_MODEL
    return name, get_weights(name).sha256, load(name, inference=True)


def keypoint_model_of(sha256: str) -> dict:
    """Header fields naming the default keypoint-only model when it shares the detector of the
    shipped weights `sha256` (the same check as decode --model: the same keypoints), else none."""
    from kpcodec.models.registry import DEFAULT_MODEL, get_weights, shipped_detector_fingerprint

    default = get_weights(DEFAULT_MODEL).sha256
    if shipped_detector_fingerprint(default) == shipped_detector_fingerprint(sha256):
        return {"model": DEFAULT_MODEL, "weights_sha256": default}
    return {}


def thin(every, pattern: SendPattern, count: int):
    """The rows of every-frame detections (sent_idx, kps, jacs) that `pattern` sends."""
    idx, kps, jacs = every
    keep = np.isin(idx, pattern.indices(count))
    return idx[keep], kps[keep], jacs[keep]


class Encoder:
    """Frames of one clip in, the .kpc file out (see the module's docstring)."""

    def __init__(self, options: EncodeOptions, fps: Fraction, frame_count: int | None = None):
        self.options = o = options.checked()
        self.fps = Fraction(fps)
        plan = o.plan
        self.auto = o.keep_every == AUTO
        # auto: the detector sees every frame; the choice comes after.
        self.pattern = (SendPattern.parse(o.keep_pattern) if o.keep_pattern
                        else SendPattern.keep_every(1 if self.auto else o.keep_every))
        # A rate target detects every frame: the rate control may settle on another keep-every.
        self.detected = SendPattern.keep_every(1) if plan.target_kbps is not None else self.pattern
        self.name, self.sha, self.net = shipped_model(o.model or (rc.default_hybrid_model() if plan.wants_base else None))
        if plan.wants_base and not self.net.cfg.base_fusion:
            raise UsageError(f"model {self.name!r} cannot use a base layer "
                             f"(hybrid models: {', '.join(rc.hybrid_models())})")
        self.size = self.net.cfg.image_size
        self.base = (rc.BaseLayerPass(plan, self.fps, o.source_quality, o.source_codec, frame_count or None)
                     if plan.wants_base else None)
        self.checks = rf.CheckFrames(rf.check_spacing(float(self.fps))) if o.refresh == "auto" else None
        from kpcodec.codec.renderer import Detector

        detector = Detector(self.net)

        def detect(chunk):
            kp, jac = detector([f for _, f in chunk])
            return [i for i, _ in chunk], kp, jac

        # Only the frames that are sent go through the detector, in batches, on `threads` workers
        # while the caller goes on producing frames; torch's thread count is set for the encoder's
        # life (decided once: the refresh pass uses it too) and restored by close().
        self._torch = torch_threads(torch_thread_count(o.threads))
        self._torch.__enter__()
        self._pool = OrderedPool(detect, o.threads or 1)
        self._batch: list = []
        self._sent_idx, self._kps, self._jacs = [], [], []
        self.frames = 0
        self.source = None
        self.refreshes: list = []
        self.base_stream = None

    # ------------------------------------------------------------------ frames in
    def push(self, frame: np.ndarray) -> list[bytes]:
        if frame.shape != (self.size, self.size, 3) or frame.dtype != np.uint8:
            raise UsageError(f"frames for this model are {self.size}x{self.size}x3 uint8 (got {frame.shape} {frame.dtype})")
        i = self.frames
        self.frames += 1
        if i == 0:
            self.source = frame
        if self.checks is not None:
            self.checks.add(i, frame)
        if self.base is not None:
            self.base.push(i, frame)
        if self.detected.is_sent(i):
            self._batch.append((i, frame))
            if len(self._batch) == self.options.batch:
                self._collect(self._pool.submit(self._batch))
                self._batch = []
        return []

    def _collect(self, results) -> None:
        for idx, kp, jac in results:
            self._sent_idx.extend(idx)
            self._kps.append(kp)
            self._jacs.append(jac)

    # ------------------------------------------------------------------ file out
    def flush(self, extra_chunks=()) -> list[bytes]:
        """The .kpc file of every frame pushed, with `extra_chunks` ((type, payload), e.g. audio)."""
        if self._batch:
            self._collect(self._pool.submit(self._batch))
            self._batch = []
        self._collect(self._pool.drain())
        if self.frames == 0:
            raise UsageError("no frames were pushed")
        o, count, net = self.options, self.frames, self.net
        sent_idx = np.asarray(self._sent_idx, dtype=np.int64)
        kps = np.concatenate(self._kps).astype(np.float32)
        jacs = np.concatenate(self._jacs).astype(np.float32)
        every = (sent_idx, kps, jacs)
        if self.detected is not self.pattern:
            sent_idx, kps, jacs = thin(every, self.pattern, count)
        spacing = self.pattern.nominal_spacing
        if self.auto:
            from kpcodec.codec.adaptive import choose_sent_frames

            chosen = choose_sent_frames(kps, jacs, o.predictor, o.max_error, DEFAULT_KP_STEP, DEFAULT_JAC_STEP)
            sent_idx, kps, jacs = sent_idx[chosen], kps[chosen], jacs[chosen]
            spacing = min(65535, max(1, round(count / len(chosen))))
        source_data = source_image.encode_image(self.source, o.source_codec, o.source_quality)
        if self.checks is not None:
            self.refreshes, sent_idx, kps, jacs, _ = rf.choose_refreshes(
                net, self.source, self.checks, sent_idx, kps, jacs, count, o.predictor, o.refresh_threshold,
                o.source_codec, o.source_quality, source_data, DEFAULT_KP_STEP, DEFAULT_JAC_STEP)
        header = bitstream.Header(
            model=self.name, weights_sha256=self.sha, width=self.size, height=self.size,
            fps_num=self.fps.numerator, fps_den=self.fps.denominator, frame_count=count, keep_every=spacing,
            num_keypoints=net.cfg.num_keypoints, kp_step=DEFAULT_KP_STEP, jac_step=DEFAULT_JAC_STEP,
            predictor=o.predictor, adaptive=self.auto,
        )
        if o.plan.target_kbps is not None or self.base is not None:
            keep_every = o.keep_every

            def stream_at(k):
                if k == keep_every:
                    return bitstream.KpcStream(header, o.source_codec, source_data, sent_idx, kps, jacs,
                                               refreshes=self.refreshes)
                at = replace(header, keep_every=k)
                return bitstream.KpcStream(at, o.source_codec, source_data,
                                           *thin(every, SendPattern.keep_every(k), count))

            if self.base is not None:
                chosen, self.base_stream = self.base.finish(stream_at, keep_every)
            else:
                chosen = rc.settle_keypoint_only(o.plan, stream_at, count, self.fps, keep_every)
            if chosen != keep_every and not self.refreshes:
                header = replace(header, keep_every=chosen)
                sent_idx, kps, jacs = thin(every, SendPattern.keep_every(chosen), count)
            if self.base_stream is None and o.model is None and net.cfg.base_fusion:
                # No base layer after all: the keypoint model renders it better (the hybrid model's
                # keypoints are the same; its no-base path is only its fallback).
                header = replace(header, **keypoint_model_of(self.sha))
        self.header = header
        stream = bitstream.KpcStream(
            header=header, source_codec=o.source_codec, source_data=source_data, sent_indices=sent_idx,
            keypoints=kps, jacobians=jacs, extra_chunks=list(extra_chunks), refreshes=self.refreshes,
            base=self.base_stream,
        )
        return [bitstream.dumps(stream)]

    @property
    def duration_s(self) -> float:
        return self.frames * self.fps.denominator / self.fps.numerator

    def close(self) -> None:
        self._pool.close()
        if self._torch is not None:
            self._torch.__exit__(None, None, None)
            self._torch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
