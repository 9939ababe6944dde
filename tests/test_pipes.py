"""`-` for stdin/stdout: pipes between kpcodec commands, stdout purity, no binary to a terminal."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import av
import pytest
from conftest import make_clip_with_audio, run

from kpcodec import bitstream
from kpcodec.media.video import probe

KPCODEC = [sys.executable, "-m", "kpcodec"]


@pytest.fixture(scope="module")
def sine_clip(tmp_path_factory):
    return make_clip_with_audio(tmp_path_factory.mktemp("pipes") / "talk.mp4", seconds=1.0)


def test_pipe_round_trip(sine_clip, tmp_path):
    """cat talk.mp4 | kpcodec encode - -o - | kpcodec decode - -o out.mp4"""
    out = tmp_path / "out.mp4"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with open(sine_clip, "rb") as src:
        enc = subprocess.Popen(KPCODEC + ["encode", "-", "-o", "-", "--model", "tiny", "-q"], stdin=src,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        dec = subprocess.run(KPCODEC + ["decode", "-", "-o", str(out)], stdin=enc.stdout,
                             capture_output=True, env=env, timeout=300)
        enc.stdout.close()
        enc_err = enc.stderr.read()
        assert enc.wait(timeout=60) == 0, enc_err
    assert enc_err == b""  # -q: nothing at all
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == b"" and b"decoded 25 frames" in dec.stderr
    info = probe(out)
    assert info.frame_count == 25 and info.has_audio
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]  # the stdin copy is gone


def test_encode_to_stdout_writes_only_the_file(runner, sine_clip, tmp_path):
    result = run(runner, "encode", sine_clip, "-o", "-", "--model", "tiny")
    assert result.exit_code == 0, result.stderr
    stream = bitstream.loads(result.stdout_bytes)  # refuses any byte before or after the file
    assert stream.header.frame_count == 25 and [k for k, _ in stream.extra_chunks] == ["opus"]
    assert "encoded 25 frames" in result.stderr and "-> -" in result.stderr
    # Same bytes as encoding to a file.
    assert run(runner, "encode", sine_clip, "-o", tmp_path / "f.kpc", "--model", "tiny").exit_code == 0
    assert (tmp_path / "f.kpc").read_bytes() == result.stdout_bytes


def test_decode_stdin_to_stdout(runner, sine_clip, tmp_path):
    kpc = (tmp_path / "t.kpc")
    assert run(runner, "encode", sine_clip, "-o", kpc, "--model", "tiny").exit_code == 0
    result = run(runner, "decode", "-", "-o", "-", input=kpc.read_bytes())
    assert result.exit_code == 0, result.stderr
    mp4 = tmp_path / "piped.mp4"
    mp4.write_bytes(result.stdout_bytes)
    with av.open(str(mp4)) as c:
        assert c.streams.audio and sum(1 for _ in c.decode(video=0)) == 25
    assert "decoded 25 frames" in result.stderr


def test_encode_from_stdin_names_stdin_in_errors(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run(runner, "encode", "-", "-o", tmp_path / "x.kpc", "--model", "tiny", input=b"not a video\n")
    assert result.exit_code == 1 and "<stdin>" in result.stderr and "kpcodec-stdin" not in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("command", ["encode", "decode"])
def test_refuses_binary_to_a_terminal(command, sine_clip, tmp_path):
    master, slave = os.openpty()
    try:
        args = [str(sine_clip)] if command == "encode" else [str(tmp_path / "any.kpc")]
        proc = subprocess.run(KPCODEC + [command, *args, "-o", "-", "--model" if command == "encode" else "-q"]
                              + (["tiny"] if command == "encode" else []),
                              stdout=slave, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert lines == ["kpcodec: error: refusing to write binary to a terminal (redirect stdout or pipe it)"]
