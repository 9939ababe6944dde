"""The encoder: frames in, .kpc 2.0 packets out, as they come.

    with Encoder(EncodeOptions(keep_every=2), fps=Fraction(25)) as enc:
        for frame in frames:            # (enc.size, enc.size, 3) uint8, already cropped and scaled
            packets += enc.push(frame)  # kpcodec.bitstream.packets.Packet
        packets += enc.flush()
    data = bitstream.packets.join(packets)  # the .kpc file

Frame 0 becomes the source image (HEAD and SOURCE come out with it); the frames the send pattern
picks go through the detector in batches (on `threads` workers while the caller goes on producing
frames) and into keypoint packets of `packet_frames` sent frames. `--keep-every auto` decides each
frame as its keypoints come (kpcodec.codec.adaptive.Chooser: at once for causal predictors, at
most 8 frames later with `interp`); `--refresh auto` checks a frame once the next sent frame is
known (kpcodec.codec.refresh.RefreshStage), so packets come out a detector batch and a keep-every
gap behind the input. A rate target or a base layer (kpcodec.codec.ratecontrol) settles its
choices on the whole clip: then every packet comes out of `flush`. Memory stays flat: only
keypoints waiting for a packet, the frames waiting for a check and the base layer's packets are
kept, never the video.
"""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np

