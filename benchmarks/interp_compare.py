"""Whole files, end to end: causal fill against interpolation at keep-every 1, 2, 4 (issue 4).

    python benchmarks/interp_compare.py --clips 4

For --clips val clips (spread over the sorted names), runs kpcodec.eval.compare.compare (what
`kpcodec compare --codecs kpcodec -k 1,2,4 [--predictor interp]` runs: encode to .kpc,
decode to MP4, score against the original frames) once with the decoder's default predictor
and once with `interp`, which waits for the next sent frame (keep-every N - 1 frames of
latency). Rates are whole files (source image included) and keypoint chunks alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bitrate import _machine, save_results  # noqa: E402
from rate_quality import pick_clips  # noqa: E402

from kpcodec.codec import predictors as predict  # noqa: E402
from kpcodec.eval.compare import compare  # noqa: E402

KEEPS = (1, 2, 4)


def run(clips: list[Path], predictors: list[str], max_frames: int | None, threads: int) -> list[dict]:
    rows = []
    for clip in clips:
        for predictor in predictors:
            r = compare(clip, codecs=("kpcodec",), keep_every=KEEPS, max_frames=max_frames, threads=threads,
                        predictor=predictor)
            for row in r.rows:
                rows.append({"clip": clip.stem, "predictor": predictor, "keep": row.param, "frames": r.frames,
                             "kbps": row.kbps, "keypoint_kbps": row.steady_kbps, "ssim": row.ssim,
                             "landmark_px": row.landmark_px})
                print(f"{clip.stem[:30]:>30} {predictor:>7} k={row.param}: {row.kbps:.2f} kb/s, SSIM "
                      f"{row.ssim:.4f}", file=sys.stderr, flush=True)
    return rows


def report(r: dict) -> str:
    rows = r["rows"]
    lines = ["# Causal fill against interpolation, whole files (kpcodec compare)", "",
             f"{r['date']}, {r['machine']}; {r['seconds']:.0f} s.", f"Command: `{r['command']}`",
             f"{len(r['clips'])} val clips ({', '.join(r['clips'])}), first {r['max_frames']} frames each; "
             "kb/s: whole .kpc files (source image included); keypoints: the rate without the source image "
             "(compare's steady state); SSIM and mediapipe landmark error against the original frames.", "",
             "| predictor | keep | latency (frames) | kb/s | keypoint kb/s | SSIM | landmark px |",
             "|---|---|---|---|---|---|---|"]
    for predictor in r["predictors"]:
        for keep in KEEPS:
            sel = [x for x in rows if x["predictor"] == predictor and x["keep"] == keep]
            lm = [x["landmark_px"] for x in sel if x["landmark_px"] is not None]
            latency = keep - 1 if predict.get_predictor(predictor).mode != "causal" else 0
            landmark = f"{np.mean(lm):.3f}" if lm else "—"
            lines.append(f"| {predictor} | {keep} | {latency} | {np.mean([x['kbps'] for x in sel]):.3f} | "
                         f"{np.mean([x['keypoint_kbps'] for x in sel]):.3f} | "
                         f"{np.mean([x['ssim'] for x in sel]):.4f} | {landmark} |")
    base = [x for x in rows if x["keep"] == 1 and x["predictor"] == r["predictors"][0]]
    lines += ["", "Against keep-every 1 (mean over clips):"]
    for predictor in r["predictors"]:
        for keep in KEEPS[1:]:
            sel = [x for x in rows if x["predictor"] == predictor and x["keep"] == keep]
            kp = np.mean([x["keypoint_kbps"] for x in sel]) / np.mean([x["keypoint_kbps"] for x in base])
            ds = np.mean([x["ssim"] for x in sel]) - np.mean([x["ssim"] for x in base])
            lines.append(f"- {predictor}, keep-every {keep}: keypoint rate {kp:.2f}x, SSIM {ds:+.4f}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--max-frames", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default="interp_compare")
    args = p.parse_args()
    start = time.time()
    val = args.data / "talking-heads" / "val"
    names = pick_clips([f.stem for f in val.glob("*.mp4")], args.clips)
    predictors = [predict.DEFAULT_PREDICTOR, "interp"]
    rows = run([val / f"{n}.mp4" for n in names], predictors, args.max_frames, args.threads)
    result = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": _machine(),
              "command": " ".join([Path(sys.executable).name] + sys.argv), "seconds": time.time() - start,
              "clips": names, "max_frames": args.max_frames, "predictors": predictors, "rows": rows}
    save_results(args.out, args.tag, result, report)


if __name__ == "__main__":
    main()
