"""Tests for kpcodec.media.video (probe / read_frames / VideoWriter) and kpcodec.media.source_image.

Every clip is tiny (64x64 or smaller, about 10 frames) and made in a tmp dir.
Frame k of a test clip is a flat grey of level 10 + 20k, so a decoded frame
says which input frame it shows even after lossy coding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from kpcodec.errors import KpcFormatError, UsageError, VideoError
from kpcodec.media.source_image import (CODECS, DEFAULT_CODEC, DEFAULT_QUALITY, available_codecs,
                                  decode_image, encode_image)
from kpcodec.media.video import VideoInfo, VideoWriter, check_codecs, probe, read_frames

REPO = Path(__file__).resolve().parent.parent


def level(k: int) -> int:
    return 10 + 20 * k


def which(frame: np.ndarray) -> int:
    """Index of the flat test frame this decoded frame shows."""
    return int(round((float(frame.mean()) - 10) / 20))


def flat(k: int, w: int = 64, h: int = 64) -> np.ndarray:
    return np.full((h, w, 3), level(k), np.uint8)


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def make_clip(path, codec="libx264", n=10, w=64, h=64, rate=Fraction(25), pts_ms=None,
              rotation=None, frames=None, container_options=None):
    """Write a clip with raw PyAV (independent of VideoWriter)."""
    opts = {"x265-params": "log-level=error"} if codec == "libx265" else {}
    c = av.open(str(path), "w", options=container_options or {})
    s = c.add_stream(codec, rate=rate, options=opts)
    s.width, s.height = w, h
    s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    if pts_ms is not None:
        s.codec_context.time_base = Fraction(1, 1000)
    if rotation is not None:
        s.set_display_rotation(rotation)
    for k in range(n):
        img = frames[k] if frames is not None else flat(k, w, h)
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        if pts_ms is not None:
            f.pts, f.time_base = pts_ms[k], Fraction(1, 1000)
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()
    return str(path)


# --------------------------------------------------------------- write / probe / read


def test_writer_probe_read_roundtrip(tmp_path):
    out = tmp_path / "rt.mp4"
    fps = Fraction(30000, 1001)
    with VideoWriter(out, fps, size=(64, 48), crf=10, preset="ultrafast") as w:
        for k in range(10):
            w.write(flat(k, 64, 48))
    info = probe(out)
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height) == (64, 48)
    assert info.fps == fps and isinstance(info.fps, Fraction)
    assert info.frame_count == 10
    assert info.duration_s == pytest.approx(10 * 1001 / 30000, abs=1e-3)
    assert info.codec == "h264" and info.has_audio is False
    frames = list(read_frames(out, size=48))
    assert len(frames) == 10
    for k, f in enumerate(frames):
        assert f.shape == (48, 48, 3) and f.dtype == np.uint8 and f.flags.c_contiguous
        assert abs(float(f.mean()) - level(k)) < 3
    assert os.listdir(tmp_path) == ["rt.mp4"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_crop_and_scale(tmp_path):
    # 96x64: left third red, middle green, right third blue; top-left 16x16 white.
    img = np.zeros((64, 96, 3), np.uint8)
    img[:, :32, 0] = 200
    img[:, 32:64, 1] = 200
    img[:, 64:, 2] = 200
    img[:16, :16] = 255
    path = tmp_path / "c.mp4"
    with VideoWriter(path, 25, size=(96, 64), crf=0, preset="ultrafast") as w:
        for _ in range(3):
            w.write(img)
    # Default: centred 64x64 square (x = 16..80), resized to 32.
    f = next(read_frames(path, size=32))
    assert f.shape == (32, 32, 3)
    assert f[:, 14:18, 1].mean() > 180  # green band in the middle
    assert f[:, :6, 0].mean() > 150 and f[:, -6:, 2].mean() > 150
    # Explicit crop of the white corner, upscaled.
    f = next(read_frames(path, size=32, crop=(0, 0, 16, 16)))
    assert f.shape == (32, 32, 3) and f[4:28, 4:28].mean() > 240
    # No resize when the crop already has the output size: exact pixels survive.
    f = next(read_frames(path, size=16, crop=(70, 20, 16, 16)))
    assert f[..., 2].mean() > 190 and f[..., :2].mean() < 15


@pytest.mark.parametrize("crop", [(90, 0, 16, 16), (0, 60, 8, 8), (-1, 0, 8, 8),
                                  (0, 0, 0, 0), (0, 0, 16, 8)])
def test_bad_crop_is_usage_error(tmp_path, crop):
    path = make_clip(tmp_path / "c.mp4", n=2, w=96, h=64)
    with pytest.raises(UsageError):
        read_frames(path, size=16, crop=crop)  # raised by the call, before iterating


COMBOS = [
    ("mp4", "libx264", "h264"), ("mov", "libx264", "h264"), ("mkv", "libx264", "h264"),
    ("mp4", "libx265", "hevc"), ("mkv", "libx265", "hevc"),
    ("webm", "libvpx-vp9", "vp9"), ("mkv", "libvpx-vp9", "vp9"), ("mp4", "libvpx-vp9", "vp9"),
    ("webm", "libsvtav1", "av1"), ("mkv", "libsvtav1", "av1"), ("mp4", "libsvtav1", "av1"),
    ("mov", "mjpeg", "mjpeg"), ("mkv", "mjpeg", "mjpeg"),
]


@pytest.mark.parametrize("ext,encoder,codec", COMBOS, ids=[f"{e}-{c}" for e, c, _ in COMBOS])
def test_containers_and_codecs(tmp_path, ext, encoder, codec):
    if not has_encoder(encoder):
        pytest.skip(f"{encoder} not in this PyAV build")
    path = make_clip(tmp_path / f"clip.{ext}", encoder, n=10)
    info = probe(path)
    assert (info.codec, info.frame_count, info.fps) == (codec, 10, 25)
    assert (info.width, info.height) == (64, 64)
    frames = list(read_frames(path, size=32))
    assert [which(f) for f in frames] == list(range(10))
    if codec == "av1" and check_codecs()["libdav1d"]:
        with av.open(path) as c:  # software AV1 decoding must go through dav1d
            assert c.streams.video[0].codec_context.name == "libdav1d"


def test_writer_other_codecs_and_containers(tmp_path):
    for name, codec in [("o.mkv", "libx264"), ("o.webm", "libvpx-vp9"), ("noext", "libx264")]:
        if not has_encoder(codec):
            continue
        with VideoWriter(tmp_path / name, Fraction(25, 2), (32, 32), codec=codec) as w:
            for k in range(5):
                w.write(flat(k, 32, 32))
        info = probe(tmp_path / name)
        assert (info.frame_count, info.fps) == (5, Fraction(25, 2))


def test_vfr_policy(tmp_path):
    # Irregular timestamps (ms): a 120 ms gap, then three frames 10 ms apart.
    pts = [0, 40, 80, 200, 240, 250, 260, 400, 440, 480]
    path = make_clip(tmp_path / "vfr.mp4", pts_ms=pts)
    # At 25 fps the slots are round(pts/40) = 0 1 2 5 6 6 7(6.5 rounds up) 10 11 12:
    # gaps repeat the previous frame, and of frames 4, 5 (both slot 6) the later wins.
    got = [which(f) for f in read_frames(path, size=16, fps=25)]
    assert got == [0, 1, 2, 2, 2, 3, 5, 6, 6, 6, 7, 8, 9]
    # Default rate is the stream's average (10 frames in 0.52 s), not FFmpeg's 2000 fps guess.
    info = probe(path)
    assert info.fps == Fraction(250, 13)
    frames = list(read_frames(path, size=16))
    assert len(frames) == round(info.duration_s * info.fps) == 10
    idx = [which(f) for f in frames]
    assert idx == sorted(idx) and idx[0] == 0 and idx[-1] == 9
    # Output time i/fps shows the last input frame that started by then (+half a slot).
    for i, k in enumerate(idx):
        assert pts[k] / 1000 <= (i + 0.5) / float(info.fps)


def test_cfr_yields_exactly_the_decoded_frames(tmp_path):
    path = make_clip(tmp_path / "ntsc.mkv", rate=Fraction(30000, 1001), n=10)  # ms timestamps
    assert probe(path).fps == Fraction(30000, 1001)
    assert [which(f) for f in read_frames(path, size=16)] == list(range(10))


def test_rotation_metadata_is_applied(tmp_path):
    img = np.zeros((48, 64, 3), np.uint8)
    img[:8] = 255  # white top rows
    path = make_clip(tmp_path / "rot.mp4", n=2, w=64, h=48, rotation=90,
                     frames=[img, img])
    info = probe(path)
    assert (info.width, info.height) == (48, 64)
    f = next(read_frames(path, size=48))
    # Rotated 90 degrees counter-clockwise, the top edge becomes the left edge.
    assert f[:, :5].mean() > 200 and f[:, 12:].mean() < 30


# --------------------------------------------------------------- read errors


def _read_all(path):
    return sum(1 for _ in read_frames(path, size=16))


def _assert_video_error(path, fn):
    with pytest.raises(VideoError) as ei:
        fn(path)
    msg = str(ei.value)
    assert os.fspath(path) in msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("fn", [probe, _read_all], ids=["probe", "read"])
def test_missing_text_empty_files(tmp_path, fn):
    assert "No such file" in _assert_video_error(tmp_path / "missing.mp4", fn)
    txt = tmp_path / "in.txt"
    txt.write_text("hello, this is not a video\n" * 20)
    assert "not a video" in _assert_video_error(txt, fn)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _assert_video_error(empty, fn)
    _assert_video_error(tmp_path, fn)  # a directory


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_zero_frame_file(tmp_path, ext):
    path = tmp_path / f"zero.{ext}"
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=25)
    s.width = s.height = 64
    s.pix_fmt = "yuv420p"
    c.start_encoding()  # header and trailer, no packets
    c.close()
    assert path.stat().st_size > 0
    _assert_video_error(path, probe)
    _assert_video_error(path, _read_all)


def test_truncated_files(tmp_path):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    # Plain mp4 keeps its index (moov) at the end: cut, it cannot even be opened.
    full = make_clip(tmp_path / "full.mp4", n=20, w=64, h=48, frames=noise)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(Path(full).read_bytes()[: Path(full).stat().st_size * 6 // 10])
    _assert_video_error(cut, probe)
    _assert_video_error(cut, _read_all)
    # Index at the front (faststart) or mkv: opens, ends early -> error after the frames.
    for name, opts in [("fs.mp4", {"movflags": "faststart"}), ("m.mkv", None)]:
        src = make_clip(tmp_path / name, n=20, w=64, h=48, frames=noise,
                        container_options=opts)
        data = Path(src).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) * 6 // 10])
        msg = _assert_video_error(cut, _read_all)
        assert "truncated" in msg or "corrupt" in msg


def test_corrupt_data_reports_frame(tmp_path):
    # Garble the middle of an mp4's sample data: the H.264 NAL length prefixes break,
    # which the decoder cannot conceal, so reading stops with the frame index.
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    src = make_clip(tmp_path / "m.mp4", n=20, w=64, h=48, frames=noise)
    data = bytearray(Path(src).read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 2000, 7):
        data[i] ^= 0x5A
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    msg = _assert_video_error(bad, _read_all)
    assert "corrupt data at frame" in msg


# --------------------------------------------------------------- writer


def test_writer_is_atomic_on_exception(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 25, (32, 32), preset="ultrafast") as w:
            w.write(flat(0, 32, 32))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    # An existing target survives a failed write untouched.
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 25, (32, 32), preset="ultrafast") as w:
            w.write(flat(0, 32, 32))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["out.mp4"] and target.read_bytes() == b"old"


def test_writer_argument_errors(tmp_path):
    for size in [(31, 32), (32, 33), (0, 32)]:
        with pytest.raises(UsageError):
            VideoWriter(tmp_path / "o.mp4", 25, size)
    with pytest.raises(UsageError):
        VideoWriter(tmp_path / "o.mp4", 0, (32, 32))
    with pytest.raises(UsageError):
        VideoWriter(tmp_path / "o.mp4", 25, (32, 32), codec="no-such-codec")
    with pytest.raises(UsageError):
        VideoWriter(tmp_path / "o.mp4", 25, (32, 32), preset="no-such-preset")
    with pytest.raises(VideoError):
        VideoWriter(tmp_path / "nodir" / "o.mp4", 25, (32, 32))
    w = VideoWriter(tmp_path / "o.mp4", 25, (32, 32))
    with pytest.raises(ValueError):
        w.write(np.zeros((32, 30, 3), np.uint8))
    with pytest.raises(VideoError):  # no frames written: no file
        w.close()
    assert os.listdir(tmp_path) == []


def test_writer_stdout_is_fragmented_mp4(tmp_path):
    code = ("import numpy as np\nfrom kpcodec.media.video import VideoWriter\n"
            "with VideoWriter('-', 25, (32, 32), preset='ultrafast') as w:\n"
            "    for k in range(10): w.write(np.full((32, 32, 3), 10 + 20 * k, np.uint8))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    path = tmp_path / "piped.mp4"
    path.write_bytes(out)
    assert b"moof" in out
    assert [which(f) for f in read_frames(path, size=32)] == list(range(10))


def test_check_codecs():
    found = check_codecs()
    assert set(found) == {"libx264", "libx265", "libsvtav1", "libdav1d", "libvpx-vp9"}
    assert all(isinstance(v, bool) for v in found.values())
    assert found["libx264"]


def test_sample_clip_if_present():
    sample = REPO / "samples" / "astronaut.mp4"
    if not sample.exists():
        pytest.skip("samples/astronaut.mp4 not generated")
    info = probe(sample)
    assert (info.width, info.height, info.fps, info.frame_count) == (256, 256, 25, 200)
    assert sample.stat().st_size < 600_000


# --------------------------------------------------------------- source image


def _test_image() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([x * 4, y * 4, (x + y) * 2], axis=2).astype(np.uint8)


@pytest.mark.parametrize("codec", CODECS)
def test_source_image_roundtrip(codec):
    if not available_codecs()[codec]:
        pytest.skip(f"Pillow here has no {codec}")
    img = _test_image()
    data = encode_image(img, codec, 90)
    assert isinstance(data, bytes) and 0 < len(data)
    out = decode_image(data, codec)
    assert out.shape == img.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - img.astype(int))
    if codec == "png":
        assert err.max() == 0
    else:
        assert err.mean() < 4


def test_source_image_defaults_and_errors():
    assert DEFAULT_CODEC in CODECS and available_codecs()[DEFAULT_CODEC]
    assert 0 <= DEFAULT_QUALITY <= 100
    img = _test_image()
    data = encode_image(img)  # defaults
    assert decode_image(data, DEFAULT_CODEC).shape == img.shape
    with pytest.raises(UsageError):
        encode_image(img, "bmp", 50)
    with pytest.raises(UsageError):
        encode_image(img, "webp", 101)
    bad_inputs = [(b"", "webp"), (b"garbage" * 10, DEFAULT_CODEC),
                  (data[: len(data) // 2], DEFAULT_CODEC),
                  (encode_image(img, "png", 0), "webp"),  # right bytes, wrong label
                  (data, "nonsense")]
    for bad, codec in bad_inputs:
        with pytest.raises(KpcFormatError) as ei:
            decode_image(bad, codec)
        assert "\n" not in str(ei.value) and "0x" not in str(ei.value)
