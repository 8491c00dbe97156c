"""LMCache remote tiers kept alive and closed within a bound (LMCache 0.5.6).

Called by the vLLM connector's worker (``integrations/vllm/connector_v1.py``):
:meth:`RemoteConnectionWatch.check` once per worker step, and
:func:`close_remote_backends` at shutdown, before LMCache closes the engine.

- LMCache's ``lm://`` connector holds one socket and never reconnects, and its
  ``RemoteBackend`` re-creates a connector only when its ``connection`` is None
  (what a failed connect at start-up leaves). :class:`RemoteConnectionWatch` sets
  ``connection`` to None (and closes the old connector) once an ``lm://``
  backend's put or get failure counter has grown, and calls
  ``RemoteBackend.init_connection`` again in the background until a connection
  is back, so a restarted server is found again. Connectors that reconnect by
  themselves (``redis://``, ``redis-cluster://``: redis-py's pools) are left alone.
- :func:`close_remote_backends` closes remote connectors with a bound before
  LMCache's own close, which hangs for ``redis://`` and ``redis-cluster://``.

Pinned by ``tests/integrations/lmcache/test_remote_servers.py`` and
``test_lm_bounds.py`` (real servers on loopback).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

from lmcache.logging import init_logger

from lmcache_ascend.integrations.lmcache import lm_bounds

logger = init_logger(__name__)


class RemoteConnectionWatch:
    """Drops broken ``lm://`` connections and re-creates them in the background.

    :meth:`check` is cheap (two counters per remote backend) and is called once
    per worker step. A connection counts as broken when a put or blocking get
    failed since the last check, or when its socket was closed after a timeout
    (``lm_bounds``). A dropped connection is re-created by ``RemoteBackend``'s
    own ``init_connection`` on a daemon thread (a connect to a dead host may
    block), at most once per ``reconnect_interval_s``; LMCache's health monitor
    does the same every ``ping_interval`` when it runs.
    """

    def __init__(self, reconnect_interval_s: float = 1.0) -> None:
        self._failures: dict[int, tuple[int, int]] = {}
        self._dropped: dict[int, float] = {}  # backend id -> when we last tried to reconnect
        self._reconnecting: dict[int, threading.Thread] = {}
        self.reconnect_interval_s = reconnect_interval_s

    def check(self, engine: Any) -> int:
        """Drop the connection of each ``lm://`` backend that failed since the last call; returns how many."""
        from lmcache.v1.storage_backend.remote_backend import RemoteBackend

        manager = getattr(engine, "storage_manager", None)
        if manager is None:
            return 0
        dropped = 0
        for backend in list(manager.storage_backends.values()):
            if not isinstance(backend, RemoteBackend):
                continue
            counts = (int(backend.put_failed_count), int(backend.get_blocking_failed_count))
            before = self._failures.setdefault(id(backend), counts)
            self._failures[id(backend)] = counts
            connection = backend.connection
            if connection is None:
                self._reconnect(backend)
                continue
            sock = lm_bounds.lm_socket(connection)
            if sock is None or (counts == before and sock.fileno() != -1):
                continue
            backend.connection = None  # RemoteBackend's own "disconnected" state
            asyncio.run_coroutine_threadsafe(connection.close(), backend.loop).add_done_callback(_log_close)
            logger.warning("lmcache_ascend: %s failed; dropped its connection (reconnecting)", backend.remote_url)
            self._dropped[id(backend)] = time.monotonic()
            dropped += 1
        return dropped

    def _reconnect(self, backend: Any) -> None:
        """``init_connection`` on a daemon thread, for backends this watch disconnected."""
        key = id(backend)
        last = self._dropped.get(key)
        running = self._reconnecting.get(key)
        if last is None or (running is not None and running.is_alive()) or time.monotonic() - last < self.reconnect_interval_s:
            return
        self._dropped[key] = time.monotonic()
        thread = threading.Thread(target=backend.init_connection, name="lmcache-ascend-reconnect", daemon=True)
        self._reconnecting[key] = thread
        thread.start()


def _log_close(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.info("lmcache_ascend: closing a broken remote connection: %s", future.exception())


def close_remote_backends(engine: Any, timeout_s: float = 10.0) -> int:
    """Close every remote connector of ``engine`` within ``timeout_s`` each; returns how many.

    Call before LMCache closes the engine. LMCache 0.5.6's ``RedisConnector.close``
    and ``RedisClusterConnector.close`` run the synchronous
    ``AsyncPQExecutor.shutdown`` on the event loop that shutdown waits for, so
    closing a ``redis://`` or ``redis-cluster://`` tier blocks that loop's thread
    forever (and the interpreter's exit with it). Here the executor is stopped
    with its coroutine (``shutdown_async``) and the connection is left as None,
    which ``RemoteBackend.close`` then skips.
    """
    from lmcache.v1.storage_backend.remote_backend import RemoteBackend

    manager = getattr(engine, "storage_manager", None)
    closed = 0
    for backend in list(getattr(manager, "storage_backends", {}).values()):
        connection = getattr(backend, "connection", None) if isinstance(backend, RemoteBackend) else None
        if connection is None:
            continue
        backend.connection = None  # from here on LMCache treats the tier as disconnected
        inner = lm_bounds.unwrapped(connection)
        client = REDIS_CLIENTS.get(type(inner).__name__)
        closing = _close_redis(inner, client) if client else connection.close()
        future = asyncio.run_coroutine_threadsafe(closing, backend.loop)
        try:
            future.result(timeout_s)
            closed += 1
        except concurrent.futures.TimeoutError:
            future.cancel()
            logger.warning("lmcache_ascend: closing %s took over %.0f s; left behind", backend.remote_url, timeout_s)
        except Exception as exc:  # closing a dead connection may fail any way; only logged
            logger.warning("lmcache_ascend: closing %s failed: %s", backend.remote_url, exc)
    return closed


# LMCache's Redis connectors whose close deadlocks, and the attribute holding their client.
REDIS_CLIENTS = {"RedisConnector": "connection", "RedisClusterConnector": "cluster"}


async def _close_redis(connector: Any, client: str) -> None:
    await connector.pq_executor.shutdown_async(wait=False)
    await getattr(connector, client).aclose()
