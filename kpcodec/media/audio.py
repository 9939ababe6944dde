"""Audio for kpcodec: the input's sound, as Opus packets in the optional ``opus`` chunk.

* :func:`encode_audio` reads a video file's first audio stream, downmixes it to mono,
  resamples it, lines it up with the video (time 0 = the first video frame; silence
  is added where the audio starts late, and it is cut at the end of the video) and
  codes it with libopus (through PyAV) at a low bit rate.
* The ``opus`` chunk itself (:class:`OpusTrack`, :func:`pack`, :func:`unpack`, :func:`from_stream`,
  :func:`opus_head`) is kpcodec.bitstream.opus's, torch- and PyAV-free; its names are here too.
* :func:`decode_pcm` decodes a track to float samples (tests, tools).

All timestamps are counted in 48 kHz samples ("ticks"), Opus's own clock, whatever
rate the audio was coded at.  Only numpy, zstandard (via kpcodec.bitstream.quantize) and PyAV.
"""
from __future__ import annotations

import os
import struct
from fractions import Fraction

import numpy as np

from kpcodec.bitstream.opus import (  # noqa: F401  (re-exported: audio.pack, audio.OpusTrack, ...)
    CHUNK_TYPE, CLOCK, MAX_PACKET_TICKS, SAMPLE_RATES, OpusTrack, from_chunks, from_stream, opus_head, pack, unpack)
from kpcodec.errors import KpcFormatError, UsageError, VideoError
from kpcodec.media.video import reason

DEFAULT_KBPS = 12.0
MIN_KBPS, MAX_KBPS = 6.0, 64.0
FRAME_MS = 60  # long frames: the fewest packets (and TOC bytes) per second


# --------------------------------------------------------------------------- encoding


def check_bitrate(kbps: float) -> float:
    try:
        kbps = float(kbps)
    except (TypeError, ValueError):
        raise UsageError(f"--audio-bitrate must be a number of kb/s (got {kbps!r})") from None
    if not MIN_KBPS <= kbps <= MAX_KBPS:
        raise UsageError(f"--audio-bitrate must be {MIN_KBPS:g}..{MAX_KBPS:g} kb/s (got {kbps:g})")
    return kbps


def rate_for(kbps: float) -> int:
    """Coding rate: 16 kHz (wideband) below 20 kb/s, 24 kHz (super-wideband) from there."""
    return 16000 if kbps < 20 else 24000


def _aligned_pcm(path: str, container, stream, start_s: float, rate: int, total: int, ignore_errors: bool):
    """Yield mono int16 blocks of the audio stream, placed on the video's clock.

    Sample n of the output plays at start_s + n / rate in the input's timeline.  Gaps
    (late start, dropped packets) become silence, overlaps are cut, and output stops
    after ``total`` samples.
    """
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    origin = round(start_s * rate)
    pos = 0  # next output sample

    def place(frames):
        nonlocal pos
        for f in frames:
            x = f.to_ndarray().reshape(-1)
            at = pos if f.pts is None else int(f.pts) - origin
            if at > pos:  # a gap: fill with silence
                fill = min(at, total) - pos
                if fill > 0:
                    yield np.zeros(fill, np.int16)
                    pos += fill
            elif at < pos:  # overlap (or before the video): drop the part already played
                x = x[pos - at:]
            x = x[: total - pos]
            if len(x):
                yield x
                pos += len(x)

    def decoded():
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except (av.FFmpegError, ValueError) as e:
                if not ignore_errors:
                    raise VideoError(f"{path}: corrupt audio data ({reason(e)})") from e

    try:
        for frame in decoded():
            # The resampler starts its pts at the input frame's time; keep the stream's own origin.
            yield from place(resampler.resample(frame))
            if pos >= total:
                return
        yield from place(resampler.resample(None))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: corrupt audio data ({reason(e)})") from e


