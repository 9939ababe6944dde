"""Cache mediapipe face landmarks for every talking-head clip in the data set.

    python -m kpcodec.train.landmark_cache --data /work/shared/data --out runs/cache/landmarks

Reads ``<data>/manifest.csv``, takes the talking-head clips of the train and val splits
(``motion/`` clips have no faces to speak of and are skipped), decodes every frame with
PyAV as rgb24 and runs the face mesh (``kpcodec.eval.landmarks.FaceLandmarker``, a new one
per clip so tracking never carries over between clips). For each clip it writes
``<out>/<clip file stem>.npz`` with:

* ``landmarks``: float16 ``(T, 478, 2)`` pixel coordinates ``(x, y)``, NaN where no face
  was found (float16 keeps the cache small; its step is 0.125 px at 256, well below the
  face mesh's own jitter);
* ``found``: bool ``(T,)``;
* ``clip``: the clip's ``file`` entry from the manifest;
* ``size``: int ``(2,)``, the frame height and width the coordinates refer to.

Clips whose npz already exists are skipped, so an interrupted run can be restarted.
Files are written under a temporary name and renamed, so a killed run never leaves a
truncated npz behind that a restart would take as done.

Progress goes to stderr (a rich progress bar on a terminal, one line per clip when
redirected to a log), then a summary per split: clips, frames, share found, seconds.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")
CLIP_PREFIX = "talking-heads/"


@dataclass
class SplitStats:
    clips: int = 0
    cached: int = 0  # skipped because the npz already existed
    failed: int = 0
    frames: int = 0
    found: int = 0
    new_frames: int = 0  # frames decoded and detected in this run
    seconds: float = 0.0  # time spent on those frames
    failures: list[str] = field(default_factory=list)


def read_clips(data: Path) -> list[dict[str, str]]:
    """Manifest rows of the talking-head clips in the train and val splits."""
    manifest = data / "manifest.csv"
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if r["file"].startswith(CLIP_PREFIX) and r["split"] in SPLITS]


def detect_clip(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Decode a clip and return (landmarks float16 (T,478,2), found bool (T,), (H, W))."""
    import av

    from kpcodec.eval.landmarks import N_LANDMARKS, FaceLandmarker

    landmarks: list[np.ndarray] = []
    found: list[bool] = []
    size = (0, 0)
    missing = np.full((N_LANDMARKS, 2), np.nan, dtype=np.float32)
    with av.open(str(path)) as container, FaceLandmarker() as marker:
        stream = container.streams.video[0]
        # The machine is shared with training: one decode thread is plenty at 256x256.
        stream.thread_count = 1
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            size = (rgb.shape[0], rgb.shape[1])
            lm = marker.detect(rgb)
            found.append(lm is not None)
            landmarks.append(missing if lm is None else lm)
    if not landmarks:
        raise ValueError("no frames decoded")
    return (
        np.stack(landmarks).astype(np.float16),
        np.array(found, dtype=bool),
        size,
    )


def save_npz(out_path: Path, **arrays: np.ndarray) -> None:
    """Write an npz atomically: a temporary file first, then a rename."""
    tmp = out_path.with_name(out_path.name + ".part")
    with tmp.open("wb") as fh:  # a file object, so numpy does not append ".npz"
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, out_path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kpcodec.train.landmark_cache",
        description="Cache face-mesh landmarks for every talking-head clip.",
    )
    parser.add_argument("--data", type=Path, required=True, help="folder with manifest.csv")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/cache/landmarks"), help="folder for the npz files"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Keep helper libraries to one thread: the machine is shared with a training run.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from kpcodec.errors import KpcodecError

    # soft_wrap: rich would otherwise wrap log-file lines at 80 columns.
    console = Console(stderr=True, soft_wrap=True)
    try:
        clips = read_clips(args.data)
    except (OSError, KeyError) as exc:
        console.print(f"error: cannot read {args.data / 'manifest.csv'}: {exc}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    stats = {split: SplitStats() for split in SPLITS}
    # On a terminal the bar shows progress; in a log file rich only prints the bar at the
    # end, so print one line per clip there instead.
    per_clip_lines = not console.is_terminal
    start = time.monotonic()
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("landmarks", total=len(clips))
        for index, row in enumerate(clips, 1):
            split_stats = stats[row["split"]]
            split_stats.clips += 1
            path = args.data / row["file"]
            out_path = args.out / f"{Path(row['file']).stem}.npz"
            progress.update(task, description=Path(row["file"]).stem)
            if out_path.exists():
                with np.load(out_path) as cached:
                    found = cached["found"]
                split_stats.cached += 1
                split_stats.frames += int(found.size)
                split_stats.found += int(found.sum())
                progress.advance(task)
                continue
            t0 = time.monotonic()
            try:
                landmarks, found, size = detect_clip(path)
            except KpcodecError:
                raise  # mediapipe missing or wrong: no point going on clip by clip
            except Exception as exc:  # a broken clip should not stop the other 200
                split_stats.failed += 1
                split_stats.failures.append(f"{row['file']}: {exc}")
                progress.console.print(f"[{index}/{len(clips)}] {row['file']}: FAILED {exc}")
                progress.advance(task)
                continue
            seconds = time.monotonic() - t0
            save_npz(
                out_path,
                landmarks=landmarks,
                found=found,
                clip=np.array(row["file"]),
                size=np.array(size, dtype=np.int32),
            )
            split_stats.frames += int(found.size)
            split_stats.found += int(found.sum())
            split_stats.new_frames += int(found.size)
            split_stats.seconds += seconds
            expected = row.get("frames", "")
            if expected.isdigit() and int(expected) != found.size:
                progress.console.print(
                    f"warning: {row['file']}: decoded {found.size} frames, manifest says {expected}"
                )
            if per_clip_lines:
                progress.console.print(
                    f"[{index}/{len(clips)}] {row['file']}: {found.size} frames, "
                    f"face in {found.mean():.1%}, {found.size / seconds:.1f} frames/s"
                )
            progress.advance(task)

    total_seconds = time.monotonic() - start
    console.print("landmark cache summary:")
    for split in SPLITS:
        s = stats[split]
        share = f"{s.found / s.frames:.2%}" if s.frames else "n/a"
        rate = f"{s.new_frames / s.seconds:.1f} frames/s" if s.seconds else "n/a"
        console.print(
            f"  {split}: {s.clips} clips ({s.cached} already cached, {s.failed} failed), "
            f"{s.frames} frames, face found in {share} ({s.found}/{s.frames}); "
            f"{s.new_frames} frames detected in {s.seconds:.1f} s ({rate})"
        )
    all_frames = sum(s.frames for s in stats.values())
    all_found = sum(s.found for s in stats.values())
    all_new = sum(s.new_frames for s in stats.values())
    share = f"{all_found / all_frames:.2%}" if all_frames else "n/a"
    console.print(
        f"  total: {len(clips)} clips, {all_frames} frames, face found in {share} "
        f"({all_found}/{all_frames}), "
        f"{total_seconds:.1f} s ({all_new / total_seconds:.1f} new frames/s overall)"
    )
    failures = [f for s in stats.values() for f in s.failures]
    for failure in failures:
        console.print(f"  failed: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
