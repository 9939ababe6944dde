"""Keypoint rate against rendered quality for keep-every 1, 2, 4 across quantiser steps (issue 4).

    python benchmarks/rate_quality.py --clips 8

The paper's claim is that sending every second frame's keypoints halves the stream at no visible
loss. Format 1.1 codes each sent frame as a residual from the previous sent frames, so frames
further apart cost more bits each and the rate falls by less than half (bitrate.md). This asks the
question at equal quality instead: for each keep-every N and each pair of steps (format 1.1's
kp 1/64 and jac 1/32 scaled by --scales), the val trajectories are coded as .kpc keypoint
chunks (rate over whole clips at 25 fps), and the first --frames frames of --clips val clips are
rendered by the default motion model from the decoder's keypoints (the predictor filling the
unsent frames, from the quantised sent ones): mean SSIM against the original frames. From the
keep-every 1 curve, the rate it needs to reach each other point's SSIM (log-rate interpolated
between the two steps around it) gives the saving at equal rendered quality.
Rates are those of the newest format (1.3: coder 1 where it is smaller); --reuse --recode keeps
the rendered rows and only recomputes the rates (format 1.3 decodes to the same keypoints as 1.1).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bitrate import FPS, _machine, chunk_bytes, fill_error_px, save_results  # noqa: E402
from bitrate import decoded_keypoints as decoded_at  # noqa: E402

from kpcodec.codec import adaptive, predictors as predict  # noqa: E402

from kpcodec import bitstream
from kpcodec.bitstream import quantize as q  # noqa: E402
from kpcodec.train.trajectories import load_trajectories  # noqa: E402

PREDICTORS = q.PREDICTORS_1_3  # the newest format's in-loop predictors


def pick_clips(names: list[str], count: int) -> list[str]:
    """`count` clips spread evenly over the sorted val names (0: all)."""
    names = sorted(names)
    if count <= 0 or count >= len(names):
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]


def sent(tr: dict, keep, predictor: str, max_error: float | None = None) -> np.ndarray:
    """Sent frame indices at keep-every `keep`, or "auto" at `max_error` px (the encoder's choice)."""
    if keep == "auto":
        return adaptive.choose_sent_frames(tr["kp"], tr["jac"], predictor, max_error)
    return np.arange(0, len(tr["kp"]), keep)


def rate_kbps(val: list[dict], keep, steps: tuple[float, float], predictor: str = "",
              max_error: float | None = None) -> float:
    nbytes = sum(chunk_bytes(t["kp"], t["jac"], sent(t, keep, predictor, max_error), PREDICTORS, steps, "decorrelated")
                 for t in val)
    return nbytes * 8 / (sum(len(t["kp"]) for t in val) / FPS) / 1000


def label(row: dict) -> str:
    return f"auto (E={row['max_error']:g} px)" if row["keep"] == "auto" else str(row["keep"])


def row_order(row: dict) -> tuple:
    return (row["keep"] == "auto", 0 if row["keep"] == "auto" else row["keep"], row.get("max_error") or 0,
            row["scale"])


def rate_for_ssim(curve: list[dict], target: float) -> float | None:
    """Rate of the keep-every 1 curve at SSIM `target`, log-rate interpolated; None outside it."""
    pts = sorted(curve, key=lambda r: r["kbps"])
    for lo, hi in zip(pts, pts[1:]):
        if min(lo["ssim"], hi["ssim"]) <= target <= max(lo["ssim"], hi["ssim"]) and hi["ssim"] != lo["ssim"]:
            t = (target - lo["ssim"]) / (hi["ssim"] - lo["ssim"])
            return float(np.exp(np.log(lo["kbps"]) + t * (np.log(hi["kbps"]) - np.log(lo["kbps"]))))
    return None


def report(r: dict) -> str:
    rows = r["rows"]
    lines = ["# Keypoint rate against rendered quality", "",
             f"{r['date']}, {r['machine']}; {r['seconds']:.0f} s (last command).",
             "Commands: " + "; then ".join(f"`{c}`" for c in r.get("commands", [r["command"]])),
             f"Rates: format {r.get('format', '1.1')} keypoint chunks of all {r['val_clips']} val clips ({r['val_frames']} frames at "
             f"{FPS:g} fps). SSIM: {len(r['clips'])} val clips x first {r['frames']} frames rendered by "
             f"`{r['model']}` from the decoder's keypoints, unsent frames filled by `{r['predictor']}`. Keypoint "
             "error: decoder's keypoints vs the detector's, all val frames, px at 256x256. Steps are format 1.1's "
             "(kp 1/64, jac 1/32) times the scale; the entropy coder's starting counts were learned at the "
             "default steps, so other steps pay a little for adapting.", "",
             "| keep | step scale | kp step | jac step | kb/s | SSIM | keypoint px | keep-every 1 kb/s at this SSIM "
             "| rate / keep-every 1's |", "|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        eq = x.get("k1_kbps_same_ssim")
        same = "— | —" if eq is None else f"{eq:.3f} | {x['kbps'] / eq:.2f}"
        lines.append(f"| {label(x)} | {x['scale']:g} | 1/{1 / x['kp_step']:.4g} | 1/{1 / x['jac_step']:.4g} | "
                     f"{x['kbps']:.3f} | {x['ssim']:.4f} | {x['error_px']:.3f} | {same} |")
    lines += ["", "Keep-every 1 at the default steps as the reference (the issue's comparison): "]
    base = next(x for x in rows if x["keep"] == 1 and x["scale"] == 1)
    for x in rows:
        if x["scale"] == 1 and x["keep"] != 1:
            name = f"keep-every {x['keep']}" if x["keep"] != "auto" else f"keep-every auto at {x['max_error']:g} px"
            lines.append(f"- {name}: {x['kbps']:.3f} / {base['kbps']:.3f} kb/s = "
                         f"{x['kbps'] / base['kbps']:.2f}, SSIM {x['ssim'] - base['ssim']:+.4f}, sent "
                         f"{100 * x.get('sent_share', 1 / x['keep'] if x['keep'] != 'auto' else 0):.0f}% of frames.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=Path, default=Path("runs/cache/trajectories"))
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--model", default=None, help="motion model (default: the registry's)")
    p.add_argument("--predictor", default=predict.DEFAULT_PREDICTOR)
    p.add_argument("--keeps", default="1,2,4")
    p.add_argument("--auto-errors", default="", help="also keep-every auto at these --max-error px (default steps)")
    p.add_argument("--scales", default="0.5,1,1.5,2,3", help="multiples of format 1.1's steps")
    p.add_argument("--clips", type=int, default=8, help="val clips to render (0: all)")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default="rate_quality")
    p.add_argument("--reuse", action="store_true",
                   help="keep the rows of OUT/TAG.json (same clips and frames) and add the asked-for ones")
    p.add_argument("--recode", action="store_true", help="with --reuse: recompute the kept rows' rates")
    args = p.parse_args()
    import torch

    from kpcodec.eval.metrics import ssim
    from kpcodec.models.frames import frames_to_tensor
    from kpcodec.models.registry import DEFAULT_MODEL, load_model
    from kpcodec.train.data import decode_clip
    from kpcodec.train.evaluate import render_keypoints

    torch.set_num_threads(args.threads)
    start = time.time()
    val = load_trajectories(args.trajectories, "val")
    if not val:
        raise SystemExit(f"{args.trajectories}: no val trajectories")
    by_name = {t["name"]: t for t in val}
    clips = pick_clips(list(by_name), args.clips)
    net = load_model(args.model)
    videos = {c: decode_clip(args.data / "talking-heads" / "val" / f"{c}.mp4", 1, args.frames)[0] for c in clips}
    with torch.inference_mode():  # each clip's source features, once for every keep and step
        sources = {c: net.prepare_source(frames_to_tensor(v[:1])) for c, v in videos.items()}
    rows, commands = [], []
    if args.reuse:
        earlier = json.loads((args.out / f"{args.tag}.json").read_text())
        if earlier["clips"] != clips or earlier["frames"] != args.frames:
            raise SystemExit(f"{args.out / args.tag}.json: other clips or frame count; cannot reuse its rows")
        rows, commands = earlier["rows"], earlier.get("commands", [earlier["command"]])
        if args.recode:
            for r in rows:
                r["kbps"] = rate_kbps(val, r["keep"], (r["kp_step"], r["jac_step"]), args.predictor,
                                      r.get("max_error"))
    done = {(r["keep"], r.get("max_error"), r["scale"]) for r in rows}
    todo = [(int(k), None, float(s)) for k in args.keeps.split(",") for s in args.scales.split(",")]
    todo += [("auto", float(e), 1.0) for e in args.auto_errors.split(",") if e]
    for keep, max_error, scale in todo:
        if (keep, max_error, scale) in done:
            continue
        steps = (q.DEFAULT_KP_STEP * scale, q.DEFAULT_JAC_STEP * scale)
        idx = {t["name"]: sent(t, keep, args.predictor, max_error) for t in val}
        ssims = []
        for c in clips:
            tr = {"kp": by_name[c]["kp"][:len(videos[c])], "jac": by_name[c]["jac"][:len(videos[c])]}
            shown = idx[c][idx[c] < len(videos[c])]  # the choice is causal: the same for the first frames
            out = render_keypoints(net, sources[c], *decoded_at(tr, shown, steps, args.predictor))
            ssims.append(float(np.mean([ssim(a, b) for a, b in zip(videos[c], out)])))
        err = float(np.average([fill_error_px(t, idx[t["name"]], steps, args.predictor) for t in val],
                               weights=[len(t["kp"]) for t in val]))
        row = {"keep": keep, "max_error": max_error, "scale": scale, "kp_step": steps[0], "jac_step": steps[1],
               "kbps": rate_kbps(val, keep, steps, args.predictor, max_error), "ssim": float(np.mean(ssims)),
               "error_px": err, "sent_share": sum(len(i) for i in idx.values()) / sum(len(t["kp"]) for t in val),
               "clip_ssim": dict(zip(clips, ssims))}
        rows.append(row)
        print(f"keep {label(row)} scale {scale:g}: {row['kbps']:.3f} kb/s, SSIM {row['ssim']:.4f}, "
              f"{err:.3f} px", file=sys.stderr, flush=True)
    rows.sort(key=row_order)
    k1 = [r for r in rows if r["keep"] == 1]
    for r in rows:
        r["k1_kbps_same_ssim"] = rate_for_ssim(k1, r["ssim"]) if r["keep"] != 1 else None
    command = " ".join([Path(sys.executable).name] + sys.argv)
    result = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": _machine(),
              "format": "%d.%d" % bitstream.FORMAT_VERSION, "command": command, "commands": commands + [command],
              "seconds": time.time() - start,
              "model": args.model or DEFAULT_MODEL, "predictor": args.predictor, "clips": clips, "frames": args.frames,
              "val_clips": len(val), "val_frames": sum(len(t["kp"]) for t in val), "rows": rows}
    save_results(args.out, args.tag, result, report)


if __name__ == "__main__":
    main()
