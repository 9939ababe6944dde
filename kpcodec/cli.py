"""The `kpcodec` command: parses arguments, calls kpcodec.api, prints. Nothing else.

stdout carries results (tables, --json); progress bars, logs and errors go to stderr.
Errors are one line and an exit code: 1 for bad data, 2 for usage, 130/143 on SIGINT/SIGTERM.
Warnings are one line too ("kpcodec: warning: ..."), shown even with --quiet.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kpcodec import __version__
from kpcodec.errors import KpcodecError, UsageError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kpcodec: a keypoint video codec for talking-head and motion video.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line


class Interrupted(BaseException):
    """SIGTERM, raised like KeyboardInterrupt: a BaseException, so that no `except Exception`
    (in kpcodec or in the libraries it calls, e.g. during an import) can swallow it."""

    def __init__(self, code: int):
        self.code = code


def _on_signal(signum, frame):
    raise Interrupted(128 + signum)


@contextmanager
def _errors_to_exit():
    """Turn kpcodec errors and interruptions into one line on stderr and an exit code."""
    old = signal.signal(signal.SIGTERM, _on_signal)
    try:
        yield
    except KpcodecError as e:
        err.print(f"kpcodec: error: {e}", markup=False)
        raise typer.Exit(e.exit_code)
    except (KeyboardInterrupt, Interrupted) as e:
        err.print("kpcodec: interrupted", markup=False)
        raise typer.Exit(e.code if isinstance(e, Interrupted) else 130)
    finally:
        signal.signal(signal.SIGTERM, old)


def _warn(message: str) -> None:
    """A warning: one line on stderr, shown even with --quiet."""
    err.print(f"kpcodec: warning: {message}", markup=False)


PLAIN_PROGRESS_S = 5.0  # seconds between progress lines when stderr is not a terminal


@contextmanager
def _progress(label: str, quiet: bool):
    """An update(done, total) for the command `label`: a live bar on a terminal; elsewhere (a log
    file, a pipe) a plain line every PLAIN_PROGRESS_S seconds; nothing with --quiet."""
    if quiet or err.is_terminal:
        columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=err, disable=quiet, transient=True) as bar:
            task = bar.add_task(label, total=None)

            def update(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            yield update
        return
    first = last = None  # (time, done) of the first update (the rate leaves the setting up out), of the last line

    def plain(done: int, total: int | None) -> None:
        nonlocal first, last
        now = time.monotonic()
        if first is None:
            first = last = (now, done)
            return
        if now - last[0] < PLAIN_PROGRESS_S:
            return
        last = (now, done)
        fps = (done - first[1]) / (now - first[0]) if now > first[0] else 0.0
        line = f"{label}: {done}/{total} frames" if total else f"{label}: {done} frames"
        line += f", {fps:.1f} fps"
        if total and fps > 0 and done < total:
            line += f", ETA {(total - done) / fps:.0f} s"
        err.print(line, markup=False)

    yield plain


def _check_stdout(output: str) -> None:
    """`-o -` writes binary to stdout: not into a terminal."""
    if output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write binary to a terminal (redirect stdout or pipe it)")


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _version_callback(value: bool):
    if value:
        from kpcodec.bitstream.container import FORMAT_VERSION
        from kpcodec.models.registry import DEFAULT_MODEL

        out.print(f"kpcodec {__version__} (.kpc format {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}, "
                  f"default model {DEFAULT_MODEL})")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                               help="Print versions and exit.")] = False):
    """kpcodec: a keypoint video codec for talking-head and motion video."""


Force = Annotated[bool, typer.Option("-f", "--force", help="Overwrite an existing output.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or summary line.")]


Workers = Annotated[Optional[int], typer.Option(
    "--threads", help="1: the model on one torch thread; N >= 2: N workers of one torch thread each. Steadier on a busy machine (default: torch's own threads, fastest when idle).")]
DecodeWorkers = Annotated[Optional[int], typer.Option(
    "--threads", help="1: the model on one torch thread; N >= 2: N workers of one torch thread each (default: a worker per idle core, at most 4).")]


KeyframeInterval = Annotated[Optional[float], typer.Option(
    "--keyframe-interval", help="Seconds between keypoint keyframes (the keypoints restart: decodable from there; ~+3% bits at 10 s). Default: only at source images.")]


@app.command()
def encode(
    input: Annotated[str, typer.Argument(help="Input video (mp4, mov, mkv, webm, ...).")],
    output: Annotated[str, typer.Option("-o", "--output", help="Output .kpc file ('-' for stdout).")],
    keep_every: Annotated[str, typer.Option("--keep-every", "-k", help="Send the keypoints of one frame in N, or 'auto': only frames the decoder would predict worse than --max-error.")] = "2",
    max_error: Annotated[Optional[float], typer.Option("--max-error", help="With --keep-every auto: send a frame when the decoder's prediction of its keypoints is more than E px off (at 256x256; default 2).")] = None,
    keep_pattern: Annotated[Optional[str], typer.Option("--keep-pattern", help="Send S frames, skip K, repeat: S:K (e.g. 12:12); replaces --keep-every.")] = None,
    predictor: Annotated[Optional[str], typer.Option("--predictor", help="Predictor the file asks the decoder to use (default: the best measured).")] = None,
    refresh: Annotated[Optional[str], typer.Option("--refresh", help="'auto': send a new source image where the decoder's rendering drifts (checked once a second and at scene cuts); 'off' (default).")] = None,
    refresh_threshold: Annotated[Optional[float], typer.Option("--refresh-threshold", help="With --refresh auto: refresh when a checked frame's rendering has SSIM below X (default 0.5).")] = None,
    source_quality: Annotated[Optional[int], typer.Option("--source-quality", help="Source image quality 0-100.")] = None,
    source_codec: Annotated[Optional[str], typer.Option("--source-codec", help="Source image codec: webp, avif, png, jpeg.")] = None,
    crop: Annotated[Optional[str], typer.Option("--crop", help="Crop x,y,w,h before scaling (default: centre square).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model name from the registry.")] = None,
    audio_bitrate: Annotated[float, typer.Option("--audio-bitrate", help="Opus audio bit rate in kb/s (6-64).")] = 12.0,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Leave the input's audio out.")] = False,
    ignore_errors: Annotated[bool, typer.Option("--ignore-errors", help="Repeat the previous frame for frames that do not decode.")] = False,
    base_layer: Annotated[Optional[str], typer.Option("--base-layer", help="Hybrid mode: a tiny AV1 stream the generator fuses. 'off', 'auto' (picked by --bitrate) or SIZE[@DIV][:CRF][,alone[,placed]], e.g. 96@3:63 or 256@4:52,alone,placed (default: off, auto with --bitrate).")] = None,
    bitrate: Annotated[Optional[str], typer.Option("--bitrate", "-b", help="Target total rate of source image + keypoints + base layer (audio apart), e.g. 6k; picks keep-every, base layer and source quality.")] = None,
    base_frames: Annotated[str, typer.Option("--base-frames", help="With --bitrate, a file of the base layer alone: 'placed' (default: the base frames go where the picture changes most, format 2.5) or 'uniform' (every divisor-th frame). A fixed --base-layer says it itself: SIZE@DIV:CRF,alone,placed.")] = "placed",
    motion: Annotated[bool, typer.Option("--motion/--no-motion", help="A file of the base layer alone: send how the keypoints of the frames between base frames leave their path (format 2.6, ~0.3-0.6 kb/s; default on).")] = True,
    base_mix: Annotated[str, typer.Option("--base-mix", help="With a base layer: how far the decoder trusts the rendering against the moved base frame, 0-1, or 'auto' (the encoder fits it on a sample of the frames).")] = "auto",
    packet_frames: Annotated[int, typer.Option("--packet-frames", help="Sent frames per keypoint packet (and base-layer frames per BASE packet): fewer cost more bits (framing) but come out sooner and lose less when a file is cut (default 128).")] = 128,
    keyframe_interval: KeyframeInterval = None,
    threads: Workers = None,
    force: Force = False,
    quiet: Quiet = False,
):
    """Encode a video ('-' for stdin) into a .kpc keypoint stream."""
    from kpcodec import api
    from kpcodec.options import EncodeOptions

    with _errors_to_exit():
        _check_stdout(output)
        options = EncodeOptions(
            keep_every=keep_every, keep_pattern=keep_pattern, max_error=max_error, predictor=predictor,
            refresh=refresh, refresh_threshold=refresh_threshold, source_codec=source_codec,
            source_quality=source_quality, crop=crop, model=model, audio=not no_audio,
            audio_bitrate=audio_bitrate, ignore_errors=ignore_errors, base_layer=base_layer,
            bitrate=bitrate, base_mix=base_mix, base_frames=base_frames, motion=motion, threads=threads,
            packet_frames=packet_frames,
            keyframe_interval=keyframe_interval)
        with _progress("encode", quiet) as progress:
            s = api.encode(input, output, options, force=force, progress=progress, warn=_warn)
    if s.skipped:  # a warning, so even --quiet says it
        _warn(f"{s.skipped} input frame(s) did not decode; the previous frame was repeated in their place")
    if not quiet:
        sound = f" (audio {s.audio_bytes * 8 / s.duration_s / 1000:.2f})" if s.audio_bytes and s.duration_s else ""
        fresh = f", {s.refreshes} source refresh(es)" if s.refreshes else ""
        if s.base_layer:
            fresh += f", base layer {s.base_layer} {s.base_bytes * 8 / s.duration_s / 1000:.2f} kb/s"
        if bitrate is not None:  # what the rate control picked besides
            fresh += f", source image q{s.source_quality}" if s.source_quality is not None else \
                ", no source image or keypoints"
            if s.judged > 1:
                fresh += f" (the best of {s.judged} choices by their decoded pictures)"
        err.print(f"encoded {s.frames} frames in {s.seconds:.1f} s ({s.fps:.0f} fps): {s.kbps:.2f} kb/s{sound}{fresh}, "
                  f"{_kib(s.bytes)} -> {s.output}", markup=False)


@app.command()
def decode(
    input: Annotated[str, typer.Argument(help="Input .kpc file ('-' for stdin).")],
    output: Annotated[str, typer.Option("-o", "--output", help="Output video: .mp4, .mov, .mkv (H.264), .webm (VP9), .gif or .y4m ('-': MP4 to stdout).")],
    predictor: Annotated[Optional[str], typer.Option("--predictor", help="Predictor for unsent frames: hold, linear, interp, rnn, vae, vrnn, ... (default: the file's).")] = None,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Leave the file's audio out of the video.")] = False,
    model: Annotated[Optional[str], typer.Option("--model", help="Render with this shipped model instead of the file's, if it has the same keypoint detector (e.g. fomm-256-fast: faster; fomm-256-quarter: sharper).")] = None,
    ignore_errors: Annotated[bool, typer.Option("--ignore-errors", help="A cut or damaged file decodes up to its last whole packet (with a warning), a base-layer frame that does not decode from the keypoints alone, instead of stopping.")] = False,
    start: Annotated[float, typer.Option("--start", help="Seconds: render from the first frame at or after this time (a 2.0 file is entered at its last keyframe before it).")] = 0.0,
    end: Annotated[Optional[float], typer.Option("--end", help="Seconds: stop before the first frame at or after this time.")] = None,
    threads: DecodeWorkers = None,
    force: Force = False,
    quiet: Quiet = False,
):
    """Decode a .kpc file into a video, by default an H.264 MP4 (with its Opus audio, if any)."""
    from kpcodec import api

    from kpcodec.options import DecodeOptions

    with _errors_to_exit():
        _check_stdout(output)
        options = DecodeOptions(predictor=predictor, model=model, audio=not no_audio, ignore_errors=ignore_errors,
                                threads=threads, start=start, end=end)
        with _progress("decode", quiet) as progress:
            s = api.decode(input, output, options, force=force, progress=progress, warn=_warn)
    if s.base_errors:
        _warn(f"{s.base_errors} base-layer frame(s) did not decode; rendered from the keypoints alone")
    if not quiet:
        size = f"{_kib(s.bytes)} " if s.bytes else ""
        err.print(f"decoded {s.frames} frames in {s.seconds:.1f} s ({s.fps:.1f} fps): {size}-> {s.output}", markup=False)


@app.command()
def send(
    input: Annotated[str, typer.Argument(help="Input video file, played at its own frame rate (with --camera: a capture device).")],
    url: Annotated[str, typer.Argument(help="Where to: udp://HOST:PORT, or webrtc://HOST:PORT (the receiver's signalling endpoint; extra 'live').")],
    keep_every: Annotated[str, typer.Option("--keep-every", "-k", help="Send the keypoints of one frame in N, or 'auto' (a causal predictor decides).")] = "2",
    predictor: Annotated[Optional[str], typer.Option("--predictor", help="Causal predictor the receiver fills unsent and lost frames with (default: the best measured).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model name from the registry.")] = None,
    source_quality: Annotated[Optional[int], typer.Option("--source-quality", help="Source image quality 0-100.")] = None,
    crop: Annotated[Optional[str], typer.Option("--crop", help="Crop x,y,w,h before scaling (default: centre square).")] = None,
    keyframe_interval: KeyframeInterval = None,
    loop: Annotated[bool, typer.Option("--loop", help="Play the input again and again (a soak run; Ctrl-C stops it).")] = False,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", min=1, help="Stop after this many frames.")] = None,
    no_redundancy: Annotated[bool, typer.Option("--no-redundancy", help="Do not repeat the previous keypoint packet in each datagram.")] = False,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Leave the input's audio out.")] = False,
    audio_bitrate: Annotated[float, typer.Option("--audio-bitrate", help="Opus audio bit rate in kb/s (6-64).")] = 12.0,
    camera: Annotated[bool, typer.Option("--camera", help="INPUT is a capture device: /dev/video0 (v4l2, Linux), 0 (avfoundation, macOS), 'video=NAME' (dshow, Windows).")] = False,
    camera_format: Annotated[Optional[str], typer.Option("--camera-format", help="The device's PyAV format (default: the platform's: v4l2, avfoundation, dshow).")] = None,
    quiet: Quiet = False,
):
    """Send a video live over UDP or WebRTC as .kpc packets (kpcodec receive plays them back)."""
    from kpcodec.live import udp
    from kpcodec.options import EncodeOptions

    with _errors_to_exit():
        options = EncodeOptions(keep_every=keep_every, predictor=predictor, model=model,
                                source_quality=source_quality, crop=crop, keyframe_interval=keyframe_interval,
                                audio=not no_audio, audio_bitrate=audio_bitrate)
        with _progress("send", quiet) as progress:
            s = udp.send(input, url, options, loop=loop, max_frames=max_frames, redundancy=not no_redundancy,
                         camera=(camera_format or "") if camera or camera_format else None,
                         progress=progress, warn=_warn)
    if not quiet:
        err.print(f"sent {s.frames} frames in {s.seconds:.1f} s: {s.datagrams} datagrams, {s.kbps:.2f} kb/s on the "
                  f"wire, {s.restarts} keyframe request(s) answered -> {url}", markup=False)


@app.command()
def receive(
    url: Annotated[str, typer.Argument(help="Where to listen: udp://:PORT (or udp://HOST:PORT), or webrtc://:PORT (an HTTP endpoint for the sender's offer; extra 'live').")],
    output: Annotated[str, typer.Option("-o", "--output", help="Output video (.mp4, .mkv, .webm, .y4m, ...).")],
    idle_timeout: Annotated[float, typer.Option("--idle-timeout", help="Finish after this many seconds without a datagram.")] = 10.0,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Leave the stream's audio out of the video.")] = False,
    max_latency: Annotated[float, typer.Option("--max-latency", help="Milliseconds: a frame that would be out later than this after its capture is not rendered (the last frame again); 0 renders every frame.")] = 120.0,
    threads: Workers = None,
    force: Force = False,
    quiet: Quiet = False,
):
    """Receive a live kpcodec stream over UDP or WebRTC and decode it into a video."""
    from kpcodec.live import udp
    from kpcodec.options import DecodeOptions

    with _errors_to_exit():
        _check_stdout(output)
        with _progress("receive", quiet) as progress:
            s = udp.receive(url, output, DecodeOptions(threads=threads, audio=not no_audio), idle_timeout=idle_timeout,
                            max_late_ms=max_latency,
                            force=force, progress=progress, warn=_warn)
    if s.bad_datagrams:
        _warn(f"{s.bad_datagrams} malformed or foreign datagram(s) dropped")
    if not quiet:
        how = "END received" if s.ended else "idle timeout"
        err.print(f"received {s.frames} frames in {s.seconds:.1f} s ({how}): {s.datagrams} datagrams, "
                  f"{s.lost_packets} packet(s) lost, {s.dropped_packets} undecodable, {s.requests} request(s) "
                  f"-> {s.output}", markup=False)


@app.command()
def batch(
    source: Annotated[str, typer.Argument(help="A folder of videos, or a list file (one path a line).")],
    output: Annotated[str, typer.Option("-o", "--output", help="Folder for the .kpc files (and .mp4 with --decode) and summary.csv/json.")],
    keep_every: Annotated[str, typer.Option("--keep-every", "-k", help="As for encode.")] = "2",
    model: Annotated[Optional[str], typer.Option("--model", help="Model name from the registry.")] = None,
    decode: Annotated[bool, typer.Option("--decode", help="Also decode each .kpc to an .mp4.")] = False,
    score: Annotated[bool, typer.Option("--score", help="Also the mean SSIM of the decoded frames against the input's.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local (worker processes here) or ray (Ray actors; extra 'ray').")] = "local",
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes (default: the idle cores), each with one torch thread.")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="With --engine ray: a cluster, e.g. ray://HEAD:10001 (default: a local Ray started here).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The rows as JSON on stdout.")] = False,
    force: Annotated[bool, typer.Option("-f", "--force", help="Redo files whose outputs exist (default: skip them, so a stopped run resumes).")] = False,
    quiet: Quiet = False,
):
    """Encode (and optionally decode and score) every video of a folder, on workers that load the models once."""
    from dataclasses import asdict

    from kpcodec.options import EncodeOptions
    from kpcodec.scale import batch as b

    start = time.perf_counter()
    with _errors_to_exit():
        options = EncodeOptions(keep_every=keep_every, model=model, audio=True)
        with _progress("batch", quiet) as progress:
            rows = b.batch(source, output, options, engine=engine, workers=workers, address=address,
                           decode=decode, score_=score, force=force, progress=progress)
    if as_json:
        out.print(json.dumps([asdict(r) for r in rows], indent=2), markup=False, soft_wrap=True)
    else:
        table = Table(title=f"{source} -> {output}", title_justify="left")
        for name in ("file", "status", "frames", "kb/s", "SSIM", "s", "error"):
            table.add_column(name)
        for r in rows:
            table.add_row(os.path.basename(r.file), r.status, str(r.frames), f"{r.kbps:.2f}",
                          "" if r.ssim is None else f"{r.ssim:.3f}", f"{r.seconds:.1f}", r.error)
        out.print(table)
    failed = [r for r in rows if r.status == "failed"]
    for r in failed:
        _warn(r.error)
    if not quiet:
        err.print(f"batch: {sum(r.status == 'done' for r in rows)} encoded, {sum(r.status == 'skipped' for r in rows)} "
                  f"skipped, {len(failed)} failed in {time.perf_counter() - start:.1f} s "
                  f"({len(rows) / max(time.perf_counter() - start, 1e-9) * 60:.1f} files/min) -> {output}", markup=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def info(
    input: Annotated[str, typer.Argument(help="A .kpc file ('-' for stdin).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    quiet: Quiet = False,
):
    """Show a .kpc file's header and where its bytes go."""
    from kpcodec import api

    with _errors_to_exit():
        d = api.info(input)
    if as_json:
        out.print(json.dumps(d, indent=2), markup=False, soft_wrap=True)
        return
    h = d["header"]
    table = Table(title=f"{d['file']}: .kpc {d['format_version']}", title_justify="left")
    table.add_column("field")
    table.add_column("value")
    for key, value in h.items():
        table.add_row(key, str(value))
    table.add_row("duration", f"{d['duration_s']:.2f} s")
    table.add_row("sent frames", f"{d['sent_frames']} of {h['frame_count']}"
                  + (" (chosen by the encoder's error test)" if h.get("adaptive") else ""))
    table.add_row("source codec", d["source_codec"])
    if d["refreshes"]:
        table.add_row("source refreshes", ", ".join(f"frame {r['frame']} ({r['codec']}, {r['bytes']} B)"
                                                    for r in d["refreshes"]))
    out.print(table)
    chunks = Table(title="chunks", title_justify="left")
    chunks.add_column("chunk")
    chunks.add_column("bytes", justify="right")
    chunks.add_column("kb/s", justify="right")
    for p in d["chunks"]:
        chunks.add_row(p["chunk"], str(p["bytes"]), f"{p['kbps']:.3f}")
    out.print(chunks)
    b = d["budget"]
    budget = Table(title="bit budget (framing included)", title_justify="left")
    budget.add_column("part")
    budget.add_column("bytes", justify="right")
    budget.add_column("kb/s", justify="right")
    kp_chunk = next((p["chunk"] for p in d["chunks"] if p["chunk"] in ("KPRC", "KPTS")), "")
    rows = [("header (magic, HEAD, KEND)", b["header"]), (f"source image ({d['source_codec']})", b["source"]),
            (f"source refreshes ({len(d['refreshes'])})", b["refresh"]),
            (f"keypoints ({kp_chunk}, {b['keypoints']['bits_per_sent_frame']:.0f} bits per sent frame)",
             b["keypoints"]), (_base_row(d.get("base_layer")), b["base"]), ("audio (opus)", b["audio"]), ("other optional chunks", b["other"]),
            ("total", b["total"]), ("total without the source image", b["without_source"])]
    for label, part in rows:
        if part["bytes"] or label.startswith(("total", "keypoints", "source", "header")):
            budget.add_row(label, str(part["bytes"]), f"{part['kbps']:.3f}")
    out.print(budget)
    if not quiet:
        sound = f" (audio {d['audio']['kbps']:.2f})" if d.get("audio") else ""
        err.print(f"{d['file']}: {h['frame_count']} frames, {h['fps']} fps, {d['kbps']:.2f} kb/s{sound}, "
                  f"{_kib(d['bytes'])}", markup=False)


