"""kpcodec batch (kpcodec.scale.batch): a folder or a list of videos, local and Ray engines, resuming."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from kpcodec.scale import batch as b

from conftest import run


@pytest.fixture
def folder(clip, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(clip, d / f"{name}.mp4")
    (d / "broken.mp4").write_text("not a video")
    (d / "notes.txt").write_text("not an input")
    return d


def test_a_folder_is_encoded_a_broken_file_reported_and_a_rerun_resumes(runner, folder, tmp_path):
    out = tmp_path / "out"
    r = run(runner, "batch", folder, "-o", out, "--model", "tiny", "--workers", "2", "--json", "--score")
    assert r.exit_code == 1, r.stderr  # one file failed: the others are done
    rows = json.loads(r.stdout)
    assert [(row["file"].rsplit("/", 1)[1], row["status"]) for row in rows] == [
        ("a.mp4", "done"), ("b.mp4", "done"), ("broken.mp4", "failed"), ("c.mp4", "done")]
    assert all(row["frames"] == 12 and row["kbps"] > 0 and 0 < row["ssim"] <= 1 for row in rows if row["status"] == "done")
    assert "not a video" in rows[2]["error"] and "1 failed" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.kpc", "b.kpc", "c.kpc", "summary.csv", "summary.json"]
    with open(out / "summary.csv") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["done", "done", "failed", "done"]
    before = (out / "a.kpc").stat().st_mtime_ns
    (folder / "broken.mp4").unlink()
    r = run(runner, "batch", folder, "-o", out, "--model", "tiny", "--workers", "1", "--json")
    assert r.exit_code == 0 and {row["status"] for row in json.loads(r.stdout)} == {"skipped"}
    assert (out / "a.kpc").stat().st_mtime_ns == before  # finished outputs are kept
    r = run(runner, "batch", folder, "-o", out, "--model", "tiny", "--workers", "1", "--decode", "-f", "-q")
    assert r.exit_code == 0 and (out / "a.mp4").exists()


def test_a_list_file_and_bad_arguments(runner, folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# two of them\nin/a.mp4\n\nin/c.mp4\n")
    r = run(runner, "batch", listing, "-o", tmp_path / "o2", "--model", "tiny", "--workers", "1", "--json")
    assert r.exit_code == 0 and [row["status"] for row in json.loads(r.stdout)] == ["done", "done"]
    for args, code, needle in ((["--engine", "spark"], 2, "--engine"), (["--workers", "0"], 2, "--workers")):
        r = run(runner, "batch", folder, "-o", tmp_path / "o3", "--model", "tiny", *args)
        assert r.exit_code == code and needle in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(runner, "batch", empty, "-o", tmp_path / "o4")
    assert r.exit_code == 2 and "holds no videos" in r.stderr


def test_ray_engine_runs_the_same_jobs(folder, tmp_path):
    pytest.importorskip("ray")
    from kpcodec.options import EncodeOptions

    (folder / "broken.mp4").unlink()
    rows = b.batch(folder, tmp_path / "r", EncodeOptions(model="tiny"), engine="ray", workers=2)
    b.batch(folder, tmp_path / "l", EncodeOptions(model="tiny"), engine="local", workers=1)
    assert [r.status for r in rows] == ["done"] * 3
    assert all((tmp_path / "r" / f"{n}.kpc").read_bytes() == (tmp_path / "l" / f"{n}.kpc").read_bytes() for n in "abc")
