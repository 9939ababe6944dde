"""What the decoder of a stream of the base layer alone (format 2.3/2.4) does between base frames, measured:
on the monitor clips (kpcodec.train.evaluate.MONITOR_CLIPS, first 250 frames), each base-layer setting
coded once, then the frames between base frames shown four ways from the same decoded base frames:
held (the base frame before, upsampled: the low-resolution AV1 baseline of hybrid.md), a linear blend
of the two around the frame, and kpcodec's decoder (both moved to the frame by keypoints detected on
them, then blended: MotionModel.between) on 2.3's linear keypoint path and on 2.4's cubic one (what
encode writes). Same bits for all four; SSIM over every frame.

    python benchmarks/alone_between.py [--settings 96@3:55,128@4:55,128@6:52] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare import MONITOR_DATA, run_header, run_meta  # noqa: E402


def run(data: Path, settings: list[str], threads: int) -> list[dict]:
    import torch

    from kpcodec import bitstream
    from kpcodec.bitstream import packets as pk
    from kpcodec.codec.decoder import Decoder
    from kpcodec.codec.encoder import shipped_model
    from kpcodec.eval.metrics import ssim
    from kpcodec.media import baselayer, video
    from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
    from kpcodec.models.registry import DEFAULT_HYBRID_MODEL
    from kpcodec.options import DecodeOptions
    from kpcodec.train.evaluate import MONITOR_CLIPS

    torch.set_num_threads(threads)
    name, sha, net = shipped_model(DEFAULT_HYBRID_MODEL)
    k = net.cfg.num_keypoints
    rows = []
    for clip in MONITOR_CLIPS:
        path = data / clip
        frames = np.stack(list(video.read_frames(str(path), 256))[:250])
        fps = video.probe(str(path)).fps
        seconds = len(frames) / float(fps)
        for text in settings:
            s = baselayer.parse_settings(text + baselayer.ALONE_SUFFIX)  # coded as encode codes a base layer alone
            base = bitstream.BaseLayer(s.size, s.divisor, s.crf, baselayer.encode_clip(frames, s, fps), alone=True,
                                       cubic=True)
            h = bitstream.Header(name, sha, 256, 256, fps.numerator, fps.denominator, len(frames), s.divisor, k,
                                 1 / 64, 1 / 32, "interp", False)
            stream = bitstream.KpcStream.base_alone(h, base, version=pk.VERSION)
            data_ = bitstream.dumps(stream)
            start = time.perf_counter()
            moved = list(Decoder(bitstream.loads(data_), DecodeOptions(threads=1, audio=False)).frames())
            decode_s = time.perf_counter() - start
            straight = bitstream.KpcStream.base_alone(h, replace(base, cubic=False), version=pk.VERSION)
            moved_linear = list(Decoder(straight, DecodeOptions(threads=1, audio=False)).frames())
            with torch.inference_mode():
                up = tensor_to_frames(net.base_image(frames_to_tensor(baselayer.decode_clip(base.packets)), restore=True))
            up = np.stack(up).astype(np.float32)
            n = len(up)
            held, linear = [], []
            for t in range(len(frames)):
                i, phase = divmod(t, s.divisor)
                a = phase / s.divisor if i + 1 < n else 0.0
                held.append(up[i])
                linear.append((1 - a) * up[i] + a * up[min(i + 1, n - 1)])
            score = {label: float(np.mean([ssim(f, np.clip(np.rint(g), 0, 255).astype(np.uint8))
                                           for f, g in zip(frames, shown)]))
                     for label, shown in (("held", held), ("linear", linear), ("moved_linear", moved_linear),
                                          ("kpcodec", moved))}
            row = {"clip": Path(clip).stem, "setting": str(s), "kbps": len(data_) * 8 / seconds / 1000,
                   "frames": len(frames), "decode_fps": len(frames) / decode_s, **score}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def render(meta: dict, rows: list[dict], out: Path) -> None:
    md = run_header("The base layer alone: what the decoder shows between base frames", meta, MONITOR_DATA,
                    "- **What:** one coded base layer per setting; the frames between base frames shown held (the "
                    "low-resolution AV1 baseline), linearly blended, or as kpcodec decodes a file of the base layer alone "
                    "(both base frames moved to the frame by keypoints detected on them, then blended), on 2.3's linear "
                    "keypoint path or on 2.4's cubic one (what encode writes). kb/s: the whole .kpc. SSIM over "
                    "every frame (base frames included: the same in all four).", "",
                    "| setting | kb/s | held | linear blend | moved, linear path (2.3) | kpcodec: moved, cubic path (2.4) | "
                    "cubic - held | cubic - linear blend | cubic - linear path | dec fps (1 thread) |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in dict.fromkeys(r["setting"] for r in rows):
        g = [r for r in rows if r["setting"] == s]
        m = {key: float(np.mean([r[key] for r in g]))
             for key in ("kbps", "held", "linear", "moved_linear", "kpcodec", "decode_fps")}
        md.append(f"| {s} (mean of {len(g)}) | {m['kbps']:.2f} | {m['held']:.4f} | {m['linear']:.4f} | "
                  f"{m['moved_linear']:.4f} | {m['kpcodec']:.4f} | {m['kpcodec'] - m['held']:+.4f} | "
                  f"{m['kpcodec'] - m['linear']:+.4f} | {m['kpcodec'] - m['moved_linear']:+.4f} | {m['decode_fps']:.0f} |")
    md += ["", "Per clip:", "", "| clip | setting | kb/s | held | linear blend | moved, linear path | moved, cubic path |",
           "|---|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['clip']} | {r['setting']} | {r['kbps']:.2f} | {r['held']:.4f} | {r['linear']:.4f} | "
           f"{r['moved_linear']:.4f} | {r['kpcodec']:.4f} |" for r in rows]
    (out / "alone-between.md").write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--settings", default="96@3:55,128@4:55,128@6:52")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.data, args.settings.split(","), args.threads)
    meta = run_meta("alone_between.py", argv, start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "alone-between.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    render(meta, rows, args.out)
    print(f"{len(rows)} rows -> {args.out / 'alone-between.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
