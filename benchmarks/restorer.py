"""The base-layer restorer of the default model of files with a base layer against the bicubic upsample
(fomm-256-hybrid-v2) and against the restorer before it (fomm-256-hybrid-v4) on the same files: on the
monitor clips (kpcodec.train.evaluate.MONITOR_CLIPS, first 250 frames), each setting encoded once as
`encode --base-layer SIZE@DIV:CRF,alone,placed` does and decoded as `decode` and `decode --model M` do.
SSIM over every frame, over the base frames and over the frames between; decode speed of each (one run
each, on `--threads`). At the model size (256) the base frames are not upsampled: `-v2` and `-v4` show
them as decoded, a model with restore_full (`-v5`) restores them too.

    python benchmarks/restorer.py [--settings 96@4:52,128@4:55,160@3:54,192@4:56,256@4:50,256@4:58] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare import MONITOR_DATA, run_header, run_meta  # noqa: E402
from placement import decoded, encoded  # noqa: E402

from kpcodec.models.registry import DEFAULT_HYBRID_MODEL  # noqa: E402

MODELS = {"bicubic": "fomm-256-hybrid-v2", "previous": "fomm-256-hybrid-v4", "restorer": DEFAULT_HYBRID_MODEL}


def run(data: Path, settings: list[str], threads: int, frames_per_clip: int = 250) -> list[dict]:
    import torch

    from kpcodec.media import video
    from kpcodec.train.evaluate import MONITOR_CLIPS

    torch.set_num_threads(threads)
    rows = []
    for clip in MONITOR_CLIPS:
        path = data / clip
        frames = np.stack(list(video.read_frames(str(path), 256))[:frames_per_clip])
        fps = video.probe(str(path)).fps
        for setting in settings:
            data_kpc = encoded(frames, fps, f"{setting},alone,placed", threads)
            row = {"clip": Path(clip).stem, "setting": setting}
            for label, model in MODELS.items():
                kbps, scores, where, dec_fps = decoded(data_kpc, frames, fps, threads, model)
                base = np.isin(np.arange(len(scores)), where)
                row.update({"kbps": kbps, f"{label}_ssim": float(np.mean(scores)),
                            f"{label}_base": float(np.mean(np.asarray(scores)[base])),
                            f"{label}_between": float(np.mean(np.asarray(scores)[~base])) if (~base).any() else None,
                            f"{label}_fps": dec_fps})
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def render(meta: dict, rows: list[dict], out: Path) -> None:
    md = run_header("The base-layer restorer against the bicubic upsample (streams of the base layer alone)", meta, MONITOR_DATA,
                    "- **What:** each setting encoded once as `encode --base-layer SIZE@DIV:CRF,alone,placed`, decoded with "
                    f"`{MODELS['restorer']}` (the restorer), `{MODELS['previous']}` (the restorer before it) and "
                    f"`{MODELS['bicubic']}` (bicubic); the same bits. SSIM over every frame, the base frames and the frames "
                    "between; gains over bicubic; decode fps on the command's threads, one run each (the machine is "
                    "shared: compare them in a row, not across rows)", "",
                    "| setting | kb/s | bicubic SSIM | restorer SSIM | gain | gain, base frames | gain, frames between | "
                    "clips better | previous restorer's gain | clips where the restorer beats it | decode fps, bicubic | "
                    "decode fps, restorer |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        s = [r for r in rows if r["setting"] == setting]

        def mean(k):
            v = [r[k] for r in s if r[k] is not None]
            return float(np.mean(v)) if v else float("nan")

        gain = [r["restorer_ssim"] - r["bicubic_ssim"] for r in s]
        over = [r["restorer_ssim"] - r["previous_ssim"] for r in s]
        md.append(f"| {setting} | {mean('kbps'):.2f} | {mean('bicubic_ssim'):.4f} | {mean('restorer_ssim'):.4f} | "
                  f"{np.mean(gain):+.4f} | {mean('restorer_base') - mean('bicubic_base'):+.4f} | "
                  f"{mean('restorer_between') - mean('bicubic_between'):+.4f} | {sum(g > 0 for g in gain)} of {len(s)} | "
                  f"{mean('previous_ssim') - mean('bicubic_ssim'):+.4f} | {sum(g > 0 for g in over)} of {len(s)} | "
                  f"{mean('bicubic_fps'):.0f} | {mean('restorer_fps'):.0f} |")
    md += ["", "Per clip:", "", "| clip | setting | kb/s | bicubic SSIM | previous restorer SSIM | restorer SSIM | gain |",
           "|---|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['clip']} | {r['setting']} | {r['kbps']:.2f} | {r['bicubic_ssim']:.4f} | {r['previous_ssim']:.4f} | "
           f"{r['restorer_ssim']:.4f} | {r['restorer_ssim'] - r['bicubic_ssim']:+.4f} |" for r in rows]
    (out / "restorer.md").write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--settings", default="96@4:52,128@4:55,160@3:54,192@4:56,256@4:50,256@4:58")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.data, args.settings.split(","), args.threads, args.frames)
    meta = run_meta("restorer.py", argv, start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "restorer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    render(meta, rows, args.out)
    print(f"{len(rows)} rows -> {args.out / 'restorer.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
