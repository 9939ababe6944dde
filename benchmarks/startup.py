"""Start-up of the kpcodec command: wall time of the commands that should answer at once (every
--help, `info`, an empty input refused) and of encode/decode on the shipped sample, minimum of N
runs, each a fresh process. Writes benchmarks/results/startup.md.

    python benchmarks/startup.py [--runs 5]
"""
from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import git_commit, machine  # noqa: E402

KPCODEC = [sys.executable, "-m", "kpcodec"]
SAMPLE = ROOT / "samples" / "astronaut.mp4"
SAMPLE_KPC = ROOT / "samples" / "astronaut.kpc"


def wall(args: list[str], runs: int, expect: int = 0) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run(KPCODEC + args, capture_output=True)
        best = min(best, time.perf_counter() - t)
        if p.returncode != expect:
            raise SystemExit(f"kpcodec {' '.join(args)}: exit {p.returncode}: {p.stderr.decode()[-300:]}")
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        empty = Path(work) / "empty.mp4"
        empty.write_bytes(b"")
        cases = [
            ("kpcodec --help", ["--help"], 0),
            ("kpcodec encode --help", ["encode", "--help"], 0),
            ("kpcodec decode --help", ["decode", "--help"], 0),
            ("kpcodec compare --help", ["compare", "--help"], 0),
            ("kpcodec info samples/astronaut.kpc", ["info", str(SAMPLE_KPC)], 0),
            ("kpcodec encode empty.mp4 (refused)", ["encode", str(empty), "-o", f"{work}/e.kpc"], 1),
            ("kpcodec encode to a missing directory (refused)", ["encode", str(SAMPLE), "-o", f"{work}/no/x.kpc"], 2),
            ("kpcodec encode samples/astronaut.mp4 (200 frames)", ["encode", str(SAMPLE), "-o", f"{work}/a.kpc", "-f", "-q"], 0),
            ("kpcodec decode samples/astronaut.kpc (200 frames)", ["decode", str(SAMPLE_KPC), "-o", f"{work}/a.mp4", "-f", "-q"], 0),
            ("python -c 'import torch' (for scale)", None, 0),
        ]
        rows = []
        for label, args, code in cases:
            if args is None:
                best = float("inf")
                for _ in range(a.runs):
                    t = time.perf_counter()
                    subprocess.run([sys.executable, "-c", "import torch"], check=True)
                    best = min(best, time.perf_counter() - t)
            else:
                best = wall(args, a.runs, code)
            rows.append((label, best))
            print(f"{label}: {best:.2f} s", file=sys.stderr, flush=True)
    md = ["# Start-up (issue 22)", "",
          f"- **Date:** {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", f"- **Machine:** {machine()}",
          f"- **Code:** git {git_commit()}", f"- **Command:** `python benchmarks/startup.py --runs {a.runs}`",
          f"- Wall time of a fresh process, minimum of {a.runs} runs. The first group should answer "
          "in under 1 s: they parse options and check inputs before torch is imported.", "",
          "| command | seconds |", "|---|---:|", *[f"| {label} | {s:.2f} |" for label, s in rows], ""]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "startup.md").write_text("\n".join(md))
    print(f"{len(rows)} commands -> {a.out / 'startup.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
