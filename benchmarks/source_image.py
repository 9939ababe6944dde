"""The source frame's codec by measured rate and quality (issue 6, step 4).

    python benchmarks/source_image.py --data ../shared/data

Every val clip's first frame at 256x256 (what `kpcodec encode` codes), through each codec
installable here at a sweep of qualities: AVIF and WebP (Pillow), JPEG XL (the
pillow-jxl-plugin package, if installed), and one intra frame of x264 and x265 (PyAV,
yuv420p, preset veryslow; parameter sets counted, the SEI text dropped). Mean bytes and SSIM per setting, and each codec's
bytes at the SSIM of the shipped default (kpcodec.media.source_image: AVIF q50), interpolated
on its curve (log bytes linear in SSIM).
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kpcodec.media import source_image  # noqa: E402
from kpcodec.eval.metrics import ssim  # noqa: E402

SWEEPS = {
    "avif": [30, 40, 50, 60, 70],
    "webp": [50, 70, 80, 90],
    "jxl": [30, 50, 70, 80],
    "x264-intra": [36, 32, 28, 24, 20],
    "x265-intra": [36, 32, 28, 24, 20],
}


def pil_codec(img: np.ndarray, codec: str, quality: int) -> tuple[int, np.ndarray]:
    if codec in ("avif", "webp"):
        data = source_image.encode_image(img, codec, quality)
        return len(data), source_image.decode_image(data, codec)
    from PIL import Image
    import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JXL", quality=quality, effort=7)
    data = buf.getvalue()
    return len(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _drop_sei(data: bytes, hevc: bool) -> bytes:
    """Annex B stream without SEI NAL units (the encoders' version and settings text:
    hundreds of bytes a decoder does not need)."""
    starts = [i for i in range(len(data) - 3) if data[i:i + 3] == b"\x00\x00\x01"]
    out = []
    for k, i in enumerate(starts):
        end = starts[k + 1] - (1 if data[starts[k + 1] - 1] == 0 else 0) if k + 1 < len(starts) else len(data)
        nal = data[i + 3:end]
        kind = (nal[0] >> 1) & 0x3F if hevc else nal[0] & 0x1F
        if kind not in ((39, 40) if hevc else (6,)):
            out.append(b"\x00\x00\x01" + nal)
    return b"".join(out)


def video_intra(img: np.ndarray, codec: str, crf: int) -> tuple[int, np.ndarray]:
    """One frame through libx264/libx265 as an intra frame; bytes include the parameter
    sets (3-byte start codes), not the SEI."""
    import av

    h, w, _ = img.shape
    enc = av.CodecContext.create({"x264-intra": "libx264", "x265-intra": "libx265"}[codec], "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {"crf": str(crf), "preset": "veryslow"} | ({"x265-params": "log-level=none"}
                                                            if codec == "x265-intra" else {})
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    packets = list(enc.encode(frame)) + list(enc.encode(None))
    data = _drop_sei(b"".join(bytes(p) for p in packets), codec == "x265-intra")
    dec = av.CodecContext.create({"x264-intra": "h264", "x265-intra": "hevc"}[codec], "r")
    frames = []
    for p in dec.parse(data) + dec.parse(b"") + [None]:  # parse(b"") flushes the parser
        frames += dec.decode(p)
    return len(data), frames[0].to_ndarray(format="rgb24")


def measure(images: list[np.ndarray], codecs: list[str]) -> list[dict]:
    rows = []
    for codec in codecs:
        for q in SWEEPS[codec]:
            sizes, scores, secs = [], [], []
            for img in images:
                t0 = time.process_time()
                n, back = (video_intra if codec.endswith("intra") else pil_codec)(img, codec, q)
                secs.append(time.process_time() - t0)
                sizes.append(n)
                scores.append(ssim(img, back))
            row = {"codec": codec, "quality": q, "bytes": float(np.mean(sizes)), "bytes_min": int(min(sizes)),
                   "bytes_max": int(max(sizes)), "ssim": float(np.mean(scores)), "ssim_min": float(min(scores)),
                   "cpu_s": float(np.mean(secs))}
            rows.append(row)
            print(f"{codec:>11} q{q:>3}: {row['bytes']:7.0f} B  SSIM {row['ssim']:.4f}  {row['cpu_s']:.2f} s",
                  flush=True)
    return rows


def render_rows(data: Path, clips: list[str], qualities: list[int], frames: int) -> list[dict]:
    """Rendered-video SSIM with the source frame coded as AVIF at each quality (every frame's
    unquantised detector keypoints from the trajectory cache): what the decoder's output loses."""
    import torch

    from kpcodec.models.frames import frames_to_tensor
    from kpcodec.models.registry import load_model
    from kpcodec.train.data import decode_clip
    from kpcodec.train.evaluate import render_keypoints
    from kpcodec.train.trajectories import load_trajectories

    torch.set_num_threads(1)
    net = load_model(None)
    trajs = {t["name"]: t for t in load_trajectories(ROOT / "runs" / "cache" / "trajectories", "val")}
    rows = []
    for clip in clips:
        video, _ = decode_clip(data / "talking-heads" / "val" / f"{clip}.mp4", 1, frames)
        kp = torch.from_numpy(trajs[clip]["kp"][:len(video)])
        jac = torch.from_numpy(trajs[clip]["jac"][:len(video)])
        for q in [None] + qualities:
            if q is None:
                src, n = video[0], 0
            else:
                coded = source_image.encode_image(video[0], "avif", q)
                src, n = source_image.decode_image(coded, "avif"), len(coded)
            with torch.inference_mode():
                state = net.prepare_source(frames_to_tensor([src]))
            out = render_keypoints(net, state, kp, jac)
            value = float(np.mean([ssim(a, b) for a, b in zip(video, out)]))
            rows.append({"clip": clip, "quality": q, "bytes": n, "ssim": value})
            print(f"render {clip[:24]:>24} avif q{q}: {n} B, SSIM {value:.4f}", flush=True)
    return rows


