"""The host core's threads (the OpenMP team torch loaded, or the core's own pool) under
concurrent callers and after fork()."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from lmcache_ascend.kernels import host
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


POOLS = ("auto", "own")


def test_thread_pool_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch is loaded here, so its OpenMP team runs host copies unless told otherwise."""
    monkeypatch.delenv(host.THREAD_POOL_ENV, raising=False)
    assert host.thread_pool() == "openmp"
    monkeypatch.setenv(host.THREAD_POOL_ENV, " Own ")
    assert host.thread_pool() == "own"
    monkeypatch.setenv(host.THREAD_POOL_ENV, "openmp")
    with pytest.raises(ValueError, match=host.THREAD_POOL_ENV):
        host.thread_pool()
    with pytest.raises(ValueError, match=host.THREAD_POOL_ENV):
        host.num_threads()


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("direction", (0, 1))
def test_each_pool_is_exact(pool: str, fmt: int, direction: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big enough to be split into tasks over several threads, on either pool."""
    monkeypatch.setenv("LMCACHE_ASCEND_NUM_THREADS", "4")
    monkeypatch.setenv("LMCACHE_ASCEND_KERNEL_BACKEND", "host")
    monkeypatch.setenv(host.THREAD_POOL_ENV, pool)
    assert host.thread_pool() == ("openmp" if pool == "auto" else "own")
    cache, obj, slots, want_cache, want_obj = _job(fmt, direction, fmt * 2 + direction)
    call_multi_layer(cache, obj, slots, direction, skip=7)
    assert_cache_equal(cache, want_cache)
    assert_tensor_equal(obj, want_obj)


@pytest.mark.parametrize("pool", POOLS)
def test_concurrent_python_threads(backend: str, pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight Python threads transfer at once (the GIL is released in the core)."""
    monkeypatch.setenv("LMCACHE_ASCEND_NUM_THREADS", "4")
    monkeypatch.setenv(host.THREAD_POOL_ENV, pool)
    jobs = [_job(FORMATS[i % len(FORMATS)], i % 2, i) for i in range(8)]
    errors: list[Exception] = []
    start = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        cache, obj, slots, _, _ = jobs[i]
        try:
            start.wait()
            for _ in range(3):  # the same transfer repeated is idempotent
                call_multi_layer(cache, obj, slots, i % 2, skip=7)
        except Exception as exc:  # noqa: BLE001 -- any failure is reported below, with the thread's index
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
@pytest.mark.parametrize("pool", POOLS)
def test_transfer_in_forked_child(pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked after the parent's transfers started worker threads (either pool)
    must not wait on the parent's (vanished) workers: after the OpenMP team was used,
    the child copies on the core's own pool."""
    monkeypatch.setenv("LMCACHE_ASCEND_NUM_THREADS", "4")
    monkeypatch.setenv("LMCACHE_ASCEND_KERNEL_BACKEND", "host")
    monkeypatch.setenv(host.THREAD_POOL_ENV, pool)
    cache, obj, slots, _, want_obj = _job(1, 1, 99)
    warm = _job(6, 0, 98)
    call_multi_layer(warm[0], warm[1], warm[2], 0, skip=7)  # starts the pool in the parent
    expected = want_obj.numpy().tobytes()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        code = 1
        try:
            call_multi_layer(cache, obj, slots, 1, skip=7)
            code = 0 if obj.numpy().tobytes() == expected else 2
            if host.thread_pool() != "own":
                code = 3
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
