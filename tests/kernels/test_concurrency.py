"""The host core's shared worker pool under concurrent callers and after fork()."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from tests.kernels.helpers import call_multi_layer
from tests.kernels.reference import (
    Geom,
    PagedCache,
    assert_cache_equal,
    assert_tensor_equal,
    make_paged,
    object_shape,
    random_slots,
    random_tensor,
    ref_transfer,
)

BIG = Geom(num_layers=2, num_blocks=64, block_size=16, num_heads=4, head_size=64)  # ~2 MiB per direction
FORMATS = (1, 2, 6, 7, 12, 16)


def _job(fmt: int, direction: int, seed: int) -> tuple[PagedCache, torch.Tensor, torch.Tensor, PagedCache, torch.Tensor]:
    gen = torch.Generator()
    gen.manual_seed(seed)
    cache = make_paged(fmt, BIG, torch.float32, gen)
    obj = random_tensor(object_shape(fmt, BIG, 900), torch.float32, gen)
    slots = random_slots(900, BIG.num_slots, gen, 50)
    want_cache, want_obj = cache.clone(), obj.clone()
    ref_transfer(want_cache, want_obj, slots, direction, 7)
    return cache, obj, slots, want_cache, want_obj


def test_concurrent_python_threads(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight Python threads transfer at once (the GIL is released in the core)."""
    monkeypatch.setenv("LMCACHE_ASCEND_NUM_THREADS", "4")
    jobs = [_job(FORMATS[i % len(FORMATS)], i % 2, i) for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        cache, obj, slots, _, _ = jobs[i]
        try:
            start.wait()
            for _ in range(3):  # the same transfer repeated is idempotent
                call_multi_layer(cache, obj, slots, i % 2, skip=7)
        except BaseException as exc:  # reported below, with the thread's index
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for cache, obj, _, want_cache, want_obj in jobs:
        assert_cache_equal(cache, want_cache)
        assert_tensor_equal(obj, want_obj)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_transfer_in_forked_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked after the worker pool started must not wait on the parent's
    (vanished) workers."""
    monkeypatch.setenv("LMCACHE_ASCEND_NUM_THREADS", "4")
    monkeypatch.setenv("LMCACHE_ASCEND_KERNEL_BACKEND", "host")
    cache, obj, slots, want_cache, want_obj = _job(1, 1, 99)
    warm = _job(6, 0, 98)
    call_multi_layer(warm[0], warm[1], warm[2], 0, skip=7)  # starts the pool in the parent
    expected = want_obj.numpy().tobytes()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        code = 1
        try:
            call_multi_layer(cache, obj, slots, 1, skip=7)
            code = 0 if obj.numpy().tobytes() == expected else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("transfer in a forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert_cache_equal(warm[0], warm[3])
