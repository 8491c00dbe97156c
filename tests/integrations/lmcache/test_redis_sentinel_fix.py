"""redis_sentinel_fix: LMCache 0.5.6's ``redis-sentinel://`` connector against a real Sentinel set-up.

The ``upstream`` test pins the bug (it fails once LMCache awaits its clients:
then drop the fix); the other shows the fixed connector storing, finding and
loading chunks exactly, and reporting a chunk never stored as absent.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from lmcache_ascend.integrations.lmcache import redis_sentinel_fix
from tests.integrations.lmcache.conftest import (
    EngineFactory,
    active_buffers,
    wait_until,
)
from tests.integrations.lmcache.test_redis_failover import (
    CHUNKS,
    TOKENS,
    engine_on,
    load,
    store,
)
from tests.redis_topologies import RedisSentinelSet, redis_cli


def _cls() -> type:
    return getattr(importlib.import_module(redis_sentinel_fix.REDIS_CONNECTOR), redis_sentinel_fix.CLASS)


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    """LMCache's own methods for this test (the fix may be installed process-wide)."""
    cls = _cls()
    for name in ("__init__", *redis_sentinel_fix._REPLACEMENTS):
        method = getattr(cls, name)
        monkeypatch.setattr(cls, name, getattr(method, "__wrapped__", method))


def primary_keys(sentinel: RedisSentinelSet) -> int:
    return int(redis_cli(sentinel.primary_port(), "dbsize"))


def never_stored(engine: Any) -> Any:
    other = (TOKENS + 1) % 30000
    return next(key for _, _, key in engine.token_database.process_tokens(other))


def test_upstream_sentinel_connector_stores_nothing_and_finds_everything(upstream: None, sentinel: RedisSentinelSet, remote_engines: EngineFactory) -> None:
    engine = engine_on(remote_engines, sentinel.url)
    connection = engine.storage_manager.storage_backends["RemoteBackend"].connection
    assert connection.exists_sync(never_stored(engine)) is True  # bool(<coroutine>)
    cache, stored = store(engine)
    sentinel.replicate()
    assert primary_keys(sentinel) == 0  # the puts never ran
    assert load(engine, cache, stored) == 0  # each get fails its isawaitable assert


def test_fixed_sentinel_connector_stores_finds_and_loads_exactly(sentinel: RedisSentinelSet, remote_engines: EngineFactory) -> None:
    assert redis_sentinel_fix.fix_sentinel_connector() in (True, False)
    assert redis_sentinel_fix.fix_sentinel_connector() is False  # idempotent
    engine = engine_on(remote_engines, sentinel.url)
    connection = engine.storage_manager.storage_backends["RemoteBackend"].connection
    assert connection.exists_sync(never_stored(engine)) is False
    cache, stored = store(engine)
    sentinel.replicate()
    assert primary_keys(sentinel) == 2 * CHUNKS  # metadata and bytes per chunk
    assert load(engine, cache, stored) == CHUNKS
    wait_until(lambda: active_buffers(engine) == 0, what="loaded buffers released")
