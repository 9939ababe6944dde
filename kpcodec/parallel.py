"""Run model batches on single-threaded torch workers, results in order (encode/decode --threads N).

On an idle 2-core machine torch's own intra-op threads are faster (decode 27.7 fps inline
against 21.3 fps on two workers), so the codec runs inline by default. Workers are for shared
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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
import contextlib
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
def single_threaded_torch():
    """torch intra-op threads = 1 for the duration (restored after), so workers do not oversubscribe."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@functools.cache
def fixed_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """Pin glibc's mmap threshold (once per process; True if it took).

    glibc raises the threshold each time a large block is freed, after which video frames
    (192 KiB at 256x256) come from the heap arenas; allocated by the decoding thread and freed
    in others (workers, torch's own threads), they fragmented the arenas so that a 10-minute
    encode grew to 4.2-4.6 GB. Pinned, frames are mmapped and returned to the system at once:
    measured flat (325 MB at 10 s, 332 MB at 60 s). encode calls it on every path.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):  # not glibc: nothing to pin
        return False


def torch_threads_for(workers: int):
    """The torch thread setting `workers` need: single-threaded torch when several run, else as is."""
    return single_threaded_torch() if workers > 1 else contextlib.nullcontext()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn(item) for every item, computed by `workers` threads, yielded in input order.

    At most 2 x workers items are in flight, so memory stays flat however long `items` is.
    `items` is consumed in the calling thread (e.g. a video decoder). workers <= 1 runs inline.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    fixed_mmap_threshold()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kpcodec")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:  # an error or an early stop: drop the queued work
            future.cancel()
        pool.shutdown(wait=True)
