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


def run(runner, *args, **kw):
    """The CLI run in-process with `args` (str() each), as a test invokes it."""
    from kpcodec.cli import app

    return runner.invoke(app, [str(a) for a in args], **kw)


SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "astronaut.mp4"


def sample_kpc(directory: Path, base_layer: str, frames: int = 24, motion: bool = True) -> Path:
    """The first `frames` frames of the shipped sample encoded as encode does with `base_layer` (and
    `motion`), as `directory`/sample.kpc."""
    from kpcodec.bitstream import packets as pk
    from kpcodec.codec.encoder import Encoder
    from kpcodec.media import video
    from kpcodec.options import EncodeOptions

    with Encoder(EncodeOptions(base_layer=base_layer, audio=False, motion=motion), video.probe(SAMPLE).fps) as enc:
        packets = [p for f in list(video.read_frames(SAMPLE, 256))[:frames] for p in enc.push(f)]
        data = pk.join(packets + enc.flush())
    path = directory / "sample.kpc"
    path.write_bytes(data)
    return path


GOLDEN = Path(__file__).resolve().parent / "golden"


def golden_module():
    """tests/golden/make_golden.py, which makes the golden streams."""
    import sys

    sys.path.insert(0, str(GOLDEN))
    try:
        import make_golden
    finally:
        sys.path.remove(str(GOLDEN))
    return make_golden


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


def make_train_data(root: Path, clips: int = 2, frames: int = 12) -> Path:
    """A data folder as shared/data is laid out: `clips` train clips of make_clip's portrait (64x64,
    25 fps), one person each, and their manifest.csv."""
    (root / "talking-heads" / "train").mkdir(parents=True)
    rows = ["file,split,source_repo,source_path,license,identity,fps,frames,width,height,seconds,generated,notes"]
    for i in range(clips):
        name = f"talking-heads/train/c{i}.mp4"
        make_clip(root / name, frames=frames, size=(64, 64))
        rows.append(f"{name},train,x,x,MIT,p{i},25,{frames},64,64,{frames / 25:g},no,")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def make_clip_with_audio(path: Path, seconds: float = 2.0, fps: int = 25, size=(96, 80), tone: float = 440.0,
                         rate: int = 44100, audio_codec: str = "aac", audio_delay: float = 0.0) -> Path:
    """make_clip's drifting portrait with a sine-wave audio track (stereo AAC by default).

    audio_delay > 0 starts the audio that many seconds after the video (the first
    audio frame's timestamp), to check that encode lines the two up.
    """
    frames = int(round(seconds * fps))
    w, h = size
    img = (resize(astronaut(), (h + 16, w + 16), anti_aliasing=True) * 255).astype(np.uint8)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=Fraction(fps))
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream(audio_codec, rate=rate)
        a.layout = "stereo"
        for i in range(frames):
            dx = int(round(8 + 6 * np.sin(i / 3)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[8:8 + h, dx:dx + w]), format="rgb24")
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        fmt = a.codec_context.format
        block = a.codec_context.frame_size or 1024
        t = np.arange(int(round((seconds - audio_delay) * rate))) / rate
        x = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
        offset = int(round(audio_delay * rate))
        for s in range(0, len(x), block):
            blk = x[s:s + block]
            arr = np.stack([blk, blk]) if fmt.is_planar else np.repeat(blk, 2)[None]
            if fmt.name.startswith("s16"):
                arr = (arr * 32767).astype(np.int16)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt.name, layout="stereo")
            af.sample_rate, af.pts, af.time_base = rate, offset + s, Fraction(1, rate)
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    return path


def with_norm_statistics(net):
    """`net` in eval mode with every BatchNorm given non-trivial statistics and affine terms, as a
    trained model has (fresh ones are identities, which would hide folding or embedding bugs)."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()
