"""AV1's in-loop filters (CDEF and loop restoration) on the base layer's frames, on or off, once the
decoder restores them: BD-rate on the SSIM of the upsampled base frames.

On the monitor clips (kpcodec.train.evaluate.MONITOR_CLIPS, first `--frames` frames), every
DIV-th frame coded by the base layer's encoder (kpcodec.media.baselayer, preset 2) at each size and
CRF, with the filters on (SVT-AV1's defaults) and off (baselayer.RESTORED_SVT_PARAMS); decoded and
upsampled as the decoder shows a stream of the base layer alone (MotionModel.base_image with the
restorer of `--model`; at the model size nothing is upsampled or restored). kb/s: the AV1 packets
over the clip's duration; SSIM over the base frames. BD-rate of "off" against "on" per clip (negative:
off needs fewer bits for the same SSIM).

    python benchmarks/base_encoder.py [--sizes 96,128,192,256] [--crfs 42,50,56,62] [--model NAME]
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
from compare import run_header, run_meta  # noqa: E402

VARIANTS = {"on": False, "off": True}  # label -> settings.restored (the filters off)


def coded(frames, size: int, divisor: int, crf: int, fps: float, filters_off: bool) -> list[bytes]:
    """The base packets of `frames` at size@divisor:crf, the in-loop filters on or off."""
    from kpcodec.media import baselayer

    return baselayer.encode_clip(frames, baselayer.BaseLayerSettings(size, divisor, crf, alone=True), fps,
                                 restored=filters_off)


def run(data: Path, sizes: list[int], divisor: int, crfs: list[int], model: str, frames_per_clip: int) -> list[dict]:
    import torch

    from kpcodec.eval.metrics import ssim
    from kpcodec.media import baselayer, video
    from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
    from kpcodec.models.registry import load_model
    from kpcodec.train.evaluate import MONITOR_CLIPS

    torch.set_num_threads(1)
    net = load_model(model, inference=True)
    rows = []
    for clip in MONITOR_CLIPS:
        path = data / clip
        fps = float(video.probe(str(path)).fps)
        frames = np.stack(list(video.read_frames(str(path), 256))[:frames_per_clip])
        shown = frames[::divisor]
        for size in sizes:
            for label, off in VARIANTS.items():
                for crf in crfs:
                    packets = coded(frames, size, divisor, crf, fps, off)
                    with torch.inference_mode():
                        up = tensor_to_frames(net.base_image(frames_to_tensor(baselayer.decode_clip(packets)), restore=True))
                    row = {"clip": Path(clip).stem, "size": size, "filters": label, "crf": crf,
                           "kbps": (sum(map(len, packets)) + 2 * len(packets)) * 8 / (len(frames) / fps) / 1000,
                           "ssim": float(np.mean([ssim(a, b) for a, b in zip(shown, up)]))}
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per size: BD-rate of filters off against on (mean and median over clips), mean points."""
    from kpcodec.eval.compare import bd_rate

    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        bds = []
        for clip in dict.fromkeys(r["clip"] for r in rows):
            curve = {v: [(r["kbps"], r["ssim"]) for r in rows if r["size"] == size and r["clip"] == clip and r["filters"] == v]
                     for v in VARIANTS}
            bd = bd_rate(curve["off"], curve["on"])
            if bd is not None:
                bds.append(bd["bd_rate_pct"])
        means = {v: {k: float(np.mean([r[k] for r in rows if r["size"] == size and r["filters"] == v]))
                     for k in ("kbps", "ssim")} for v in VARIANTS}
        out.append({"size": size, "bd_mean": float(np.mean(bds)), "bd_median": float(np.median(bds)),
                    "better": sum(b < 0 for b in bds), "clips": len(bds), "means": means})
    return out


def render(meta: dict, args, rows: list[dict], out: Path) -> None:
    crfs = ", ".join(str(c) for c in args.crfs)
    md = run_header("AV1's in-loop filters on the base layer's frames: on or off, once restored", meta,
                    f"- **Data:** the 6 monitor clips of the val split (kpcodec.train.evaluate.MONITOR_CLIPS), first "
                    f"{args.frames} frames, every {args.divisor}th coded (SVT-AV1 preset 2, 10-bit), CRF {crfs}",
                    f"- **What:** SVT-AV1 with its CDEF and loop-restoration filters on (its defaults) or off "
                    f"(`{meta['filters_off']}`); the base frames decoded and upsampled as the decoder shows a stream "
                    f"of the base layer alone with `{args.model}` (its restorer below 256 px; at 256 nothing is "
                    "upsampled). BD-rate of off against on on the base frames' SSIM, per clip (negative: off needs "
                    "fewer bits)", "",
                    "| size | BD-rate, mean | median | clips where off wins | kb/s on / off (mean over CRFs) | "
                    "SSIM on / off |", "|---:|---:|---:|---:|---:|---:|")
    for s in summary(rows):
        m = s["means"]
        md.append(f"| {s['size']} | {s['bd_mean']:+.1f}% | {s['bd_median']:+.1f}% | {s['better']} of {s['clips']} | "
                  f"{m['on']['kbps']:.2f} / {m['off']['kbps']:.2f} | {m['on']['ssim']:.4f} / {m['off']['ssim']:.4f} |")
    (out / "base-encoder.md").write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    from kpcodec.media import baselayer
    from kpcodec.models.registry import DEFAULT_HYBRID_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--sizes", default="96,128,192,256")
    p.add_argument("--divisor", type=int, default=4)
    p.add_argument("--crfs", default="42,50,56,62")
    p.add_argument("--model", default=DEFAULT_HYBRID_MODEL)
    p.add_argument("--frames", type=int, default=160)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    args.crfs = [int(c) for c in args.crfs.split(",")]
    start = time.perf_counter()
    rows = run(args.data, [int(s) for s in args.sizes.split(",")], args.divisor, args.crfs, args.model, args.frames)
    meta = run_meta("base_encoder.py", argv, start, filters_off=baselayer.RESTORED_SVT_PARAMS)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "base-encoder.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    render(meta, args, rows, args.out)
    print(f"{len(rows)} rows -> {args.out / 'base-encoder.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
