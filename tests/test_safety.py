"""What a new user runs into (issue 22): outputs that are inputs, outputs checked before any work,
the containers decode writes, progress in a log, missing optional packages, crops that lose much,
errors that name their file."""
from __future__ import annotations

import os
import re
import shutil
import sys

import av
import pytest
from conftest import make_clip, make_clip_with_audio, run

from kpcodec import cli

from kpcodec.media import video
from kpcodec.errors import UsageError
from kpcodec.media.video import probe


def encode_tiny(runner, clip, out, *extra):
    return run(runner, "encode", clip, "-o", out, "--model", "tiny", *extra)


def lines_of(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.strip()]


def one_line_error(result, code, *needles):
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = lines_of(result)
    assert len(lines) == 1 and lines[0].startswith("kpcodec: error:"), result.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in result.output + result.stderr


def warnings_of(result) -> list[str]:
    return [ln for ln in lines_of(result) if ln.startswith("kpcodec: warning:")]


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path / "clip.mp4")


@pytest.fixture
def kpc(runner, clip, tmp_path):
    out = tmp_path / "clip.kpc"
    assert encode_tiny(runner, clip, out, "-q").exit_code == 0
    return out


# ------------------------------------------------------------------ outputs that are inputs


def test_output_that_is_the_input_is_refused_even_with_force(runner, clip, kpc, tmp_path):
    data, coded = clip.read_bytes(), kpc.read_bytes()
    (tmp_path / "sym.kpc").symlink_to(clip)
    os.link(clip, tmp_path / "hard.kpc")
    (tmp_path / "sym.mp4").symlink_to(kpc)
    for force in ((), ("-f",)):
        for out in (clip, tmp_path / "sym.kpc", tmp_path / "hard.kpc"):
            one_line_error(encode_tiny(runner, clip, out, *force), 2, str(out), "same file", str(clip))
        for out in (kpc, tmp_path / "sym.mp4"):
            one_line_error(run(runner, "decode", kpc, "-o", out, *force), 2, str(out), "same file")
        one_line_error(run(runner, "compare", clip, "--codecs", "x264", "--model", "tiny", "--csv", tmp_path / "hard.kpc",
                           *force), 2, "hard.kpc", "same file")
    assert clip.read_bytes() == data and kpc.read_bytes() == coded
    # Two of compare's outputs may not be one file either.
    one_line_error(run(runner, "compare", clip, "--codecs", "x264", "--model", "tiny", "--csv", tmp_path / "o.csv",
                       "--plot", tmp_path / "o.csv"), 2, "o.csv")


def test_pipes_are_not_checked(runner, clip, kpc):
    result = encode_tiny(runner, clip, "-", "-q")
    assert result.exit_code == 0 and result.stdout_bytes[:4] == kpc.read_bytes()[:4]
    assert run(runner, "decode", "-", "-o", "-", "-q", input=kpc.read_bytes()).exit_code == 0


def test_output_names_that_do_not_fit_warn(runner, clip, kpc, tmp_path):
    result = encode_tiny(runner, clip, tmp_path / "clip.bin", "-q")
    assert result.exit_code == 0
    assert warnings_of(result) == [f"kpcodec: warning: {tmp_path / 'clip.bin'} does not end in .kpc (it is "
                                   "written as a .kpc file all the same)"]
    assert warnings_of(encode_tiny(runner, clip, tmp_path / "b.kpc", "-q")) == []
    result = run(runner, "decode", kpc, "-o", tmp_path / "video", "-q")
    assert result.exit_code == 0 and probe(tmp_path / "video").codec == "h264"
    assert len(warnings_of(result)) == 1 and "no suffix" in result.stderr and "MP4" in result.stderr


# ------------------------------------------------------------------ outputs checked before any work


