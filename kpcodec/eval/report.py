"""Rendering a :class:`kpcodec.eval.compare.CompareResult`: table, headline, CSV, plot, side-by-side.

Everything that writes a file writes it atomically (a hidden temp file next to the target,
then ``os.replace``) and refuses to overwrite an existing file unless ``force``.
The rate-quality functions take rows (:class:`kpcodec.eval.compare.Row` or anything with its
attributes), so the benchmark can render curves averaged over many clips the same way.
"""
from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kpcodec.api import check_output
from kpcodec.errors import KpcodecError, UsageError

CODEC_LABELS = {"kpcodec": "kpcodec", "kpcodec-hybrid": "kpcodec hybrid (base layer)", "x264": "H.264 (x264)",
                "x265": "H.265 (x265)", "av1": "AV1 (SVT-AV1)", "av1-low": "AV1 low-res, upscaled",
                "x264-low": "H.264 low-res, upscaled"}
CSV_FIELDS = ("codec", "setting", "param", "frames", "duration_s", "bytes", "first_bytes", "steady_bytes",
              "kbps", "steady_kbps", "psnr", "ssim", "ms_ssim", "landmark_px", "face_found", "lip_corr",
              "encode_fps", "decode_fps")
PLOT_MISSING = "--plot needs matplotlib: pip install 'kpcodec[plot]'"


# --------------------------------------------------------------------------- files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[str], None], force: bool = False) -> None:
    """Call ``write(tmp_path)`` then move the temp file onto `path`; nothing is left on failure."""
    path = os.fspath(path)
    check_output(path, force)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = Path(path).suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=f".tmp{suffix}", dir=directory)
        os.close(fd)
    except OSError as e:
        raise KpcodecError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output file gets the usual mode
        os.replace(tmp, path)
    except OSError as e:
        raise KpcodecError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


# --------------------------------------------------------------------------- table and headline


def rows_table(rows: Sequence, title: str | None = None):
    """A rich Table of rows: rates, scores and speeds."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in [("codec", "left"), ("setting", "left"), ("kb/s", "right"), ("steady kb/s", "right"),
                          ("PSNR", "right"), ("SSIM", "right"), ("MS-SSIM", "right"), ("lmk px", "right"),
                          ("face %", "right"), ("lip r", "right"), ("enc fps", "right"), ("dec fps", "right")]:
        table.add_column(name, justify=justify, no_wrap=True)
    for r in rows:
        face = r.face_found * 100 if r.face_found is not None else None
        table.add_row(r.codec, r.setting, _fmt(r.kbps, ".2f"), _fmt(r.steady_kbps, ".2f"), _fmt(r.psnr, ".2f"),
                      _fmt(r.ssim, ".4f"), _fmt(r.ms_ssim, ".4f"), _fmt(r.landmark_px, ".2f"), _fmt(face, ".0f"),
                      _fmt(r.lip_corr, ".2f"), _fmt(r.encode_fps, ".0f"), _fmt(r.decode_fps, ".0f"))
    return table


def headline_lines(items: Sequence, rate: str = "total") -> list[str]:
    """Headline items grouped by metric and keep-every, one line per classic codec."""
    from kpcodec.eval.compare import format_value, format_kb, metric_name

    lines = []
    last = None
    for h in items:
        if h.rate != rate:
            continue
        if h.verdict == "no-face":
            lines.append(h.text)
            last = None
            continue
        key = (h.metric, h.kp_setting or h.keep_every)
        if key != last:
            steady = " steady-state" if rate == "steady" else ""
            lines.append(f"{metric_name(h.metric)}, kpcodec {h.kp_setting or f'k={h.keep_every}'} "
                         f"({format_value(h.metric, h.kp_value)} at {format_kb(h.kp_kbps)}{steady} kb/s):")
            last = key
        lines.append(f"  {h.detail}")
    return lines


def bd_rate_lines(items: Sequence[dict]) -> list[str]:
    """One line per kpcodec curve and reference: BD-rate on SSIM and on landmark error."""
    from kpcodec.eval.compare import metric_name

    lines = []
    for item in items:
        name = f"{CODEC_LABELS.get(item['codec'], item['codec'])} vs {CODEC_LABELS.get(item['reference'], item['reference'])}"
        if item["bd_rate_pct"] is None:
            lines.append(f"  {name}, {metric_name(item['metric'])}: curves do not overlap")
        else:
            lo, hi = item["quality_range"]
            lines.append(f"  {name}, {metric_name(item['metric'])}: {item['bd_rate_pct']:+.1f}% "
                         f"(over {lo:.3g}..{hi:.3g})")
    return lines


def write_csv(rows: Sequence, path, force: bool = False) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_FIELDS)
            for r in rows:
                d = r.to_dict(per_frame=False)
                w.writerow(["" if d.get(k) is None else d[k] for k in CSV_FIELDS])

    atomic_write(path, write, force)


# --------------------------------------------------------------------------- plot


def check_plot_available(path=None) -> None:
    """UsageError (exit 2, with the pip line) without matplotlib, or for a `path` whose suffix
    names an image format it cannot write."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(PLOT_MISSING) from None
    if path is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        fmt = Path(os.fspath(path)).suffix.lstrip(".").lower() or "png"
        if fmt not in formats:
            raise UsageError(f"cannot write plot {path}: no image format {fmt} (writes {', '.join(sorted(formats))})")