def encode_audio(path, duration_s: float, kbps: float = DEFAULT_KBPS, *,
                 ignore_errors: bool = False) -> OpusTrack | None:
    """Code the first audio stream of video file ``path`` as Opus, lined up with its video.

    The result covers [0, duration_s) of the video (time 0 = the video stream's start).
    Returns None if the file has no audio stream or the stream yields no samples.
    """
    import av

    kbps = check_bitrate(kbps)
    rate = rate_for(kbps)
    p = os.fspath(path)
    total = int(round(duration_s * rate))
    if total <= 0:
        return None
    try:
        container = av.open(p, mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{p}: not a video or corrupt ({reason(e)})") from e
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        video = container.streams.video[0] if container.streams.video else None
        start_s = 0.0
        if video is not None and video.start_time is not None and video.time_base:
            start_s = float(video.start_time * video.time_base)
        enc = av.CodecContext.create("libopus", "w")
        enc.sample_rate, enc.layout, enc.format = rate, "mono", "s16"
        enc.bit_rate = int(round(kbps * 1000))
        enc.time_base = Fraction(1, rate)
        enc.options = {"application": "voip", "frame_duration": str(FRAME_MS), "vbr": "on"}
        enc.open()
        frame_size = enc.frame_size
        scale = CLOCK // rate
        pts, packets = [], []
        got = 0

        def emit(block: np.ndarray | None, at: int) -> None:
            if block is None:
                out = enc.encode(None)
            else:
                f = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
                f.sample_rate, f.pts, f.time_base = rate, at, Fraction(1, rate)
                out = enc.encode(f)
            for pk in out:
                packets.append(bytes(pk))
                pts.append(int(pk.pts) * scale)

        pending = np.zeros(0, np.int16)
        for block in _aligned_pcm(p, container, stream, start_s, rate, total, ignore_errors):
            pending = np.concatenate((pending, block)) if len(pending) else block
            while len(pending) >= frame_size:
                emit(np.ascontiguousarray(pending[:frame_size]), got)
                got += frame_size
                pending = pending[frame_size:]
        if got == 0 and len(pending) == 0:
            return None
        if len(pending):
            emit(np.ascontiguousarray(pending), got)
            got += len(pending)
        emit(None, got)
        pre_skip = struct.unpack_from("<H", bytes(enc.extradata), 10)[0] if enc.extradata else 0
    except av.FFmpegError as e:
        raise VideoError(f"{p}: cannot encode its audio ({reason(e)})") from e
    finally:
        container.close()
    # Packets come out at pts = -pre_skip + k * frame: shift so decoded sample pre_skip is t = 0.
    shift = -pre_skip - pts[0]
    return OpusTrack(rate, 1, pre_skip, int(round(kbps * 1000)), got * scale,
                     np.asarray(pts, dtype=np.int64) + shift, packets)


# --------------------------------------------------------------------------- decoding


def decode_pcm(track: OpusTrack) -> np.ndarray:
    """Decode to float32 samples, shape (channels, length), at 48 kHz, pre-skip dropped."""
    import av

    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = CLOCK, "mono" if track.channels == 1 else "stereo"
    dec.extradata = opus_head(track)
    blocks = []

    def keep(frames):
        for f in frames:
            x = f.to_ndarray().reshape(track.channels, -1) if f.format.is_planar else \
                f.to_ndarray().reshape(-1, track.channels).T
            blocks.append(x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32))

    try:
        for data, t in zip(track.packets, track.pts):
            pk = av.Packet(data)
            pk.pts, pk.time_base = int(t), Fraction(1, CLOCK)
            keep(dec.decode(pk))
        keep(dec.decode(None))
    except av.FFmpegError as e:
        raise KpcFormatError(f"opus packets do not decode ({reason(e)})") from e
    pcm = np.concatenate(blocks, axis=1) if blocks else np.zeros((track.channels, 0), np.float32)
    # FFmpeg drops the pre-skip itself (the decoder's delay, from OpusHead); cut the end padding.
    return pcm[:, :track.length]
