"""Would a two-band base-layer mix beat the one-weight mix of format 2.1? Per clip, least-squares
weights for (rendering - moved base) as a whole (what an encoder fits, kpcodec.codec.fusion) and for
its low and high frequencies apart (a Gaussian of sigma 1, 2 and 4 px), scored by SSIM against the
input, on the monitor clips (first 90 frames, keep-every 2, every frame with its base frame).

    python benchmarks/hybrid_mix_bands.py [--setting 96@3:63]

Writes benchmarks/results/hybrid-mix-bands.md and .json. The weights are fitted and scored on the
same frames (an upper bound on what a signalled weight could do).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import git_commit, machine, write_results  # noqa: E402

SIGMAS = (1.0, 2.0, 4.0)


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """(T, H, W, 3) float32, Gaussian-blurred in H and W (edges replicated)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(a).permute(0, 3, 1, 2)
    r = int(3 * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-x ** 2 / (2 * sigma * sigma))
    k = (k / k.sum()).repeat(3, 1, 1, 1)
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(3, 1, 1, -1), groups=3)
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(3, 1, -1, 1), groups=3)
    return t.permute(0, 2, 3, 1).numpy()


def clip_scores(path: Path, setting: str, frames_wanted: int, work: Path) -> dict:
    from kpcodec import api, bitstream
    from kpcodec.codec.decoder import Decoder
    from kpcodec.eval import compare as cmp
    from kpcodec.eval.metrics import ssim
    from kpcodec.media import video
    from kpcodec.options import DecodeOptions

    frames = list(video.read_frames(str(path), size=256))[:frames_wanted]
    cmp.write_lossless(str(work / "clip.mkv"), frames, video.probe(str(path)).fps)
    api.encode(work / "clip.mkv", work / "clip.kpc", keep_every=2, base_layer=setting, base_mix="1", force=True)
    dec = Decoder(bitstream.read_file(work / "clip.kpc"), DecodeOptions(audio=False, threads=1))
    dec.parts = True
    x, g, b = [], [], []
    for (rendering, moved), frame in zip(dec.frames(), frames):
        if moved is not None:
            x.append(frame), g.append(rendering), b.append(moved)
    original = np.stack(x)
    x, g, b = (np.stack(a).astype(np.float32) for a in (x, g, b))
    d, r = g - b, x - b
    w = float(np.clip(np.vdot(r, d) / np.vdot(d, d), 0, 1))
    outs, weights = {"rendering alone": g, "one weight": b + w * d}, {"one weight": [w]}
    for s in SIGMAS:
        low = blur(d, s)
        high = d - low
        a = np.array([[np.vdot(low, low), np.vdot(low, high)], [np.vdot(low, high), np.vdot(high, high)]])
        wl, wh = np.clip(np.linalg.solve(a, [np.vdot(r, low), np.vdot(r, high)]), 0, 1.5)
        outs[f"two bands, sigma {s:g}"] = b + wl * low + wh * high
        weights[f"two bands, sigma {s:g}"] = [float(wl), float(wh)]
    score = {k: float(np.mean([ssim(o, np.clip(v + 0.5, 0, 255).astype(np.uint8)) for o, v in zip(original, out)]))
             for k, out in outs.items()}
    return {"clip": path.name, "frames": len(original), "ssim": score, "weights": weights}


def main(argv=None) -> int:
    from kpcodec.train.evaluate import MONITOR_CLIPS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--setting", default="96@3:63")
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hybrid-mix-bands")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for clip in MONITOR_CLIPS:
            rows.append(clip_scores(a.data / clip, a.setting, a.frames, Path(work)))
            print(rows[-1]["clip"], {k: round(v, 4) for k, v in rows[-1]["ssim"].items()}, file=sys.stderr, flush=True)
    keys = list(rows[0]["ssim"])
    command = "python benchmarks/hybrid_mix_bands.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# A two-band base-layer mix against one weight (hybrid mode)", "",
             f"- **Date:** {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", f"- **Machine:** {machine()}",
             f"- **Code:** git {git_commit()}", f"- **Command:** `{command.strip()}`",
             f"- **Data:** the monitor clips, first {a.frames} frames, keep-every 2, base layer {a.setting}, "
             "the default hybrid model; SSIM of the frames that have their base frame", "",
             "| clip | " + " | ".join(keys) + " | weights (one; low, high at sigma 1/2/4) |",
             "|---|" + "---:|" * len(keys) + "---|"]
    for r in rows:
        ws = "; ".join(", ".join(f"{v:.2f}" for v in w) for w in r["weights"].values())
        lines.append(f"| {r['clip']} | " + " | ".join(f"{r['ssim'][k]:.4f}" for k in keys) + f" | {ws} |")
    lines.append("| **mean** | " + " | ".join(f"**{np.mean([r['ssim'][k] for r in rows]):.4f}**" for k in keys) + " | |")
    write_results(a.out, lines, command.strip(), setting=a.setting, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
