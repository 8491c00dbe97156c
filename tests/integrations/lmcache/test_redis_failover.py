"""Remote tiers that fail over: a real Redis Cluster and a real Sentinel set-up.

Real LMCache 0.5.6 engines with our paged device connector, every hit a remote
get (``local_cpu=False``), through LMCache's own ``redis-cluster://`` and
``redis-sentinel://`` connectors, with this package's guards installed as the
vLLM worker installs them. A primary is SIGKILLed from inside a load (right
before a chunk's bytes are read), its replica is promoted, and:

- the load returns (no exception) with a prefix of the chunks; every chunk it
  loaded has the CRC32 of what was stored (no wrong KV);
- every buffer the failed gets allocated is released;
- once the set-up has a primary for every slot again, the same chunks are hits
  and load exactly (the replica had them: each test waits for ``WAIT 1``).

Needs Debian's ``redis-server``; without it these tests fail, naming the package.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from typing import Any

import pytest
import torch

from lmcache_ascend.integrations.lmcache import (
    lm_bounds,
    redis_sentinel_fix,
    remote_get_guard,
)
from tests.integrations.lmcache.conftest import (
    ASCEND_KV_TUPLES,
    KV_DTYPE,
    EngineFactory,
    active_buffers,
    paged_engine,
    wait_until,
)
from tests.kernels.reference import Geom, PagedCache, make_paged
from tests.redis_topologies import RedisClusterSet, RedisSentinelSet

pytestmark = pytest.mark.slow  # a Redis Cluster or Sentinel set-up per test, failovers of a few seconds

CHUNK = 32
CHUNKS = 12
GEOM = Geom(num_layers=2, num_blocks=2 * CHUNKS * CHUNK // 16, block_size=16, num_heads=2, head_size=8)
TOKENS = (torch.arange(CHUNKS * CHUNK, dtype=torch.long) * 13 + 5) % 30000
STORE_SLOTS = torch.arange(len(TOKENS), dtype=torch.long)
LOAD_SLOTS = STORE_SLOTS + len(TOKENS)


@pytest.fixture
def guarded() -> None:
    """What the vLLM connector's worker installs."""
    redis_sentinel_fix.fix_sentinel_connector()
    remote_get_guard.guard_remote_gets()


def engine_on(engines: EngineFactory, url: str) -> Any:
    return paged_engine(engines, GEOM, CHUNK, local_cpu=False, max_local_cpu_size=0.02, remote_url=url, remote_serde="naive", blocking_timeout_secs=10)


def chunk_crcs(cache: PagedCache, slots: torch.Tensor) -> list[int]:
    """CRC32 of each chunk's K and V rows at ``slots`` (format 16: per-layer (K, V) [NB, BS, NH, HS])."""
    out = []
    for c in range(CHUNKS):
        s = slots[c * CHUNK : (c + 1) * CHUNK]
        blocks, offsets = s // GEOM.block_size, s % GEOM.block_size
        crc = 0
        for k, v in cache.data:  # type: ignore[attr-defined]
            for t in (k, v):
                crc = zlib.crc32(t[blocks, offsets].contiguous().view(torch.uint8).numpy().tobytes(), crc)
        out.append(crc)
    return out


def store(engine: Any) -> tuple[PagedCache, list[int]]:
    cache = make_paged(ASCEND_KV_TUPLES.fmt, GEOM, KV_DTYPE, torch.Generator().manual_seed(5))
    engine.store(TOKENS, kvcaches=cache.data, slot_mapping=STORE_SLOTS)
    wait_until(lambda: active_buffers(engine) == 0, timeout_s=30, what="every put sent")
    return cache, chunk_crcs(cache, STORE_SLOTS)


