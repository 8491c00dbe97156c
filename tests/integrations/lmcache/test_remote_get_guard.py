"""remote_get_guard: a Redis server dying during loads leaks no buffer and stops no job queue.

Real LMCache 0.5.6 engines with our paged device connector and a real
``redis-server`` on loopback (``local_cpu=False``: every hit is a remote get).
The server is killed at chosen points of a get (from inside redis-py's call,
so the failure is redis-py's own ``ConnectionError``). The ``upstream`` tests
pin the bugs: when one fails, LMCache fixed it and that part of the guard can go.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import torch

from lmcache_ascend.integrations.lmcache import lm_bounds, remote_get_guard
from testkit.remote_servers import RedisServer
from tests.integrations.lmcache.conftest import ASCEND_KV_TUPLES, EngineFactory, KV_DTYPE, active_buffers, paged_engine, wait_until
from tests.kernels.reference import Geom, make_paged

GEOM = Geom(num_layers=2, num_blocks=64, block_size=16, num_heads=2, head_size=8)
CHUNK = 64
TOKENS = torch.arange(2 * CHUNK, dtype=torch.long) * 7 + 3


def _patched_attributes() -> list[tuple[type, str]]:
    import importlib

    from lmcache.v1.storage_backend.job_executor.pq_executor import AsyncPQExecutor

    module = importlib.import_module(remote_get_guard.REDIS_CONNECTOR)
    found: list[tuple[type, str]] = [(AsyncPQExecutor, "submit_job")]
    found += [(getattr(module, cls), method) for cls, method in remote_get_guard.GETS]
    found += [(getattr(module, cls), method) for cls in remote_get_guard.BATCHED for method in ("batched_get", "support_batched_get")]
    return found


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    """LMCache's own methods for this test (the guard may be installed process-wide)."""
    for cls, name in _patched_attributes():
        method = getattr(cls, name)
        monkeypatch.setattr(cls, name, getattr(method, "__wrapped__", method))


@pytest.fixture
def guarded(upstream: None) -> Iterator[None]:
    assert remote_get_guard.guard_remote_gets() is True
    yield


# ---------------------------------------------------------------- the job queue


def cancelled_callers(backend: Any, loop: asyncio.AbstractEventLoop, jobs: int = 4) -> Any:
    """``jobs`` queued jobs that each allocate a buffer, their callers cancelled mid-job."""
    from lmcache.v1.memory_management import MemoryFormat
    from lmcache.v1.storage_backend.job_executor.pq_executor import AsyncPQExecutor

    executor = AsyncPQExecutor(loop, max_workers=2)

    async def allocating_job() -> Any:
        await asyncio.sleep(0.2)
        return backend.allocate(torch.Size([2, 2, CHUNK, 16]), torch.float16, MemoryFormat.KV_2LTD)

    callers = [asyncio.run_coroutine_threadsafe(executor.submit_job(allocating_job), loop) for _ in range(jobs)]
    time.sleep(0.05)
    for caller in callers:
        assert caller.cancel()
    return executor


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def local_engine(engines: EngineFactory) -> Any:
    return paged_engine(engines, GEOM, CHUNK)


def test_a_cancelled_caller_keeps_the_queue_working_and_its_buffer_is_released(guarded: None, engines: EngineFactory, loop: asyncio.AbstractEventLoop) -> None:
    engine = local_engine(engines)
    executor = cancelled_callers(engine.storage_manager.storage_backends["LocalCPUBackend"], loop)
    wait_until(lambda: active_buffers(engine) == 0, timeout_s=5, what="abandoned jobs' buffers released")
    assert not any(worker.done() for worker in executor._workers)

    async def answer() -> int:
        return 42

    assert asyncio.run_coroutine_threadsafe(executor.submit_job(answer), loop).result(5) == 42


def test_upstream_queue_loses_a_worker_per_cancelled_caller(upstream: None, engines: EngineFactory, loop: asyncio.AbstractEventLoop) -> None:
    """Pins LMCache 0.5.6: if this fails, ``AsyncPQExecutor`` survives a cancelled
    caller; drop ``_shielded_submit`` from remote_get_guard."""
    engine = local_engine(engines)
    executor = cancelled_callers(engine.storage_manager.storage_backends["LocalCPUBackend"], loop)
    wait_until(lambda: all(worker.done() for worker in executor._workers), timeout_s=5, what="both workers ended")
    assert all(isinstance(worker.exception(), asyncio.InvalidStateError) for worker in executor._workers)
    assert active_buffers(engine) >= 1  # what the dead workers allocated nobody will release


# ---------------------------------------------------------------- gets through a real Redis


def redis_engine(engines: EngineFactory, redis: RedisServer) -> Any:
    return paged_engine(engines, GEOM, CHUNK, local_cpu=False, max_local_cpu_size=0.01, remote_url=redis.url, remote_serde="naive", blocking_timeout_secs=5)