def _base_row(base: dict | None) -> str:
    if not base:
        return "base layer (none)"
    rate = f"placed, 1/{base['divisor']} frame rate on average" if base.get("placed") else \
        f"1/{base['divisor']} frame rate"
    return (f"base layer ({base['codec'].upper()} {base['size']}x{base['size']}, {rate}, "
            f"CRF {base['crf']}, {base['frames']} frames, " +
            (f"alone{', cubic path' if base.get('cubic') else ''}: no source image" +
             (f", keypoint offsets of {base['motion']['frames']} frames)" if base.get("motion") else ", no keypoints)")
             if base.get("alone")
             else f"mix {base.get('mix', 1.0):.2f})"))


@app.command()
def train(
    config: Annotated[str, typer.Option("--config", help="Model config name from the registry.")] = "fomm-256-quarter",
    data: Annotated[Path, typer.Option("--data", help="Folder with manifest.csv and the clips.")] = Path("../shared/data"),
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/CONFIG).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Train until this step.")] = 100_000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    recipe: Annotated[str, typer.Option("--recipe", help="Loss weights and optimiser recipe.")] = "base",
    threads: Annotated[int, typer.Option("--threads", help="torch threads (1 while you work, 2 when idle).")] = 1,
    landmarks: Annotated[Optional[Path], typer.Option("--landmarks", help="Face-mesh landmark cache folder.")] = None,
    val_every: Annotated[int, typer.Option("--val-every", help="Validate every N steps.")] = 300,
    checkpoint_minutes: Annotated[float, typer.Option("--checkpoint-minutes")] = 5.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this checkpoint when OUT has none (e.g. the committed checkpoints/CONFIG/resume.pt).")] = None,
    compact: Annotated[Optional[Path], typer.Option("--compact", help="Also keep a small resume file (fp16 weights, bf16 Adam) here, to commit.")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Batch size instead of the recipe's (larger on a GPU); under torchrun the global batch, split over the ranks.")] = None,
    accumulate: Annotated[int, typer.Option("--accumulate", min=1, help="Split each rank's share of the batch into N micro-batches (gradients summed): less memory, the same step.")] = 1,
    quiet: Quiet = False,
):
    """Train (or resume training) the motion model on talking-head clips (also under torchrun)."""
    from kpcodec.train.run import run_training

    with _errors_to_exit():
        run_training(config, data, out_dir or Path("runs") / config, steps, resume=resume, recipe=recipe,
                     threads=threads, landmarks=landmarks, val_every=val_every,
                     checkpoint_minutes=checkpoint_minutes, seed=seed, quiet=quiet, init=init, compact=compact,
                     batch=batch, accumulate=accumulate)