from kpcodec import bitstream
from kpcodec.bitstream import packets as pk
from kpcodec.bitstream.quantize import DEFAULT_JAC_STEP, DEFAULT_KP_STEP
from kpcodec.codec import adaptive, fusion, motion
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
    """Frames of one clip in, its .kpc 2.0 packets out (see the module's docstring)."""

    def __init__(self, options: EncodeOptions, fps: Fraction, frame_count: int | None = None):
        self.options = o = options.checked()
        self.fps = Fraction(fps)
        plan = o.plan
        self.auto = o.keep_every == AUTO
        # auto: the detector sees every frame; the choice comes after.
        self.pattern = (SendPattern.parse(o.keep_pattern) if o.keep_pattern
                        else SendPattern.keep_every(1 if self.auto else o.keep_every))
        # A rate target detects every frame: the rate control may settle on another keep-every.
        self.detected = SendPattern.keep_every(1) if plan.target_kbps is not None or plan.sends_motion else self.pattern
        self.name, self.sha, self.net = shipped_model(o.model or (rc.default_hybrid_model() if plan.wants_base else None))
        if plan.wants_base and not self.net.cfg.base_fusion:
            raise UsageError(f"model {self.name!r} cannot use a base layer "
                             f"(hybrid models: {', '.join(rc.hybrid_models())})")
        self.size = self.net.cfg.image_size
        rdo = plan.target_kbps is not None  # a rate target's split is judged by its pictures
        self.base = (rc.BaseLayerPass(plan, self.fps, o.source_quality, o.source_codec, frame_count or None,
                                      source_at=self._source_at if rdo else None,
                                      pick=self._pick if rdo else None,
                                      motion_kbps=self._motion_kbps if plan.sends_motion else None)
                     if plan.wants_base else None)
        # the frames the base-layer mix is fitted on and a rate target's choices are judged on
        # (kpcodec.codec.fusion)
        self.mix_sample = (fusion.FrameSample() if self.base is not None
                           and (o.base_mix == AUTO or plan.target_kbps is not None) else None)
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
        self.source_data = None
        self.source_quality = o.source_quality  # rate control may raise it (keypoint-only under its target)
        self._source_cache: dict[int, bytes] = {}  # quality -> frame 0 coded at it (rate control)
        self.rdo: list = []  # a rate target's judged choices: (rc.Choice, sample SSIM)
        self.refreshes: list = []
        self.base_stream = None
        # Packets as frames come, unless a rate target or a base layer settles on the whole clip.
        self.streaming = plan.target_kbps is None and self.base is None
        self.chooser = adaptive.Chooser(o.predictor, o.max_error) if self.auto and self.streaming else None
        self.stage = None  # the refresh stage, made with frame 0
        self.sent_frames = 0
        self.header = bitstream.Header(
            model=self.name, weights_sha256=self.sha, width=self.size, height=self.size,
            fps_num=self.fps.numerator, fps_den=self.fps.denominator, frame_count=1,
            keep_every=1 if self.auto else self.pattern.nominal_spacing,
            num_keypoints=self.net.cfg.num_keypoints, kp_step=DEFAULT_KP_STEP, jac_step=DEFAULT_JAC_STEP,
            predictor=o.predictor, adaptive=self.auto)
        self.writer = None
        self._out: list = []
        self.sound = None  # the input's Opus track (set_audio), and its slices still to go out
        self._slices: list = []
        self.audio_bytes = 0  # the AUDIO packets', framing included
        self.base_bytes = 0  # the BASE packets', framing included (as `info` counts them)
        self.keyframes = 0  # keyframes made on request (live mode's feedback) or by keyframe_interval
        self._request = 0  # 1: a keypoint keyframe is asked for, 2: with a new source image
        self._keyframe_at: dict[int, bytes | None] = {}  # sent frame -> its new source image (None: keypoints only)
        self._last_key = 0

    # ------------------------------------------------------------------ frames in
    def push(self, frame: np.ndarray) -> list[pk.Packet]:
        """One frame in; the packets now complete out."""
        if frame.shape != (self.size, self.size, 3) or frame.dtype != np.uint8:
            raise UsageError(f"frames for this model are {self.size}x{self.size}x3 uint8 (got {frame.shape} {frame.dtype})")
        i = self.frames
        self.frames += 1
        if i == 0:
            self._first(frame)
        if self.checks is not None:
            self.checks.add(i, frame)
        if self.mix_sample is not None:
            self.mix_sample.push(i, frame)
        if self.streaming:
            self._keyframe_due(i, frame)
            if i and self._slices:
                self._audio_due((i + 1) / float(self.fps) + pk.AUDIO_SLICE_S)
        if self.detected.is_sent(i):
            self._batch.append((i, frame))
            if len(self._batch) == self.options.batch:
                self._collect(self._pool.submit(self._batch))
                self._batch = []
        if self.base is not None:  # after the detector has this frame: a rate target may judge on it
            self.base.push(i, frame)
        return self._take()

    def set_audio(self, track) -> None:
        """The input's sound (a kpcodec.bitstream.opus.OpusTrack, coded before the frames): its AUDIO
        packets go out about a second ahead of the frames they play with, the first before any
        keypoints."""
        if self.frames:
            raise UsageError("set_audio() comes before the first frame")
        self.sound = track
        self._slices = pk.audio_slices(track)

    def _audio_due(self, t: float) -> None:
        """The AUDIO slices starting before `t` seconds."""
        while self._slices and int(self._slices[0].track.pts[0]) < t * 48000:
            packets = self.writer.audio(self._slices.pop(0))
            self.audio_bytes += sum(len(bytes(p)) for p in packets if p.kind == "A")
            self._out += packets

    def request_keyframe(self, source: bool = False) -> None:
        """Make the next sent frame a keyframe: the keypoints restart there (a receiver that lost
        packets decodes again from it), and with `source` a new source image comes with it."""
        if not self.streaming:
            raise UsageError("keyframes on request need the streaming encoder (no --bitrate, no --base-layer)")
        self._request = max(self._request, 2 if source else 1)

    def _keyframe_due(self, i: int, frame: np.ndarray) -> None:
        o = self.options
        if i and o.keyframe_interval and i - self._last_key >= o.keyframe_interval * float(self.fps):
            self._request = max(self._request, 1)
        if not self._request or i == 0 or not (self.auto or self.pattern.is_sent(i)):
            return
        self._keyframe_at[i] = (source_image.encode_image(frame, o.source_codec, o.source_quality)
                                if self._request == 2 else None)
        self._request, self._last_key = 0, i
        self.keyframes += 1

    def _first(self, frame: np.ndarray) -> None:
        o = self.options
        self.source = frame
        self.source_data = source_image.encode_image(frame, o.source_codec, o.source_quality)
        if not self.streaming:
            return
        self.writer = pk.PacketWriter(self.header, packet_frames=o.packet_frames)
        self._out += self.writer.take() + self.writer.source(0, o.source_codec, self.source_data)
        self._audio_due(pk.AUDIO_SLICE_S)
        if self.checks is not None:
            self.stage = rf.RefreshStage(self.net, self.checks, o.predictor, o.refresh_threshold, o.source_codec,
                                         o.source_quality, self.source_data)

    def _take(self) -> list[pk.Packet]:
        out, self._out = self._out, []
        return out

    def _collect(self, results) -> None:
        for idx, kp, jac in results:
            if not self.streaming:
                self._sent_idx.extend(idx)
                self._kps.append(kp)
                self._jacs.append(jac)
                continue
            for n, i in enumerate(idx):
                if self.chooser:
                    self._send(self.chooser.push(i, kp[n], jac[n], force=i in self._keyframe_at))
                else:  # streaming detects only the pattern's frames
                    self._send([(i, kp[n], jac[n])])

    def _send(self, rows) -> None:
        for i, kp, jac in rows:
            self._emit(self.stage.sent(i, kp, jac, i in self._keyframe_at) if self.stage
                       else [("sent", i, kp, jac)])

    def _emit(self, items) -> None:
        for item in items:
            if item[0] == "source":
                r = item[1]
                self.refreshes.append(r)
                self._out += self.writer.source(r.frame, r.codec, r.data)
            else:
                i = item[1]
                if i in self._keyframe_at:
                    data = self._keyframe_at.pop(i)
                    self._out += (self.writer.source(i, self.options.source_codec, data) if data is not None
                                  else self.writer.restart())
                self.sent_frames += 1
                self._out += self.writer.keypoints(*item[1:])

    # ------------------------------------------------------------------ the end
    def flush(self, extra_chunks=()) -> list[pk.Packet]:
        """The packets still due once every frame is in, with `extra_chunks` ((type, payload), e.g.
        audio) and the END; `header` then holds the frame count."""
        self._catch_up()
        if self.frames == 0:
            raise UsageError("no frames were pushed")
        if not self.streaming:
            return self._whole_clip(extra_chunks)
        count = self.frames
        if self.chooser is not None:
            self._send(self.chooser.flush())
        if self.stage is not None:
            self._emit(self.stage.end(count))
        self._audio_due(float("inf"))
        for kind, payload in extra_chunks:
            self._out += self.writer.extra(kind, payload)
        self._out += self.writer.end(count)
        spacing = min(65535, max(1, round(count / self.sent_frames))) if self.auto else self.header.keep_every
        self.header = replace(self.header, frame_count=count, keep_every=spacing)
        return self._take()

    def _whole_clip(self, extra_chunks) -> list[pk.Packet]:
        """Rate control and the base layer choose on the whole clip: every packet comes now."""
        o, count, net = self.options, self.frames, self.net
        every = sent_idx, kps, jacs = self._detected(count)
        if self.detected is not self.pattern:
            sent_idx, kps, jacs = thin(every, self.pattern, count)
        spacing = self.pattern.nominal_spacing
        if self.auto:
            chosen = adaptive.choose_sent_frames(kps, jacs, o.predictor, o.max_error, DEFAULT_KP_STEP, DEFAULT_JAC_STEP)
            sent_idx, kps, jacs = sent_idx[chosen], kps[chosen], jacs[chosen]
            spacing = min(65535, max(1, round(count / len(chosen))))
        source_data = self.source_data
        if self.checks is not None:
            self.refreshes, sent_idx, kps, jacs, _ = rf.choose_refreshes(
                net, self.source, self.checks, sent_idx, kps, jacs, count, o.predictor, o.refresh_threshold,
                o.source_codec, o.source_quality, source_data, DEFAULT_KP_STEP, DEFAULT_JAC_STEP)
        header = replace(self.header, frame_count=count, keep_every=spacing)
        keep_every = o.keep_every

        def stream_at(k):
            if k == keep_every:
                return bitstream.KpcStream(header, o.source_codec, source_data, sent_idx, kps, jacs,
                                           refreshes=self.refreshes, version=pk.VERSION)
            at = replace(header, keep_every=k)
            return bitstream.KpcStream(at, o.source_codec, source_data,
                                       *thin(every, SendPattern.keep_every(k), count), version=pk.VERSION)

        if self.base is not None:
            choices = self.base.finish(stream_at, keep_every)
        else:
            choices = [rc.Choice(rc.settle_keypoint_only(o.plan, stream_at, count, self.fps, keep_every), None,
                                 o.source_quality)]
        settled = [self._settle(c, every, header, stream_at) for c in choices]
        sample = self.mix_sample.frames if self.mix_sample is not None else {}
        judged = [self._judge(stream, len(settled) > 1, sample) for stream, _ in settled]
        best = self._best(choices, judged) if len(settled) > 1 else 0
        (stream, quality), verdict = settled[best], judged[best]
        finalists = [choices[n] for n in self._finalists(choices, judged, best)]
        twin = rc.BaseLayerPass.without_motion(choices[best]) if judged[best].ssim is not None else None
        if twin is not None:  # the winner without its keypoint offsets, their bits in its base layer, judged too
            finalists.append(twin)
        if len(finalists) > 1:
            # Close at the search's fast preset: each coded at the file's and judged again.
            finals = [self.base.settle(c, release=False) for c in finalists]
            settled = [self._settle(c, every, header, stream_at) for c in finals]
            verdicts = [self._judge(stream, True, sample) for stream, _ in settled]
            self.rdo += [(c, v.ssim) for c, v in zip(finals, verdicts)]
            self.base.release()
            k = max(range(len(finals)), key=lambda j: (verdicts[j].ssim, -j))
            chosen, (stream, quality), verdict = finals[k], settled[k], verdicts[k]
        else:
            chosen = self.base.settle(choices[best]) if self.base is not None else choices[best]
            if chosen is not choices[best]:
                # Judged at the search's fast preset: the winner's base layer coded at the file's (its mix
                # fitted again on it).
                stream, quality = self._settle(chosen, every, header, stream_at)
                verdict = self._judge(stream, False, sample)
        if stream.base is not None:
            stream.base = replace(stream.base, mix=verdict.mix)
        self.header, self.base_stream = stream.header, stream.base
        self.source_data, self.source_quality = stream.source_data, quality
        self.sent_frames = len(stream.sent_indices)
        self.mix_sample = None
        extra = list(extra_chunks)
        if self.sound is not None:
            from kpcodec.bitstream import opus

            extra.insert(0, (opus.CHUNK_TYPE, opus.pack(self.sound)))
        stream.extra_chunks = extra
        packets = pk.stream_packets(stream, o.packet_frames)
        self.audio_bytes = sum(len(bytes(p)) for p in packets if p.kind == "A")
        self.base_bytes = sum(len(bytes(p)) for p in packets if p.kind == "B")
        return packets

    def _source_at(self, quality: int) -> bytes:
        """Frame 0 as a source image at `quality` (coded once per quality)."""
        o = self.options
        if quality not in self._source_cache:
            data = (self.source_data if quality == o.source_quality
                    else source_image.encode_image(self.source, o.source_codec, quality))
            self._source_cache[quality] = data
        return self._source_cache[quality]

    def _settle(self, choice: rc.Choice, every, header, stream_at,
                fill: bool = True) -> tuple[bitstream.KpcStream, int | None]:
        """The file one rate-control choice makes (its mix still to fit) and its source quality: its
        keep-every, the source image at the choice's quality, with `fill` raised to fill a rate target
        or lowered to meet it (fit_source), and the keypoint model in HEAD where no base layer is sent;
        a file of the base layer alone has neither source image nor keypoints (quality None)."""
        o, count = self.options, self.frames
        if choice.base is not None and choice.base.alone:  # no source image, no keypoints (format 2.3)
            base, header = choice.base, replace(header, keep_every=choice.base.divisor)
            if choice.motion and base.cubic:
                base, header = replace(base, motion=self._motion(base, count)), replace(header, kp_step=motion.STEP)
            return bitstream.KpcStream.base_alone(header, base, version=pk.VERSION), None
        keep = o.keep_every
        if choice.keep != keep and not self.refreshes:
            keep = choice.keep
            header = replace(header, keep_every=keep)
            sent_idx, kps, jacs = thin(every, SendPattern.keep_every(keep), count)
        else:
            at = stream_at(keep)
            sent_idx, kps, jacs = at.sent_indices, at.keypoints, at.jacobians
        quality = choice.quality
        source_data = self._source_at(quality)
        base = choice.base
        if fill and o.plan.target_kbps is not None and not self.refreshes:
            # Under its target (keypoint-only, or the largest base layer at its lowest CRF): what is
            # left goes to the source image; over it (a short clip), the source image gives back what
            # it can. The file less its source image's bytes (+4: the image's length field may grow;
            # a mix of 0 in HEAD: the byte the fitted mix may take).
            at = replace(stream_at(keep), source_data=source_data,
                         base=None if base is None else replace(base, mix=0))
            other = len(bitstream.dumps(at)) - len(source_data) + 4
            quality, _ = rc.fit_source(o.plan.target_kbps, count / float(self.fps), other, quality,
                                       source_data, self._source_at)
            source_data = self._source_at(quality)
        if base is None and o.model is None and self.net.cfg.base_fusion:
            # No base layer after all: the keypoint model renders it better (the hybrid model's
            # keypoints are the same; its no-base path is only its fallback).
            header = replace(header, **keypoint_model_of(self.sha))
        return bitstream.KpcStream(
            header=header, source_codec=o.source_codec, source_data=source_data, sent_indices=sent_idx,
            keypoints=kps, jacobians=jacs, refreshes=self.refreshes, base=base, version=pk.VERSION), quality

    def _judge(self, stream: bitstream.KpcStream, score: bool, sample: dict) -> fusion.Verdict:
        """The mix of a hybrid file (fitted on the `sample` frames, or --base-mix) and, where `score`
        asks, the sample's SSIM at it."""
        o = self.options
        if stream.base is not None and o.base_mix != AUTO:
            stream = replace(stream, base=replace(stream.base, mix=round(o.base_mix * bitstream.MIX_FULL)))
        fit = stream.base is not None and not stream.base.alone and o.base_mix == AUTO  # alone: nothing to mix
        if not (fit or score) or not sample:
            return fusion.Verdict(stream.base.mix if stream.base is not None else bitstream.MIX_FULL, None)
        return fusion.judge(stream, sample, o.threads, fit=fit, score=score)

    def _motion(self, base: bitstream.BaseLayer, count: int) -> bitstream.Motion:
        """The keypoint offsets (format 2.6) of a base layer alone's frames between base frames."""
        return self._offsets([base.frame_of(n) for n in range(base.frame_count(count))], base.placed, count)

    def _offsets(self, base_frames, placed: bool, count: int) -> bitstream.Motion:
        _, kps, jacs = self._detected(count)
        return motion.offsets(kps, jacs, list(base_frames), motion.STEP, placed)

    def _motion_kbps(self, base_frames, count: int) -> float:
        """The rate control's cost of the keypoint offsets of base frames at `base_frames` over the first
        `count` frames (the detector caught up first)."""
        self._catch_up()
        m = self._offsets(base_frames, self.options.plan.placed, count)
        return motion.motion_bytes(m) * 8 / (count / float(self.fps)) / 1000

    def _catch_up(self) -> None:
        """The detector's results of every frame pushed so far collected (the batch in hand submitted)."""
        if self._batch:
            self._collect(self._pool.submit(self._batch))
            self._batch = []
        self._collect(self._pool.drain())

    def _detected(self, count: int):
        """(frame numbers, keypoints, Jacobians) of every frame detected below `count`."""
        sent_idx = np.asarray(self._sent_idx, dtype=np.int64)
        kps = np.concatenate(self._kps).astype(np.float32)
        jacs = np.concatenate(self._jacs).astype(np.float32)
        below = sent_idx < count
        return sent_idx[below], kps[below], jacs[below]

    def _pick(self, choices: list, count: int) -> int:
        """The rate control's look-ahead, full on a longer clip: the index of the choice whose file of
        the first `count` frames looks best on the sample's frames among them (the detector caught up
        first; the source image at each choice's quality as it is, the target's fit comes at the end)."""
        o = self.options
        self._catch_up()
        every = self._detected(count)
        header = replace(self.header, frame_count=count, keep_every=o.plan.keep_every)

        def stream_at(k):
            return bitstream.KpcStream(replace(header, keep_every=k), o.source_codec, self.source_data,
                                       *thin(every, SendPattern.keep_every(k), count), version=pk.VERSION)

        sample = {t: f for t, f in self.mix_sample.frames.items() if t < count}
        return self._best(choices, [self._judge(self._settle(c, every, header, stream_at, fill=False)[0], True, sample)
                                    for c in choices])

    def _finalists(self, choices: list, judged: list, best: int) -> list[int]:
        """The choices worth coding at the file's preset and judging again (rc.FINAL_MARGIN): the best
        first; none but it where nothing is close or the choices were not scored."""
        def settles(n):  # a base layer still at the search's preset, scored
            return choices[n].budget_kbps is not None and judged[n].ssim is not None

        if self.base is None or not settles(best):
            return [best]
        close = [n for n in range(len(choices))
                 if n != best and settles(n) and judged[n].ssim >= judged[best].ssim - rc.FINAL_MARGIN]
        return [best] + sorted(close, key=lambda n: -judged[n].ssim)[:rc.FINALISTS - 1]

    def _best(self, choices: list, judged: list) -> int:
        """Rate-distortion: the index of the choice with the best picture on the sample (ties: the
        first, a base layer before keypoints only), recorded in `rdo`."""
        self.rdo = [(c, v.ssim) for c, v in zip(choices, judged)]
        return max(range(len(choices)), key=lambda n: (judged[n].ssim, -n))

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
