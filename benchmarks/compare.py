"""kpcodec against H.264, H.265 and AV1 over the val split: mean curves and headline ratios.

    nice -n 10 python benchmarks/compare.py --data ../shared/data --max-frames 60
    nice -n 10 python benchmarks/compare.py --clips 3 --max-frames 30   # a quick look

Runs `kpcodec.eval.compare.compare` on each val clip of DATA/manifest.csv (split == val), in
manifest order (--clips N takes N clips evenly spread over it, first and last included), then:

* averages every (codec, setting) over the clips: kb/s and every score are means over clips
  (each clip's score being its mean over frames; landmark scores over the clips where a face
  was found in both, with that count reported);
* computes the headline on those mean curves, and per clip, and counts the per-clip verdicts;
* writes benchmarks/results/compare.md (machine, date, command, table, headline),
  compare.png (mean rate-quality curves) and compare.json (per-clip rows, no per-frame data).

The clips are read where they are; nothing from the data set is copied into the repository.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kpcodec.eval import classic, report  # noqa: E402
from kpcodec.eval import compare as cmp  # noqa: E402

SCORES = ("psnr", "ssim", "ms_ssim", "landmark_px", "face_found", "lip_corr")


@dataclass
class MeanRow:
    """A (codec, setting) averaged over clips; quacks like kpcodec.eval.compare.Row for report/headline."""

    codec: str
    param: int
    clips: int
    kbps: float
    steady_kbps: float
    psnr: float | None
    ssim: float | None
    ms_ssim: float | None
    landmark_px: float | None
    face_found: float | None
    lip_corr: float | None
    encode_fps: float | None
    decode_fps: float | None
    landmark_clips: int = 0
    frames: int = 0
    bytes: int = 0
    first_bytes: int = 0
    per_frame: dict = field(default_factory=dict)
    variant: str = ""

    @property
    def setting(self) -> str:
        return cmp.setting_label(self.codec, self.param, self.variant)

    def to_dict(self, per_frame: bool = False) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "per_frame"}
        d["setting"] = self.setting
        return d


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return (float(np.mean(vals)) if vals else None), len(vals)


def _mean_key(r: dict) -> tuple:
    """Rows averaged together: one setting over the clips. A rate-controlled hybrid row's base
    layer is chosen per clip, so those rows are grouped by their target alone."""
    variant = r.get("variant", "")
    if r["codec"] == "kpcodec-hybrid" and not variant.startswith("k="):
        variant = "rate control"
    return r["codec"], r["param"], variant


def mean_rows(per_clip: list[list[dict]]) -> list[MeanRow]:
    keys = list(dict.fromkeys(_mean_key(r) for rows in per_clip for r in rows))
    out = []
    for key in keys:
        codec, param, variant = key
        rows = [r for clip in per_clip for r in clip if _mean_key(r) == key]
        m = {s: _mean(r[s] for r in rows)[0] for s in SCORES}
        lmk_clips = _mean(r["landmark_px"] for r in rows)[1]
        # Speeds: total frames over total seconds (a mean of per-clip fps would overweight short clips).
        frames = sum(r["frames"] for r in rows)
        enc = sum(r["encode_s"] for r in rows)
        dec = sum(r["decode_s"] for r in rows)
        out.append(MeanRow(codec, param, len(rows), float(np.mean([r["kbps"] for r in rows])),
                           float(np.mean([r["steady_kbps"] for r in rows])), m["psnr"], m["ssim"], m["ms_ssim"],
                           m["landmark_px"], m["face_found"], m["lip_corr"], frames / enc if enc else None,
                           frames / dec if dec else None, lmk_clips, frames, variant=variant))
    return out


def _cell(v, spec):
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def markdown_table(rows: list[MeanRow]) -> list[str]:
    lines = ["| codec | setting | kb/s | steady kb/s | PSNR | SSIM | MS-SSIM | landmark px (clips) | face found | "
             "lip corr | enc fps | dec fps |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        face = r.face_found * 100 if r.face_found is not None else None
        lines.append(f"| {r.codec} | {r.setting} | {r.kbps:.2f} | {r.steady_kbps:.2f} | {_cell(r.psnr, '.2f')} | "
                     f"{_cell(r.ssim, '.4f')} | {_cell(r.ms_ssim, '.4f')} | {_cell(r.landmark_px, '.2f')} "
                     f"({r.landmark_clips}) | {_cell(face, '.0f')}% | {_cell(r.lip_corr, '.2f')} | "
                     f"{_cell(r.encode_fps, '.0f')} | {_cell(r.decode_fps, '.0f')} |")
    return lines


def verdict_summary(per_clip_headlines: list[list], rate: str = "total") -> list[str]:
    """Per (metric, codec, keep-every): how the clips' verdicts split, and the median ratio."""
    groups: dict[tuple, list] = {}
    for items in per_clip_headlines:
        for h in items:
            if h["rate"] == rate:
                groups.setdefault((h["metric"], h["codec"], h["keep_every"]), []).append(h)
    lines = ["| metric | vs | kpcodec | clips: ratio / no overlap / classic wins outright / above sweep / no face | "
             "median ratio (clips with a ratio) |", "|---|---|---|---|---:|"]
    order = {c: i for i, c in enumerate(("-",) + cmp.ALL_CODECS)}
    for (metric, codec, k), hs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "ssim", kv[0][2],
                                                                         order.get(kv[0][1], 99))):
        count = {v: sum(h["verdict"] == v for h in hs) for v in
                 ("ratio", "no-overlap", "classic-wins", "above-sweep", "no-face")}
        ratios = [h["ratio"] for h in hs if h["verdict"] == "ratio" and h["ratio"] is not None]
        med = f"{statistics.median(ratios):.2f}x" if ratios else "–"
        name = "SSIM" if metric == "ssim" else "landmark error"
        lines.append(f"| {name} | {codec} | k={k} | {count['ratio']} / {count['no-overlap']} / "
                     f"{count['classic-wins']} / {count['above-sweep']} / {count['no-face']} | {med} |")
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import av
    import torch

    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
            f"PyAV {av.__version__}")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "unknown"


