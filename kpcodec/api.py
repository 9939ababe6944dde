"""The library API behind the CLI: `encode`, `decode`, `info`.

encode: video -> crop/scale to the model's resolution -> code frame 0 as an image -> FOMM
keypoints of the sent frames only (every keep_every-th, a send:skip block pattern, or with
keep_every "auto" the frames the decoder's predictor would get more than max_error px
wrong: kpcodec.codec.adaptive) -> closed-loop quantised, range-coded .kpc 1.1; with refresh "auto"
a new source image wherever the decoder's rendering drifts (kpcodec.codec.refresh; .kpc 1.2).
decode: .kpc -> source image -> keypoints of the unsent frames predicted -> every frame
rendered by the dense-motion network and generator from the source image in force at that
frame -> a video (H.264 MP4 unless the output's suffix picks another container), streamed frame
by frame.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from kpcodec.media import audio as audio_codec
from kpcodec import bitstream
from kpcodec.media import video, y4m
from kpcodec.codec.parallel import DECODE_MMAP_THRESHOLD, fixed_mmap_threshold, idle_cores
from kpcodec.errors import KpcFormatError, KpcodecError, OutputExistsError, UsageError
from kpcodec.options import DecodeOptions, EncodeOptions

Progress = Callable[[int, int | None], None]  # (frames done, total or None)
Warn = Callable[[str], None]  # one warning line, e.g. the CLI's "kpcodec: warning: ..."
# x264 preset of decode's MP4: veryfast costs 2 ms a 256x256 frame against medium's 5 ms
# (a tenth of a real-time frame budget) at CRF 18, where the two look the same.
DECODE_PRESET = "veryfast"
DECODE_WORKERS = 4  # decode's default workers at most (measured on 2 cores only)


@dataclass
class Summary:
    """What a command did, for its one closing line and for --json."""

    frames: int
    seconds: float
    bytes: int
    duration_s: float
    output: str
    skipped: int = 0  # input frames that did not decode (encode --ignore-errors)
    audio_bytes: int = 0  # the opus chunk, framing included
    refreshes: int = 0  # new source images sent (encode --refresh auto)
    base_bytes: int = 0  # the base layer's packets, framing included (hybrid mode)
    base_layer: str | None = None  # its settings, SIZE@DIV:CRF
    base_errors: int = 0  # base frames that did not decode (decode --ignore-errors)
    source_quality: int | None = None  # the source image's quality (encode; the rate control may pick it; None: none)
    judged: int = 0  # the choices a rate target judged by their decoded pictures (encode --bitrate)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def kbps(self) -> float:
        return self.bytes * 8 / self.duration_s / 1000 if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": self.fps, "kbps": self.kbps}


def same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)  # follows symlinks; hard links share the inode
    except OSError:  # either one missing or unreadable: not the same file
        return False


def check_output(path, force: bool, inputs=()) -> None:
    """Fail now, before any decoding or model loading, if output `path` cannot be written.

    UsageError (exit 2): `path` is the same file as one of `inputs` (through symlinks and hard
    links too, with or without `force`), it is a directory, it exists and `force` is not set
    (OutputExistsError), or its directory is missing or not a directory.  KpcodecError (exit 1,
    an I/O error like any other failed write): its directory is not writable.
    "-" (stdout, and as an input stdin) is never checked.
    """
    if str(path) == "-":
        return
    path = os.fspath(path)
    for src in inputs:
        if src is not None and str(src) != "-" and same_file(path, src):
            raise UsageError(f"{path} is the same file as the input {os.fspath(src)}: refusing to "
                             "overwrite it, even with -f/--force (choose another output)")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {path}: it is a directory")
    if os.path.exists(path) and not force:
        raise OutputExistsError(f"{path} exists (use -f/--force to overwrite)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(directory):
        raise UsageError(f"cannot write {path}: no such directory {directory}")
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise KpcodecError(f"cannot write {path}: Permission denied (directory {directory})")


def _display_name(input) -> str:
    return "<stdin>" if str(input) == "-" else os.fspath(input)


def _names_file(fn):
    """Let a malformed .kpc `input` of `fn(input, ...)` be named in its KpcFormatError:
    "FILE: bad magic" ("<stdin>" for "-"), unless the message names it already."""
    @functools.wraps(fn)
    def wrapper(input, *args, **kwargs):
        try:
            return fn(input, *args, **kwargs)
        except KpcFormatError as exc:
            name = _display_name(input)
            if str(exc).startswith(f"{name}:"):
                raise
            raise type(exc)(f"{name}: {exc}") from None

    return wrapper


def _stdin_input(fn):
    """Let `fn(input, ...)` take input "-": stdin is copied to a temp file first, unless it is a
    y4m stream (kpcodec.media.y4m), which `fn` gets as a Y4mStream to read as it comes.

    PyAV needs a seekable file for mp4 (its index may sit at the end). The copy is
    removed however `fn` ends, interruptions included; messages name "<stdin>".
    """
    @functools.wraps(fn)
    def wrapper(input, *args, **kwargs):
        if str(input) != "-":
            return fn(input, *args, **kwargs)
        try:
            head = sys.stdin.buffer.read(len(y4m.MAGIC))
        except OSError as exc:
            raise KpcodecError(f"cannot read <stdin>: {exc.strerror or exc}") from None
        if head == y4m.MAGIC:  # a raw y4m stream: read frame by frame as it comes, never spooled
            return fn(y4m.Y4mStream(sys.stdin.buffer, head=head), *args, **kwargs)
        fd, path = tempfile.mkstemp(prefix="kpcodec-stdin-", suffix=".video")
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    f.write(head)
                    shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
                except OSError as exc:
                    raise KpcodecError(f"cannot read <stdin>: {exc.strerror or exc}") from None
            warn = kwargs.get("warn")
            if warn is not None:
                kwargs["warn"] = lambda message: warn(message.replace(path, "<stdin>"))
            try:
                return fn(path, *args, **kwargs)
            except KpcodecError as exc:
                raise type(exc)(str(exc).replace(path, "<stdin>")) from None
        finally:
            try:
                os.remove(path)
            except OSError:
                pass

    return wrapper


@_stdin_input
def encode(input, output, options: EncodeOptions | None = None, *, force: bool = False,
           progress: Progress | None = None, warn: Warn | None = None, **fields) -> Summary:
    """Encode video file `input` ("-" for stdin) to .kpc `output` ("-" for stdout).

    What to do is `options` (kpcodec.options.EncodeOptions) with the keyword `fields` of it on top
    (`encode(a, b, keep_every=4)`); they are checked before anything is read.

    The input's first audio stream goes into an `opus` chunk at `audio_bitrate` kb/s
    unless `audio` is False. With `ignore_errors`, frames that do not decode are
    replaced by the previous frame and counted in `Summary.skipped`.

    `keep_pattern` "S:K" (send S frames, skip K; kpcodec.codec.patterns) replaces `keep_every`.
    `keep_every` "auto" detects every frame and sends those the decoder's predictor would
    get more than `max_error` px wrong (default kpcodec.codec.adaptive.DEFAULT_MAX_ERROR).
    `predictor` is recorded in the header as the decoder's default (kpcodec.codec.predictors).
    `threads`: None runs the detector in this thread on torch's own threads (every core); 1 runs it
    in this thread on one torch thread; N >= 2 on N single-threaded workers (kpcodec.codec.parallel),
    steadier when other jobs share the cores.
    `refresh` "auto" sends a new source image where the decoder's rendering of a checked frame
    falls below SSIM `refresh_threshold` (kpcodec.codec.refresh); "off" (default) never does.
    `base_layer` (hybrid mode, kpcodec.media.baselayer): "off", "auto", "SIZE[@DIV][:CRF]" or settings;
    `bitrate` a target total rate ("6k", kb/s; source + keypoints + base layer, audio apart)
    for the rate control of kpcodec.codec.ratecontrol, which then picks keep-every, the base layer and
    the source quality (default base layer with a bitrate: auto; without: off).
    `warn(message)` is told, before any frame is read, of an output name without ".kpc" and of a
    crop that the model's resolution would blow up or an input too wide for its centre square.
    """

    from kpcodec.codec.encoder import Encoder

    o = EncodeOptions.of(options, **fields).checked()
    check_output(output, force, () if isinstance(input, y4m.Y4mStream) else (input,))
    if warn and str(output) != "-" and not os.fspath(output).lower().endswith(".kpc"):
        warn(f"{output} does not end in .kpc (it is written as a .kpc file all the same)")
    fixed_mmap_threshold()  # flat memory on long inputs (see kpcodec.codec.parallel)
    start = time.perf_counter()
    pipe = input if isinstance(input, y4m.Y4mStream) else None
    info = pipe.info if pipe else video.probe(input)  # a bad input is refused before torch is imported
    bad_frames: list[int] = []
    on_error = (lambda frame, reason: bad_frames.append(frame)) if o.ignore_errors else None
    with Encoder(o, info.fps, info.frame_count or None) as enc, bitstream.StreamWriter(output) as out:
        for message in video.crop_warnings(info, enc.size, o.crop):
            if warn:
                warn(message)

        def put(packets) -> None:
            if out.size == 0 and packets:  # the preamble's version is the HEAD's (the first packet)
                out.write(bitstream.packets.preamble(packets[0]))
            out.write_packets(packets)

        if o.audio and info.has_audio and pipe is None:  # coded first: its packets go along with the frames
            duration = info.frame_count / info.fps if info.frame_count else info.duration_s
            track = audio_codec.encode_audio(input, float(duration), o.audio_bitrate, ignore_errors=o.ignore_errors)
            if track is not None:
                enc.set_audio(track)
        frames = pipe.frames(enc.size, o.crop) if pipe else \
            video.read_frames(input, size=enc.size, crop=o.crop, on_error=on_error)
        for frame in frames:
            put(enc.push(frame))  # written as they come: the output grows with the input
            if progress:
                progress(enc.frames, info.frame_count)
        if enc.frames == 0:
            raise video.VideoError(f"{info.path}: no frames decoded")
        put(enc.flush())
        audio_bytes = enc.audio_bytes
        out.commit()
    return Summary(enc.frames, time.perf_counter() - start, out.size, enc.header.duration_s, str(output),
                   skipped=len(bad_frames), audio_bytes=audio_bytes, refreshes=len(enc.refreshes),
                   base_bytes=enc.base_bytes,
                   base_layer=enc.base_stream.label if enc.base_stream else None,
                   source_quality=enc.source_quality, judged=len(enc.rdo))


@_names_file
def decode(input, output, options: DecodeOptions | None = None, *, force: bool = False,
           progress: Progress | None = None, warn: Warn | None = None, **fields) -> Summary:
    """Decode .kpc `input` ("-" for stdin) to a video `output` ("-" for an MP4 on stdout), as
    `options` (kpcodec.options.DecodeOptions) with its keyword `fields` on top say.

    The suffix of `output` picks the container and its video codec (kpcodec.media.video.CONTAINERS:
    H.264 in .mp4/.mov/.mkv, VP9 or AV1 in .webm, GIF, raw .y4m; no suffix: MP4); any other
    suffix is a UsageError before anything is read. `warn(message)` is told of an output without
    a suffix and of audio that its container cannot hold (then left out).

    `model`: render with this shipped model instead of the one the file names, if both share a
    keypoint detector (e.g. the cheaper fomm-256-fast on a slow machine, or the quarter model).
    A file's base layer (hybrid mode) is fused by a hybrid model and left unused by others.
    `ignore_errors`: a base-layer frame that does not decode is rendered from the keypoints alone
    (counted in `Summary.base_errors`) instead of stopping.

    The file's audio (an `opus` chunk) is muxed into the video as is, unless `audio` is False.
    `threads`: 1 renders in this thread on one torch thread; N >= 2 on N single-threaded workers
    (kpcodec.codec.parallel), which keep their pace when other jobs take a core (torch's own threads
    wait on each other then: measured 2 fps on a busy machine); None: a worker per idle core, at most
    DECODE_WORKERS (one idle core: inline). Two workers were also the faster on the idle 2-core box
    once rendering's activations stopped being mmapped (DECODE_MMAP_THRESHOLD): hybrid 34-37 against
    29-32 fps for torch's own two threads, keypoints only 41-43 against 34-38 (2026-12-06).
    """
    o = DecodeOptions.of(options, **fields).checked()
    if o.threads is None:
        o = replace(o, threads=min(DECODE_WORKERS, idle_cores()))
    name = _display_name(input)
    check_output(output, force, (input,))
    container, _ = video.container_for(output)  # a suffix it cannot write fails before any work
    if warn and str(output) != "-" and not os.path.splitext(os.fspath(output))[1]:
        warn(f"{output} has no suffix: writing an MP4")
    start = time.perf_counter()
    from kpcodec.bitstream import packets
    from kpcodec.codec.decoder import Decoder, frame_range

    fixed_mmap_threshold(DECODE_MMAP_THRESHOLD)  # flat memory on long outputs, activations on the heap (kpcodec.codec.parallel)

    # A file is read whole (it is small; frames are rendered as its packets are parsed); a pipe
    # piece by piece as it comes. The sound comes before the first keypoints (AUDIO slices).
    data, pieces = None, bitstream.read_pieces(input)
    if input != "-":
        data = b"".join(pieces)
        pieces = iter([data])
    warn_named = (lambda message: warn(f"{name}: {message}")) if warn else None
    items = packets.read_items(pieces, o.ignore_errors, warn_named)
    header = next(items)
    first, last = frame_range(o, header)
    if first:  # enter a 2.0 file at its last keyframe before the start, through its INDEX
        items = packets.read_items(iter([data]), o.ignore_errors, warn_named, start_frame=first)
        next(items)
    dec = Decoder(header, o, name)  # the model checked before the video is opened
    total = header.frame_count or (packets.frame_count_of(data) if data is not None else None)
    if total is not None:
        total = min(total, last if last is not None else total) - first
    sound = _Sound(o.audio, bool(first or last is not None), container, output, name, warn)
    with video.VideoWriter(output, header.fps, (header.width, header.height), preset=DECODE_PRESET) as writer:
        try:
            def put(frames) -> None:
                for frame in frames:
                    writer.write(frame)
                    if progress:
                        progress(dec.done, total)

            for item in items:
                if isinstance(item, packets.AudioSlice):
                    sound.add(writer, item)
                    continue
                put(dec.pushing(item))
                if dec.finished:
                    break
            put(dec.flush())  # workers hold up to 2 batches each: the last frames come out here
        finally:
            dec.close()
        if dec.done == 0:
            raise bitstream.KpcFormatError(f"{name}: no frames to decode" + (" in the range asked" if first or last else ""))
    size = os.path.getsize(output) if output != "-" else 0
    duration = dec.done * header.fps_den / header.fps_num
    return Summary(dec.done, time.perf_counter() - start, size, duration, str(output),
                   base_bytes=0, base_layer=dec.base_label, base_errors=len(dec.base_errors))


class _Sound:
    """A stream's AUDIO slices into the video as they come (they come before its first frame)."""

    def __init__(self, wanted: bool, cut: bool, container, output, name, warn):
        self.wanted, self.cut, self.container = wanted, cut, container
        self.output, self.name, self.warn = output, name, warn
        self.said = False

    def add(self, writer, s) -> None:
        from kpcodec.bitstream.opus import opus_head_of

        if not self.wanted:
            return
        if self.cut or not self.container.audio:
            if not self.said and self.warn:
                why = ("--start/--end cut the video only" if self.cut
                       else f"{self.output}: a {self.container.format} file cannot hold audio")
                self.warn(f"{why}; the audio of {self.name} is left out")
            self.said = True
            return
        t = s.track
        if not writer.audio_open:
            if writer.frames_written:
                return  # too late to add a stream
            writer.open_audio(t.channels, opus_head_of(t.channels, t.pre_skip, t.sample_rate))
        for packet, pts, duration in zip(t.packets, t.pts, t.durations()):
            writer.queue_audio(packet, int(pts), int(duration))


