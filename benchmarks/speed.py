"""Encode/decode speed and peak memory of kpcodec on 256x256 clips, per model and keep-every.

    python benchmarks/speed.py                       # 10 s clip, every shipped model, k = 1, 2, 4
    python benchmarks/speed.py --long-minutes 10 --long-models fomm-256-fast --long-keep 2
    python benchmarks/speed.py --breakdown           # where a decoded frame's time goes

Each encode and decode runs in a fresh Python process through the library API
(`kpcodec.encode/decode`, what the CLI calls), so its peak RSS is its own (os.wait4). Clips
are samples/astronaut.mp4 looped to length, written losslessly-ish (x264 CRF 12) to a temp
folder; no audio, so the numbers are the video path's. Timings on a shared machine are noisy:
each measurement is repeated and the fastest run kept; CPU seconds are reported beside wall.
Results: benchmarks/results/speed.md and .json (machine, date, command included).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Runs in the child: one encode or decode, then its own numbers as one JSON line.
CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
import kpcodec
job, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
first = []
def progress(done, total):  # the steady-state clock starts once the first frames are out
    if not first:
        first.extend([done, time.perf_counter(), time.process_time()])
t0, c0 = time.perf_counter(), time.process_time()
if job == "encode":
    s = kpcodec.encode(src, dst, keep_every=int(sys.argv[5]), model=sys.argv[6], audio=False, force=True,
                       progress=progress)
else:
    s = kpcodec.decode(src, dst, force=True, audio=False, progress=progress)
t1, c1 = time.perf_counter(), time.process_time()
print(json.dumps({"frames": s.frames, "wall_s": t1 - t0, "cpu_s": c1 - c0, "bytes": s.bytes,
                  "startup_s": first[1] - t0, "steady_frames": s.frames - first[0],
                  "steady_wall_s": t1 - first[1], "steady_cpu_s": c1 - first[2],
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def machine() -> dict:
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}


def make_clip(path: Path, seconds: float, fps: int = 25) -> int:
    """samples/astronaut.mp4 looped (forwards then backwards, no jump) to `seconds`."""
    import av

    from kpcodec.media import video

    frames = list(video.read_frames(str(ROOT / "samples" / "astronaut.mp4"), size=256))
    cycle = frames + frames[-2:0:-1]
    total = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "veryfast"})
        stream.width = stream.height = 256
        stream.pix_fmt = "yuv420p"
        for i in range(total):
            for packet in stream.encode(av.VideoFrame.from_ndarray(cycle[i % len(cycle)], format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return total


def run_child(job: str, src: Path, dst: Path, threads: int, keep: int = 0, model: str = "") -> dict:
    """One job in a fresh interpreter; its peak RSS from the kernel (wait4), its times from itself."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, job, str(src), str(dst), str(threads), str(keep), model],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{job} {src.name} failed (exit {proc.returncode})")
    rec = json.loads(out.decode().strip().splitlines()[-1])
    rec["peak_rss_mb"] = usage.ru_maxrss / 1024
    rec["fps_end_to_end"] = rec["frames"] / rec["wall_s"]
    rec["fps"] = rec["steady_frames"] / rec["steady_wall_s"]
    rec["cpu_ms_per_frame"] = 1000 * rec["steady_cpu_s"] / rec["steady_frames"]
    return rec


def best_of(repeat: int, fn) -> dict:
    """The fastest of `repeat` runs (a shared machine only ever slows a run down), peak RSS the largest."""
    runs = [fn() for _ in range(repeat)]
    best = min(runs, key=lambda r: r["steady_wall_s"] / r["steady_frames"])
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": len(runs)}


def measure(clip: Path, label: str, models: list[str], keeps: list[int], threads: int, repeat: int,
            work: Path) -> list[dict]:
    rows = []
    for model in models:
        for k in keeps:
            kpc, mp4 = work / f"{label}-{model}-k{k}.kpc", work / f"{label}-{model}-k{k}.mp4"
            enc = best_of(repeat, lambda: run_child("encode", clip, kpc, threads, k, model))
            dec = best_of(repeat, lambda: run_child("decode", kpc, mp4, threads))
            row = {"clip": label, "model": model, "keep_every": k, "frames": enc["frames"],
                   "encode": enc, "decode": dec, "kpc_bytes": kpc.stat().st_size}
            rows.append(row)
            print(f"{label} {model} k={k}: encode {enc['fps']:.0f} fps ({enc['peak_rss_mb']:.0f} MB), "
                  f"decode {dec['fps']:.1f} fps ({dec['peak_rss_mb']:.0f} MB)", file=sys.stderr, flush=True)
    return rows


