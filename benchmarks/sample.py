"""What a newcomer gets on the shipped sample: `kpcodec compare samples/astronaut.mp4` with the
hybrid rows and the low-resolution AV1 baseline, written to benchmarks/results/sample.{md,json}.

    python benchmarks/sample.py            # ~10 min on 2 cores

The sample is synthetic (a still photograph moved by a smooth camera path, samples/README.md):
no face of the training data's kind, so it shows the model's limits, not the val figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import markdown_table, mean_rows, run_meta  # noqa: E402

from kpcodec.eval import classic, report  # noqa: E402
from kpcodec.eval import compare as cmp  # noqa: E402

CODECS = ("kpcodec", "kpcodec-hybrid", "x264", "av1", "av1-low")
TARGETS = (4.0, 6.0, 8.0, 12.0)
LOW_RES = (classic.LowRes(64, 3), classic.LowRes(96, 3), classic.LowRes(128, 3))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=ROOT / "samples" / "astronaut.mp4")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    start = time.perf_counter()
    r = cmp.compare(args.clip, codecs=CODECS, keep_every=(1, 2, 4), landmarks=True, threads=None,
                    hybrid_kbps=TARGETS, low_res=LOW_RES)
    d = r.to_dict(per_frame=False)
    meta = run_meta("sample.py", argv, start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sample.json").write_text(json.dumps({"meta": meta, "result": d}, indent=1) + "\n")
    rows = mean_rows([d["rows"]])
    report.plot_rd(rows, args.out / "sample.png", f"{args.clip.name}: {r.frames} frames", force=True)
    md = ["# The shipped sample (`samples/astronaut.mp4`)", "",
          f"- **Date:** {meta['date']}", f"- **Machine:** {meta['machine']}",
          f"- **Code:** git {meta['git']}", f"- **Command:** `{meta['command']}`",
          f"- **Clip:** {r.frames} frames at {r.fps} fps, {r.size}x{r.size}; wall time {meta['seconds'] / 60:.1f} min",
          "- **Rows:** as in hybrid.md (kpcodec k=N keypoints only; kpcodec-hybrid `Rk` = `--bitrate Rk`; "
          "av1-low = the clip at SIZE px, every DIV-th frame, upscaled and held).", "",
          *markdown_table(rows), "", "![rate-quality](sample.png)", "",
          "## BD-rate (kpcodec's rate change at equal quality; negative = fewer bits)", ""]
    for b in cmp.bd_rates(rows):
        v = "no overlap" if b["bd_rate_pct"] is None else f"{b['bd_rate_pct']:+.1f}%"
        md.append(f"- {b['codec']} against {b['reference']} on {cmp.metric_name(b['metric'])}: {v}")
    if r.notes:
        md += ["", "Notes: " + "; ".join(r.notes)]
    (args.out / "sample.md").write_text("\n".join(md) + "\n")
    print(f"{len(rows)} settings -> {args.out / 'sample.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
