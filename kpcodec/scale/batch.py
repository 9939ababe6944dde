"""`kpcodec batch`: encode (and optionally decode and score) every video of a folder or a list, on
workers that each load the models once.

Engines: "local" (this machine: N worker processes, one torch thread each) and "ray" (the optional
extra `ray`: the same work as Ray actors, on a local Ray it starts itself or on a cluster at
`--address`). Each file is one job, `process(job)`: its .kpc (and .mp4) written atomically, so a
run stopped half-way resumes where it was (finished outputs are skipped unless `force`); a file
that fails is a row with its error and the rest go on. The rows go to OUT_DIR/summary.csv and
summary.json.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kpcodec.errors import KpcodecError, UsageError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".y4m")
ENGINES = ("local", "ray")


@dataclass
class Job:
    input: str
    kpc: str
    video: str | None  # the decoded video (--decode), or None
    score: bool
    force: bool


@dataclass
class Row:
    file: str
    status: str  # "done", "skipped" (its outputs were there), "failed"
    frames: int = 0
    kbps: float = 0.0
    ssim: float | None = None
    seconds: float = 0.0
    error: str = ""


def inputs_of(source) -> list[Path]:
    """The videos of a folder (its files with a video suffix, sorted) or of a list file (one path a
    line, relative to the list's folder; blank lines and # comments skipped)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    elif source.is_file():
        try:
            lines = source.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise KpcodecError(f"cannot read the list {source}: {exc}") from None
        files = [(source.parent / ln.strip()) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        raise UsageError(f"{source} is neither a folder nor a list file")
    if not files:
        raise UsageError(f"{source} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    stems = [p.stem for p in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise UsageError(f"two inputs would write the same output: {', '.join(clash[:3])}")
    return files


def jobs_of(files: list[Path], out_dir: Path, decode: bool, score: bool, force: bool) -> list[Job]:
    return [Job(str(f), str(out_dir / f"{f.stem}.kpc"), str(out_dir / f"{f.stem}.mp4") if decode else None,
                score, force) for f in files]


def process(job: Job, options, decode_options=None) -> Row:
    """One file: encode, and decode and score as asked; never raises for the file's own problems."""
    from kpcodec import api

    from kpcodec import bitstream

    start = time.perf_counter()
    outputs = [job.kpc] + ([job.video] if job.video else [])
    try:
        if not job.force and all(os.path.exists(p) for p in outputs):
            h = bitstream.read_file(job.kpc).header  # finished before: its numbers from the file
            row = Row(job.input, "skipped", h.frame_count, os.path.getsize(job.kpc) * 8 / h.duration_s / 1000)
        else:
            s = api.encode(job.input, job.kpc, options, force=True)
            row = Row(job.input, "done", s.frames, s.kbps)
            if job.video:
                api.decode(job.kpc, job.video, decode_options, force=True)
        if job.score:
            row.ssim = score(job.input, job.kpc, decode_options)
    except KpcodecError as exc:
        return Row(job.input, "failed", seconds=time.perf_counter() - start, error=str(exc))
    row.seconds = time.perf_counter() - start
    return row


def score(video, kpc, decode_options=None) -> float:
    """Mean SSIM of the decoded frames against the input's, at the model's size."""
    import numpy as np

    from kpcodec import bitstream
    from kpcodec.codec.decoder import Decoder
    from kpcodec.eval import metrics
    from kpcodec.media.video import read_frames

    dec = Decoder(bitstream.read_file(kpc), decode_options)
    ref = read_frames(video, size=dec.header.width)
    return float(np.mean([metrics.ssim(a, b) for a, b in zip(dec.frames(), ref)]))


# ------------------------------------------------------------------ engines


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: workers, not threads, share the machine


def _local_task(args):
    job, options, decode_options = args
    return process(job, options, decode_options)


def run_local(jobs: list[Job], options, decode_options, workers: int, on_row=None) -> list[Row]:
    """Each job on one of `workers` processes (spawned: each loads the models once, on first use)."""
    rows = []
    if workers <= 1:
        for job in jobs:
            rows.append(process(job, options, decode_options))
            if on_row:
                on_row(rows[-1])
        return rows
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        for row in pool.imap_unordered(_local_task, [(j, options, decode_options) for j in jobs]):
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def run_ray(jobs: list[Job], options, decode_options, workers: int, address: str | None = None,
            on_row=None) -> list[Row]:
    """The same jobs as Ray actors (one per worker, models loaded once each), results as they come."""
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs the optional extra: pip install 'kpcodec[ray]'") from None
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001  (Ray reports a bad address in many ways)
            raise KpcodecError(f"cannot start Ray{f' at {address}' if address else ''}: {exc}") from None
        started = True

    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self):
            _worker_init()

        def run(self, job):
            return process(job, options, decode_options)

    try:
        actors = [Worker.remote() for _ in range(max(1, workers))]
        pending, rows, queue = {}, [], list(jobs)
        for actor in actors:
            if queue:
                pending[actor.run.remote(queue.pop(0))] = actor
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            rows.append(ray.get(done[0]))
            if on_row:
                on_row(rows[-1])
            if queue:
                pending[actor.run.remote(queue.pop(0))] = actor
        return rows
    finally:
        if started:
            ray.shutdown()


def write_summary(rows: list[Row], out_dir: Path) -> tuple[Path, Path]:
    """summary.csv and summary.json in `out_dir`, in input order (written atomically)."""
    names = [f.name for f in fields(Row)]
    csv_path, json_path = out_dir / "summary.csv", out_dir / "summary.json"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, names)
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    os.replace(tmp, csv_path)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    os.replace(tmp, json_path)
    return csv_path, json_path


def batch(source, out_dir, options, decode_options=None, *, engine: str = "local", workers: int | None = None,
          address: str | None = None, decode: bool = False, score_: bool = False, force: bool = False,
          progress=None) -> list[Row]:
    """Encode every video of `source` (a folder or a list file) into `out_dir` (see the module's docstring)."""
    from kpcodec.codec.parallel import available_cores
    from kpcodec.options import DecodeOptions, EncodeOptions

    if engine not in ENGINES:
        raise UsageError(f"--engine takes {' or '.join(ENGINES)} (got {engine!r})")
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise UsageError(f"--workers must be >= 1 (got {workers})")
    options = EncodeOptions.of(options, threads=1).checked()
    decode_options = DecodeOptions.of(decode_options, threads=1).checked()
    files = inputs_of(source)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = workers or available_cores()
    jobs = jobs_of(files, out_dir, decode, score_, force)
    done = []

    def on_row(row):
        done.append(row)
        if progress:
            progress(len(done), len(jobs))

    if engine == "ray":
        rows = run_ray(jobs, options, decode_options, workers, address, on_row)
    else:
        rows = run_local(jobs, options, decode_options, min(workers, len(jobs)), on_row)
    order = {j.input: n for n, j in enumerate(jobs)}
    rows.sort(key=lambda r: order[r.file])
    write_summary(rows, out_dir)
    return rows