def run_meta(script: str, argv, start: float, **extra) -> dict:
    """What a benchmark's results record about its run: the command (`script` with `argv`, default the
    process's arguments; under nice, said), date, machine, commit and wall seconds since `start`
    (time.perf_counter), then `extra`."""
    niceness = os.nice(0)
    args = argv if argv is not None else sys.argv[1:]
    return {"command": (f"nice -n {niceness} " if niceness else "") + f"python benchmarks/{script} "
                       + " ".join(shlex.quote(a) for a in args),
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
            "git": git_commit(), "seconds": time.perf_counter() - start, **extra}


MONITOR_DATA = "- **Data:** the 6 monitor clips of the val split (kpcodec.train.evaluate.MONITOR_CLIPS), first 250 frames"


def run_header(title: str, meta: dict, *lines: str) -> list[str]:
    """A report's first lines: its title, then the run's date, machine, commit and command (run_meta),
    then `lines`."""
    return [f"# {title}", "", f"- **Date:** {meta['date']}", f"- **Machine:** {meta['machine']}",
            f"- **Code:** git {meta['git']}", f"- **Command:** `{meta['command']}`", *lines]


def write_results(out: Path, lines: list[str], command: str, **payload) -> None:
    """`out`.md (the report's lines) and `out`.json (the command, machine, commit and `payload`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine(), "commit": git_commit(),
                                                    **payload}, indent=1) + "\n")
    print(f"wrote {out}.md", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--split", default="val")
    p.add_argument("--clips", type=int, default=None, help="N clips evenly spread over the split (default: all)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--codecs", default="x264,x265,av1,kpcodec")
    p.add_argument("--keep-every", default="1,2,4")
    p.add_argument("--crf-x264", default=None)
    p.add_argument("--crf-x265", default=None)
    p.add_argument("--crf-av1", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-landmarks", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--render-only", action="store_true",
                   help="only rewrite compare.md/png from OUT/compare.json (after a change to the report)")
    args = p.parse_args(argv)
    if args.render_only:
        saved = json.loads((args.out / "compare.json").read_text())
        render(saved["meta"], saved["clips"], args.out)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    from kpcodec.models.registry import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    with open(args.data / "manifest.csv", newline="") as f:
        clips = [row["file"] for row in csv.DictReader(f) if row["split"] == args.split]
    if args.clips and args.clips < len(clips):
        # Evenly spread over the manifest (first and last included), not its first N: the split is
        # ordered by source, so the first N would be a few people only.
        clips = [clips[int(i)] for i in np.linspace(0, len(clips) - 1, args.clips).round()]
    if not clips:
        sys.exit(f"no {args.split} clips in {args.data / 'manifest.csv'}")
    codecs = cmp.parse_codecs(args.codecs)
    crfs = {k: cmp.parse_ints(v, f"--crf-{k}") for k, v in
            [("x264", args.crf_x264), ("x265", args.crf_x265), ("av1", args.crf_av1)] if v}

    start = time.perf_counter()
    record = []
    for i, name in enumerate(clips, 1):
        t = time.perf_counter()
        r = cmp.compare(args.data / name, codecs=codecs, keep_every=cmp.parse_ints(args.keep_every, "--keep-every"),
                        crfs=crfs, model=model, max_frames=args.max_frames, landmarks=not args.no_landmarks,
                        threads=args.threads)
        d = r.to_dict(per_frame=False)
        record.append({"clip": name, "frames": r.frames, "size": r.size, "fps": str(r.fps), "seconds": r.seconds,
                       "notes": r.notes, "kpcodec": r.kpcodec, "rows": d["rows"], "headline": d["headline"]})
        print(f"[{i}/{len(clips)}] {Path(name).name}: {r.frames} frames in {time.perf_counter() - t:.0f} s",
              file=sys.stderr, flush=True)
    meta = run_meta("compare.py", argv, start, nice=os.nice(0), split=args.split, max_frames=args.max_frames,
                    threads=args.threads, model=model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps({"meta": meta, "clips": record}, indent=1, allow_nan=False)
                                           + "\n")
    render(meta, record, args.out)
    return 0


def _used(record: list[dict], key: str) -> str:
    """What the .kpc headers of the run said (several values if the registry changed under it)."""
    values = sorted({rec.get("kpcodec", {}).get(key) for rec in record} - {None})
    if not values:
        return "not recorded"
    return " and ".join(f"`{v[:12]}…`" if key == "weights_sha256" else f"`{v}`" for v in values)


def render(meta: dict, record: list[dict], out: Path) -> None:
    """compare.md and compare.png from the per-clip results (also: --render-only from compare.json)."""
    rows = mean_rows([rec["rows"] for rec in record])
    heads = cmp.headline(rows)
    frames = sum(rec["frames"] for rec in record)
    size = "/".join(f"{s}x{s}" for s in sorted({rec["size"] for rec in record}))
    notes = sorted({n for rec in record for n in rec["notes"]})
    model, threads = meta["model"], meta["threads"]
    first = f" (first {meta['max_frames']} per clip)" if meta["max_frames"] else ""
    title = f"{meta['split']} split, {len(record)} clips, {frames} frames at {size}{first}; model {model}"
    report.plot_rd(rows, out / "compare.png", f"mean over clips: {title}", force=True)
    md = [
        "# kpcodec vs H.264 / H.265 / AV1 (`kpcodec compare` over the val split)",
        "",
        f"- **Date:** {meta['date']}",
        f"- **Machine:** {meta['machine']}; niceness {meta.get('nice', 10)}, the machine shared with other jobs",
        f"- **Code:** git {meta['git']}",
        f"- **Command:** `{meta['command']}`",
        f"- **Data:** {title}; wall time {meta['seconds'] / 60:.1f} min",
        f"- **kpcodec model:** `{model}` (weights sha256 {_used(record, 'weights_sha256')}), predictor "
        f"{_used(record, 'predictor')}. The motion model keeps training (kpcodec/weights/MODEL_CARD.md): the kpcodec "
        "numbers change with each shipped model; the classic codecs' do not.",
        f"- **Classic codecs:** x264 preset {classic.CODECS['x264'].preset}, x265 preset "
        f"{classic.CODECS['x265'].preset}, SVT-AV1 preset {classic.CODECS['av1'].preset}; "
        f"{', '.join(f'{c.label} {c.pix_fmt}' for c in classic.CODECS.values())}; one key frame "
        f"per clip (keyint = clip length), {threads} thread(s) per codec (torch too).",
        "- **Rates:** kb/s over each clip's duration, means over clips. kpcodec: the whole .kpc file. Classic "
        "codecs: the whole elementary stream (parameter sets included; no MP4 container; the encoder's "
        "version/options SEI left out). *Steady* leaves out the first frame (kpcodec's SRCF source image, "
        "the classic codecs' first packet = key frame). Short clips make the first frame weigh heavily in "
        "the total rate, for every codec.",
        "- **Scores:** per-frame means against the same cropped, scaled frames every codec got; SSIM/MS-SSIM 7x7 "
        "uniform window (kpcodec.eval.metrics); landmark error = mean distance of mediapipe face-mesh landmarks "
        "(478) between original and decoded frame, px at 256x256, averaged over the clips where a face was "
        "found in both (count in brackets). Every codec is scored on its decoder's own frames (kpcodec's since "
        "2026-12-06; results before that scored the MP4 `kpcodec decode` writes, H.264 CRF 18 in 4:2:0, ~0.005 "
        "SSIM lower). fps include colour conversion (kpcodec: the encoder is given the frames, the decoder "
        "hands out RGB frames), "
        f"with {threads} thread(s) each, on a shared machine: compare them with each other, not with other runs.",
    ]
    md += [f"- **Note:** {n}" for n in notes]
    md += ["", "## Mean over clips", "", *markdown_table(rows), "",
           "![rate-quality](compare.png)", "",
           "## Headline (on the mean curves, total rate)", "",
           "A classic codec's kb/s at kpcodec's quality divided by kpcodec's kb/s, interpolated on the "
           "classic codec's mean curve (log-rate linear in quality, BD-rate style). Above 1: kpcodec "
           "needs fewer bits for that quality; below 1: the classic codec wins. Where the curves do not "
           "overlap, that is said instead of extrapolating.", ""]
    md += [f"    {line}" for line in report.headline_lines(heads)]
    md += ["", "### Steady-state rate (first frame left out)", ""]
    md += [f"    {line}" for line in report.headline_lines(heads, "steady")]
    md += ["", "## Per-clip verdicts (total rate)", "", *verdict_summary([rec["headline"] for rec in record]), ""]
    md += ["## Clips", "", ", ".join(f"`{Path(rec['clip']).stem}` ({rec['frames']})" for rec in record), ""]
    (out / "compare.md").write_text("\n".join(md))
    print(f"{len(record)} clips, {frames} frames in {meta['seconds'] / 60:.1f} min -> {out / 'compare.md'}, "
          f"{out / 'compare.png'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
