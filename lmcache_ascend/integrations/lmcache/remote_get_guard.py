"""Remote-tier gets that cannot leak CPU buffers or stop the Redis connectors.

Two LMCache 0.5.6 bugs, both hit when a Redis server dies while the engine is
loading from it (``tests/e2e/test_faults.py::test_redis_killed_mid_run_and_restarted``):

1. ``AsyncPQExecutor`` (the job queue of every ``redis*://`` connector) runs
   each job in one of four worker coroutines and then calls
   ``done.set_result``. ``RemoteBackend.batched_get_blocking`` cancels the
   callers of the gets after the first failed one; a cancelled caller leaves
   ``done`` cancelled, ``set_result`` raises ``InvalidStateError`` and that
   worker coroutine ends. After four such cancels the queue has no worker: every
   later get times out and every put waits forever holding its chunk's CPU
   buffer (the engine never releases it). The job's own result, a buffer the
   caller no longer takes, is lost too.
   :func:`guard_remote_gets` makes ``submit_job`` wait on the job through
   ``asyncio.shield``: a cancelled caller no longer cancels ``done``, so the
   worker lives, and the result it would have handed over is released.

2. For connectors without a batched get (``redis://``, ``redis-cluster://``)
   ``batched_get_blocking`` sends one get per chunk and, after the first failed
   one, cancels the rest without looking at them: a get that had already
   finished leaves its buffer with nobody. Those two connectors get a batched
   get here (the extension point ``RemoteConnector.support_batched_get``): the
   single-key gets run side by side as before, all of them are waited for, a
   failed one is None in its place (the engine keeps the chunks before it and
   releases the rest), and if the caller gives up (LMCache's
   ``blocking_timeout_secs``) each result is released when it arrives.

3. The connectors' single-key gets allocate the chunk's buffer after reading
   its metadata and before reading its bytes. When the second read raises (the
   server died in between), is cancelled, or finds the bytes evicted (returns
   None), the buffer is never released. The wrapped get releases whatever it
   allocated unless it returns it.

Installed by the worker side of the vLLM connector (``connector_v1``), next to
:func:`plugin.guard_disk_writes`; idempotent. The bugs are pinned by
``tests/integrations/lmcache/test_remote_get_guard.py``, which fails loudly
when LMCache fixes them (then drop this module).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from lmcache.logging import init_logger

from lmcache_ascend.upstream.patching import wrap_method

logger = init_logger(__name__)

_GUARDED = "_lmcache_ascend_guarded"

# The buffers allocated by the get running in this asyncio task (None outside one).
_ALLOCATED: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("lmcache_ascend_remote_get_allocations", default=None)

REDIS_CONNECTOR = "lmcache.v1.storage_backend.connector.redis_connector"
# (class, method) of every single-key get in REDIS_CONNECTOR that allocates before its last read.
GETS = (("RedisConnector", "_get"), ("RedisClusterConnector", "_get"), ("RedisSentinelConnector", "get"))
# Connectors whose ``get`` is one queued single-key get and that have no batched get.
BATCHED = ("RedisConnector", "RedisClusterConnector")


def guard_remote_gets() -> bool:
    """Install the three guards (see the module docstring); True if anything was patched now."""
    import importlib

    from lmcache.v1.storage_backend.job_executor.pq_executor import AsyncPQExecutor

    redis_connector = importlib.import_module(REDIS_CONNECTOR)
    patched = _wrap(AsyncPQExecutor, "submit_job", _shielded_submit)
    for cls, method in GETS:
        patched = _wrap(getattr(redis_connector, cls), method, _releasing_get) or patched
    for name in BATCHED:
        cls = getattr(redis_connector, name)
        patched = _wrap(cls, "batched_get", _gathering_batched_get) or patched
        patched = _wrap(cls, "support_batched_get", _always_batched) or patched
    return patched


def _wrap(cls: type, name: str, wrapper: Callable[[Any], Any]) -> bool:
    return wrap_method(cls, name, wrapper, _GUARDED)


def _shielded_submit(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def submit_job(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        job = asyncio.ensure_future(original(self, fn, *args, **kwargs))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_release_abandoned)  # the caller is gone; the job runs on
            raise

    return submit_job


def _always_batched(_upstream: Callable[..., bool]) -> Callable[..., bool]:
    def support_batched_get(self: Any) -> bool:
        return True

    return support_batched_get


def _gathering_batched_get(_upstream: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[list[Any]]]:
    async def batched_get(self: Any, keys: list[Any]) -> list[Any]:
        return await _gather_gets(self, keys)

    return batched_get


async def _gather_gets(connector: Any, keys: list[Any]) -> list[Any]:
    """Every chunk's get at once; None where one failed; nothing left unreleased if cancelled."""
    jobs = [asyncio.ensure_future(connector.get(key)) for key in keys]
    try:
        settled = await asyncio.shield(asyncio.gather(*jobs, return_exceptions=True))
    except asyncio.CancelledError:
        for job in jobs:
            job.add_done_callback(_release_abandoned)
        raise
    results: list[Any] = []
    for key, outcome in zip(keys, settled, strict=True):
        if isinstance(outcome, BaseException):
            logger.warning("lmcache_ascend: remote get of %s failed: %r", key, outcome)
            outcome = None
        results.append(outcome)
    return results


def _release_abandoned(job: asyncio.Future[Any]) -> None:
    """Release the buffers a job produced for a caller that was cancelled."""
    if job.cancelled() or job.exception() is not None:
        return
    result = job.result()
    for obj in result if isinstance(result, list) else [result]:
        if _is_buffer(obj):
            obj.ref_count_down()


def _releasing_get(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def get(self: Any, key: Any) -> Any:
        _track_allocations(self)
        allocated: list[Any] = []
        token = _ALLOCATED.set(allocated)
        result = None
        try:
            result = await original(self, key)
            return result
        finally:
            _ALLOCATED.reset(token)
            for obj in allocated:
                if obj is not result:
                    obj.ref_count_down()
                    logger.debug("lmcache_ascend: released the buffer of a failed remote get of %s", key)

    return get


def _track_allocations(connector: Any) -> None:
    backend = connector.local_cpu_backend
    if backend is not None and not isinstance(backend, _TrackingBackend):
        connector.local_cpu_backend = _TrackingBackend(backend)


class _TrackingBackend:
    """The connector's view of ``LocalCPUBackend``: ``allocate`` also records what it
    returns in the running get's list; everything else is the backend itself."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def allocate(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._backend.allocate(*args, **kwargs)
        allocated = _ALLOCATED.get()
        if obj is not None and allocated is not None:
            allocated.append(obj)
        return obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _is_buffer(obj: Any) -> bool:
    return obj is not None and callable(getattr(obj, "ref_count_down", None))