_BUDGET_PARTS = {"header": ("magic", "HEAD", "KEND"), "source": ("SRCF",), "refresh": ("SRCR",),
                 "keypoints": ("KPTS", "KPRC", "MOTN"), "base": ("BASE",),  # MOTN: 2.6's keypoint offsets
                 "audio": (audio_codec.CHUNK_TYPE,)}


def bit_budget(chunks: list[tuple[str, int]], duration_s: float, sent_frames: int) -> dict:
    """Bytes and kb/s per part of a file (header with magic and KEND, source image,
    keypoints, audio, other optional chunks, total), from bitstream.chunk_table."""
    def part(n: int) -> dict:
        return {"bytes": n, "kbps": n * 8 / duration_s / 1000 if duration_s else 0.0}

    known = {kind for kinds in _BUDGET_PARTS.values() for kind in kinds}
    out = {name: part(sum(n for kind, n in chunks if kind in kinds)) for name, kinds in _BUDGET_PARTS.items()}
    out["other"] = part(sum(n for kind, n in chunks if kind not in known))
    out["total"] = part(sum(n for _, n in chunks))
    out["keypoints"]["bits_per_sent_frame"] = out["keypoints"]["bytes"] * 8 / sent_frames if sent_frames else 0.0
    # The steady state of a long call: everything but the one-off first source image.
    out["without_source"] = part(out["total"]["bytes"] - out["source"]["bytes"])
    return out


