"""Live mode on loopback: glass-to-glass latency (a frame read at the sender to the same frame rendered
at the receiver, both on this machine's 2 cores, the network excluded), frames rendered, SSIM against
the frames sent, and bytes on the wire, at keep-every 1 and 2 and under random loss and 200-ms
bursts through the seeded userspace proxy (kpcodec/live/proxy.py). Writes
benchmarks/results/live.md and .json.

    python benchmarks/live.py [--clip samples/astronaut.mp4] [--model fomm-256-fast]
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import git_commit, machine, write_results  # noqa: E402

from kpcodec.eval import metrics  # noqa: E402
from kpcodec.live import udp  # noqa: E402
from kpcodec.live.proxy import LossyProxy  # noqa: E402
from kpcodec.media.video import probe, read_frames  # noqa: E402
from kpcodec.models.registry import load_model  # noqa: E402
from kpcodec.options import DecodeOptions  # noqa: E402

IP_UDP_HEADERS = 28  # IPv4 + UDP, per datagram
WARMUP_FRAMES = 25  # the first second (the receiver's first render) is left out of the latency


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recovery_ms(outages, decoded) -> list[float]:
    """Per outage (start, end): from its end to the first keypoint packet decoded of a frame captured
    after it ended (decoded: (decode time, capture time) pairs), ms; infinity where none came."""
    out = []
    for _, end in outages:
        after = [t for t, capture in decoded if capture >= end]
        out.append((min(after) - end) * 1000 if after else math.inf)
    return out


def run(clip: Path, model: str, keep: int, loss: float, burst_ms: float, seed: int, tmp: Path,
        max_late_ms: float = udp.MAX_LATE_MS, redundancy: bool = True, outage: tuple = ()) -> dict:
    port = free_port()
    out = tmp / f"k{keep}-l{loss}-b{burst_ms}-r{int(redundancy)}-o{len(outage)}.y4m"
    box: dict = {}

    def receiver():
        box["rx"] = udp.receive(f"udp://127.0.0.1:{port}", out, DecodeOptions(), idle_timeout=15, force=True,
                                max_late_ms=max_late_ms)

    thread = threading.Thread(target=receiver)
    thread.start()
    time.sleep(0.5)
    with LossyProxy(("127.0.0.1", port), loss=loss, burst_ms=burst_ms, burst_rate=0.03 if burst_ms else 0.0,
                    seed=seed, outages=[outage] if outage else ()) as proxy:
        tx = subprocess.run([sys.executable, "-m", "kpcodec", "send", str(clip), proxy.url, "--model", model,
                             "-k", str(keep), "-q"] + ([] if redundancy else ["--no-redundancy"]),
                            capture_output=True, text=True, timeout=300)
        if tx.returncode != 0:
            raise RuntimeError(tx.stderr)
        thread.join(120)
        dropped, forwarded, outages = proxy.dropped, proxy.forwarded, proxy.outage_log
    rx = box["rx"]
    sent = list(read_frames(clip, size=256))
    got = list(read_frames(out, size=256))
    ssim = float(np.mean([metrics.ssim(a, b) for a, b in zip(got, sent)])) if got else 0.0
    late = np.array(rx.latency_ms[WARMUP_FRAMES:] or rx.latency_ms)
    seconds = probe(clip).duration_s
    wire = rx.bytes + IP_UDP_HEADERS * rx.datagrams
    recovery = recovery_ms(outages, rx.keypoints_decoded)
    return {"keep": keep, "loss": loss, "burst_ms": burst_ms, "redundancy": redundancy,
            "outage": list(outage), "outages": len(outages),
            "recovery_median_ms": float(np.median(recovery)) if recovery else None,
            "recovery_max_ms": float(max(recovery)) if recovery and max(recovery) < math.inf else None,
            "unrecovered_outages": sum(r == math.inf for r in recovery), "frames_sent": len(sent), "frames_rendered": len(got),
            "ssim": ssim, "latency_median_ms": float(np.median(late)), "latency_p95_ms": float(np.percentile(late, 95)),
            "datagrams_dropped": dropped, "datagrams_forwarded": forwarded, "lost_packets": rx.lost_packets,
            "undecodable_packets": rx.dropped_packets, "requests": rx.requests, "ended": rx.ended,
            "repeated_frames": rx.repeated, "latency_max_ms": float(late.max()),
            "wire_kbps_received": wire * 8 / seconds / 1000}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, default=ROOT / "samples" / "astronaut.mp4")
    p.add_argument("--model", default="fomm-256-fast")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-latency", type=float, default=udp.MAX_LATE_MS, help="the receiver's budget, ms")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "live")
    a = p.parse_args(argv)
    load_model(a.model, inference=True)  # the receiver's model is in memory before the stream starts
    # (keep, loss, burst ms, redundancy, one outage: (at s, ms))
    conditions = [(1, 0.0, 0.0, True, ()), (2, 0.0, 0.0, True, ()), (2, 0.05, 0.0, True, ()),
                  (2, 0.10, 0.0, True, ()), (2, 0.10, 0.0, False, ()), (2, 0.20, 0.0, True, ()),
                  (2, 0.0, 200.0, True, ()), (2, 0.0, 0.0, True, (3.0, 1000.0))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for keep, loss, burst, redundancy, outage in conditions:
            r = run(a.clip, a.model, keep, loss, burst, a.seed, Path(tmp), a.max_latency, redundancy, outage)
            rows.append(r)
            print(r, file=sys.stderr)
    command = (f"python benchmarks/live.py --clip {a.clip.relative_to(ROOT) if a.clip.is_relative_to(ROOT) else a.clip} "
               f"--model {a.model} --max-latency {a.max_latency:g}")
    def ms(v):
        return "–" if v is None else "never" if v == math.inf else f"{v:.0f}"

    def loss_of(r):
        return (f"{r['loss'] * 100:.0f}%" + ("" if r["redundancy"] else ", no redundancy") +
                (f"; {r['outage'][1]:.0f}-ms outage at {r['outage'][0]:g} s" if r["outage"] else "") +
                (f"; {r['burst_ms']:.0f}-ms bursts" if r["burst_ms"] else ""))

    table = [f"| {r['keep']} | {loss_of(r)} | {r['frames_rendered']}/{r['frames_sent']} | "
             f"{r['repeated_frames']} | {r['ssim']:.3f} | {r['latency_median_ms']:.0f} | {r['latency_p95_ms']:.0f} | "
             f"{r['latency_max_ms']:.0f} | {r['datagrams_dropped']} | "
             f"{r['lost_packets']} | {r['undecodable_packets']} | {r['requests']} | "
             f"{ms(r['recovery_median_ms'])} / "
             f"{'never' if r['unrecovered_outages'] else ms(r['recovery_max_ms'])} | {r['wire_kbps_received']:.1f} |"
             for r in rows]
    lines = [
        "# Live mode on loopback",
        "",
        f"Machine: {machine()}. Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Commit {git_commit()}. "
        f"Command: `{command}`.",
        "",
        f"`kpcodec send` (a subprocess) plays {a.clip.name} at its frame rate through the loss proxy to `udp.receive` "
        f"(this process, model {a.model} loaded first, torch on the idle cores, batch 1), both on this machine's cores. "
        "Latency: a frame's read time at the sender to the time the receiver hands it to the video writer, median "
        f"and 95th percentile over the frames after the first {WARMUP_FRAMES} (network excluded: loopback). "
        f"A frame that would be out more than {a.max_latency:g} ms after its capture (its latency so far plus the "
        "time a render takes) is not rendered: the receiver repeats the "
        "last frame in its place to stay in time (`repeated`; latency is over the rendered frames). "
        "SSIM against the frames sent (256x256). Loss: each datagram dropped with that probability, 200-ms "
        "outages starting at 3% of datagrams (bursts), or one outage at a fixed time; `no redundancy`: the sender "
        "does not repeat the previous keypoint packet in each datagram (`send --no-redundancy`). Datagrams dropped "
        "by the proxy; packets the receiver declared lost and keypoint packets it could not decode (their keyframe "
        "lost); keyframe requests it sent; recovery: from the end of each outage to the first keypoint packet "
        "decoded of a frame captured after it ended (median / max over the outages; the issue's bound is 1 s); "
        "received kb/s on the wire with IPv4+UDP headers.",
        "",
        "| keep | loss | frames | repeated | SSIM | latency median ms | p95 ms | max ms | datagrams dropped | "
        "packets lost | undecodable | requests | recovery ms | wire kb/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *table,
        "",
    ]
    write_results(a.out, lines, command, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