def load(engine: Any, cache: PagedCache, stored: list[int]) -> int:
    """Load into other slots; the chunks loaded, each checked against its stored CRC32."""
    for t in cache.storage():
        t[GEOM.num_blocks // 2 :] = 0
    got = int(engine.retrieve(TOKENS, kvcaches=cache.data, slot_mapping=LOAD_SLOTS).sum())
    assert got % CHUNK == 0, f"{got} tokens is not whole chunks"
    loaded = got // CHUNK
    assert chunk_crcs(cache, LOAD_SLOTS)[:loaded] == stored[:loaded], "a loaded chunk differs from what was stored"
    return loaded


def kill_before_a_read(engine: Any, kill: Any, nth: int = 3) -> threading.Event:
    """SIGKILL (``kill()``) right before the connector's ``nth`` value read; the event is set once done."""
    connector = lm_bounds.unwrapped(engine.storage_manager.storage_backends["RemoteBackend"].connection)
    client = getattr(connector, "cluster", None) or connector.slave
    real_get = client.get
    reads = [0]
    done = threading.Event()
    is_async = asyncio.iscoroutinefunction(real_get)

    def before() -> None:
        reads[0] += 1
        if reads[0] == nth and not done.is_set():
            kill()
            done.set()

    if is_async:

        async def get(name: Any, *args: Any, **kwargs: Any) -> Any:
            before()
            return await real_get(name, *args, **kwargs)
    else:

        def get(name: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            before()
            return real_get(name, *args, **kwargs)

    client.get = get
    return done


@pytest.mark.usefixtures("guarded")
def test_cluster_spreads_chunks_over_every_primary_and_loads_them_exactly(cluster: RedisClusterSet, remote_engines: EngineFactory) -> None:
    engine = engine_on(remote_engines, cluster.url)
    cache, stored = store(engine)
    per_primary = cluster.keys_per_primary()
    assert len(per_primary) == 3 and all(n > 0 for n in per_primary.values()), per_primary
    assert sum(per_primary.values()) == 2 * CHUNKS  # LMCache writes a metadata and a bytes key per chunk
    assert load(engine, cache, stored) == CHUNKS
    wait_until(lambda: active_buffers(engine) == 0, what="loaded buffers released")


@pytest.mark.usefixtures("guarded")
def test_cluster_primary_killed_during_loads_then_promoted(cluster: RedisClusterSet, remote_engines: EngineFactory) -> None:
    engine = engine_on(remote_engines, cluster.url)
    cache, stored = store(engine)
    cluster.replicate()
    victim = max(cluster.primaries(), key=lambda n: cluster.keys_per_primary()[n.port])
    killed = kill_before_a_read(engine, victim.kill)

    loaded = load(engine, cache, stored)  # returns; a prefix of exact chunks
    assert killed.is_set() and not victim.is_running() and loaded <= CHUNKS
    wait_until(lambda: active_buffers(engine) == 0, timeout_s=30, what="failed gets' buffers released")

    cluster.wait_healthy()
    assert victim.port not in [n.port for n in cluster.primaries()]
    wait_until(lambda: load(engine, cache, stored) == CHUNKS, timeout_s=30, what="every chunk a hit again after promotion")
    wait_until(lambda: active_buffers(engine) == 0, what="loaded buffers released")


@pytest.mark.usefixtures("guarded")
def test_sentinel_primary_killed_during_loads_then_promoted(sentinel: RedisSentinelSet, remote_engines: EngineFactory) -> None:
    import redis as redis_py

    engine = engine_on(remote_engines, sentinel.url)
    cache, stored = store(engine)
    sentinel.replicate()
    old = sentinel.primary_port()
    killed = kill_before_a_read(engine, sentinel.primary.kill)
    # LMCache's sentinel connector reads from the replica: the loads go on.
    assert load(engine, cache, stored) <= CHUNKS
    assert killed.is_set() and not sentinel.primary.is_running()
    wait_until(lambda: active_buffers(engine) == 0, timeout_s=30, what="buffers released")

    assert sentinel.wait_failover(old) == sentinel.replica.port
    wait_until(lambda: load(engine, cache, stored) == CHUNKS, timeout_s=30, what="every chunk a hit on the promoted replica")
    # Writes reach the new primary: empty it, store again, every chunk is a hit.
    client = redis_py.Redis(host="127.0.0.1", port=sentinel.replica.port)
    try:
        client.flushall()
    finally:
        client.close()
    cache, stored = store(engine)
    wait_until(lambda: load(engine, cache, stored) == CHUNKS, timeout_s=30, what="stores after the failover served")
    wait_until(lambda: active_buffers(engine) == 0, what="buffers released")

