"""The decoder: stream content in, frames out, as it comes.

    dec = Decoder(bitstream.read_file("in.kpc"), DecodeOptions())
    for frame in dec.frames():          # (H, W, 3) uint8, frame 0 first
        ...

or packet by packet, as an Encoder's come (kpcodec.bitstream.packets.Packet):

    dec = Decoder(packets[0], DecodeOptions())   # the HEAD
    for p in packets[1:]:
        frames += dec.push(p)
    frames += dec.flush()

or from bytes as they arrive: a PacketReader's content items (the Header first) pushed the same way.

The predictor (kpcodec.codec.predictors.Fill) fills the keypoints of the frames that were not sent,
each as soon as the next sent frame is known (it restarts at 2.0 keyframes); the renderer
(kpcodec.codec.renderer) draws each frame from the source image in force at it, whose state is
prepared once, when its first frame is due; a hybrid model fuses the base layer, whose packets are
decoded as they come. A stream of the base layer alone (format 2.3) has no source image and no
keypoints: each frame is its base frame upsampled, or, between two, both moved to it by keypoints
detected on them and blended (MotionModel.between), so a frame waits for the base frame after it
(and, where the model's restorer sees 3 base frames, for the one after that: it restores each base
frame with its neighbours).
`threads` >= 2 renders batches on single-threaded workers, a few in flight
(kpcodec.codec.parallel). Memory does not grow with the clip: frames are handed out as they are
rendered, and only the keypoints of frames waiting for the next sent one are held.
"""
from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from kpcodec import bitstream
from kpcodec.bitstream import packets as pk
from kpcodec.codec import predictors as predict
from kpcodec.codec.parallel import DECODE_MMAP_THRESHOLD, OrderedPool, torch_threads_for
from kpcodec.errors import ModelError
from kpcodec.media import source_image, video
from kpcodec.options import DecodeOptions


def check_weights(header: bitstream.Header, model: str | None = None, name: str = "file"):
    """The model that renders the file `name`: the one its header names, or `model` if that one has
    the same keypoint detector (its keypoints mean the same; only the generator differs)."""
    from kpcodec.models.registry import WEIGHTS, get_weights, load_model, shipped_detector_fingerprint

    entry = WEIGHTS.get(header.model)
    if entry is None:
        raise ModelError(f"{name} was made with model {header.model!r}, which this kpcodec does not ship "
                         f"(have: {', '.join(sorted(WEIGHTS)) or 'none'})")
    if entry.sha256 != header.weights_sha256:
        raise ModelError(f"{name} was made with other weights for {header.model!r} "
                         f"(sha256 {header.weights_sha256[:12]}…, this kpcodec has {entry.sha256[:12]}…)")
    if model is None or model == header.model:
        return load_model(header.model, inference=True)
    other = get_weights(model)
    if shipped_detector_fingerprint(other.sha256) != shipped_detector_fingerprint(entry.sha256):
        raise ModelError(f"model {model!r} has another keypoint detector than {header.model!r}, "
                         f"which made {name}: it cannot render these keypoints")
    return load_model(model, inference=True)


def frame_range(options: DecodeOptions, header: bitstream.Header) -> tuple[int, int | None]:
    """Frames [first, last) of the options' start and end (seconds) at the stream's frame rate."""
    def frame(seconds):
        return None if seconds is None else math.ceil(seconds * header.fps - 1e-9)

    return frame(options.start) or 0, frame(options.end)


