"""Run model batches on single-threaded torch workers, results in order (encode/decode --threads N).

On an idle 2-core machine torch's own intra-op threads are faster (decode 27.7 fps inline
against 21.3 fps on two workers), so the codec runs inline by default, on as many torch threads
as cores are idle when it starts (`idle_cores`: all of them on an idle machine). Workers are for shared
machines: an OpenMP team waits at every barrier for its slowest thread, so one busy core stalls
every convolution; measured on the project's 2-core box while another process ran, intra-op
threading fell to 1.6-6 fps on the quarter model where two single-threaded workers kept
6.4-7.9 fps. torch releases the GIL inside its kernels, so plain Python threads run in parallel.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int):
    """torch intra-op threads = n for the duration (restored after)."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def single_threaded_torch():
    """torch intra-op threads = 1 for the duration (restored after), so workers do not oversubscribe."""
    return torch_threads(1)


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not taken by other work: all of them less the other runnable threads, at least 1.

    torch's own threads are fastest on an idle machine but wait on each other at every
    barrier when another job holds a core (measured: decode 2.0 fps on two threads against
    6.1 fps on one, the default model on the 2-core box with two training jobs running).
    """
    cores = available_cores() if cores is None else cores
    if load is None:
        load = runnable_others()
    return max(1, min(cores, int(cores - load + 0.5)))


def runnable_others(samples: int = 9, interval_s: float = 0.005) -> float:
    """Threads other than this one ready to run now (median of a few reads of /proc/loadavg).

    The instantaneous count, not the 1-minute load average: that would still count a kpcodec
    run that just ended and make the next one on an idle machine single-threaded. 0 where the
    count cannot be read (not Linux).
    """
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):
            return 0.0
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0.0, sorted(counts)[len(counts) // 2] - 1.0)  # less the thread reading it


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
ENCODE_MMAP_THRESHOLD = 128 * 1024
# Rendering at 128 KiB mmapped every activation (a 256x256x32 float map is 8 MiB) and paid its
# page faults on every use: the hybrid decode fell from 33-34 to 22 fps (1 MiB: 24-26, 4-16 MiB:
# 30-32, 32 MiB: 33-35; liveportrait_d10, keep-every 2, 96@3:63, 2026-12-06). At 32 MiB (glibc's
# largest) a 3,584-frame decode stays flat: 325-355 MB inline, 380-425 MB on two workers.
DECODE_MMAP_THRESHOLD = 32 << 20


@functools.cache
def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def fixed_mmap_threshold(nbytes: int = ENCODE_MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at `nbytes` (True if it took; the last call wins).

    glibc raises the threshold each time a large block is freed, after which video frames
    (192 KiB at 256x256) come from the heap arenas; allocated by the decoding thread and freed
    in others (workers, torch's own threads), they fragmented the arenas so that a 10-minute
    encode grew to 4.2-4.6 GB. Pinned at 128 KiB, frames are mmapped and returned to the system at
    once: measured flat (325 MB at 10 s, 332 MB at 60 s). encode calls it on every path; decode
    pins DECODE_MMAP_THRESHOLD, above its activations, instead.
    """
    try:
        return bool(_libc().mallopt(_M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):  # not glibc: nothing to pin
        return False


def torch_thread_count(threads: int | None) -> int:
    """torch's thread count for a `threads` option: None gives as many threads as cores are
    idle now (every core on an idle machine); a number (1 inline, N >= 2 workers) means
    single-threaded torch in each worker."""
    if threads is not None:
        return 1
    import torch

    return min(torch.get_num_threads(), idle_cores())


def torch_threads_for(threads: int | None):
    """The torch thread setting for a `threads` option (torch_thread_count), as a context."""
    return torch_threads(torch_thread_count(threads))


class OrderedPool:
    """fn(item) for items handed in one at a time (`submit`), computed by `workers` threads, the
    results handed back in the order the items came. At most 2 x workers items are in flight, so
    memory stays flat however many come; workers <= 1 runs each item inline as it is submitted.
    A push-driven encoder uses it directly; `ordered_map` is its loop over an iterable."""

    def __init__(self, fn: Callable[[T], R], workers: int, mmap_threshold: int = ENCODE_MMAP_THRESHOLD):
        self.fn, self.workers = fn, workers
        self.pending: deque = deque()
        self.pool = None
        if workers > 1:
            fixed_mmap_threshold(mmap_threshold)
            self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kpcodec")

    def submit(self, item: T) -> list[R]:
        """The results now due (in order): at most one inline, or those past the in-flight limit."""
        if self.pool is None:
            return [self.fn(item)]
        self.pending.append(self.pool.submit(self.fn, item))
        done = []
        while len(self.pending) >= 2 * self.workers:
            done.append(self.pending.popleft().result())
        return done

    def drain(self) -> list[R]:
        """Every result still due, in order."""
        done = []
        while self.pending:
            done.append(self.pending.popleft().result())
        return done

    def close(self) -> None:
        """Drop the queued work (an error or an early stop) and stop the threads."""
        for future in self.pending:
            future.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn(item) for every item, computed by `workers` threads, yielded in input order.

    At most 2 x workers items are in flight, so memory stays flat however long `items` is.
    `items` is consumed in the calling thread (e.g. a video decoder). workers <= 1 runs inline.
    """
    with OrderedPool(fn, workers) as pool:
        for item in items:
            yield from pool.submit(item)
        yield from pool.drain()
