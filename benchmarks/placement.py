"""Two ways to code a base layer alone, through the codec (`--compare`): placed base frames (format 2.5)
against every divisor-th one (2.4), -> placement.md; or placed base frames with the keypoint offsets
between them (2.6) against without, -> motion.md. On the monitor clips (kpcodec.train.evaluate.MONITOR_CLIPS,
first 250 frames), each setting encoded as `encode --base-layer SIZE@DIV:CRF,alone[,placed] [--no-motion]`
does (kpcodec.codec.encoder.Encoder) and decoded as `decode` does; kb/s of the whole .kpc, SSIM over every
frame. Two CRFs per setting give the first way's rate-SSIM line (in log rate) on each clip, so a file of
the second is also scored against the first's SSIM at its own rate ("at equal rate").

    python benchmarks/placement.py [--compare placed|motion] [--settings 256@4,128@4] [--crfs 52,56] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare import MONITOR_DATA, run_header, run_meta  # noqa: E402

# --compare: (title, results name, the first way, the second: (label, --base-layer suffix, --motion), what)
COMPARISONS = {
    "placed": ("Placed base frames (format 2.5) against every divisor-th one (2.4)", "placement",
               ("uniform", ",alone", False), ("placed", ",alone,placed", False),
               "each setting encoded as `encode --base-layer SIZE@DIV:CRF,alone --no-motion` (uniform: every DIV-th "
               "frame, 2.4) and `...,alone,placed` (2.5: as many base frames, placed by kpcodec.codec.placement)"),
    "motion": ("Keypoint offsets between base frames (format 2.6) against none (2.5)", "motion",
               ("without", ",alone,placed", False), ("with", ",alone,placed", True),
               "each setting encoded as `encode --base-layer SIZE@DIV:CRF,alone,placed --no-motion` (without: 2.5) "
               "and `--motion` (with: 2.6, the keypoints' offsets from their path between base frames, "
               "kpcodec.codec.motion)"),
}


def encoded(frames, fps, setting: str, threads: int, motion: bool = False) -> bytes:
    """The .kpc that `encode --base-layer setting [--no-motion]` makes of `frames`."""
    from kpcodec.bitstream import packets as pk
    from kpcodec.codec.encoder import Encoder
    from kpcodec.options import EncodeOptions

    with Encoder(EncodeOptions(base_layer=setting, audio=False, threads=threads, motion=motion), fps, len(frames)) as enc:
        packets = [p for f in frames for p in enc.push(f)]
        return pk.join(packets + enc.flush())


def decoded(data: bytes, frames, fps, threads: int, model: str | None = None) -> tuple[float, list[float], list[int], float]:
    """(kb/s, SSIM of every frame, base frames, decode fps) of one file decoded as `decode [--model]` does."""
    from kpcodec import bitstream
    from kpcodec.codec.decoder import Decoder
    from kpcodec.eval.metrics import ssim
    from kpcodec.options import DecodeOptions

    stream = bitstream.loads(data)
    start = time.perf_counter()
    shown = list(Decoder(stream, DecodeOptions(threads=threads, audio=False, model=model)).frames())
    fps_dec = len(shown) / (time.perf_counter() - start)
    scores = [ssim(f, g) for f, g in zip(frames, shown)]
    kbps = len(data) * 8 / (len(frames) / float(fps)) / 1000
    base = stream.base
    return kbps, scores, [base.frame_of(n) for n in range(len(base.packets))], fps_dec


def code(frames, fps, setting: str, threads: int, motion: bool = False) -> tuple[float, float, list[int], float]:
    """(kb/s, SSIM over every frame, base frames, decode fps) of one file."""
    kbps, scores, where, fps_dec = decoded(encoded(frames, fps, setting, threads, motion), frames, fps, threads)
    return kbps, float(np.mean(scores)), where, fps_dec


def run(data: Path, settings: list[str], crfs: list[int], threads: int, ways=COMPARISONS["placed"][2:4]) -> list[dict]:
    import torch

    from kpcodec.media import video
    from kpcodec.train.evaluate import MONITOR_CLIPS

    torch.set_num_threads(threads)
    rows = []
    for clip in MONITOR_CLIPS:
        path = data / clip
        frames = np.stack(list(video.read_frames(str(path), 256))[:250])
        fps = video.probe(str(path)).fps
        for setting in settings:
            for crf in crfs:
                for mode, suffix, motion in ways:
                    kbps, score, where, dec_fps = code(frames, fps, f"{setting}:{crf}{suffix}", threads, motion)
                    row = {"clip": Path(clip).stem, "setting": setting, "crf": crf, "mode": mode, "kbps": kbps,
                           "ssim": score, "base_frames": len(where), "spans": np.bincount(np.diff(where)).tolist(),
                           "decode_fps": dec_fps}
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    return rows


def at_rate(points: list[tuple[float, float]], kbps: float) -> float:
    """SSIM of the line through two (kb/s, SSIM) points, in log rate, at `kbps`."""
    (r0, s0), (r1, s1) = sorted(points)
    if r1 <= r0:
        return (s0 + s1) / 2
    return s0 + (s1 - s0) * (math.log(kbps) - math.log(r0)) / (math.log(r1) - math.log(r0))


def gains(rows: list[dict], first: str = "uniform", second: str = "placed") -> list[dict]:
    """Per clip, setting and CRF: the second way's file's SSIM less the first's at the same CRF and at
    the second's rate (keys uniform_*: the first way's)."""
    out = []
    for r in rows:
        if r["mode"] != second:
            continue
        same = [u for u in rows if u["mode"] == first and u["clip"] == r["clip"] and u["setting"] == r["setting"]]
        twin = next(u for u in same if u["crf"] == r["crf"])
        line = [(u["kbps"], u["ssim"]) for u in same]
        out.append({**r, "uniform_kbps": twin["kbps"], "uniform_ssim": twin["ssim"],
                    "gain_same_crf": r["ssim"] - twin["ssim"], "rate_change": r["kbps"] / twin["kbps"] - 1,
                    "gain_equal_rate": r["ssim"] - at_rate(line, r["kbps"]) if len(line) >= 2 else float("nan")})
    return out


def render(meta: dict, rows: list[dict], out: Path, compare: str = "placed") -> None:
    title, name, (a, _, _), (b, _, _), what = COMPARISONS[compare]
    g = gains(rows, a, b)
    md = run_header(title, meta, MONITOR_DATA,
                    f"- **What:** {what}, decoded as `decode` does. kb/s: the whole .kpc; SSIM over every frame. *At "
                    f"equal rate*: the {b} file's SSIM less the {a} files' (two CRFs, a line in log rate) at the {b} "
                    "file's rate.", "",
                    f"| setting | CRF | {a} kb/s | {a} SSIM | {b} kb/s | {b} SSIM | rate | SSIM, same CRF | "
                    "SSIM at equal rate | clips better at equal rate |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (setting, crf) in dict.fromkeys((r["setting"], r["crf"]) for r in g):
        s = [r for r in g if r["setting"] == setting and r["crf"] == crf]
        m = {k: float(np.mean([r[k] for r in s])) for k in ("uniform_kbps", "uniform_ssim", "kbps", "ssim",
                                                             "rate_change", "gain_same_crf", "gain_equal_rate")}
        better = sum(r["gain_equal_rate"] > 0 for r in s)
        md.append(f"| {setting} | {crf} | {m['uniform_kbps']:.2f} | {m['uniform_ssim']:.4f} | {m['kbps']:.2f} | "
                  f"{m['ssim']:.4f} | {m['rate_change']:+.1%} | {m['gain_same_crf']:+.4f} | {m['gain_equal_rate']:+.4f} | "
                  f"{better} of {len(s)} |")
    allg = [r["gain_equal_rate"] for r in g]
    md += ["", f"Over all {len(allg)} {b} files: SSIM at equal rate {np.mean(allg):+.4f} on average, "
               f"median {np.median(allg):+.4f}, from {min(allg):+.4f} to {max(allg):+.4f}.", "",
           "Per clip:", "",
           f"| clip | setting | CRF | {a} kb/s | {a} SSIM | {b} kb/s | {b} SSIM | at equal rate | "
           "base frames | spans 1, 2, ... |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    md += [f"| {r['clip']} | {r['setting']} | {r['crf']} | {r['uniform_kbps']:.2f} | {r['uniform_ssim']:.4f} | "
           f"{r['kbps']:.2f} | {r['ssim']:.4f} | {r['gain_equal_rate']:+.4f} | {r['base_frames']} | "
           f"{', '.join(map(str, r['spans'][1:]))} |" for r in g]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--compare", choices=sorted(COMPARISONS), default="placed")
    p.add_argument("--settings", default="256@4,128@4")
    p.add_argument("--crfs", default="52,56")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    start = time.perf_counter()
    name = COMPARISONS[args.compare][1]
    rows = run(args.data, args.settings.split(","), [int(c) for c in args.crfs.split(",")], args.threads,
               COMPARISONS[args.compare][2:4])
    meta = run_meta("placement.py", argv, start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    render(meta, rows, args.out, args.compare)
    print(f"{len(rows)} rows -> {args.out / (name + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