class Decoder:
    """Frames of one stream (see the module's docstring): made with its Header (or a whole
    KpcStream, for `frames()`), then `push` each content item, `flush` at the end."""

    def __init__(self, stream: bitstream.KpcStream | bitstream.Header | pk.Packet, options: DecodeOptions | None = None,
                 name: str = "file", base: bitstream.BaseLayer | None = None):
        self.options = o = (options or DecodeOptions()).checked()
        self._reader = None  # for packets pushed as they are (kpcodec.bitstream.packets.Packet)
        if isinstance(stream, pk.Packet):  # the HEAD packet
            self._reader = pk.PacketReader(preamble=False)
            items = self._reader.feed(bytes(stream))
            if not items or not isinstance(items[0], bitstream.Header):
                raise bitstream.KpcFormatError(f"{name}: the first packet is not a HEAD")
            stream, base = items[0], (items[1] if len(items) > 1 else None)
        self.stream = stream if isinstance(stream, bitstream.KpcStream) else None
        self.name = name
        h = self.header = stream.header if self.stream is not None else stream
        base = self.stream.base if self.stream is not None else base
        self.net = net = check_weights(h, o.model, name)
        if (h.width, h.height) != (net.cfg.image_size, net.cfg.image_size) or h.num_keypoints != net.cfg.num_keypoints:
            raise ModelError(f"{name}: its {h.width}x{h.height}, {h.num_keypoints} keypoints do not match model "
                             f"{o.model or h.model!r}")
        # A stream of the base layer alone (format 2.3): no source image, no keypoints (set with the base)
        self.alone = False
        if self.stream is not None and not (base is not None and base.alone):  # checked before any output
            _source(self.stream.source_data, self.stream.source_codec, h)
        self.fill = predict.Fill(o.predictor or predict.file_predictor(h.predictor))
        self.base = None
        self.base_label = None
        self.base_errors: list[int] = []  # base-layer frames that did not decode (ignore_errors)
        self._base_frames: dict = {}  # base frame number -> small frame (None: did not decode)
        self._base_decoder = None
        self._base_decoded = 0  # base frames out of the AV1 decoder (or marked bad)
        self._placed: list[int] = []  # the video frame of each base frame read, in order
        self._offsets: dict[int, np.ndarray] = {}  # frame -> its keypoints' offset from the path (2.6)
        self._motion_until = 0  # the frames before it have their offsets in (those that have any)
        if base is not None:
            self._set_base(base)
        self.frame_count: int | None = None  # known at End
        self.start, self.end = frame_range(o, h)  # frames outside [start, end) are not rendered
        self.done = 0  # frames handed out
        self.frame_index = -1  # the number of the frame handed out last
        # late(t) -> True: frame t is due too late to render; it is handed out as the last frame again
        # (a live receiver that falls behind catches up; the output keeps every frame's slot)
        self.late = None
        self.repeated = 0
        # unsent(t) -> True: frame t will not be sent (a live stream's fixed keep-every); with a causal
        # predictor `ahead` renders such frames in their own slot, not once the next sent frame is in
        self.unsent = None
        self.late_sent = 0  # sent frames that came after `ahead` had predicted their slot: not used
        # True: frames come out as (rendering, moved base or None) pairs, unmixed (an encoder choosing
        # the mix, kpcodec.codec.fusion)
        self.parts = False
        self.render_ms: float | None = None  # a moving average of the time to render a frame
        self._warm = False  # a batch was rendered (the first, warming torch up, is left out of render_ms)
        self.repeat_run = 0  # late frames repeated in a row (a live receiver's policy may look at it)
        self.frame_repeated = False  # the frame handed out last is a repeat
        self._repeats: set[int] = set()
        self._last = None
        self._ready: deque = deque()  # (frame, kp, jac) filled, not yet rendered
        self._sources: deque = deque()  # SourceImage not yet in force
        self._coded = None  # the SourceImage in force
        self._state = None  # its prepared renderer state (None: not yet)
        self._current_base = None
        self._batch: list = []
        self._next = 0  # the next frame to go into a batch
        self.extras: list[tuple[str, bytes]] = []
        from kpcodec.codec.renderer import Renderer

        self._renderer = Renderer(net)
        self._threads = torch_threads_for(o.threads)
        self._threads.__enter__()
        self._pool = OrderedPool(self._render, o.threads or 1, DECODE_MMAP_THRESHOLD)

    def _set_base(self, base: bitstream.BaseLayer) -> None:
        if self.net.cfg.base_fusion or base.alone:
            self.base, self.base_label, self.alone = base, base.label, base.alone

    @property
    def _restorer_frames(self) -> int:
        """The base frames the model's restorer sees (3: it waits for the one after too), 1 where
        it has none or does not restore base frames of this size."""
        return self.net.restorer.frames if self.net.restores(self.base.size) else 1

    @property
    def fuse(self) -> bool:
        return self.base is not None

    @property
    def finished(self) -> bool:
        """Every frame wanted is out (the end of the stream, or of --end)."""
        return (self.frame_count is not None and self._next >= self.frame_count and not self._ready) or \
            (self.end is not None and self._next >= self.end)

    # ------------------------------------------------------------------ content in
    def push(self, item) -> list[np.ndarray]:
        """One packet (kpcodec.bitstream.packets.Packet, in stream order after the HEAD this decoder
        was made with) or one content item a PacketReader gave; the frames it lets out."""
        return list(self.pushing(item))

    def pushing(self, item) -> Iterator[np.ndarray]:
        """:meth:`push`, the frames handed out as each batch is rendered (a packet of many sent
        frames is not held whole as frames)."""
        if isinstance(item, pk.Packet):
            if self._reader is None:
                self._reader = pk.PacketReader.after_head(self.header, self.base)
            for content in self._reader.feed(bytes(item)):
                yield from self.pushing(content)
            return
        if isinstance(item, pk.SentFrames):
            for n, (i, kp, jac) in enumerate(zip(item.indices.tolist(), item.keypoints, item.jacobians)):
                if self.fill.last is not None and i < self.fill.next:  # its slot is already out (ahead)
                    self.late_sent += 1
                    continue
                first = self.fill.next if self.fill.last is not None else i  # a stream joined at a keyframe
                self._queue(first, self.fill.sent(i, kp, jac, item.restart and n == 0 and i != 0))
                yield from self._out(self._run(final=False))
            return
        if isinstance(item, pk.SourceImage):
            _source(item.data, item.codec, self.header)  # a bad image is refused as it comes
            self._sources.append(item)
        elif isinstance(item, pk.BaseFrame):
            if self.fuse:
                self._base_push(item)
        elif isinstance(item, bitstream.BaseLayer):
            self._set_base(item)
        elif isinstance(item, bitstream.Motion):
            self._offsets.update(zip(item.frames, item.offsets(self.header.kp_step)))
            if item.frames:
                self._motion_until = max(self._motion_until, item.frames[-1] + 1)
        elif isinstance(item, pk.Extra):
            self.extras.append((item.kind, item.payload))
        elif isinstance(item, pk.End):
            self.frame_count = item.frame_count
            if not self.alone:
                self._queue(self.fill.next, self.fill.end(item.frame_count))
            if self.fuse:
                self._base_flush()
        elif isinstance(item, bitstream.Header):
            raise bitstream.KpcFormatError(f"{self.name}: a second HEAD")
        yield from self._out(self._run(final=False))

    def ahead(self, upto: int) -> list[np.ndarray]:
        return list(self.aheading(upto))

    def aheading(self, upto: int) -> Iterator[np.ndarray]:
        """The frames up to `upto` (inclusive) that `unsent` says will not be sent, predicted by the
        causal predictor and rendered now (a live receiver calls this as their slots come); stops at
        the first frame that will be sent. Nothing with an interpolating predictor or no `unsent`."""
        if self.unsent is None or self.fill.interpolates or self.fill.last is None or self.frame_count is not None:
            return
        first = stop = self.fill.next
        while stop <= upto and self.unsent(stop):
            stop += 1
        if stop > first:
            self._queue(first, self.fill.ahead(stop))
            yield from self._out(self._run(final=False))

    def _queue(self, first: int, filled: list) -> None:
        self._ready.extend((first + n, kp, jac) for n, (kp, jac) in enumerate(filled))

    def flush(self) -> list[np.ndarray]:
        return list(self.flushing())

    def flushing(self) -> Iterator[np.ndarray]:
        """The frames still due once the stream has ended (or been cut: then up to the last sent
        frame that arrived)."""
        if self.fuse:
            self._base_flush()
        out = self._run(final=True)
        out += self._submit()
        out += self._collect(self._pool.drain())
        yield from self._out(out)

    def frames(self, items=None) -> Iterator[np.ndarray]:
        """Every frame of `items` (default: the whole stream this decoder was made with)."""
        if items is None:
            items = pk.stream_events(self.stream)
            next(items)  # its Header: this decoder's
        try:
            for item in items:
                yield from self.pushing(item)
                if self.finished:
                    break
            yield from self.flushing()
        finally:
            self.close()

    def close(self) -> None:
        self._pool.close()
        if self._threads is not None:
            self._threads.__exit__(None, None, None)
            self._threads = None

    # ------------------------------------------------------------------ base layer
    def _base_push(self, item: pk.BaseFrame) -> None:
        from kpcodec.media import baselayer

        n = len(self._placed)  # base frames come in order
        self._placed.append(item.frame)
        if self._base_decoder is None:
            self._base_decoder = baselayer.BaseLayerDecoder()
        try:
            self._base_store(self._base_decoder.push(item.data))
        except video.VideoError as exc:
            self._base_bad(n, exc)

    def _base_flush(self) -> None:
        if self._base_decoder is not None:
            try:
                self._base_store(self._base_decoder.flush())
            except video.VideoError as exc:
                self._base_bad(self._base_decoded, exc)
            self._base_decoder = None

    def _base_store(self, frames) -> None:
        for small in frames:
            n = self._base_decoded
            self._base_decoded += 1
            if small.shape[:2] != (self.base.size, self.base.size):
                self._base_bad(n, video.VideoError(f"base frame is {small.shape[1]}x{small.shape[0]}, "
                                                   f"BASE says {self.base.size}x{self.base.size}"))
                continue
            self._base_frames[n] = small

    def _base_bad(self, n: int, exc: Exception) -> None:
        if not self.options.ignore_errors:
            raise bitstream.KpcFormatError(f"{self.name}: base-layer frame {n}: {exc}") from None
        self.base_errors.append(n)
        self._base_frames[n] = None
        self._base_decoded = max(self._base_decoded, n + 1)
        from kpcodec.media import baselayer

        self._base_decoder = baselayer.BaseLayerDecoder()  # start again at the next packet

    def _base_in(self, n: int, final: bool) -> bool:
        """Whether base frame n is in `_base_frames` (None there: it did not decode); False while it
        may still come. One that cannot come any more is an error, or with ignore_errors None."""
        if n in self._base_frames:
            return True
        if not final and self.frame_count is None:
            return False
        if not self.options.ignore_errors:
            raise bitstream.KpcFormatError(f"{self.name}: base-layer frame {n}: the base layer ended early")
        self.base_errors.append(n)
        self._base_frames[n] = None
        return True

    def _base_for(self, t: int, kp, jac, final: bool):
        """(ready, base entry) of frame t: the base frame itself on base frames, the last one with
        its keypoints after; not ready while its base frame may still come."""
        if not self.fuse:
            return True, None
        if t % self.base.divisor:
            return True, self._current_base
        n = t // self.base.divisor
        if not self._base_in(n, final):
            return False, None
        small = self._base_frames.pop(n)
        if small is None:
            self._current_base = None
            return True, None
        image = _BaseImage(small, self._renderer)
        self._current_base = (image, kp, jac)
        return True, (image, None, None)

    # ------------------------------------------------------------------ rendering
    def _run(self, final: bool) -> list[np.ndarray]:
        """Batch the frames whose keypoints (and base frame) are in, rendering full batches."""
        if self.alone:
            return self._run_alone(final)
        out = []
        while self._ready and not (self.end is not None and self._next >= self.end):
            t, kp, jac = self._ready[0]
            ok, base = self._base_for(t, kp, jac, final)
            if not ok:
                break
            self._ready.popleft()
            self._next = t + 1
            while self._sources and self._sources[0].frame <= t:
                out += self._submit()  # a batch never straddles a source image
                self._coded, self._state = self._sources.popleft(), None
            if t < self.start:
                continue
            if self._state is None:  # a new source image: prepared once, when its first frame is due
                self._state = self._renderer.prepare(_source(self._coded.data, self._coded.codec, self.header))
            if self._repeat_late(t, out):
                continue
            self._batch.append((t, kp, jac, base))
            if len(self._batch) == self.options.batch:
                out += self._submit()
        return out

    def _repeat_late(self, t: int, out: list) -> bool:
        """True where frame t is due too late (`late`): the batch in hand and the last frame again
        go to `out` in its place (live mode catching up)."""
        if self.late is None or self._last is None or not self.late(t):
            self.repeat_run = 0
            return False
        out += self._submit()
        out += self._collect([[(t, self._last)]])
        self.repeated += 1
        self.repeat_run += 1
        self._repeats.add(t)
        return True

    def _alone_base(self, n: int, final: bool):
        """(ready, _BaseImage or None) of base frame n of a stream of the base layer alone, kept
        while frames between it and the next still need it."""
        if not self._base_in(n, final):
            return False, None
        entry = self._base_frames[n]
        if isinstance(entry, np.ndarray):
            near = (None, None)
            if self._restorer_frames == 3:  # it sees the base frames before and after (kept: n - 1 goes later)
                if self._base_exists(n + 1) and not self._base_in(n + 1, final):
                    return False, None
                near = tuple(_small(self._base_frames.get(k)) for k in (n - 1, n + 1))
            entry = self._base_frames[n] = _BaseImage(entry, self._renderer, True, *near)
        return True, entry

    def _base_exists(self, n: int) -> bool:
        """Whether the stream has a base frame n (True while its length is not known)."""
        if self.base.placed:
            return n < len(self._placed) or self.frame_count is None
        return self.frame_count is None or n * self.base.divisor < self.frame_count

    def _alone_span(self, t: int, final: bool):
        """(ready, n, fraction): frame t lies `fraction` of the way from base frame n to n + 1 (0 on
        a base frame, and after the last); not ready while a base frame at or before it may still
        come (placed base frames: where the next one is, only its BASE packet says)."""
        if not self.base.placed:
            n, phase = divmod(t, self.base.divisor)
            return True, n, (phase / self.base.divisor if phase and self._base_exists(n + 1) else 0.0)
        pos, ended = self._placed, final or self.frame_count is not None
        n = bisect.bisect_right(pos, t) - 1
        if n + 1 >= len(pos) and not ended:
            return False, 0, 0.0
        n = max(n, 0)
        if n + 1 >= len(pos) or t <= pos[n]:
            return True, n, 0.0
        return True, n, (t - pos[n]) / (pos[n + 1] - pos[n])

    def _knots(self, n: int) -> tuple[int, int, int, int]:
        """The video frames of placed base frames n - 1, n, n + 1, n + 2 (a missing end neighbour one
        span further out)."""
        pos = self._placed
        a, b = pos[n], pos[n + 1]
        return (pos[n - 1] if n else 2 * a - b, a, b, pos[n + 2] if n + 2 < len(pos) else 2 * b - a)

    def _run_alone(self, final: bool) -> list[np.ndarray]:
        """`_run` for a stream of the base layer alone: frame t is ready once the base frames before
        and after it are (the last base frame serves the frames after it as it is), and on a cubic
        path (2.4) the one after those too where there is one."""
        out = []
        while not self.finished:
            t = self._next
            ready, n, frac = self._alone_span(t, final)
            if not ready:
                break
            ok, a = self._alone_base(n, final)
            between = frac != 0
            ok_b, b = self._alone_base(n + 1, final) if between else (True, None)
            cubic = between and self.base.cubic
            ok_q, q = self._alone_base(n + 2, final) if cubic and self._base_exists(n + 2) else (True, None)
            if not (ok and ok_b and ok_q):
                break
            if between and self.base.motion is not None and t >= self._motion_until and \
                    not (final or self.frame_count is not None):
                break  # its MOTION packet comes after the BASE packet of the base frame after it
            _, p = self._alone_base(n - 1, final) if cubic and n else (True, None)  # in: only older ones go
            self._next = t + 1
            offset = self._offsets.pop(t, None)
            for old in [k for k in self._base_frames if k < n - 1]:
                del self._base_frames[old]
            if t < self.start:
                continue
            if self._repeat_late(t, out):
                continue
            knots = self._knots(n) if cubic and self.base.placed else None
            self._batch.append((t, a, b, frac, (p, q), knots, offset))
            if len(self._batch) == self.options.batch:
                out += self._submit()
        return out

    def _render_alone(self, chunk):
        """Frames of a stream of the base layer alone: a base frame upsampled where the frame has
        one (or only one of its two decoded), else the two moved to it and blended."""
        out, pairs = [None] * len(chunk), []
        for n, (t, a, b, w, *_) in enumerate(chunk):
            if a is not None and (b is None or w == 0):
                out[n] = a
            elif b is not None and a is None:
                out[n] = b
            elif a is not None:
                pairs.append(n)
        if pairs:
            outer = [_outer(*chunk[n][1:3], *chunk[n][4]) for n in pairs] if self.base.cubic else None
            knots = [chunk[n][5] for n in pairs] if self.base.cubic and self.base.placed else None
            offsets = None
            if any(chunk[n][6] is not None for n in pairs):
                k = self.header.num_keypoints
                offsets = [chunk[n][6] if chunk[n][6] is not None else np.zeros((k, 2), np.float32) for n in pairs]
            moved = self._renderer.between([chunk[n][1].moving() for n in pairs],
                                           [chunk[n][2].moving() for n in pairs], [chunk[n][3] for n in pairs], outer,
                                           knots, offsets)
            for n, frame in zip(pairs, moved):
                out[n] = frame
        size = (self.header.height, self.header.width, 3)
        frames = [o if isinstance(o, np.ndarray) else o.frame() if o is not None else np.zeros(size, np.uint8)
                  for o in out]
        ts = [t for t, *_ in chunk]
        return list(zip(ts, [(f, None) for f in frames] if self.parts else frames))

    def _submit(self) -> list[np.ndarray]:
        """Hand the batch in hand to the renderers."""
        if not self._batch:
            return []
        batch, self._batch = self._batch, []
        start = time.perf_counter()
        out = self._collect(self._pool.submit((self._state, batch)))
        if out:  # how long a frame takes (inline rendering: what a live receiver plans with)
            ms = (time.perf_counter() - start) * 1000 / len(batch)
            if self._warm:  # the first render warms torch up (measured up to ~0.5 s): not typical
                self.render_ms = ms if self.render_ms is None else 0.8 * self.render_ms + 0.2 * ms
            self._warm = True
        return out

    def _render(self, item):
        """Only dense motion and the generator run per frame; the source's part is in `state`."""
        state, chunk = item
        if self.alone:
            return self._render_alone(chunk)
        kp = np.stack([k for _, k, _, _ in chunk]).astype(np.float32)
        jac = np.stack([j for _, _, j, _ in chunk]).astype(np.float32)
        bases = [b for _, _, _, b in chunk]
        base = _base_batch(bases, kp, jac) if self.fuse else (None, None, None)
        if self.parts:
            return list(zip([t for t, _, _, _ in chunk], self._renderer.render_parts(state, kp, jac, base)))
        mix = None
        if base[0] is not None and self.base.mix != bitstream.MIX_FULL:  # a frame without a base is not mixed
            mix = np.array([self.base.mix / bitstream.MIX_FULL if b is not None else 1.0 for b in bases], np.float32)
        return list(zip([t for t, _, _, _ in chunk], self._renderer.render(state, kp, jac, base, mix)))

    def _collect(self, results) -> list[tuple[int, np.ndarray]]:
        """(frame number, frame) of each rendered batch, in order."""
        out = [pair for pairs in results for pair in pairs]
        self.done += len(out)
        if out:
            self._last = out[-1][1]
        return out

    def _out(self, pairs) -> Iterator[np.ndarray]:
        for t, frame in pairs:
            self.frame_index = t  # the number of the frame handed out last
            self.frame_repeated = t in self._repeats
            self._repeats.discard(t)
            yield frame