@app.command("train-predictor")
def train_predictor(
    kind: Annotated[str, typer.Option("--kind", help="Learned predictor: rnn, vae, vrnn (causal) or rnn-interp (interpolating).")] = "vrnn",
    trajectories: Annotated[Path, typer.Option("--trajectories", help="Folder from python -m kpcodec.train.trajectories.")] = Path("runs/cache/trajectories"),
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/pred-KIND).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Train until this step.")] = 3000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    threads: Annotated[int, typer.Option("--threads", help="torch threads.")] = 1,
    val_every: Annotated[int, typer.Option("--val-every", help="Validate every N steps.")] = 250,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: Quiet = False,
):
    """Train (or resume training) a keypoint predictor on detector trajectories."""
    from kpcodec.train.predictor_training import run_predictor_training

    with _errors_to_exit():
        run_predictor_training(kind, trajectories, out_dir or Path("runs") / f"pred-{kind}", steps, resume=resume,
                               seed=seed, threads=threads, val_every=val_every, quiet=quiet)


def _compare_encodes(names, keep_every, crfs: dict, hybrid_kbps, low_res, low_crfs: dict) -> dict[str, int]:
    """How many encodes `kpcodec compare` runs per codec (a codec this PyAV build lacks: none)."""
    from kpcodec.eval import classic
    from kpcodec.eval.compare import DEFAULT_LOW_CRFS, LOW_RES_CODECS

    counts = {}
    for key in dict.fromkeys(names):
        if key == "kpcodec":
            counts[key] = len(dict.fromkeys(keep_every))
        elif key == "kpcodec-hybrid":
            counts[key] = len(dict.fromkeys(hybrid_kbps))
        elif classic.missing_reason(LOW_RES_CODECS.get(key, key)):
            continue
        elif key in LOW_RES_CODECS:
            counts[key] = len(low_res) * len(low_crfs.get(key, DEFAULT_LOW_CRFS[key]))
        else:
            counts[key] = len(crfs.get(key, classic.CODECS[key].default_crfs))
    return counts


