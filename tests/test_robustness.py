"""Interrupted commands leave nothing behind; corrupt input names the frame, --ignore-errors goes on."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_clip, run

from kpcodec import bitstream

KPCODEC = [sys.executable, "-m", "kpcodec"]


# ------------------------------------------------------------------ interruption


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    # Long enough that a fast machine is still rendering when the signal comes (CI: 150 frames
    # decoded in 3.4 s and the signal landed after the output was done).
    return make_clip(tmp_path_factory.mktemp("long") / "long.mp4", frames=400)


@pytest.fixture(scope="module")
def long_kpc(long_clip, tmp_path_factory):
    import kpcodec

    folder = tmp_path_factory.mktemp("longkpc")
    short = folder / "short.kpc"
    kpcodec.encode(long_clip, short, keep_every=2, model="tiny")
    # Ten times as long (the keypoints repeated): the tiny model renders 130 fps on a fast
    # machine, and the signal must come while it is still rendering.
    s = bitstream.read_file(short)
    n, reps = s.header.frame_count, 10
    s.header.frame_count = n * reps
    s.sent_indices = np.concatenate([s.sent_indices + r * n for r in range(reps)])
    s.keypoints, s.jacobians = np.tile(s.keypoints, (reps, 1, 1)), np.tile(s.jacobians, (reps, 1, 1, 1))
    out = folder / "long.kpc"
    bitstream.write_bytes(out, bitstream.dumps(s))
    return out


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd_dir / fd) == str(path) for fd in os.listdir(fd_dir))
    except (FileNotFoundError, PermissionError):
        return False


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"kpcodec ended (rc {proc.returncode}) before it could be interrupted: "
                        f"{proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("kpcodec never started writing")
        time.sleep(0.02)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="polls /proc")
@pytest.mark.parametrize("command,signum,code", [
    ("encode", signal.SIGINT, 130), ("encode", signal.SIGTERM, 143), ("encode-stdin", signal.SIGTERM, 143),
    ("decode", signal.SIGINT, 130), ("decode", signal.SIGTERM, 143),
])
def test_interrupt_leaves_no_output(command, signum, code, long_clip, long_kpc, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work)}
    stdin, feed = subprocess.DEVNULL, None
    if command == "decode":
        # Fed through a pipe held open, the first half only: the decode cannot end before the
        # signal, however fast the machine (CI once rendered the whole file, 4000 frames in 10 s,
        # before a signal sent 0.2 s after it began writing arrived).
        out = work / "out.mp4"
        args = ["decode", "-", "-o", str(out)]
        stdin = subprocess.PIPE
        data = long_kpc.read_bytes()
        feed = data[:len(data) // 2]

        def started():  # the writer's temp file holds frames: they are being rendered and written
            return any(p.name.startswith(".out.mp4.") and p.stat().st_size > 0 for p in work.iterdir())
    else:
        out = work / "out.kpc"
        src = "-" if command == "encode-stdin" else str(long_clip)
        args = ["encode", src, "-o", str(out), "--model", "tiny", "--keep-every", "1"]
        if command == "encode-stdin":
            stdin = open(long_clip, "rb")

            def started():  # stdin has been copied to its temp file
                return any(p.name.startswith("kpcodec-stdin-") and p.stat().st_size == long_clip.stat().st_size
                           for p in work.iterdir())
        else:
            def started():  # reading the input video
                return _has_open(proc.pid, long_clip.resolve())
    proc = None
    try:
        # SIGINT at its default in the child: a test run started in the background by a non-interactive
        # shell inherits it ignored (as kpcodec then rightly keeps it), and the signal would do nothing.
        proc = subprocess.Popen(KPCODEC + args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=work, preexec_fn=_default_sigint)
        if feed is not None:
            proc.stdin.write(feed)  # the decoder reads as it renders; the pipe stays open
            proc.stdin.flush()
        _wait_for(started, proc)
        time.sleep(0.2)
        proc.send_signal(signum)
        proc.wait(timeout=120)  # stdin still open: only the signal can end it
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if stdin not in (subprocess.DEVNULL, subprocess.PIPE):
            stdin.close()
    assert proc.returncode == code, stderr.decode()
    assert stderr.decode().strip().splitlines()[-1] == "kpcodec: interrupted"
    assert "Traceback" not in stderr.decode() and stdout == b""
    assert list(work.iterdir()) == []  # no output, no temp file, no stdin copy


# ------------------------------------------------------------------ corrupt input


@pytest.fixture(scope="module")
def corrupt_clip(tmp_path_factory):
    """A 40-frame clip whose coded frames 20 and 21 (in the middle of mdat) are noise."""
    import av

    folder = tmp_path_factory.mktemp("corrupt")
    good = make_clip(folder / "good.mp4", frames=40)
    with av.open(str(good)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(good.read_bytes())
    mdat = data.find(b"mdat")
    rng = np.random.default_rng(3)
    for pos, size in packets[20:22]:
        assert pos > mdat
        data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    bad = folder / "bad.mp4"
    bad.write_bytes(bytes(data))
    return bad


def test_corrupt_input_names_the_frame(runner, corrupt_clip, tmp_path):
    result = run(runner, "encode", corrupt_clip, "-o", tmp_path / "x.kpc", "--model", "tiny")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.mp4: corrupt data at frame " in lines[0], result.stderr
    frame = int(lines[0].split("at frame ")[1].split()[0])
    assert 15 <= frame <= 21  # the frames before it decoded
    assert list(tmp_path.iterdir()) == []


def test_ignore_errors_keeps_going(runner, corrupt_clip, tmp_path):
    out = tmp_path / "x.kpc"
    result = run(runner, "encode", corrupt_clip, "-o", out, "--model", "tiny", "--ignore-errors", "-q")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kpcodec: warning: ") and "did not decode" in lines[0]
    skipped = int(lines[0].split("warning: ")[1].split()[0])
    assert skipped >= 1
    assert bitstream.read_file(out).header.frame_count == 40  # bad frames were repeated, not dropped