class _BaseImage:
    """A decoded base frame and, once a render asks, its upsampled tensor, kept for the frames
    after it that the same base frame serves (the bicubic upsample was ~2.8 ms a video frame);
    `restore`: a stream of the base layer alone's, upsampled by the model's restorer if it has one."""

    def __init__(self, small: np.ndarray, renderer: Renderer, restore: bool = False, before: np.ndarray | None = None,
                 after: np.ndarray | None = None):
        self.small, self._renderer, self._restore, self._up, self._kp = small, renderer, restore, None, None
        self._near = (before, after)  # the base frames before and after (a 3-frame restorer), None: none

    def upsampled(self):
        if self._up is None:  # two workers may both compute it: the same tensor either way
            self._up = self._renderer.upsample_base(self.small, self._restore, *self._near)
        return self._up

    def moving(self):
        """(upsampled, keypoints, Jacobians): what a stream of the base layer alone moves."""
        if self._kp is None:
            self._kp = self._renderer.detect_base(self.upsampled())
        return (self.upsampled(), *self._kp)

    def frame(self) -> np.ndarray:
        """The upsampled frame as uint8 (H, W, 3)."""
        from kpcodec.models.frames import tensor_to_frames

        return tensor_to_frames(self.upsampled())[0]


def _small(entry) -> np.ndarray | None:
    """The decoded base frame of a `_base_frames` entry (None: missing or did not decode)."""
    return entry.small if isinstance(entry, _BaseImage) else entry