def _unique_outputs(paths) -> None:
    """Two of compare's outputs may not be one file."""
    from kpcodec.api import same_file

    given = [p for p in paths if p is not None]
    for i, a in enumerate(given):
        for b in given[i + 1:]:
            if os.path.abspath(a) == os.path.abspath(b) or same_file(a, b):
                raise UsageError(f"{a} is given for two outputs (choose a file for each)")


def _compare_start(input, model, crop, encodes: dict[str, int], total, landmarks: bool, quiet: bool) -> None:
    """compare's lines up front: its crop warnings and (but with --quiet) how many encodes it runs."""
    from kpcodec.media import video
    from kpcodec.eval.compare import model_size

    for message in video.crop_warnings(video.probe(input), model_size(model)[1], crop):
        _warn(message)
    if quiet:
        return
    n = sum(encodes.values())
    per = n + (1 if landmarks else 0)  # compare's progress counts frames per encode and landmark pass
    frames = f" of {total // per} frames each" if total and per and total % per == 0 else ""
    err.print(f"compare: {n} encode{'' if n == 1 else 's'} ({', '.join(f'{k} {v}' for k, v in encodes.items())})"
              f"{frames}", markup=False)


def _compare_summary(result, written: list[str]) -> str:
    """The one closing line of `kpcodec compare`."""
    from kpcodec.eval.compare import format_kb

    codecs = ",".join(dict.fromkeys(r.codec for r in result.rows))
    line = (f"compared {len(result.rows)} settings ({codecs}) on {result.frames} frames at "
            f"{result.size}x{result.size} in {result.seconds:.0f} s")
    kp = sorted(result.rows_for("kpcodec"), key=lambda r: (abs(r.param - 2), r.param))
    ssim_items = [h for h in result.headline if h.rate == "total" and h.metric == "ssim"
                  and kp and h.keep_every == kp[0].param]
    versus = next((h for h in ssim_items if h.codec == "x264"), ssim_items[0] if ssim_items else None)
    if versus is not None:
        r = kp[0]
        # Only the verdict's own text is formatted (the others' fields may be None).
        verdict = {
            "ratio": lambda: (f"{versus.codec} needs {versus.ratio:.1f}x its rate for that SSIM"
                              if versus.ratio is not None and versus.ratio >= 1
                              else f"{versus.codec} wins ({versus.ratio or 0:.2f}x its rate for that SSIM)"),
            "classic-wins": lambda: f"{versus.codec} wins outright",
            "no-overlap": lambda: (f"no overlap with {versus.codec} (its floor: {format_kb(versus.classic_kbps)} kb/s "
                                   f"at SSIM {versus.classic_value:.3f})"),
            "above-sweep": lambda: f"{versus.codec} needs more than its whole sweep",
        }[versus.verdict]()
        line += f"; kpcodec k={r.param}: {format_kb(r.kbps)} kb/s at SSIM {r.ssim:.3f}, {verdict}"
    if written:
        line += " -> " + ", ".join(written)
    return line


