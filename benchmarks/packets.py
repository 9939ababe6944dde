"""What the .kpc 2.0 packets cost against format 1.3: bits per sent frame of the keypoint stream
(KEYPOINTS packets with their framing, against 1.3's KPRC chunk with its 12 bytes of framing) for
several packet sizes, and the whole file, on the val clips at keep-every 2. Issue 21's budget: at
most +3% bits per keypoint frame at keep-every 2. Writes benchmarks/results/packets.md and .json.

    python benchmarks/packets.py [--data ../shared/data] [--keep-every 2] [--clips N]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import git_commit, machine  # noqa: E402

from kpcodec import api, bitstream  # noqa: E402
from kpcodec.bitstream import packets as pk  # noqa: E402

SIZES = (1, 8, 16, 32, 64, 128)


def keypoint_bits(s: bitstream.KpcStream) -> dict:
    """Bits per sent frame: 1.3's KPRC chunk, and the KEYPOINTS packets at each packet size."""
    n = len(s.sent_indices)
    v13 = dataclasses.replace(s, version=(1, 3))
    kprc = sum(size for kind, size in bitstream.chunk_table(bitstream.dumps(v13)) if kind == "KPRC")
    out = {"1.3": kprc * 8 / n}
    for size in SIZES:
        packets = pk.stream_packets(dataclasses.replace(s, version=pk.VERSION), size)
        out[size] = sum(len(bytes(p)) for p in packets if p.kind == "K") * 8 / n
    out["file_1.3"] = len(bitstream.dumps(v13))
    out["file_2.0"] = len(pk.join(pk.stream_packets(dataclasses.replace(s, version=pk.VERSION))))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--keep-every", type=int, default=2)
    p.add_argument("--clips", type=int, default=0, help="only the first N val clips (0: all)")
    p.add_argument("--long-seconds", type=float, default=120,
                   help="also samples/astronaut.mp4 looped to this length (smooth motion: few bits a frame; 0: none)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "packets")
    a = p.parse_args(argv)
    clips = sorted((a.data / "talking-heads" / "val").glob("*.mp4"))
    clips = clips[:a.clips] if a.clips else clips
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.long_seconds:
            from speed import make_clip

            long_clip = Path(tmp) / f"astronaut-loop-{a.long_seconds:g}s.mp4"
            make_clip(long_clip, a.long_seconds)
            clips.append(long_clip)
        for clip in clips:
            kpc = Path(tmp) / f"{clip.stem}.kpc"
            api.encode(clip, kpc, keep_every=a.keep_every, audio=False)  # the 2.0 encoder, 128-frame packets
            s = bitstream.read_file(kpc)
            r = {"clip": clip.stem, "frames": s.header.frame_count, "sent": len(s.sent_indices),
                 "encoded_bytes": kpc.stat().st_size, **{str(k): v for k, v in keypoint_bits(s).items()}}
            assert r["encoded_bytes"] == r["file_2.0"], "the encoder's file is the stream's packets"
            results.append(r)
            print(clip.stem, {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}, file=sys.stderr)
    rel = {size: np.array([r[str(size)] / r["1.3"] - 1 for r in results]) for size in SIZES}
    file_rel = np.array([r["file_2.0"] / r["file_1.3"] - 1 for r in results])
    rows = [f"| {r['clip']} | {r['sent']} | {r['1.3']:.1f} | " +
            " | ".join(f"{r[str(size)]:.1f} ({(r[str(size)] / r['1.3'] - 1) * 100:+.1f}%)" for size in SIZES) +
            f" | {r['file_1.3']} / {r['file_2.0']} |" for r in results]
    command = f"python benchmarks/packets.py --keep-every {a.keep_every}" + (f" --clips {a.clips}" if a.clips else "") \
        + (f" --long-seconds {a.long_seconds:g}" if a.long_seconds != 120 else "")
    lines = [
        "# .kpc 2.0 packets against format 1.3",
        "",
        f"Machine: {machine()}. Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Commit {git_commit()}. "
        f"Command: `{command}`.",
        "",
        f"{len(results) - bool(a.long_seconds)} val clips"
        + (f" and samples/astronaut.mp4 looped to {a.long_seconds:g} s (the last row: smooth synthetic motion, few "
           "bits a frame, so the per-packet cost weighs most)" if a.long_seconds else "")
        + f", default model, keep-every {a.keep_every}, encoded by `kpcodec encode` (format 2.0). "
        "Bits per sent frame of the keypoint stream: 1.3's KPRC chunk (one range coder over the clip, the smaller "
        "of coders 0 and 1, 12 bytes of chunk framing) against 2.0's KEYPOINTS packets of N sent frames (framing "
        "8-11 bytes, a coder flush, both coders' models carried from packet to packet, the smaller coder per "
        "packet), same keypoints. The last column is the whole file in bytes, 1.3 / 2.0 (2.0 adds an INDEX and "
        "an END packet, ~30 bytes, and its HEAD has no frame count).",
        "",
        "| clip | sent frames | 1.3 | " + " | ".join(f"2.0, {size}/packet" for size in SIZES) + " | file bytes |",
        "|---|---|---|" + "---|" * len(SIZES) + "---|",
        *rows,
        "| **median** | | | " + " | ".join(f"{np.median(rel[size]) * 100:+.1f}%" for size in SIZES) +
        f" | {np.median(file_rel) * 100:+.1f}% |",
        "| **mean** | | | " + " | ".join(f"{np.mean(rel[size]) * 100:+.1f}%" for size in SIZES) +
        f" | {np.mean(file_rel) * 100:+.1f}% |",
        "| **worst** | | | " + " | ".join(f"{np.max(rel[size]) * 100:+.1f}%" for size in SIZES) +
        f" | {np.max(file_rel) * 100:+.1f}% |",
        "",
    ]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine(),
                                                       "commit": git_commit(), "clips": results}, indent=1) + "\n")
    print(f"wrote {a.out}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
