"""The hybrid mode (a base layer) against keypoints alone, full-resolution SVT-AV1 and
low-resolution AV1 upscaled, over the val split: RD curves, BD-rates, rate-control accuracy,
and the issue's targets checked on the numbers.

    python benchmarks/hybrid.py --workers 2                 # the whole val split
    python benchmarks/hybrid.py --clips 3 --max-frames 60    # a quick look

Each val clip goes through `kpcodec.eval.compare.compare` (one data path: `kpcodec encode` and
`decode` on the clip) with: kpcodec keypoints only at keep-every 1/2/4; the hybrid mode at
each fixed base-layer setting of SETTINGS (keep-every 1/2/4 for the first, 2 for the others)
and under rate control at each --bitrate of TARGETS; SVT-AV1 full resolution (CRF 35..63);
low-resolution SVT-AV1 (64/96/128 px at a third of the frame rate, CRF 63/55, bicubic-upscaled
and held). Rows are averaged over clips (benchmarks/compare.py's mean_rows); BD-rates are
computed per clip and on the mean curves. Decode speed is measured apart (`--speed-clip`):
the steady-state fps of `kpcodec decode` with and without a base layer, and the AV1 decode of
the base layer alone. Writes benchmarks/results/hybrid.{md,json,png}.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from fractions import Fraction
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import markdown_table, mean_rows, run_meta  # noqa: E402

from kpcodec.eval import classic, report  # noqa: E402
from kpcodec.eval import compare as cmp  # noqa: E402

CODECS = ("kpcodec", "kpcodec-hybrid", "av1", "av1-low")
# 96@3:63 at keep-every 1/2/4, the richest one at 2; the rate-controlled rows (TARGETS) cover the
# candidates in between (kpcodec.codec.ratecontrol.CANDIDATES).
# The last: the base layer alone (format 2.3) at the settings of an av1-low row, so the two differ only
# in what the decoder does between base frames (moves the two base frames to the frame, or holds one).
SETTINGS = ("96@3:63", "128@2:52", "128@3:55,alone")
TARGETS = (3.0, 4.0, 6.0, 8.0, 12.0)
LOW_RES = (classic.LowRes(64, 3), classic.LowRes(96, 3), classic.LowRes(128, 3))
LOW_CRFS = {"av1-low": (63, 55)}


def hybrid_settings() -> list[tuple[int, str]]:
    return [(k, SETTINGS[0]) for k in (1, 2, 4)] + [(2, s) for s in SETTINGS[1:]]


def run_clip(args: tuple) -> dict:
    path, max_frames, landmarks = args
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    r = cmp.compare(path, codecs=CODECS, keep_every=(1, 2, 4), max_frames=max_frames, landmarks=landmarks,
                    threads=1, hybrid_kbps=TARGETS, hybrid_settings=hybrid_settings(), low_res=LOW_RES,
                    low_crfs=LOW_CRFS)
    d = r.to_dict(per_frame=False)
    print(f"{Path(path).name}: {r.frames} frames in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return {"clip": str(path), "frames": r.frames, "fps": str(r.fps), "seconds": r.seconds, "notes": r.notes,
            "kpcodec": r.kpcodec, "rows": d["rows"], "bd_rate": d["bd_rate"]}


def redo_rows(args: tuple) -> tuple[str, list[dict]]:
    """One fixed-setting hybrid row ("k=K SIZE@DIV:CRF") of one clip again (after a fix)."""
    path, max_frames, landmarks, variant = args
    import torch

    torch.set_num_threads(1)
    k, setting = variant.split()
    r = cmp.compare(path, codecs=("kpcodec-hybrid",), keep_every=(), max_frames=max_frames, landmarks=landmarks,
                    threads=1, hybrid_kbps=(), hybrid_settings=[(int(k.removeprefix("k=")), setting)])
    print(f"{Path(path).name}: {variant} again", file=sys.stderr, flush=True)
    return Path(path).name, r.to_dict(per_frame=False)["rows"]


# --redo's row groups: which codecs' rows are run again.
REDO_GROUPS = {"hybrid": ("kpcodec-hybrid",), "kpcodec": ("kpcodec", "kpcodec-hybrid"), "rate": ("kpcodec-hybrid",),
               "classic": ("av1", "av1-low"), "keypoints": ("kpcodec",)}


def redo_group(args: tuple) -> tuple[str, list[dict]]:
    """Every row of a REDO_GROUPS group of one clip again: "hybrid" the hybrid rows (fixed settings
    and rate targets), "rate" the rate targets' alone, "kpcodec" the hybrid and keypoint-only rows
    (the classic codecs' rows do not change when only kpcodec does), "keypoints" the keypoint-only
    rows, "classic" the AV1 rows (after a change of their preset)."""
    path, max_frames, landmarks, group = args
    import torch

    torch.set_num_threads(1)
    codecs = REDO_GROUPS[group]
    r = cmp.compare(path, codecs=codecs, keep_every=(1, 2, 4) if "kpcodec" in codecs else (), max_frames=max_frames,
                    landmarks=landmarks, threads=1, hybrid_kbps=TARGETS,
                    hybrid_settings=() if group == "rate" else hybrid_settings(), low_res=LOW_RES, low_crfs=LOW_CRFS)
    print(f"{Path(path).name}: {group} rows again", file=sys.stderr, flush=True)
    return Path(path).name, r.to_dict(per_frame=False)["rows"]


def redo(done: dict, variant: str, max_frames: int, landmarks: bool, workers: int) -> None:
    """Replace `variant`'s row (a REDO_GROUPS name: every row of those codecs) in every finished
    clip's record (and its per-clip BD-rates)."""
    jobs = [(Path(rec["clip"]), max_frames, landmarks, variant) for rec in done.values()]
    group = REDO_GROUPS.get(variant)
    run = redo_group if group else redo_rows
    if variant == "rate":  # the rate targets' rows: not the fixed-setting ones ("k=K ...")
        def stale(r):
            return r.get("codec") == "kpcodec-hybrid" and not r.get("variant", "").startswith("k=")
    elif group:
        def stale(r):
            return r.get("codec") in group
    else:
        def stale(r):
            return r.get("variant") == variant
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for name, rows in pool.map(run, jobs):
            rec = done[name]
            rec["rows"] = [r for r in rec["rows"] if not stale(r)] + rows
            rec["bd_rate"] = cmp.bd_rates(mean_rows([rec["rows"]]))


def speed(path: Path, frames: int = 250) -> dict:
    """Decode fps (steady state: the second of two runs, start-up included in neither's frames) of
    keypoints-only and hybrid files at keep-every 2, a file of the base layer alone, and the base
    layer's AV1 decode alone."""
    import tempfile

    from kpcodec import api

    from kpcodec.media import baselayer, video

    from kpcodec import bitstream

    out = {}
    with tempfile.TemporaryDirectory() as work:
        clip = os.path.join(work, "clip.mkv")
        originals = list(video.read_frames(str(path), size=256))[:frames]
        cmp.write_lossless(clip, originals, video.probe(str(path)).fps)
        hybrid = os.path.join(work, "hybrid.kpc")
        for label, kwargs in (("keypoints only", {}), (f"hybrid {SETTINGS[0]}", {"base_layer": SETTINGS[0]}),
                              ("base layer alone 128@4:55", {"base_layer": "128@4:55,alone"})):
            kpc = os.path.join(work, "x.kpc")
            api.encode(clip, kpc, keep_every=2, force=True, **kwargs)
            runs, steady = [], []
            for _ in range(3):
                stamps = []
                s = api.decode(kpc, os.path.join(work, "x.mp4"), force=True,
                               progress=lambda done, total: stamps.append(time.perf_counter()))
                runs.append(s.frames / s.seconds)
                # steady state: from the 25th frame out to the last (model loading, the source
                # image's features and the first batch left out)
                steady.append((len(stamps) - 25) / (stamps[-1] - stamps[24]))
            out[label] = {"fps_runs": runs, "fps_best": max(runs), "steady_fps_runs": steady,
                          "steady_fps_best": max(steady)}
            if label.startswith("hybrid"):
                os.replace(kpc, hybrid)
        stream = bitstream.read_file(hybrid)
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            baselayer.decode_clip(stream.base.packets)
            best = min(best, time.perf_counter() - t)
        out["base layer AV1 decode alone"] = {"ms_per_base_frame": best / len(stream.base.packets) * 1000,
                                              "ms_per_video_frame": best / len(originals) * 1000}
    return out


def _at(rows, codec: str, rate: float, metric: str) -> float | None:
    """`metric` of `codec`'s mean-curve frontier at `rate` kb/s (log-rate linear), None outside it."""
    higher = cmp.HIGHER_IS_BETTER[metric]
    pts = cmp.pareto_frontier([(r.kbps, getattr(r, metric)) for r in rows if r.codec == codec], higher)
    if len(pts) < 2 or not pts[0][0] <= math.log(rate) <= pts[-1][0]:
        return None
    v = float(np.interp(math.log(rate), [p[0] for p in pts], [p[1] for p in pts]))
    return v if higher else -v


def targets(rows, record) -> list[str]:
    """The issue's targets, each with its numbers and whether it is met."""
    lines = []
    for metric in ("ssim", "landmark_px"):
        worse = []
        checked = 0
        for rate in np.geomspace(3, 12, 13):
            a, b = _at(rows, "kpcodec-hybrid", rate, metric), _at(rows, "av1-low", rate, metric)
            if a is None or b is None:
                continue
            checked += 1
            if (a < b) if cmp.HIGHER_IS_BETTER[metric] else (a > b):
                worse.append(f"{rate:.1f} kb/s ({a:.3f} vs {b:.3f})")
        verdict = "met" if checked and not worse else "NOT met" if worse else "not measurable (curves do not overlap)"
        lines.append(f"- 3-12 kb/s, hybrid above low-res AV1 on {cmp.metric_name(metric)}: **{verdict}** "
                     f"({checked} rates checked" + (f"; below at {', '.join(worse)}" if worse else "") + ")")
    av1 = [r for r in rows if r.codec == "av1"]
    floor = min(av1, key=lambda r: r.kbps) if av1 else None
    if floor is not None:
        for metric in ("ssim", "landmark_px"):
            if getattr(floor, metric) is None:
                lines.append(f"- <= 8 kb/s reaches SVT-AV1 {floor.setting}: {cmp.metric_name(metric)} not measured")
                continue
            rates = [r for r in rows if r.codec == "kpcodec-hybrid" and r.kbps <= 8.0
                     and getattr(r, metric) is not None]
            higher = cmp.HIGHER_IS_BETTER[metric]
            reach = [r for r in rates if (getattr(r, metric) >= getattr(floor, metric) if higher else getattr(r, metric) <= getattr(floor, metric))]
            best = max(rates, key=lambda r: getattr(r, metric) if higher else -getattr(r, metric)) if rates else None
            text = (f"- <= 8 kb/s reaches SVT-AV1 {floor.setting} ({floor.kbps:.2f} kb/s, {cmp.metric_name(metric)} "
                    f"{getattr(floor, metric):.3f}): ")
            if reach:
                r = min(reach, key=lambda r: r.kbps)
                text += f"**met** by {r.setting} at {r.kbps:.2f} kb/s ({getattr(r, metric):.3f}): AV1 needs {floor.kbps / r.kbps:.2f}x its bits"
            elif best is not None:
                text += f"**NOT met**: the best hybrid point at <= 8 kb/s is {best.setting}, {best.kbps:.2f} kb/s, {getattr(best, metric):.3f}"
            else:
                text += "not measurable: no hybrid point at <= 8 kb/s"
            lines.append(text)
    heads = [h for h in cmp.headline(rows) if h.rate == "total" and h.codec == "av1" and h.metric == "ssim"
             and h.kp_kbps <= 8.0 and h.verdict == "ratio" and h.kp_setting and not h.kp_setting.startswith("k=")]
    if heads:
        best = max(heads, key=lambda h: h.ratio)
        lines.append(f"- AV1's rate at equal SSIM, best hybrid point <= 8 kb/s: {best.ratio:.2f}x "
                     f"(kpcodec {best.kp_setting}, {best.kp_kbps:.2f} kb/s; target >= 2x, moonshot 3x)")
    def seconds(rec):
        return rec["frames"] / float(Fraction(rec["fps"]))

    for label, keep in (("all clips", lambda rec: True), ("clips of 8 s or more", lambda rec: seconds(rec) >= 8)):
        acc = [(r["param"], r["kbps"]) for rec in record if keep(rec) for r in rec["rows"]
               if r["codec"] == "kpcodec-hybrid" and not r.get("variant", "").startswith("k=")]
        if acc:
            errs = [k / t - 1 for t, k in acc]
            within = sum(abs(e) <= 0.15 for e in errs)
            worst = {}
            for (t, k), e in zip(acc, errs):
                worst[t] = max(worst.get(t, 0.0), e, key=abs)
            lines.append(f"- Rate control within +-15% of the target, {label}: {within} of {len(errs)} encodes "
                         f"(median error {statistics.median(errs) * 100:+.1f}%; worst by target: "
                         + ", ".join(f"{t:g}k {e * 100:+.0f}%" for t, e in sorted(worst.items())) + ")")
    return lines


LOST_PX = 20.0  # a clip where full-resolution AV1 at its lowest rate is this far off has lost the face mesh


def robust_targets(record) -> list[str]:
    """The targets again without the clips where the face mesh is lost at AV1's lowest rate: there
    every low-rate codec is 60-80 px off, and one such clip decides the mean landmark error."""
    def lost(rec) -> bool:
        av1 = [r for r in rec["rows"] if r["codec"] == "av1" and r.get("landmark_px") is not None]
        return bool(av1) and min(av1, key=lambda r: r["kbps"])["landmark_px"] > LOST_PX

    gone = [rec for rec in record if lost(rec)]
    if not gone:
        return []
    kept = [rec for rec in record if not lost(rec)]
    names = ", ".join(f"`{Path(rec['clip']).stem}`" for rec in gone)
    return ["", f"Without {names} (full-resolution AV1 at its lowest rate more than {LOST_PX:g} px off: the face mesh "
            f"is lost there at low rates, and that clip decides the mean landmark error), {len(kept)} clips:", "",
            *targets(mean_rows([rec["rows"] for rec in kept]), kept)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--clips", type=int, default=None)
    p.add_argument("--max-frames", type=int, default=250)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-landmarks", action="store_true")
    p.add_argument("--speed-clip", default="talking-heads/val/liveportrait_d10.mp4")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--fresh", action="store_true", help="ignore the clips already in hybrid-clips.jsonl")
    p.add_argument("--only-done", action="store_true", help="report on the clips hybrid-clips.jsonl holds, run no more")
    p.add_argument("--redo", action="append", default=[],
                   help="run this fixed-setting row (e.g. 'k=1 96@3:63') again on every finished clip; 'rate': the "
                        "rate-control rows; 'hybrid': every hybrid row; 'keypoints': the keypoint-only rows; "
                        "'kpcodec': the hybrid and keypoint-only rows; 'classic': the AV1 rows "
                        "(may be given more than once)")
    p.add_argument("--reuse-speed", action="store_true", help="keep the decode-speed section of the last hybrid.json")
    p.add_argument("--drop", action="append", default=[], metavar="VARIANT=WHY",
                   help="leave a row out of the report, saying why (e.g. a bug found after the run)")
    args = p.parse_args(argv)
    if args.render_only:
        saved = json.loads((args.out / "hybrid.json").read_text())
        saved["meta"].setdefault("dropped", {}).update(parse_drops(args.drop, saved["clips"]))
        (args.out / "hybrid.json").write_text(json.dumps(saved, indent=1) + "\n")
        render(saved["meta"], saved["clips"], saved["speed"], args.out)
        return 0
    with open(args.data / "manifest.csv", newline="") as f:
        clips = [row["file"] for row in csv.DictReader(f) if row["split"] == "val"]
    if args.clips and args.clips < len(clips):
        clips = [clips[int(i)] for i in np.linspace(0, len(clips) - 1, args.clips).round()]
    start = time.perf_counter()
    # Each clip's rows go to a JSON-lines file as it finishes: a stopped run resumes where it was.
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "hybrid-clips.jsonl"
    done = {}
    if partial.is_file() and not args.fresh:
        for line in partial.read_text().splitlines():
            rec = json.loads(line)
            done[Path(rec["clip"]).name] = rec
    if args.only_done:  # a stopped run: the report covers the clips it finished
        clips = [c for c in clips if Path(c).name in done]
    jobs = [(args.data / c, args.max_frames, not args.no_landmarks) for c in clips if Path(c).name not in done]
    print(f"{len(clips)} clips, {len(done)} done before, {len(jobs)} to run", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max(1, args.workers)) as pool, open(partial, "a" if done else "w") as f:
        for fut in as_completed([pool.submit(run_clip, j) for j in jobs]):
            rec = fut.result()
            done[Path(rec["clip"]).name] = rec
            f.write(json.dumps(rec) + "\n")
            f.flush()
    for variant in args.redo:
        redo(done, variant, args.max_frames, not args.no_landmarks, args.workers)
        partial.write_text("".join(json.dumps(done[Path(c).name]) + "\n" for c in clips if Path(c).name in done))
    record = [done[Path(c).name] for c in clips]
    if args.reuse_speed and (args.out / "hybrid.json").is_file():
        speeds = json.loads((args.out / "hybrid.json").read_text())["speed"]
    else:
        speeds = speed(args.data / args.speed_clip)
    from kpcodec.models.registry import DEFAULT_HYBRID_MODEL, DEFAULT_MODEL

    meta = run_meta("hybrid.py", argv, start, max_frames=args.max_frames, model=DEFAULT_MODEL,
                    hybrid_model=DEFAULT_HYBRID_MODEL, workers=args.workers, dropped=parse_drops(args.drop, record))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hybrid.json").write_text(json.dumps({"meta": meta, "clips": record, "speed": speeds}, indent=1) + "\n")
    render(meta, record, speeds, args.out)
    return 0


def parse_drops(drops: list[str], record: list[dict]) -> dict[str, str]:
    """--drop VARIANT=WHY -> {variant: why}. A variant may hold '=' itself ('k=2 96@3:63'): the split
    is at the first '=' whose left side names a row of `record`, else at the first '='."""
    variants = {r.get("variant") for rec in record for r in rec["rows"]}
    out = {}
    for d in drops:
        cuts = [i for i, c in enumerate(d) if c == "="]
        if not cuts:
            raise SystemExit(f"--drop {d!r}: expected VARIANT=WHY")
        cut = next((i for i in cuts if d[:i] in variants), cuts[0])
        out[d[:cut]] = d[cut + 1:]
    return out


def render(meta: dict, record: list[dict], speeds: dict, out: Path) -> None:
    dropped = meta.get("dropped", {})
    if dropped:
        record = [{**rec, "rows": [r for r in rec["rows"] if r.get("variant") not in dropped],
                   "bd_rate": cmp.bd_rates(mean_rows([[r for r in rec["rows"] if r.get("variant") not in dropped]]))}
                  for rec in record]
    rows = mean_rows([rec["rows"] for rec in record])
    frames = sum(rec["frames"] for rec in record)
    title = f"val split, {len(record)} clips, {frames} frames (first {meta['max_frames']} per clip)"
    report.plot_rd(rows, out / "hybrid.png", f"mean over clips: {title}", force=True)
    per_clip = {}
    for rec in record:
        for b in rec["bd_rate"]:
            if b["bd_rate_pct"] is not None:
                per_clip.setdefault((b["codec"], b["reference"], b["metric"]), []).append(b["bd_rate_pct"])
    md = [
        "# Hybrid mode: keypoints + a low-resolution AV1 base layer (val split)", "",
        f"- **Date:** {meta['date']}", f"- **Machine:** {meta['machine']}, shared with other jobs",
        f"- **Code:** git {meta['git']}", f"- **Command:** `{meta['command']}`",
        f"- **Data:** {title}; wall time {meta['seconds'] / 60:.1f} min, {meta['workers']} worker(s), 1 thread each",
        f"- **Models:** keypoints only `{meta['model']}`, hybrid `{meta['hybrid_model']}`",
        "- **Rows:** kpcodec k=N: keypoints only. kpcodec-hybrid `k=N SIZE@DIV:CRF`: a fixed base layer; "
        "`Rk`: `kpcodec encode --bitrate Rk` (rate control picks the base layer per clip). av1: SVT-AV1 "
        f"preset {classic.CODECS['av1'].preset} at full resolution. av1-low: the clip downscaled to SIZE, every "
        "DIV-th frame coded by SVT-AV1, bicubic-upscaled and held. Rates count every coded byte (the whole "
        ".kpc; the whole AV1 stream); scores as in compare.md, on each decoder's own RGB frames (kpcodec's "
        "since 2026-12-06: before, on the MP4 that `kpcodec decode` writes, whose H.264 CRF 18 in 4:2:0 cost "
        "kpcodec ~0.005 SSIM the AV1 rows did not pay). dec fps: kpcodec's decoder on one thread.",
        *[f"- **Left out:** `{v}`: {why}" for v, why in dropped.items()],
        "", "## Targets (issue 18)", "", *targets(rows, record), *robust_targets(record),
        "", "## Mean over clips", "", *markdown_table(rows), "", "![rate-quality](hybrid.png)", "",
        "## BD-rate (kpcodec's rate change at equal quality; negative = fewer bits)", "",
        "On the mean curves, and the median over clips where the curves overlap:", "",
        "| kpcodec curve | against | metric | mean curves | median per clip (clips) |", "|---|---|---|---:|---:|"]
    for b in cmp.bd_rates(rows):
        clip_vals = per_clip.get((b["codec"], b["reference"], b["metric"]), [])
        mean = "no overlap" if b["bd_rate_pct"] is None else f"{b['bd_rate_pct']:+.1f}%"
        med = f"{statistics.median(clip_vals):+.1f}% ({len(clip_vals)})" if clip_vals else "–"
        md.append(f"| {b['codec']} | {b['reference']} | {cmp.metric_name(b['metric'])} | {mean} | {med} |")
    md += ["", "## Decode speed (one clip, keep-every 2, default threads, best of 3; whole runs include start-up)", ""]
    for label, v in speeds.items():
        if "fps_best" in v:
            md.append(f"- {label}: {v['fps_best']:.1f} fps (runs: {', '.join(f'{x:.1f}' for x in v['fps_runs'])})"
                      + (f"; steady state (25th frame to the last, writing the MP4 included) "
                         f"{v['steady_fps_best']:.1f} fps (runs: {', '.join(f'{x:.1f}' for x in v['steady_fps_runs'])})"
                         if "steady_fps_best" in v else ""))
        else:
            md.append(f"- {label}: {v['ms_per_base_frame']:.2f} ms a base frame, "
                      f"{v['ms_per_video_frame']:.2f} ms a video frame")
    md += ["", "## Clips", "", ", ".join(f"`{Path(rec['clip']).stem}` ({rec['frames']})" for rec in record), ""]
    (out / "hybrid.md").write_text("\n".join(md))
    print(f"{len(record)} clips -> {out / 'hybrid.md'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
