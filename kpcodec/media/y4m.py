"""YUV4MPEG2 (.y4m) read from a pipe as it comes: `kpcodec encode -` streams a raw video from a
camera or another program (``ffmpeg ... -f yuv4mpegpipe -pix_fmt yuv420p - | kpcodec encode - ...``).

PyAV needs a seekable file for most containers, so other inputs on stdin are copied to a temporary
file first; a y4m stream is read frame by frame instead, so encoding starts with the first frame
and its packets are written while the producer still runs.
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from kpcodec.media import video

MAGIC = b"YUV4MPEG2"
_MAX_HEADER = 4096
_FORMATS = {"420jpeg": "yuv420p", "420paldv": "yuv420p", "420mpeg2": "yuv420p", "420": "yuv420p", "mono": "gray"}


class Y4mStream:
    """A y4m stream on a binary file object (stdin): `info` from its header, `frames()` as they come."""

    def __init__(self, f, name: str = "<stdin>", head: bytes = b""):
        self.f, self.name = f, name
        line = self._line(head, "header")
        if not line.startswith(MAGIC):
            raise video.VideoError(f"{name}: not a y4m stream")
        tags = {t[:1]: t[1:] for t in line[len(MAGIC):].split()}
        try:
            self.width, self.height = int(tags[b"W"]), int(tags[b"H"])
            num, den = (int(x) for x in tags.get(b"F", b"25:1").split(b":"))
            self.fps = Fraction(num, den)
        except (KeyError, ValueError, ZeroDivisionError):
            raise video.VideoError(f"{name}: bad y4m header {line[:80]!r}") from None
        space = tags.get(b"C", b"420jpeg").decode("ascii", "replace")
        if space not in _FORMATS:
            raise video.VideoError(f"{name}: y4m colour space C{space} is not read from a pipe "
                                   "(send yuv420p: ffmpeg ... -pix_fmt yuv420p -f yuv4mpegpipe -)")
        self.format = _FORMATS[space]
        if self.width <= 0 or self.height <= 0 or (self.format == "yuv420p" and (self.width % 2 or self.height % 2)):
            raise video.VideoError(f"{name}: bad y4m frame size {self.width}x{self.height}")
        self.info = video.VideoInfo(name, self.width, self.height, self.fps, 0, 0.0, "rawvideo", False)

    def _line(self, head: bytes, what: str) -> bytes:
        data = bytearray(head)
        while not data.endswith(b"\n"):
            if len(data) > _MAX_HEADER:
                raise video.VideoError(f"{self.name}: y4m {what} line longer than {_MAX_HEADER} bytes")
            c = self.f.read(1)
            if not c:
                return bytes(data)
            data += c
        return bytes(data[:-1])

    def frames(self, size: int, crop=None):
        """The frames, cropped and scaled as video.read_frames does, until the stream ends."""
        box = video.crop_box(self.name, self.width, self.height, crop)
        n = self.width * self.height * 3 // 2 if self.format == "yuv420p" else self.width * self.height
        shape = (self.height * 3 // 2, self.width) if self.format == "yuv420p" else (self.height, self.width)
        count = 0
        while True:
            line = self._line(b"", "frame")
            if not line:
                return
            if not line.startswith(b"FRAME"):
                raise video.VideoError(f"{self.name}: corrupt y4m data at frame {count} (no FRAME marker)")
            data = self.f.read(n)
            if len(data) < n:
                raise video.VideoError(f"{self.name}: the y4m stream ends inside frame {count}")
            frame = av.VideoFrame.from_ndarray(np.frombuffer(data, np.uint8).reshape(shape), format=self.format)
            count += 1
            yield video.to_rgb(frame, box, size)