def _outer(a: _BaseImage, b: _BaseImage, p: _BaseImage | None, q: _BaseImage | None):
    """The cubic path's outer keypoints and Jacobians (before a, after b) of one frame between base
    frames a and b: base frames p and q's, or at an end (or where one did not decode) a's and b's own."""
    kp_p, jac_p = (p or a).moving()[1:]
    kp_q, jac_q = (q or b).moving()[1:]
    return kp_p, jac_p, kp_q, jac_q


def _base_batch(bases: list, kp: np.ndarray, jac: np.ndarray):
    """render()'s base arguments (frames, their keypoints, Jacobians) for one batch of _base_for
    entries: a base frame shows its own frame (this frame's keypoints), an older one is moved from
    its keypoints, a missing one is zeros; (None, None, None) when the batch has no base frame.
    The frames go in upsampled (their cached tensors), which the model does not upsample again."""
    import torch

    present = [b[0].upsampled() for b in bases if b is not None]
    if not present:
        return None, None, None
    zeros = present[0].new_zeros(present[0].shape)
    frames = torch.cat([b[0].upsampled() if b is not None else zeros for b in bases])
    kp0, jac0 = kp.copy(), jac.copy()
    for n, b in enumerate(bases):
        if b is not None and b[1] is not None:
            kp0[n], jac0[n] = b[1], b[2]
    return frames, torch.from_numpy(kp0), torch.from_numpy(jac0)


def _source(data: bytes, codec: str, h: bitstream.Header) -> np.ndarray:
    image = source_image.decode_image(data, codec)
    if image.shape[:2] != (h.height, h.width):
        raise bitstream.KpcFormatError(f"source image is {image.shape[1]}x{image.shape[0]}, "
                                       f"header says {h.width}x{h.height}")
    return image
