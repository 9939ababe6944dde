"""The `kpcodec` command: parses arguments, calls kpcodec.api, prints. Nothing else.

stdout carries results (tables, --json); progress bars, logs and errors go to stderr.
Errors are one line and an exit code: 1 for bad data, 2 for usage, 130/143 on SIGINT/SIGTERM.
"""
from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import KpcodecError, UsageError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kpcodec: a keypoint video codec for talking-head and motion video.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line


class Interrupted(Exception):
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


@contextmanager
def _progress(label: str, quiet: bool):
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, disable=quiet, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _parse_crop(text: Optional[str]):
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--crop takes x,y,w,h in pixels (got {text!r})") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise UsageError(f"--crop needs x,y >= 0 and w,h > 0 (got {text!r})")
    return x, y, w, h


def _version_callback(value: bool):
    if value:
        from .bitstream import FORMAT_VERSION
        from .models.registry import DEFAULT_MODEL

        out.print(f"kpcodec {__version__} (.kpc format {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}, "
                  f"default model {DEFAULT_MODEL})")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                               help="Print versions and exit.")] = False):
    """kpcodec: a keypoint video codec for talking-head and motion video."""


Force = Annotated[bool, typer.Option("-f", "--force", help="Overwrite an existing output.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or summary line.")]


@app.command()
def encode(
    input: Annotated[str, typer.Argument(help="Input video (mp4, mov, mkv, webm, ...).")],
    output: Annotated[str, typer.Option("-o", "--output", help="Output .kpc file ('-' for stdout).")],
    keep_every: Annotated[int, typer.Option("--keep-every", "-k", help="Send the keypoints of one frame in N.")] = 2,
    source_quality: Annotated[Optional[int], typer.Option("--source-quality", help="Source image quality 0-100.")] = None,
    source_codec: Annotated[Optional[str], typer.Option("--source-codec", help="Source image codec: webp, avif, png, jpeg.")] = None,
    crop: Annotated[Optional[str], typer.Option("--crop", help="Crop x,y,w,h before scaling (default: centre square).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model name from the registry.")] = None,
    force: Force = False,
    quiet: Quiet = False,
):
    """Encode a video into a .kpc keypoint stream."""
    from . import api, source_image

    with _errors_to_exit(), _progress("encoding", quiet) as progress:
        s = api.encode(input, output, keep_every=keep_every, model=model, crop=_parse_crop(crop),
                       source_codec=source_codec or source_image.DEFAULT_CODEC,
                       source_quality=source_image.DEFAULT_QUALITY if source_quality is None else source_quality,
                       force=force, progress=progress)
    if not quiet:
        err.print(f"encoded {s.frames} frames in {s.seconds:.1f} s ({s.fps:.0f} fps): {s.kbps:.2f} kb/s, "
                  f"{_kib(s.bytes)} -> {s.output}", markup=False)


@app.command()
def decode(
    input: Annotated[str, typer.Argument(help="Input .kpc file ('-' for stdin).")],
    output: Annotated[str, typer.Option("-o", "--output", help="Output MP4 ('-' for stdout).")],
    predictor: Annotated[Optional[str], typer.Option("--predictor", help="Predictor for unsent frames (default: the file's).")] = None,
    force: Force = False,
    quiet: Quiet = False,
):
    """Decode a .kpc file into an H.264 MP4."""
    from . import api

    with _errors_to_exit(), _progress("decoding", quiet) as progress:
        s = api.decode(input, output, predictor=predictor, force=force, progress=progress)
    if not quiet:
        size = f"{_kib(s.bytes)} " if s.bytes else ""
        err.print(f"decoded {s.frames} frames in {s.seconds:.1f} s ({s.fps:.1f} fps): {size}-> {s.output}", markup=False)


@app.command()
def info(
    input: Annotated[str, typer.Argument(help="A .kpc file ('-' for stdin).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Show a .kpc file's header and where its bytes go."""
    from . import api

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
    table.add_row("sent frames", f"{d['sent_frames']} of {h['frame_count']}")
    table.add_row("source codec", d["source_codec"])
    out.print(table)
    parts = Table(title="bit budget", title_justify="left")
    parts.add_column("part")
    parts.add_column("bytes", justify="right")
    parts.add_column("kb/s", justify="right")
    for p in d["chunks"]:
        parts.add_row(p["chunk"], str(p["bytes"]), f"{p['kbps']:.3f}")
    parts.add_row("total", str(d["bytes"]), f"{d['kbps']:.3f}")
    out.print(parts)
    err.print(f"{d['file']}: {h['frame_count']} frames, {h['fps']} fps, {d['kbps']:.2f} kb/s, {_kib(d['bytes'])}",
              markup=False)


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
    quiet: Quiet = False,
):
    """Train (or resume training) the motion model on talking-head clips."""
    from .train.run import run_training

    with _errors_to_exit():
        run_training(config, data, out_dir or Path("runs") / config, steps, resume=resume, recipe=recipe,
                     threads=threads, landmarks=landmarks, val_every=val_every,
                     checkpoint_minutes=checkpoint_minutes, seed=seed, quiet=quiet)
