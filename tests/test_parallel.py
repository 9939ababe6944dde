"""ordered_map: results in input order, bounded work in flight, errors surface."""
import threading
import time

import pytest

from kpcodec.codec.parallel import available_cores, ordered_map, single_threaded_torch


def test_results_come_in_input_order_whatever_finishes_first():
    def slow_for_even(i):
        time.sleep(0.02 if i % 2 == 0 else 0.0)
        return i * i

    assert list(ordered_map(slow_for_even, range(20), workers=3)) == [i * i for i in range(20)]
    assert list(ordered_map(slow_for_even, range(5), workers=1)) == [0, 1, 4, 9, 16]


def test_at_most_twice_the_workers_are_in_flight():
    pulled, lock = [], threading.Lock()

    def items():
        for i in range(50):
            with lock:
                pulled.append(i)
            yield i

    out = ordered_map(lambda i: i, items(), workers=2)
    first = next(out)
    assert first == 0 and len(pulled) <= 4 + 1  # the consumer lags the producer by a bounded amount
    assert [first, *out] == list(range(50))


def test_a_worker_error_reaches_the_caller():
    def boom(i):
        if i == 3:
            raise ValueError("bad batch 3")
        return i

    with pytest.raises(ValueError, match="bad batch 3"):
        list(ordered_map(boom, range(10), workers=2))


def test_single_threaded_torch_restores_the_thread_count():
    import torch

    before = torch.get_num_threads()
    with single_threaded_torch():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_glibc_mmap_threshold_is_pinned_for_flat_memory():
    import platform

    from kpcodec.codec.parallel import fixed_mmap_threshold

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert fixed_mmap_threshold() is True


def test_idle_cores_leaves_out_the_load():
    from kpcodec.codec.parallel import idle_cores

    assert idle_cores(cores=2, load=0.1) == 2
    assert idle_cores(cores=2, load=1.2) == 1  # another job holds a core
    assert idle_cores(cores=2, load=7.0) == 1  # never below one
    assert idle_cores(cores=8, load=2.6) == 5
    assert 1 <= idle_cores() <= available_cores()


def test_explicit_threads_mean_single_threaded_torch():
    import torch

    from kpcodec.codec.parallel import torch_threads_for

    before = torch.get_num_threads()
    with torch_threads_for(1):
        assert torch.get_num_threads() == 1
    with torch_threads_for(None):
        assert 1 <= torch.get_num_threads() <= before
    assert torch.get_num_threads() == before