@_names_file
def info(input) -> dict:
    """Header, chunk sizes (bytes, kb/s), the bit budget and keypoint statistics of a .kpc file."""
    data = bitstream.read_bytes(input)
    stream = bitstream.loads(data)
    h = stream.header
    duration = h.duration_s
    parts = [{"chunk": kind, "bytes": n, "kbps": n * 8 / duration / 1000 if duration else 0.0}
             for kind, n in bitstream.chunk_table(data)]
    header = asdict(h)
    header["fps"] = str(h.fps)
    track = audio_codec.from_stream(stream)
    sound = None
    if track is not None:
        n = sum(p["bytes"] for p in parts if p["chunk"] == audio_codec.CHUNK_TYPE)
        sound = {"codec": "opus", "bytes": n, "kbps": n * 8 / duration / 1000 if duration else 0.0,
                 "sample_rate": track.sample_rate, "channels": track.channels,
                 "bitrate_kbps": track.bitrate / 1000, "duration_s": track.duration_s,
                 "packets": len(track.packets)}
    table = bitstream.chunk_table(data)
    base_bytes = sum(n for kind, n in table if kind == "BASE")
    motion_bytes = sum(n for kind, n in table if kind == "MOTN")
    return {
        "file": str(input), "format_version": "%d.%d" % stream.version, "header": header,
        "duration_s": duration, "bytes": len(data), "kbps": len(data) * 8 / duration / 1000 if duration else 0.0,
        "source_codec": stream.source_codec, "sent_frames": len(stream.sent_indices), "chunks": parts,
        "refreshes": [{"frame": int(r.frame), "codec": r.codec, "bytes": n}  # the SRCR chunk, framing included
                      for r, n in zip(stream.refreshes, [n for kind, n in table if kind == "SRCR"])],
        "budget": bit_budget(table, duration, len(stream.sent_indices)), "audio": sound,
        "base_layer": None if stream.base is None else {
            "codec": stream.base.codec, "size": stream.base.size, "divisor": stream.base.divisor,
            "crf": stream.base.crf, "frames": len(stream.base.packets),
            "mix": stream.base.mix / bitstream.MIX_FULL,  # the rendering's weight against the moved base
            "alone": stream.base.alone,  # format 2.3: the frames come from the base layer alone
            "cubic": stream.base.cubic,  # format 2.4: moved along a cubic keypoint path
            "placed": stream.base.placed,  # format 2.5: base frames where the encoder put them
            # format 2.6: the keypoints' offsets between base frames (MOTION packets, framing included)
            "motion": None if stream.base.motion is None else {
                "frames": len(stream.base.motion.frames), "bytes": motion_bytes,
                "kbps": motion_bytes * 8 / duration / 1000 if duration else 0.0},
            "bytes": base_bytes,  # framing included (a 2.x file: every BASE packet's)
            "kbps": base_bytes * 8 / duration / 1000 if duration else 0.0},
    }
