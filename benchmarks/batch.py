"""Files per minute for a folder of short clips: `kpcodec batch --engine local`, `--engine ray` and a
shell loop over `kpcodec encode` (one process per file: start-up, imports and weights each time).
Writes benchmarks/results/batch.md and .json.

    python benchmarks/batch.py [--data ../shared/data] [--workers 2]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import git_commit, machine  # noqa: E402


def timed(cmd: list[str], shell: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run(cmd if not shell else cmd[0], shell=shell, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch")
    a = p.parse_args(argv)
    clips = sorted((a.data / "talking-heads" / "val").glob("*.mp4"))
    kp = [sys.executable, "-m", "kpcodec"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        listing = tmp / "list.txt"
        listing.write_text("".join(f"{c}\n" for c in clips))
        runs = {
            "shell loop over kpcodec encode": lambda: timed([
                "for f in $(cat {l}); do {k} encode \"$f\" -o {o}/$(basename \"$f\" .mp4).kpc -f -q --threads 1; done"
                .format(l=listing, k=" ".join(kp), o=tmp / "loop")], shell=True),
            f"kpcodec batch --engine local --workers {a.workers}": lambda: timed(
                kp + ["batch", str(listing), "-o", str(tmp / "local"), "--workers", str(a.workers), "-q", "-f"]),
            f"kpcodec batch --engine ray --workers {a.workers}": lambda: timed(
                kp + ["batch", str(listing), "-o", str(tmp / "ray"), "--engine", "ray", "--workers", str(a.workers),
                      "-q", "-f"]),
        }
        (tmp / "loop").mkdir()
        for name, fn in runs.items():
            try:
                seconds = fn()
                rows.append({"how": name, "files": len(clips), "seconds": seconds, "files_per_min": len(clips) / seconds * 60})
            except subprocess.CalledProcessError as exc:
                rows.append({"how": name, "files": len(clips), "error": f"exit {exc.returncode}"})
            print(rows[-1], file=sys.stderr)
    lines = [
        "# Batch transcoding: files per minute",
        "",
        f"Machine: {machine()}. Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Commit {git_commit()}. "
        f"Command: `python benchmarks/batch.py --workers {a.workers}`.",
        "",
        f"The {len(clips)} val clips (3-10 s each, 256x256 after the centre crop), default model, keep-every 2, with "
        "audio where the clip has it; each way once, in this order, wall time including every start-up. The shell "
        "loop runs one `kpcodec encode --threads 1` process per file (imports and weights each time); batch loads "
        f"the models once per worker ({a.workers} workers of one torch thread each; Ray: a local Ray started by the "
        "command itself, its start-up included).",
        "",
        "| how | files | seconds | files/min |",
        "|---|---|---|---|",
        *[f"| {r['how']} | {r['files']} | {r.get('seconds', 0):.1f} | {r.get('files_per_min', 0):.1f} |"
          if "error" not in r else f"| {r['how']} | {r['files']} | {r['error']} | |" for r in rows],
        "",
    ]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps({"machine": machine(), "commit": git_commit(), "rows": rows},
                                                     indent=1) + "\n")
    print(f"wrote {a.out}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
