"""LMCache 0.5.6's ``redis-sentinel://`` connector, made to talk to Redis.

``RedisSentinelConnector`` builds its clients with ``redis.asyncio`` (its module
imports ``redis.asyncio as redis``) but calls them as if they were synchronous:
nothing is awaited. So, in 0.5.6:

- every ``put`` writes nothing (two coroutines created, never run);
- every ``exists`` / ``exists_sync`` is ``bool(<coroutine>)``, i.e. True: each
  lookup reports every chunk as stored, with vLLM a full hit promised on every
  request;
- every ``get`` fails its ``assert not inspect.isawaitable(...)``, so each
  promised hit is recomputed;
- ``close`` closes nothing.

:func:`fix_sentinel_connector` replaces those methods with ones that await the
same clients: reads from the replica pool, writes to the primary pool, as
upstream intends. redis-py's Sentinel pools ask the sentinels again after a
connection error, so they follow a failover. A get reads both keys before it
allocates the chunk's buffer (a failed read leaks nothing); bytes whose length
is not the metadata's are a miss. ``exists_sync`` runs ``exists`` on the event
loop upstream's constructor is given (kept by a wrapped ``__init__``), bounded by
``blocking_timeout_secs``.

Installed by the worker side of the vLLM connector before
``remote_get_guard.guard_remote_gets``; idempotent. Each replaced method keeps
upstream's as ``__wrapped__``. Pinned by
``tests/integrations/lmcache/test_redis_sentinel_fix.py``, which fails loudly
when LMCache fixes the connector (then drop this module).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Any

from lmcache.logging import init_logger

from lmcache_ascend.upstream.patching import wrap_method

logger = init_logger(__name__)

REDIS_CONNECTOR = "lmcache.v1.storage_backend.connector.redis_connector"
CLASS = "RedisSentinelConnector"
_FIXED = "_lmcache_ascend_sentinel_fixed"


def _init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, hosts_and_ports: Any, username: Any, password: Any, loop: Any, local_cpu_backend: Any) -> None:
        original(self, hosts_and_ports, username, password, loop, local_cpu_backend)
        self._lmcache_ascend_loop = loop

    return __init__


async def _exists(self: Any, key: Any) -> bool:
    return bool(await self.slave.exists(key.to_string() + "metadata"))


def _exists_sync(self: Any, key: Any) -> bool:
    loop = getattr(self, "_lmcache_ascend_loop", None)
    if loop is None:
        raise RuntimeError("redis-sentinel connector built before lmcache_ascend's fix was installed")
    timeout = self.local_cpu_backend.config.blocking_timeout_secs
    return bool(asyncio.run_coroutine_threadsafe(self.exists(key), loop).result(timeout))


async def _get(self: Any, key: Any) -> Any:
    from lmcache.v1.protocol import RemoteMetadata

    name = key.to_string()
    metadata_bytes = await self.slave.get(name + "metadata")
    if metadata_bytes is None:
        return None
    metadata = RemoteMetadata.deserialize(memoryview(metadata_bytes))
    kv_bytes = await self.slave.get(name + "kv_bytes")
    if kv_bytes is None or len(kv_bytes) != metadata.length:
        logger.warning("lmcache_ascend: %s has metadata but %s bytes: a miss", name, "no" if kv_bytes is None else "other")
        return None
    memory_obj = self.local_cpu_backend.allocate(metadata.shapes, metadata.dtypes, metadata.fmt)
    if memory_obj is None:
        logger.warning("Failed to allocate memory during remote receive")
        return None
    view = memory_obj.byte_array if isinstance(memory_obj.byte_array, memoryview) else memoryview(memory_obj.byte_array)
    view.cast("B")[: metadata.length] = kv_bytes
    return memory_obj


async def _put(self: Any, key: Any, memory_obj: Any) -> None:
    from lmcache.v1.protocol import RemoteMetadata

    kv_bytes = memory_obj.byte_array
    metadata = RemoteMetadata(len(kv_bytes), memory_obj.get_shapes(), memory_obj.get_dtypes(), memory_obj.get_memory_format())
    name = key.to_string()
    # The bytes first: a reader that finds the metadata finds the bytes.
    await self.master.set(name + "kv_bytes", kv_bytes)
    await self.master.set(name + "metadata", metadata.serialize())


async def _close(self: Any) -> None:
    await self.master.aclose()
    await self.slave.aclose()


_REPLACEMENTS: dict[str, Callable[..., Any]] = {
    "exists": _exists,
    "exists_sync": _exists_sync,
    "get": _get,
    "put": _put,
    "close": _close,
}


def fix_sentinel_connector() -> bool:
    """Install the fixed methods (see the module docstring); True if anything was patched now."""
    cls = getattr(importlib.import_module(REDIS_CONNECTOR), CLASS)
    patched = wrap_method(cls, "__init__", _init, _FIXED)
    for name, replacement in _REPLACEMENTS.items():
        patched = wrap_method(cls, name, lambda _original, new=replacement: new, _FIXED) or patched
    return patched
