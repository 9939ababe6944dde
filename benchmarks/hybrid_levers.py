"""The hybrid mode's fixed costs as levers: what the source image's quality and the keypoints'
quantisation step buy in SSIM per kb/s, against what the base layer's CRF buys (rate control should
spend where a kb/s buys most).

    python benchmarks/hybrid_levers.py                       # the default clips and variants
    python benchmarks/hybrid_levers.py --clips liveportrait_d10 --variants "A q30,B q15"
    python benchmarks/hybrid_levers.py --report-only         # the report of the rows so far

Each (clip, variant): the first 250 frames through the Encoder (keep-every 2, a fixed base layer, the
source image at quality q, the keypoint and Jacobian steps times m) and the Decoder; kb/s of the whole
.kpc, mean SSIM of the decoder's frames. Rows go to results/hybrid-levers.jsonl as they finish (a
stopped run resumes); the report is results/hybrid-levers.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from itertools import islice
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import git_commit, machine  # noqa: E402

# name -> (keep-every, base layer, source quality, keypoint-step multiplier)
VARIANTS = {"A q30": (2, "96@3:63", 30, 1), "B q15": (2, "96@3:63", 15, 1), "C q5": (2, "96@3:63", 5, 1),
            "D q30 step2": (2, "96@3:63", 30, 2), "E q15 crf58": (2, "96@3:58", 15, 1),
            "F q15 step2 crf58": (2, "96@3:58", 15, 2)}
CLIPS = ("liveportrait_d10", "lia_vox_driving3_c1", "dreamtalk_W011_front_angry_level3_001",
         "dreamtalk_W011_front_happy_level3_001", "vox1_id10284_Rzpm9hlXV6I_005604",
         "vox1_id10287_RfDogGJ-UnM_001114", "tpsmm_driving", "dagan_driving")
OUT = ROOT / "benchmarks" / "results" / "hybrid-levers"


def run(path: Path, variant: str) -> dict:
    import torch

    from kpcodec import bitstream
    from kpcodec.bitstream import quantize
    from kpcodec.codec import encoder as encoder_module
    from kpcodec.codec.decoder import Decoder
    from kpcodec.eval.metrics import ssim
    from kpcodec.media import video
    from kpcodec.options import EncodeOptions

    torch.set_num_threads(1)
    k, base, quality, mult = VARIANTS[variant]
    fps = video.probe(path).fps
    frames = list(islice(video.read_frames(path, size=256), 250))
    # The steps the encoder writes into the file (the decoder reads them from there).
    encoder_module.DEFAULT_KP_STEP = quantize.DEFAULT_KP_STEP * mult
    encoder_module.DEFAULT_JAC_STEP = quantize.DEFAULT_JAC_STEP * mult
    try:
        with encoder_module.Encoder(EncodeOptions(keep_every=k, base_layer=base, source_quality=quality, audio=False),
                                    fps, len(frames)) as enc:
            data = bitstream.packets.join([p for f in frames for p in enc.push(f)] + enc.flush())
    finally:
        encoder_module.DEFAULT_KP_STEP, encoder_module.DEFAULT_JAC_STEP = quantize.DEFAULT_KP_STEP, quantize.DEFAULT_JAC_STEP
    decoded = list(Decoder(bitstream.loads(data)).frames())
    seconds = len(frames) / float(fps)
    return {"clip": path.stem, "variant": variant, "frames": len(frames), "kbps": len(data) * 8 / seconds / 1000,
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(frames, decoded)]))}


def report(rows: list[dict], command: str, notes=()) -> None:
    by = {(r["clip"], r["variant"]): r for r in rows}
    clips = list(dict.fromkeys(r["clip"] for r in rows))
    lines = ["# Hybrid mode: what the fixed costs buy", "",
             f"- **Date:** {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; **machine:** {machine()}; "
             f"**code:** {git_commit()}",
             f"- **Command:** `{command}`",
             "- **What:** keep-every 2, a fixed base layer, the source image at AVIF quality q, the keypoint and "
             "Jacobian quantisation steps x1 or x2 (`step2`); first 250 frames; kb/s of the whole .kpc, SSIM of the "
             "decoder's frames. Slopes: SSIM lost per kb/s saved against variant A (or gained per kb/s spent).",
             *[f"- **Note:** {n}" for n in notes],
             "", "| clip | variant | kb/s | SSIM | vs A: kb/s | vs A: SSIM | SSIM per kb/s |", "|---|---|---:|---:|---:|---:|---:|"]
    for c in clips:
        a = by.get((c, "A q30"))
        for v in VARIANTS:
            r = by.get((c, v))
            if r is None:
                continue
            if a is None or v == "A q30":
                lines.append(f"| {c} | {v} | {r['kbps']:.2f} | {r['ssim']:.4f} | | | |")
                continue
            dk, ds = r["kbps"] - a["kbps"], r["ssim"] - a["ssim"]
            slope = f"{ds / dk:.4f}" if abs(dk) > 1e-9 else "–"
            lines.append(f"| {c} | {v} | {r['kbps']:.2f} | {r['ssim']:.4f} | {dk:+.2f} | {ds:+.4f} | {slope} |")
    lines += ["", f"{len(rows)} rows over {len(clips)} clip(s); a variant missing from a clip was not run there."]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}.md", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "talking-heads" / "val")
    p.add_argument("--clips", default=",".join(CLIPS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--note", action="append", default=[], help="a line for the report (replaces the kept ones)")
    a = p.parse_args(argv)
    jsonl = OUT.with_suffix(".jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    command = "python benchmarks/hybrid_levers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not a.report_only:
        done = {(r["clip"], r["variant"]) for r in rows}
        with open(jsonl, "a") as f:
            for clip in a.clips.split(","):
                for variant in a.variants.split(","):
                    if (clip, variant) in done:
                        continue
                    row = run(a.data / f"{clip}.mp4", variant)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
    # The report's notes are kept beside its rows: a run without --note keeps the last ones.
    notes_file = OUT.with_suffix(".notes.json")
    if a.note:
        notes_file.write_text(json.dumps(a.note, indent=1) + "\n")
    notes = a.note or (json.loads(notes_file.read_text()) if notes_file.is_file() else [])
    report(rows, command.strip(), notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
