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

Needs Debian's ``redis-server``; without it they are skipped and the run's summary names the
package to install (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor, wait
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
    allocated_bytes,
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


def engine_on(engines: EngineFactory, url: str, geom: Geom = GEOM, cpu_gib: float = 0.02) -> Any:
    """Every hit a remote get: LMCache's CPU tier only stages (``cpu_gib`` of buffers)."""
    return paged_engine(engines, geom, CHUNK, local_cpu=False, max_local_cpu_size=cpu_gib, remote_url=url, remote_serde="naive", blocking_timeout_secs=10)


def chunk_crcs(cache: PagedCache, slots: torch.Tensor, block_size: int = GEOM.block_size) -> list[int]:
    """CRC32 of each chunk's K and V rows at ``slots`` (format 16: per-layer (K, V) [NB, BS, NH, HS])."""
    out = []
    for c in range(len(slots) // CHUNK):
        s = slots[c * CHUNK : (c + 1) * CHUNK]
        blocks, offsets = s // block_size, s % block_size
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
    wait_until(lambda: load(engine, cache, stored) == CHUNKS, timeout_s=30, what="every chunk a hit on the promoted replica", detail=sentinel.describe)
    # Writes reach the new primary: empty it, store again, every chunk is a hit.
    client = redis_py.Redis(host="127.0.0.1", port=sentinel.replica.port)
    try:
        client.flushall()
    finally:
        client.close()
    # LMCache drops a put that fails (a cache may drop a store), and one may meet the pools
    # before they follow the switch; what must
    # hold is that within the bound a store lands on the new primary and loads back exactly.
    def stored_and_served() -> bool:
        cache, stored = store(engine)
        return load(engine, cache, stored) == CHUNKS

    wait_until(stored_and_served, timeout_s=30, what="a store after the failover served", detail=sentinel.describe)
    wait_until(lambda: active_buffers(engine) == 0, what="buffers released")


IN_FLIGHT = 64
BASES = 4
REGION = CHUNKS * CHUNK  # slots of one request (whole blocks)
# One engine with one paged KV cache, as in serving: the shared prefixes are stored from
# regions 0..BASES-1, request i works in region BASES + i, so concurrent loads write
# disjoint slots.
BIG = Geom(num_layers=2, num_blocks=(BASES + IN_FLIGHT) * REGION // 16, block_size=16, num_heads=2, head_size=8)


def region(i: int) -> torch.Tensor:
    return torch.arange(i * REGION, (i + 1) * REGION, dtype=torch.long)


def in_flight_requests(seed: int) -> list[tuple[str, int, int]]:
    """(kind, sequence, chunks): loads of a random prefix of one of BASES shared prefixes,
    and (a quarter) puts of sequences of their own, in random order."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(IN_FLIGHT):
        kind = "put" if torch.rand((), generator=rng) < 0.25 else "load"
        base = int(torch.randint(BASES, (), generator=rng))
        out.append((kind, base if kind == "load" else BASES + i, int(torch.randint(1, CHUNKS + 1, (), generator=rng))))
    return out


def tokens_of(sequence: int) -> torch.Tensor:
    return (torch.arange(REGION, dtype=torch.long) * (13 + 2 * sequence) + 5 + sequence) % 30000


@pytest.mark.usefixtures("guarded")
def test_cluster_64_requests_in_flight_across_a_failover(cluster: RedisClusterSet, remote_engines: EngineFactory) -> None:
    """64 concurrent requests (random shared prefixes; a quarter store new sequences) while the
    primary holding most keys is SIGKILLed: every request returns, every loaded chunk has the
    stored CRC32, the allocator is back to 0 objects / 0 bytes, and after promotion every
    shared prefix loads exactly."""
    engine = engine_on(remote_engines, cluster.url, BIG, cpu_gib=0.05)
    cache = make_paged(ASCEND_KV_TUPLES.fmt, BIG, KV_DTYPE, torch.Generator().manual_seed(5))
    for base in range(BASES):
        engine.store(tokens_of(base), kvcaches=cache.data, slot_mapping=region(base))
    stored = {base: chunk_crcs(cache, region(base)) for base in range(BASES)}
    wait_until(lambda: active_buffers(engine) == 0, timeout_s=30, what="every put sent")
    cluster.replicate()
    victim = max(cluster.primaries(), key=lambda n: cluster.keys_per_primary()[n.port])
    killed = kill_before_a_read(engine, victim.kill, nth=3 * IN_FLIGHT // 2)

    def run(i: int, request: tuple[str, int, int]) -> tuple[str, int, int]:
        """(kind, chunks asked for, chunks loaded)"""
        kind, sequence, chunks = request
        slots = region(BASES + i)[: chunks * CHUNK]
        if kind == "put":
            engine.store(tokens_of(sequence)[: len(slots)], kvcaches=cache.data, slot_mapping=slots)
            return kind, chunks, 0
        first, last = int(slots[0]) // BIG.block_size, int(slots[-1]) // BIG.block_size
        for layer in cache.data:  # type: ignore[attr-defined]
            for t in layer:  # K, V: [NB, BS, NH, HS]
                t[first : last + 1] = 0
        got = int(engine.retrieve(tokens_of(sequence)[: len(slots)], kvcaches=cache.data, slot_mapping=slots).sum())
        assert got % CHUNK == 0, f"{got} tokens is not whole chunks"
        loaded = got // CHUNK
        assert chunk_crcs(cache, slots)[:loaded] == stored[sequence][:loaded], f"request {i}: a loaded chunk differs from what was stored"
        return kind, chunks, loaded

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        futures = [pool.submit(run, i, r) for i, r in enumerate(in_flight_requests(seed=7))]
        _, pending = wait(futures, timeout=120)  # a hang guard, not a timing assertion
        assert not pending, f"{len(pending)} of {IN_FLIGHT} requests did not return in 120 s"
    results = [f.result() for f in futures]  # re-raises any request's exception
    # The kill ran inside a read, so requests were in flight. Whether a load is cut short
    # depends on redis-py's retries racing the promotion; either way its chunks were exact.
    assert killed.is_set() and not victim.is_running()
    cut = sum(1 for kind, asked, loaded in results if kind == "load" and loaded < asked)
    print(f"{cut} of {sum(r[0] == 'load' for r in results)} loads cut short by the failover")

    cluster.wait_healthy()
    wait_until(lambda: active_buffers(engine) == 0 and allocated_bytes(engine) == 0, timeout_s=60, what="allocator back to 0 objects / 0 bytes")
    for base in range(BASES):  # the shared prefixes: every chunk a hit again, exact
        slots = region(BASES + base)

        def whole(base: int = base, slots: torch.Tensor = slots) -> bool:
            return int(engine.retrieve(tokens_of(base), kvcaches=cache.data, slot_mapping=slots).sum()) == REGION

        wait_until(whole, timeout_s=30, what=f"shared prefix {base} a full hit after promotion")
        assert chunk_crcs(cache, slots) == stored[base]
    wait_until(lambda: active_buffers(engine) == 0 and allocated_bytes(engine) == 0, timeout_s=30, what="allocator back to 0 after the reloads")