def test_outputs_are_checked_before_any_work(runner, clip, kpc, tmp_path, monkeypatch):
    from kpcodec import api
    from kpcodec import bitstream
    from kpcodec.models import registry

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(registry, "load_model", no_work)
    monkeypatch.setattr(video, "probe", no_work)
    monkeypatch.setattr(bitstream, "read_file", no_work)
    (tmp_path / "old.kpc").write_bytes(b"old")
    (tmp_path / "old.mp4").write_bytes(b"old")
    (tmp_path / "file").write_bytes(b"")
    for suffix, command in [(".kpc", lambda out: encode_tiny(runner, clip, out)),
                            (".mp4", lambda out: run(runner, "decode", kpc, "-o", out)),
                            (".mp4", lambda out: run(runner, "compare", clip, "--model", "tiny", "--csv", out))]:
        for out, needle in [(tmp_path / "nodir" / f"o{suffix}", "no such directory"),
                            (tmp_path / "file" / f"o{suffix}", "not a directory"),
                            (tmp_path, "is a directory"), (tmp_path / f"old{suffix}", "exists")]:
            one_line_error(command(out), 2, str(out), needle)
    # A directory that cannot be written to is an I/O error (exit 1), like any failed write.
    real_access = os.access
    monkeypatch.setattr(api.os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    one_line_error(encode_tiny(runner, clip, tmp_path / "new.kpc"), 1, str(tmp_path / "new.kpc"), "Permission denied")
    one_line_error(run(runner, "decode", kpc, "-o", tmp_path / "new.mp4"), 1, "new.mp4", "Permission denied")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.kpc", "clip.mp4", "file", "old.kpc", "old.mp4"]


# ------------------------------------------------------------------ the containers decode writes


def _webm_codec() -> str:
    return "vp9" if "libvpx-vp9" in av.codecs_available else "av1"


@pytest.mark.parametrize("suffix,codec", [(".mp4", "h264"), (".mkv", "h264"), (".mov", "h264"), (".webm", None),
                                          (".gif", "gif"), (".y4m", "rawvideo")])
def test_decode_picks_a_codec_the_container_holds(runner, kpc, tmp_path, suffix, codec):
    out = tmp_path / f"out{suffix}"
    result = run(runner, "decode", kpc, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    info = probe(out)
    assert info.codec == (codec or _webm_codec())
    assert (info.frame_count, info.fps, info.width, info.height) == (12, 25, 64, 64)
    frames = list(video.read_frames(out, size=64))
    assert len(frames) == 12 and frames[0].std() > 10  # a picture, not a flat (or black) frame


def test_decode_refuses_other_suffixes_and_says_what_it_writes(runner, kpc, tmp_path):
    for name in ("out.avi", "out.kpc", "out.png"):
        one_line_error(run(runner, "decode", kpc, "-o", tmp_path / name), 2, name, "mp4, mov, mkv, webm, gif, y4m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.kpc", "clip.mp4"]


def test_containers_without_audio_leave_it_out_with_a_warning(runner, tmp_path):
    talk = make_clip_with_audio(tmp_path / "talk.mp4", seconds=0.5)
    kpc = tmp_path / "talk.kpc"
    assert encode_tiny(runner, talk, kpc, "-q").exit_code == 0
    for suffix in (".gif", ".y4m"):
        result = run(runner, "decode", kpc, "-o", tmp_path / f"talk{suffix}", "-q")
        assert result.exit_code == 0, result.stderr
        assert len(warnings_of(result)) == 1 and "cannot hold audio" in result.stderr
        assert not probe(tmp_path / f"talk{suffix}").has_audio
    result = run(runner, "decode", kpc, "-o", tmp_path / "talk.webm", "-q")
    assert result.exit_code == 0 and result.stderr == "" and probe(tmp_path / "talk.webm").has_audio


def test_container_table(monkeypatch):
    assert video.container_for("-")[1] == "libx264" and video.container_for("x.MKV")[0].format == "matroska"
    assert video.container_for("noext")[0].format == "mp4"
    monkeypatch.setattr(video.av, "codecs_available", set(av.codecs_available) - {"libvpx-vp9"})
    assert video.container_for("x.webm")[1] == "libsvtav1"
    monkeypatch.setattr(video.av, "codecs_available", set())
    with pytest.raises(UsageError, match="no libx264 encoder"):
        video.container_for("x.mp4")
    with pytest.raises(UsageError, match="writes mp4, mov, mkv, webm, gif, y4m"):
        video.container_for("x.flv")


# ------------------------------------------------------------------ progress in a log


def test_plain_progress_lines_when_stderr_is_not_a_terminal(runner, clip, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "PLAIN_PROGRESS_S", 0.0)  # a line at every update
    result = encode_tiny(runner, clip, tmp_path / "a.kpc")
    assert result.exit_code == 0, result.stderr
    progress = [ln for ln in lines_of(result) if ln.startswith("encode:")]
    assert progress and all(re.fullmatch(r"encode: \d+/12 frames, [\d.]+ fps(, ETA \d+ s)?", ln) for ln in progress)
    assert lines_of(result)[-1].startswith("encoded 12 frames")
    result = run(runner, "decode", tmp_path / "a.kpc", "-o", tmp_path / "a.mp4")
    assert result.exit_code == 0, result.stderr
    assert any(re.fullmatch(r"decode: \d+/12 frames, [\d.]+ fps(, ETA \d+ s)?", ln) for ln in lines_of(result)), result.stderr
    quiet = encode_tiny(runner, clip, tmp_path / "b.kpc", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    # compare says how many encodes it will run, before it runs them.
    result = run(runner, "compare", clip, "--codecs", "x264,kpcodec", "--crf-x264", "40,45", "-k", "2",
                 "--model", "tiny", "--no-landmarks")
    assert result.exit_code == 0, result.stderr
    lines = lines_of(result)
    assert lines[0] == "compare: 3 encodes (x264 2, kpcodec 1) of 12 frames each"
    assert any(ln.startswith("compare: ") and "frames," in ln for ln in lines)
    quiet = run(runner, "compare", clip, "--codecs", "x264", "--crf-x264", "45", "--model", "tiny",
                "--no-landmarks", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


# ------------------------------------------------------------------ missing optional packages


def test_missing_matplotlib_is_a_usage_error_with_the_pip_line(runner, clip, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    one_line_error(run(runner, "compare", clip, "--codecs", "x264", "--model", "tiny", "--plot", tmp_path / "rd.png"),
                   2, "pip install 'kpcodec[plot]'")
    assert list(tmp_path.iterdir()) == [tmp_path / "clip.mp4"]


def test_missing_mediapipe_warns_once_that_landmark_columns_are_empty(runner, clip, monkeypatch):
    from kpcodec.eval import landmarks

    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(UsageError, match=r"pip install 'kpcodec\[eval\]'"):
        landmarks.FaceLandmarker()
    result = run(runner, "compare", clip, "--codecs", "x264", "--crf-x264", "45", "--model", "tiny", "-q")
    assert result.exit_code == 0, result.stderr
    assert warnings_of(result) == lines_of(result)
    assert len(lines_of(result)) == 1 and "landmark columns empty" in result.stderr
    assert "pip install 'kpcodec[eval]'" in result.stderr
    assert "lmk px" in result.stdout  # the table still has the (empty) columns


# ------------------------------------------------------------------ crops that lose much


def test_crop_warnings(runner, tmp_path):
    small = make_clip(tmp_path / "small.mp4", size=(40, 32))  # its 32x32 square becomes 64x64: 2x
    result = encode_tiny(runner, small, tmp_path / "s.kpc", "-q")
    assert result.exit_code == 0
    [line] = warnings_of(result)
    assert "small.mp4" in line and "upscaled 2.0x" in line and "--crop" in line
    wide = make_clip(tmp_path / "wide.mp4", size=(336, 64))  # 5.25:1
    result = encode_tiny(runner, wide, tmp_path / "w.kpc", "-q")
    [line] = warnings_of(result)
    assert "wide.mp4" in line and "4:1" in line and "--crop" in line
    # An explicit crop is the user's choice of square; it is still told when it is blown up.
    assert warnings_of(encode_tiny(runner, wide, tmp_path / "w2.kpc", "-q", "--crop", "100,0,64,64")) == []
    [line] = warnings_of(encode_tiny(runner, wide, tmp_path / "w3.kpc", "-q", "--crop", "100,0,32,32"))
    assert "32x32 crop is upscaled 2.0x" in line
    ok = make_clip(tmp_path / "ok.mp4")  # 96x80: its 80x80 square shrinks to 64
    assert warnings_of(encode_tiny(runner, ok, tmp_path / "ok.kpc", "-q")) == []
    result = run(runner, "compare", small, "--codecs", "x264", "--crf-x264", "45", "--model", "tiny",
                 "--no-landmarks", "-q")
    assert result.exit_code == 0 and len(warnings_of(result)) == 1 and "upscaled" in result.stderr


# ------------------------------------------------------------------ errors name their file


def test_malformed_kpc_errors_name_the_file(runner, kpc, tmp_path):
    bad = tmp_path / "bad.kpc"
    bad.write_bytes(b"\x00" + kpc.read_bytes()[1:])
    one_line_error(run(runner, "decode", bad, "-o", tmp_path / "o.mp4"), 1, f"error: {bad}: ", "magic")
    one_line_error(run(runner, "info", bad), 1, f"error: {bad}: ", "magic")
    one_line_error(run(runner, "decode", "-", "-o", tmp_path / "o.mp4", input=bad.read_bytes()), 1,
                   "error: <stdin>: ", "magic")
    short = tmp_path / "short.kpc"
    short.write_bytes(kpc.read_bytes()[:-9])
    one_line_error(run(runner, "info", short), 1, f"error: {short}: ")
    assert not (tmp_path / "o.mp4").exists()
    shutil.rmtree(tmp_path / "nope", ignore_errors=True)
    one_line_error(run(runner, "decode", tmp_path / "nope.kpc", "-o", tmp_path / "o.mp4"), 1, "nope.kpc")


@pytest.mark.parametrize("args", [["--help"], ["encode", "--help"], ["info", "GOLDEN"], ["encode", "EMPTY", "-o", "OUT"]])
def test_quick_answers_do_not_import_torch(args, tmp_path):
    """--help, info and a refused input answer before torch is imported (start-up, issue 22)."""
    import subprocess
    import sys
    from pathlib import Path

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    golden = Path(__file__).resolve().parent / "golden" / "v1_3.kpc"
    args = [str(golden) if a == "GOLDEN" else str(empty) if a == "EMPTY" else str(tmp_path / "x.kpc") if a == "OUT"
            else a for a in args]
    code = ("import runpy, sys\n"
            f"sys.argv = ['kpcodec', *{args!r}]\n"
            "try:\n    runpy.run_module('kpcodec', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stderr.strip().splitlines()[-1] == "NO-TORCH", p.stderr