def store(engine: Any) -> Any:
    """Store TOKENS' KV and wait until every put reached Redis; the paged cache."""
    cache = make_paged(ASCEND_KV_TUPLES.fmt, GEOM, KV_DTYPE, torch.Generator().manual_seed(11))
    engine.store(TOKENS, kvcaches=cache.data, slot_mapping=torch.arange(len(TOKENS)))
    wait_until(lambda: active_buffers(engine) == 0, what="every put sent")
    return cache


def load(engine: Any, cache: Any) -> int:
    slots = torch.arange(len(TOKENS), dtype=torch.long) + len(TOKENS)
    return int(engine.retrieve(TOKENS, kvcaches=cache.data, slot_mapping=slots).sum())


def chunk_keys(engine: Any) -> list[str]:
    return [key.to_string() for _, _, key in engine.token_database.process_tokens(TOKENS)]


def intercept_reads(engine: Any, before: Callable[[str], Awaitable[None]], after: Callable[[str], None] = lambda name: None) -> None:
    """Run ``before(name)`` on the event loop ahead of each of the connector's Redis GETs,
    ``after(name)`` once one returned."""
    connector = lm_bounds.unwrapped(engine.storage_manager.storage_backends["RemoteBackend"].connection)
    client = connector.connection
    real_get = client.get

    async def get(name: Any) -> Any:
        text = name.decode() if isinstance(name, bytes) else str(name)
        await before(text)
        value = await real_get(name)
        after(text)
        return value

    client.get = get


def killed_before_the_bytes_of(redis: RedisServer, key: str, after: threading.Event | None = None) -> Callable[[str], Awaitable[None]]:
    """Kill the server right before ``key``'s bytes are first read (its buffer is allocated
    by then); with ``after``, first wait (bounded) until that event is set."""
    killed = threading.Event()

    async def before(name: str) -> None:
        if name == key + "kv_bytes" and not killed.is_set():
            killed.set()
            for _ in range(200):
                if after is None or after.is_set():
                    break
                await asyncio.sleep(0.01)
            redis.kill()

    return before


@pytest.mark.usefixtures("guarded")
def test_a_server_killed_between_the_two_reads_leaks_nothing(redis: RedisServer, remote_engines: EngineFactory) -> None:
    engine = redis_engine(remote_engines, redis)
    cache = store(engine)
    intercept_reads(engine, killed_before_the_bytes_of(redis, chunk_keys(engine)[0]))
    assert load(engine, cache) == 0
    wait_until(lambda: active_buffers(engine) == 0, timeout_s=10, what="failed gets' buffers released")

    redis.start()  # same port, empty: the tier comes back
    cache = store(engine)
    assert load(engine, cache) == len(TOKENS)
    wait_until(lambda: active_buffers(engine) == 0, timeout_s=10, what="loaded buffers released")


@pytest.mark.usefixtures("guarded")
def test_evicted_bytes_leak_nothing(redis: RedisServer, remote_engines: EngineFactory) -> None:
    import redis as redis_py

    engine = redis_engine(remote_engines, redis)
    cache = store(engine)
    client = redis_py.Redis(host="127.0.0.1", port=redis.port)
    try:
        assert client.delete(*[key + "kv_bytes" for key in chunk_keys(engine)]) == 2  # what an eviction leaves
    finally:
        client.close()
    assert load(engine, cache) == 0
    assert active_buffers(engine) == 0


def a_later_chunk_done_before_the_first_fails(redis: RedisServer, engine: Any) -> int:
    """Chunk 1's get finishes, then the server dies before chunk 0's bytes are read; tokens loaded."""
    first, second = chunk_keys(engine)
    second_read = threading.Event()

    def after(name: str) -> None:
        if name == second + "kv_bytes":
            # Its get returns right after this read (a copy into its buffer, no await).
            asyncio.get_running_loop().call_later(0.05, second_read.set)

    cache = store(engine)
    intercept_reads(engine, killed_before_the_bytes_of(redis, first, after=second_read), after)
    return load(engine, cache)


@pytest.mark.usefixtures("guarded")
def test_a_get_finished_before_an_earlier_one_failed_is_released(redis: RedisServer, remote_engines: EngineFactory) -> None:
    engine = redis_engine(remote_engines, redis)
    assert a_later_chunk_done_before_the_first_fails(redis, engine) == 0
    wait_until(lambda: active_buffers(engine) == 0, timeout_s=10, what="every get's buffer released")


@pytest.mark.usefixtures("upstream")
def test_upstream_drops_a_finished_get_after_an_earlier_failure(redis: RedisServer, remote_engines: EngineFactory) -> None:
    """Pins LMCache 0.5.6: if this fails, its remote gets no longer leak on a failure;
    drop the batched get and the releasing get from remote_get_guard."""
    engine = redis_engine(remote_engines, redis)
    assert a_later_chunk_done_before_the_first_fails(redis, engine) == 0
    time.sleep(0.5)
    assert active_buffers(engine) == 2  # chunk 0's (allocated, then its read failed) and chunk 1's (cancelled too late)
