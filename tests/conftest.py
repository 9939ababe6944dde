"""Shared fixtures: small clips made here (never the shared data), CLI runner."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from skimage.data import astronaut
from skimage.transform import resize


def make_clip(path: Path, frames: int = 12, size=(96, 80), fps: int = 25, codec: str = "libx264") -> Path:
    """A short clip of the astronaut portrait drifting sideways (non-square to exercise the crop)."""
    w, h = size
    img = (resize(astronaut(), (h + 16, w + 16), anti_aliasing=True) * 255).astype(np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            dx = int(round(8 + 6 * np.sin(i / 3)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[8:8 + h, dx:dx + w]), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()