def _rate_tick(x, _pos=None) -> str:
    return f"{x:g}"


def _minor_rate_tick(x, _pos=None) -> str:
    # Label 2, 3 and 5 of each decade: enough to read rates off a log axis, not crowded.
    mantissa = x / 10 ** math.floor(math.log10(x) + 1e-9)
    return f"{x:g}" if round(mantissa) in (2, 3, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def plot_rd(rows: Sequence, path, title: str = "", force: bool = False) -> None:
    """Rate-quality PNG: SSIM vs kb/s and landmark error vs kb/s, log x, one curve per codec."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    codecs = list(dict.fromkeys(r.codec for r in rows))
    has_marks = any(r.landmark_px is not None for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    hollow = False
    styles = {"kpcodec": ("tab:red", "o"), "kpcodec-hybrid": ("darkred", "*"), "x264": ("tab:blue", "s"),
              "x265": ("tab:green", "^"), "av1": ("tab:purple", "D"), "av1-low": ("tab:pink", "d"),
              "x264-low": ("tab:cyan", "v")}
    for ax, metric, ylabel in [(axes[0], "ssim", "SSIM (higher is better)"),
                               (axes[1], "landmark_px", "landmark error, px at 256 (lower is better)")]:
        for codec in codecs:
            pts = sorted(((r.kbps, getattr(r, metric), r) for r in rows
                          if r.codec == codec and getattr(r, metric) is not None and r.kbps > 0),
                         key=lambda p: (p[0], p[1]))
            if not pts:
                continue
            color, marker = styles.get(codec, ("black", "x"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                    label=CODEC_LABELS.get(codec, codec), linewidth=1.5, markersize=5)
            if metric == "landmark_px":
                # A landmark error measured on few frames (the face mostly lost) is shown hollow.
                weak = [(x, y) for x, y, r in pts if r.face_found is not None and r.face_found < 0.5]
                if weak:
                    ax.plot([w[0] for w in weak], [w[1] for w in weak], linestyle="none", marker=marker,
                            markersize=7, markerfacecolor="white", markeredgecolor=color)
                    hollow = True
            for i, (x, y, r) in enumerate(pts):
                if codec == "kpcodec":
                    # Staggered: the keep-every points can sit almost on top of each other.
                    ax.annotate(f"k={r.param}", (x, y), textcoords="offset points",
                                xytext=(8, 12 * (i - (len(pts) - 1) / 2) - 3), fontsize=9, color=color)
                elif r.variant:
                    ax.annotate(r.variant if codec == "kpcodec-hybrid" else f"{r.variant} {r.param}", (x, y),
                                textcoords="offset points", xytext=(3, -10), fontsize=6, color=color, alpha=0.8)
                else:
                    ax.annotate(str(r.param), (x, y), textcoords="offset points", xytext=(3, -10),
                                fontsize=6, color=color, alpha=0.7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_rate_tick))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_minor_rate_tick))
        if metric == "landmark_px" and has_marks:
            ax.set_yscale("log")  # errors run from ~1 px to tens of px when the face is nearly lost
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(_rate_tick))
            ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_rate_tick))
        ax.set_xlabel("kb/s (whole stream, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if metric == "landmark_px" and not has_marks:
            ax.text(0.5, 0.5, "no landmarks (mediapipe missing or no face found)", ha="center",
                    va="center", transform=ax.transAxes)
        elif ax.lines:
            ax.legend(fontsize=8)
    axes[0].set_title("SSIM vs rate (numbers: CRF)")
    if hollow:
        axes[1].set_title("face landmark error vs rate (hollow: face found in < 50% of frames)", fontsize=10)
    else:
        axes[1].set_title("face landmark error vs rate")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fmt = Path(os.fspath(path)).suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110), force)
    except ValueError as e:  # unknown image format
        raise UsageError(f"cannot write plot {path}: {e}") from e
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- side by side


def _nearest_rate(rows: Sequence, kbps: float):
    return min(rows, key=lambda r: abs(math.log(max(r.kbps, 1e-9)) - math.log(max(kbps, 1e-9))))


def side_by_side_rows(result, keep_every: int = 2):
    """(kpcodec row, classic row) for the side-by-side video.

    kpcodec at `keep_every` (or the nearest keep-every that was run); H.264 at the CRF whose
    rate is nearest (in log rate) kpcodec's, else H.265, else AV1.
    """
    kp = result.rows_for("kpcodec")
    if not kp:
        raise UsageError("--side-by-side needs kpcodec among --codecs")
    kp_row = min(kp, key=lambda r: (abs(r.param - keep_every), r.param))
    for codec in ("x264", "x265", "av1"):
        rows = result.rows_for(codec)
        if rows:
            return kp_row, _nearest_rate(rows, kp_row.kbps)
    return kp_row, None


def _label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable default font
    except TypeError:
        return ImageFont.load_default()


def _panel(frame: np.ndarray, side: int, label: str, font, bar: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    if img.size != (side, side):
        # Whole-number upscales keep the pixels visible as pixels: nothing is smoothed away.
        whole = side % img.size[0] == 0
        img = img.resize((side, side), Image.Resampling.NEAREST if whole else Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side + bar), (0, 0, 0))
    canvas.paste(img, (0, bar))
    ImageDraw.Draw(canvas).text((4, 2), label, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def side_by_side(result, path, keep_every: int = 2, force: bool = False) -> tuple:
    """MP4: original | kpcodec | H.264 at kpcodec's rate, each panel labelled; returns the rows used."""
    from kpcodec.media import video
    from kpcodec.eval.compare import decoded_frames

    check_output(path, force)
    kp_row, classic_row = side_by_side_rows(result, keep_every)
    side = max(result.size, 256)
    bar = 20
    font = _label_font(13)
    panels = [(f"original {result.size}x{result.size}", result.originals),
              (f"kpcodec k={kp_row.param}  {kp_row.kbps:.2f} kb/s", decoded_frames(result, kp_row))]
    if classic_row is not None:
        name = CODEC_LABELS[classic_row.codec].split(" ")[0]
        panels.append((f"{name} {classic_row.setting}  {classic_row.kbps:.2f} kb/s",
                       decoded_frames(result, classic_row)))
    n = min(len(frames) for _, frames in panels)
    # VideoWriter writes to a temp file and moves it into place only when complete.
    with video.VideoWriter(path, result.fps, (side * len(panels), side + bar), crf=18) as writer:
        for i in range(n):
            writer.write(np.concatenate([_panel(frames[i], side, label, font, bar) for label, frames in panels],
                                        axis=1))
    return kp_row, classic_row
