"""The shipped sample .kpc files decode with the installed kpcodec (rerun samples/make_kpc.py
after changing the default model)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kpcodec import bitstream
from kpcodec.media.video import probe

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
KPC_FILES = sorted(SAMPLES.glob("*.kpc"))


def kpcodec_command() -> list[str]:
    script = shutil.which("kpcodec")
    return [script] if script else [sys.executable, "-m", "kpcodec"]


def test_every_sample_clip_has_a_kpc():
    clips = sorted(SAMPLES.glob("*.mp4"))
    assert clips, "no sample clips"
    missing = [c.name for c in clips if not c.with_suffix(".kpc").is_file()]
    assert not missing, f"run python samples/make_kpc.py (missing: {missing})"


@pytest.mark.parametrize("kpc", KPC_FILES, ids=[p.name for p in KPC_FILES])
def test_sample_decodes(kpc, tmp_path):
    header = bitstream.read_file(kpc).header
    out = tmp_path / "out.mp4"
    proc = subprocess.run(kpcodec_command() + ["decode", str(kpc), "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stderr.strip()} (rerun python samples/make_kpc.py?)"
    info = probe(out)
    assert info.frame_count == header.frame_count
    assert info.fps == header.fps and (info.width, info.height) == (header.width, header.height)