@app.command()
def compare(
    input: Annotated[str, typer.Argument(help="Input video: the clip to compare the codecs on.")],
    codecs: Annotated[str, typer.Option("--codecs", help="Codecs to run, comma-separated.")] = "x264,x265,av1,kpcodec",
    keep_every: Annotated[str, typer.Option("--keep-every", "-k", help="kpcodec keep-every values, comma-separated.")] = "1,2,4",
    crf_x264: Annotated[Optional[str], typer.Option("--crf-x264", help="H.264 CRF sweep (default 27,31,35,39,43,47,51).")] = None,
    crf_x265: Annotated[Optional[str], typer.Option("--crf-x265", help="H.265 CRF sweep (default 27,31,35,39,43,47,51).")] = None,
    crf_av1: Annotated[Optional[str], typer.Option("--crf-av1", help="SVT-AV1 CRF sweep (default 35,41,47,53,58,63).")] = None,
    hybrid_bitrates: Annotated[str, typer.Option("--hybrid-bitrates", help="With kpcodec-hybrid in --codecs: its --bitrate targets in kb/s, comma-separated.")] = "3,4,6,8,12",
    low_res: Annotated[str, typer.Option("--low-res", help="With av1-low / x264-low in --codecs: sizes and frame-rate divisors SIZE[@DIV], comma-separated.")] = "64@3,96@3,128@3",
    crf_av1_low: Annotated[Optional[str], typer.Option("--crf-av1-low", help="av1-low CRFs (default 63,55).")] = None,
    crf_x264_low: Annotated[Optional[str], typer.Option("--crf-x264-low", help="x264-low CRFs (default 51,45).")] = None,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="Use only the first N frames.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="kpcodec model; its resolution is every codec's.")] = None,
    crop: Annotated[Optional[str], typer.Option("--crop", help="Crop x,y,w,h before scaling (default: centre square).")] = None,
    landmarks: Annotated[bool, typer.Option("--landmarks/--no-landmarks", help="Face-landmark metrics (mediapipe).")] = True,
    threads: Annotated[int, typer.Option("--threads", help="Threads for every codec (and torch), so fps compare.")] = 1,
    predictor: Annotated[Optional[str], typer.Option("--predictor", help="kpcodec predictor for unsent frames (default: the decoder's; 'interp' waits for the next sent frame).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (with per-frame scores) on stdout.")] = False,
    csv_path: Annotated[Optional[str], typer.Option("--csv", help="Write the table as CSV to FILE.")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write a rate-quality plot (PNG) to FILE.")] = None,
    side_by_side: Annotated[Optional[str], typer.Option("--side-by-side", help="Write original | kpcodec | H.264 as an MP4 to FILE.")] = None,
    sbs_keep_every: Annotated[int, typer.Option("--sbs-keep-every", help="kpcodec keep-every shown in --side-by-side.")] = 2,
    force: Force = False,
    quiet: Quiet = False,
):
    """Compare kpcodec with H.264, H.265 and AV1 on a clip: rate, quality, speed."""
    from kpcodec import api
    from kpcodec.eval import report
    from kpcodec.media import video
    from kpcodec.eval.compare import compare as run_compare
    from kpcodec.eval.compare import parse_codecs, parse_floats, parse_ints, parse_low_res
    from kpcodec.options import parse_crop

    with _errors_to_exit():
        names = parse_codecs(codecs)
        ks = parse_ints(keep_every, "--keep-every")
        hybrid_kbps = parse_floats(hybrid_bitrates, "--hybrid-bitrates")
        lows = parse_low_res(low_res)
        low_crfs = {key: parse_ints(text, f"--crf-{key}")
                    for key, text in [("av1-low", crf_av1_low), ("x264-low", crf_x264_low)] if text is not None}
        crfs = {key: parse_ints(text, f"--crf-{key}")
                for key, text in [("x264", crf_x264), ("x265", crf_x265), ("av1", crf_av1)] if text is not None}
        # Everything that would fail after minutes of work fails now instead.
        for path in (csv_path, plot, side_by_side):
            if path is not None:
                api.check_output(path, force, (input,))
        _unique_outputs((csv_path, plot, side_by_side))
        if plot is not None:
            report.check_plot_available(plot)
        if side_by_side is not None:
            video.container_for(side_by_side)
            if "kpcodec" not in names:
                raise UsageError("--side-by-side needs kpcodec among --codecs")
        box = parse_crop(crop)
        if landmarks:
            from kpcodec.eval.compare import landmarks_available

            missing = landmarks_available()
            if missing:  # the columns would be empty: say so now, not in a note at the end
                _warn(missing)
                landmarks = False
        encodes = _compare_encodes(names, ks, crfs, hybrid_kbps, lows, low_crfs)
        with _progress("compare", quiet) as progress:
            started = False

            def update(done: int, total: int | None) -> None:
                # compare's first call comes once its arguments are checked and the clip is read.
                nonlocal started
                if not started:
                    started = True
                    _compare_start(input, model, box, encodes, total, landmarks, quiet)
                progress(done, total)

            result = run_compare(input, codecs=names, keep_every=ks, crfs=crfs, model=model,
                                 crop=box, max_frames=max_frames, landmarks=landmarks,
                                 threads=threads, predictor=predictor, progress=update,
                                 hybrid_kbps=hybrid_kbps, low_res=lows, low_crfs=low_crfs)
        written = []
        if csv_path is not None:
            report.write_csv(result.rows, csv_path, force)
            written.append(csv_path)
        if plot is not None:
            title = (f"{Path(input).name}: {result.frames} frames at {result.size}x{result.size}, "
                     f"{result.fps} fps, model {result.model}")
            report.plot_rd(result.rows, plot, title, force)
            written.append(plot)
        if side_by_side is not None:
            report.side_by_side(result, side_by_side, sbs_keep_every, force)
            written.append(side_by_side)
    if as_json:
        out.print(json.dumps(result.to_dict(), indent=1), markup=False, soft_wrap=True)
    else:
        title = (f"{result.input}: {result.frames} frames at {result.size}x{result.size}, {result.fps} fps, "
                 f"{result.duration_s:.2f} s; model {result.model}"
                 + (f", predictor {result.kpcodec['predictor']}" if result.kpcodec.get("predictor") else ""))
        # The table is wider than 80 columns: in a pipe (no terminal width to honour) give it room.
        wide = out if out.is_terminal else Console(highlight=False, width=200, file=sys.stdout)
        wide.print(report.rows_table(result.rows, title))
        lines = report.headline_lines(result.headline, "total")
        if lines:
            out.print("headline: a classic codec's kb/s at kpcodec's quality / kpcodec's kb/s "
                      "(interpolated on its curve, log-rate linear in quality)", markup=False)
            for line in lines:
                out.print(line, markup=False, soft_wrap=True)
        if result.bd_rate:
            out.print("BD-rate (kpcodec's rate change at equal quality; negative: fewer bits):", markup=False)
            for line in report.bd_rate_lines(result.bd_rate):
                out.print(line, markup=False, soft_wrap=True)
    if not quiet:
        for note in result.notes:
            err.print(f"kpcodec: note: {note}", markup=False)
        err.print(_compare_summary(result, written), markup=False)