def breakdown(models: list[str], threads: int, frames: int = 32, batch: int = 4) -> list[dict]:
    """Per decoded frame: dense motion, generator, frame conversion + H.264 writing; plain vs
    inference-prepared model. CPU ms (this process's CPU time), fastest of 3."""
    import torch

    from kpcodec.media import video
    from kpcodec.models.frames import frames_to_tensor, tensor_to_frames
    from kpcodec.models.registry import WEIGHTS, load_model

    torch.set_num_threads(threads)
    src = next(iter(video.read_frames(str(ROOT / "samples" / "astronaut.mp4"), size=256)))
    rows = []
    for model in models:
        for variant in ("plain", "inference"):
            net = load_model(model, inference=variant == "inference")
            with torch.inference_mode():
                state = net.prepare_source(frames_to_tensor([src]))
                kp = state.kp.expand(batch, -1, -1) + 0.02 * torch.randn(batch, state.kp.shape[1], 2)
                jac = state.jac.expand(batch, -1, -1, -1).clone()
                small, kps, jacs = state.small, state.kp.expand(batch, -1, -1), state.jac.expand(batch, -1, -1, -1)

                def timed(fn):
                    best = float("inf")
                    for _ in range(3):
                        t = time.process_time()
                        for _ in range(frames // batch):
                            fn()
                        best = min(best, time.process_time() - t)
                    return 1000 * best / frames

                motion = net.dense_motion(small, kps, jacs, kp, jac)
                images = net.generator.decode(state.features, motion["flow"], motion["occlusion"], state.image)
                t_motion = timed(lambda: net.dense_motion(small, kps, jacs, kp, jac))
                t_gen = timed(lambda: net.generator.decode(state.features, motion["flow"], motion["occlusion"],
                                                          state.image))
                with tempfile.TemporaryDirectory() as tmp, video.VideoWriter(Path(tmp) / "w.mp4", 25) as writer:
                    t_write = timed(lambda: [writer.write(f) for f in tensor_to_frames(images)])
                detect_in = frames_to_tensor([src] * 8)
                t_detect = 1000 * min(_cpu(lambda: net.detect(detect_in)) for _ in range(3)) / 8
            rows.append({"model": model, "weights": WEIGHTS[model].file, "variant": variant,
                         "dense_motion_ms": t_motion, "generator_ms": t_gen, "write_ms": t_write,
                         "detector_ms": t_detect, "render_total_ms": t_motion + t_gen + t_write})
            print(f"breakdown {model} {variant}: motion {t_motion:.1f}, generator {t_gen:.1f}, write {t_write:.1f}, "
                  f"detector {t_detect:.1f} CPU-ms/frame", file=sys.stderr, flush=True)
            load_model.cache_clear()
    return rows


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Speed and memory", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (CPU kernels: {m['torch_cpu_capability']}), "
        f"Python {m['python']}. Date: {result['date']}. Command: `{result['command']}`.",
        f"torch threads: {result['threads']} (decode's default since 2026-12-06: a worker per idle core, one torch "
        f"thread each); each number is the fastest of {result['repeat']} runs in a fresh "
        "process (peak RSS: the largest); the machine was shared, so wall fps is a lower bound.", "",
    ]
    if result["rows"]:
        lines += ["fps: frames per second once the first frames are out (model loading and start-up are the "
                  "`start s` columns); `all` includes them. CPU ms/frame: the process's CPU time per frame over "
                  "both threads, steady state.", "",
                  "| clip | model | keep | frames | encode fps | all | start s | CPU ms/frame | peak RSS MB | "
                  "decode fps | all | start s | CPU ms/frame | peak RSS MB | .kpc bytes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            e, d = r["encode"], r["decode"]
            lines.append(f"| {r['clip']} | {r['model']} | {r['keep_every']} | {r['frames']} | {e['fps']:.0f} | "
                         f"{e['fps_end_to_end']:.0f} | {e['startup_s']:.1f} | {e['cpu_ms_per_frame']:.1f} | "
                         f"{e['peak_rss_mb']:.0f} | {d['fps']:.1f} | {d['fps_end_to_end']:.1f} | {d['startup_s']:.1f} | "
                         f"{d['cpu_ms_per_frame']:.1f} | {d['peak_rss_mb']:.0f} | {r['kpc_bytes']:,} |")
    if result.get("breakdown"):
        lines += ["", "## Where a decoded frame's time goes (CPU ms per frame, batch 4, 1 process)", "",
                  "`plain`: the model as trained; `inference`: BatchNorm folded into the convolutions, channels_last "
                  "(kpcodec.models.inference), what encode/decode use.", "",
                  "| model | variant | dense motion | generator | RGB + H.264 write | render total | detector |",
                  "|---|---|---|---|---|---|---|"]
        for b in result["breakdown"]:
            lines.append(f"| {b['model']} | {b['variant']} | {b['dense_motion_ms']:.1f} | {b['generator_ms']:.1f} | "
                         f"{b['write_ms']:.1f} | {b['render_total_ms']:.1f} | {b['detector_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from kpcodec.models.registry import WEIGHTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shipped = sorted(name for name, w in WEIGHTS.items() if w.config != "tiny")  # tiny: the tests' model
    ap.add_argument("--models", default=",".join(shipped), help="shipped model names, comma-separated")
    ap.add_argument("--keep", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--long-minutes", type=float, default=0.0, help="also a clip this long (0: none)")
    ap.add_argument("--long-models", default=None, help="models for the long clip (default: --models)")
    ap.add_argument("--long-keep", default="2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--breakdown", action="store_true", help="per-stage decode profile")
    ap.add_argument("--no-runs", action="store_true", help="only the breakdown")
    ap.add_argument("--out", type=Path, default=RESULTS / "speed")
    args = ap.parse_args()
    models = args.models.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kpcodec-speed-") as tmp:
        work = Path(tmp)
        if not args.no_runs:
            clip = work / "short.mp4"
            make_clip(clip, args.seconds)
            rows += measure(clip, f"{args.seconds:g} s", models, [int(k) for k in args.keep.split(",")],
                            args.threads, args.repeat, work)
            if args.long_minutes > 0:
                long_clip = work / "long.mp4"
                make_clip(long_clip, args.long_minutes * 60)
                long_models = (args.long_models or args.models).split(",")
                rows += measure(long_clip, f"{args.long_minutes:g} min", long_models,
                                [int(k) for k in args.long_keep.split(",")], args.threads, 1, work)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]), "threads": args.threads,
              "repeat": args.repeat, "rows": rows,
              "breakdown": breakdown(models, args.threads) if args.breakdown else []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