def bytes_at(rows: list[dict], codec: str, target: float) -> float | None:
    pts = sorted((r["ssim"], np.log(r["bytes"])) for r in rows if r["codec"] == codec)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs or not xs[0] <= target <= xs[-1]:
        return None
    return float(np.exp(np.interp(target, xs, ys)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--render", type=int, default=3, help="val clips to render per AVIF quality (0: none)")
    p.add_argument("--frames", type=int, default=100)
    args = p.parse_args()
    from kpcodec.train.data import decode_clip, manifest_rows

    start = time.time()
    files = [r["file"] for r in manifest_rows(args.data, "val")]
    images = [decode_clip(args.data / f, 1, 1)[0][0] for f in files]
    codecs = [c for c in SWEEPS if c != "jxl"]
    try:
        import pillow_jxl  # noqa: F401

        codecs.insert(2, "jxl")
    except ImportError:
        print("pillow-jxl-plugin not installed: no JPEG XL rows", file=sys.stderr)
    rows = measure(images, codecs)
    from bitrate import RENDER_CLIPS

    rendered = render_rows(args.data, RENDER_CLIPS[:args.render], [30, 40, 50, 60], args.frames) if args.render else []
    ref = next(r for r in rows if r["codec"] == "avif" and r["quality"] == source_image.DEFAULT_QUALITY)
    at_ref = {c: bytes_at(rows, c, ref["ssim"]) for c in codecs}
    result = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
              "machine": f"{platform.node()}: {platform.machine()}, Python {platform.python_version()}",
              "command": " ".join([Path(sys.executable).name] + sys.argv), "seconds": time.time() - start,
              "images": len(images), "rows": rows, "render": rendered, "reference": ref, "bytes_at_reference_ssim": at_ref}
    lines = ["# Source frame codec", "", f"{result['date']}, {result['machine']}; {result['seconds']:.0f} s.",
             f"Command: `{result['command']}`",
             f"First frame of each of the {len(images)} val clips at 256x256; SSIM against it; CPU s per image.", "",
             "| codec | quality / CRF | bytes (min-max) | SSIM (min) | CPU s |", "|---|---|---|---|---|"]
    lines += [f"| {r['codec']} | {r['quality']} | {r['bytes']:.0f} ({r['bytes_min']}-{r['bytes_max']}) | "
              f"{r['ssim']:.4f} ({r['ssim_min']:.4f}) | {r['cpu_s']:.2f} |" for r in rows]
    lines += ["", f"Bytes at the SSIM of the default (AVIF q{ref['quality']}: {ref['ssim']:.4f}, "
              f"{ref['bytes']:.0f} B), interpolated on each codec's curve:", ""]
    lines += [f"- {c}: " + (f"{b:.0f} B ({b / ref['bytes']:.2f}x)" if b else "outside its sweep")
              for c, b in at_ref.items()]
    if rendered:
        lines += ["", f"Rendered video ({len(args.render and RENDER_CLIPS[:args.render])} val clips x {args.frames} "
                  "frames, every frame's unquantised keypoints) with the source frame uncoded and as AVIF:", "",
                  "| source | bytes | SSIM | change |", "|---|---|---|---|"]
        base = {r["clip"]: r["ssim"] for r in rendered if r["quality"] is None}
        for q in dict.fromkeys(r["quality"] for r in rendered):
            sel = [r for r in rendered if r["quality"] == q]
            lines.append(f"| {'uncoded' if q is None else f'avif q{q}'} | {np.mean([r['bytes'] for r in sel]):.0f} | "
                         f"{np.mean([r['ssim'] for r in sel]):.4f} | "
                         f"{np.mean([r['ssim'] - base[r['clip']] for r in sel]):+.4f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "source_image.json").write_text(json.dumps(result, indent=1))
    (args.out / "source_image.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
