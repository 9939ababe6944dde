"""The decoder: a parsed .kpc in, its frames out, one at a time.

    dec = Decoder(bitstream.read_file("in.kpc"), DecodeOptions())
    for frame in dec.frames():          # (H, W, 3) uint8, frame 0 first
        ...

The predictor (kpcodec.codec.predictors) fills the keypoints of the frames that were not sent;
the renderer (kpcodec.codec.renderer) draws each frame from the source image in force at it,
whose state is prepared once, when its first frame is due; a hybrid model fuses the base layer,
whose packets are decoded as frames come. `threads` >= 2 renders batches on single-threaded
workers, a few in flight (kpcodec.codec.parallel). Frames come out as they are rendered, so
memory does not grow with the clip.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from kpcodec import bitstream
from kpcodec.codec import predictors as predict
from kpcodec.codec.parallel import ordered_map, torch_threads_for
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


class Decoder:
    """The frames of one parsed .kpc stream (see the module's docstring)."""

    def __init__(self, stream: bitstream.KpcStream, options: DecodeOptions | None = None, name: str = "file"):
        self.options = o = (options or DecodeOptions()).checked()
        self.stream, self.name = stream, name
        h = self.header = stream.header
        self.net = net = check_weights(h, o.model, name)
        if (h.width, h.height) != (net.cfg.image_size, net.cfg.image_size) or h.num_keypoints != net.cfg.num_keypoints:
            raise ModelError(f"{name}: its {h.width}x{h.height}, {h.num_keypoints} keypoints do not match model "
                             f"{o.model or h.model!r}")
        # The first source image is checked now, before any output is opened; each refresh image
        # is decoded only when its first frame is due (a long stream may hold many).
        _source(stream.source_data, stream.source_codec, h)
        self.fuse = bool(net.cfg.base_fusion and stream.base is not None)
        self.base_label = _base_label(stream.base) if self.fuse else None
        self.base_errors: list[int] = []  # base-layer frames that did not decode (ignore_errors)
        self.done = 0  # frames handed out

    def frames(self) -> Iterator[np.ndarray]:
        from kpcodec.codec.renderer import Renderer

        o, h, s = self.options, self.header, self.stream
        renderer = Renderer(self.net)
        sources = [(0, (s.source_data, s.source_codec))] + [(r.frame, (r.data, r.codec)) for r in s.refreshes]
        filled = predict.fill_keypoints(s.sent_indices, s.keypoints, s.jacobians, h.frame_count,
                                        o.predictor or predict.file_predictor(h.predictor))

        def prepare(coded):
            return renderer.prepare(_source(*coded, h))

        def render(item):
            """Only dense motion and the generator run per frame; the source's part is in `state`."""
            state, chunk = item
            kp = np.stack([k for k, _, _ in chunk]).astype(np.float32)
            jac = np.stack([j for _, j, _ in chunk]).astype(np.float32)
            base = _base_batch([b for _, _, b in chunk], kp, jac) if self.fuse else (None, None, None)
            return renderer.render(state, kp, jac, base)

        items = _with_base(filled, s.base if self.fuse else None, self.name, o.ignore_errors, self.base_errors)
        with torch_threads_for(o.threads):
            # A few batches in flight, each handed out as soon as it is next.
            for frames in ordered_map(render, source_batches(items, sources, prepare, o.batch), o.threads or 1):
                for frame in frames:
                    self.done += 1
                    yield frame


def _base_label(b: bitstream.BaseLayer) -> str:
    return f"{b.size}@{b.divisor}:{b.crf}"


def _with_base(filled, base: bitstream.BaseLayer | None, name, ignore_errors: bool, errors: list):
    """(kp, jac, base) per frame: base is None (no base layer, or a frame that did not decode),
    (frame, None, None) on a base frame, or (frame, kp, jac of its base frame) on the frames after
    it, which the model moves to their own keypoints. Base packets are decoded as frames come."""
    if base is None:
        for kp, jac in filled:
            yield kp, jac, None
        return
    from kpcodec.media import baselayer

    decoder = baselayer.BaseLayerDecoder()
    packets = iter(enumerate(base.packets))
    ready: list = []
    current = None
    for t, (kp, jac) in enumerate(filled):
        if t % base.divisor == 0:
            n = t // base.divisor
            small = None
            try:
                while not ready:
                    item = next(packets, None)
                    ready += decoder.push(item[1]) if item is not None else decoder.flush()
                    if item is None and not ready:
                        raise video.VideoError("the base layer ended early")
                small = ready.pop(0)
                if small.shape[:2] != (base.size, base.size):
                    raise video.VideoError(f"base frame is {small.shape[1]}x{small.shape[0]}, "
                                           f"BASE says {base.size}x{base.size}")
            except video.VideoError as exc:
                if not ignore_errors:
                    raise bitstream.KpcFormatError(f"{name}: base-layer frame {n}: {exc}") from None
                errors.append(n)
                ready, small = [], None
            current = (small, kp, jac) if small is not None else None
            yield kp, jac, (small, None, None) if small is not None else None
        else:
            yield kp, jac, current


def _base_batch(bases: list, kp: np.ndarray, jac: np.ndarray):
    """render()'s base arguments (frames, their keypoints, Jacobians) for one batch of _with_base
    entries: a base frame shows its own frame (this frame's keypoints), an older one is moved from
    its keypoints, a missing one is zeros; (None, None, None) when the batch has no base frame."""
    import torch

    from kpcodec.models.frames import frames_to_tensor

    present = [b for b in bases if b is not None]
    if not present:
        return None, None, None
    size = present[0][0].shape[0]
    frames = [b[0] if b is not None else np.zeros((size, size, 3), np.uint8) for b in bases]
    kp0, jac0 = kp.copy(), jac.copy()
    for n, b in enumerate(bases):
        if b is not None and b[1] is not None:
            kp0[n], jac0[n] = b[1], b[2]
    return frames_to_tensor(frames), torch.from_numpy(kp0), torch.from_numpy(jac0)


def _source(data: bytes, codec: str, h: bitstream.Header) -> np.ndarray:
    image = source_image.decode_image(data, codec)
    if image.shape[:2] != (h.height, h.width):
        raise bitstream.KpcFormatError(f"source image is {image.shape[1]}x{image.shape[0]}, "
                                       f"header says {h.width}x{h.height}")
    return image


def source_batches(filled, sources, prepare, size: int):
    """(source state, batch of (kp, jac)) in frame order; a batch never straddles a refresh.

    `sources` is [(first frame, coded image)] in frame order; each state is prepared once, in the
    calling thread, when its first batch is due, so only one state per refresh is in memory
    beyond the batches in flight.
    """
    starts = [frame for frame, _ in sources[1:]] + [None]
    state = prepare(sources[0][1])
    s, batch = 0, []
    for t, item in enumerate(filled):
        if starts[s] is not None and t == starts[s]:
            if batch:
                yield state, batch
                batch = []
            s += 1
            state = prepare(sources[s][1])
        batch.append(item)
        if len(batch) == size:
            yield state, batch
            batch = []
    if batch:
        yield state, batch


