"""A camera as the live sender's input, through PyAV's capture devices: v4l2 on Linux
(`--camera /dev/video0`), avfoundation on macOS (`--camera 0`, or "0:none"), dshow on Windows
(`--camera "video=Integrated Camera"`). Frames come as the device delivers them, centre-cropped
and scaled as video.read_frames does.
"""
from __future__ import annotations

import sys
from fractions import Fraction

import av

from kpcodec.media import video

FORMATS = {"linux": "v4l2", "darwin": "avfoundation", "win32": "dshow"}


def default_format() -> str:
    return FORMATS.get(sys.platform, "v4l2")


class Camera:
    """An opened capture device: `info` (its size and rate) and `frames(size, crop)`."""

    def __init__(self, device: str, fmt: str | None = None, fps: float | None = None):
        self.device, self.format = device, fmt or default_format()
        options = {"framerate": f"{fps:g}"} if fps else {}
        try:
            self.container = av.open(device, format=self.format, options=options)
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, OSError, IndexError, ValueError) as exc:
            raise video.VideoError(f"cannot open camera {device} ({self.format}): {video.reason(exc)}") from None
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(fps or 30)
        ctx = self.stream.codec_context
        self.info = video.VideoInfo(f"camera {device}", ctx.width, ctx.height, Fraction(rate), 0, 0.0,
                                    ctx.name or "rawvideo", False)

    def frames(self, size: int, crop=None):
        box = video.crop_box(self.info.path, self.info.width, self.info.height, crop)
        try:
            for frame in self.container.decode(self.stream):
                yield video.to_rgb(frame, box, size)
        except av.FFmpegError as exc:
            raise video.VideoError(f"camera {self.device}: {video.reason(exc)}") from None
        finally:
            self.container.close()
