"""Load: many concurrent requests with random prefix sharing through a real LMCache engine.

Contract checked, on LMCache 0.5.6's engine with our paged device connector
(vllm-ascend's per-layer ``(K, V)`` layout), driven by a pool of threads the
way many in-flight requests would drive it:

- at least 64 requests are in flight at once (a barrier holds the first wave
  until all 64 have started);
- every chunk a request gets back is byte-identical to what was stored for
  that token prefix (CRC32 of each chunk's KV, computed independently);
- hits happen (prefix sharing works under load) and misses are clean (the
  request's untouched KV stays zero);
- after the run the CPU allocator holds exactly the chunks the CPU tier
  keeps, and nothing after ``clear()``: no leaked memory objects;
- every wait is bounded, so a deadlock fails the test instead of hanging it.

A small CPU tier forces evictions concurrently with lookups and loads; the
Redis variant sends every chunk through a real ``redis-server`` as well.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from testkit.remote_servers import RedisServer
from tests.integrations.lmcache.conftest import ASCEND_KV_TUPLES, EngineFactory, KV_DTYPE, object_shape, paged_engine
from tests.kernels.reference import D2H, H2D, Geom, PagedCache, make_paged, ref_transfer

CHUNK = 64
BLOCK = 16
MAX_CHUNKS = 4
VARIANTS = 4  # per chunk position: two random requests share a prefix often, not always
IN_FLIGHT = 64
REQUESTS = 256
BLOCKS_PER_REGION = MAX_CHUNKS * CHUNK // BLOCK
GEOM = Geom(num_layers=2, num_blocks=IN_FLIGHT * BLOCKS_PER_REGION, block_size=BLOCK, num_heads=2, head_size=8)
DEADLOCK_BOUND_S = 60.0  # far above a normal run (seconds); only a hang gets near it

Prefix = tuple[int, ...]  # the variant chosen at each chunk position: identifies a token prefix


def chunk_tokens(path: Prefix) -> list[int]:
    """Tokens of the last chunk of ``path`` (depend on position and variant only)."""
    pos, variant = len(path) - 1, path[-1]
    return [(pos * 1009 + variant * 101 + i * 7 + 3) % 30000 for i in range(CHUNK)]


def chunk_kv(path: Prefix) -> torch.Tensor:
    """The KV of the last chunk of ``path``: a function of the whole prefix, as in a real model."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr(path).encode()))
    shape = object_shape(ASCEND_KV_TUPLES, GEOM, CHUNK)
    return torch.randn(shape, generator=gen).to(KV_DTYPE)


def crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().view(torch.uint8).numpy().tobytes())


@dataclass
class Tally:
    """What the worker threads saw (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    chunks_hit: int = 0
    chunks_checked: int = 0
    errors: list[str] = field(default_factory=list)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, hits: int, checked: int) -> None:
        with self.lock:
            self.in_flight -= 1
            self.requests += 1
            self.chunks_hit += hits
            self.chunks_checked += checked


class LoadRun:
    """Shared state: one paged cache cut into per-thread regions of whole blocks."""

    def __init__(self, engine: Any, cache: PagedCache, seed: int) -> None:
        self.engine = engine
        self.cache = cache
        self.rng = random.Random(seed)
        self.regions: list[int] = list(range(IN_FLIGHT))
        self.region_lock = threading.Lock()
        self.barrier = threading.Barrier(IN_FLIGHT, timeout=DEADLOCK_BOUND_S)
        self.tally = Tally()
        self.expected: dict[Prefix, int] = {}

    def paths(self, n: int) -> list[Prefix]:
        out = []
        for _ in range(n):
            length = self.rng.randint(1, MAX_CHUNKS)
            out.append(tuple(self.rng.randrange(VARIANTS) for _ in range(length)))
        return out

    def slots(self, region: int, num_tokens: int) -> torch.Tensor:
        first = region * BLOCKS_PER_REGION * BLOCK
        return torch.arange(first, first + num_tokens, dtype=torch.long)

    def request(self, index: int, path: Prefix) -> None:
        with self.region_lock:
            region = self.regions.pop()
        self.tally.enter()
        try:
            if index < IN_FLIGHT:
                self.barrier.wait()  # the first wave: all 64 requests in flight together
            hits, checked = self._serve(region, path)
        except Exception as exc:  # collected: the test fails on any of them
            with self.tally.lock:
                self.tally.errors.append(f"request {index} {path}: {type(exc).__name__}: {exc}")
            hits, checked = 0, 0
        finally:
            with self.region_lock:
                self.regions.append(region)
        self.tally.leave(hits, checked)

    def _serve(self, region: int, path: Prefix) -> tuple[int, int]:
        """Load what LMCache has for ``path``, check it, then store the full request (vLLM's order)."""
        tokens = torch.tensor([t for n in range(1, len(path) + 1) for t in chunk_tokens(path[:n])], dtype=torch.long)
        slots = self.slots(region, len(tokens))
        self._fill(slots, [torch.zeros(object_shape(ASCEND_KV_TUPLES, GEOM, CHUNK), dtype=KV_DTYPE)] * len(path))
        mask = self.engine.retrieve(tokens, kvcaches=self.cache.data, slot_mapping=slots, req_id=f"load-{region}")
        hit_tokens = int(mask.sum())
        if not bool(mask[:hit_tokens].all()) or hit_tokens % CHUNK:
            raise AssertionError(f"retrieved mask is not a whole-chunk prefix: {hit_tokens} tokens")
        hits = hit_tokens // CHUNK
        for n in range(len(path)):
            got = crc(self._read(slots[n * CHUNK : (n + 1) * CHUNK]))
            want = self.expected[path[: n + 1]] if n < hits else crc(torch.zeros(object_shape(ASCEND_KV_TUPLES, GEOM, CHUNK), dtype=KV_DTYPE))
            if got != want:
                raise AssertionError(f"chunk {n} of {path}: checksum {got:#x} != {want:#x} ({'hit' if n < hits else 'miss'})")
        self._fill(slots, [chunk_kv(path[: n + 1]) for n in range(len(path))])  # "the forward pass"
        self.engine.store(tokens, kvcaches=self.cache.data, slot_mapping=slots, req_id=f"store-{region}")
        return hits, len(path)

    def _fill(self, slots: torch.Tensor, chunks: list[torch.Tensor]) -> None:
        for n, kv in enumerate(chunks):
            ref_transfer(self.cache, kv, slots[n * CHUNK : (n + 1) * CHUNK], H2D)

    def _read(self, slots: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(object_shape(ASCEND_KV_TUPLES, GEOM, CHUNK), dtype=KV_DTYPE)
        ref_transfer(self.cache, out, slots, D2H)
        return out

    def run(self, paths: list[Prefix]) -> None:
        """Serve ``paths`` on ``IN_FLIGHT`` daemon threads (a hung one cannot block pytest's exit)."""
        for p in paths:
            for n in range(1, len(p) + 1):
                self.expected.setdefault(p[:n], crc(chunk_kv(p[:n])))
        todo = list(enumerate(paths))
        todo_lock = threading.Lock()

        def worker() -> None:
            while True:
                with todo_lock:
                    if not todo:
                        return
                    index, path = todo.pop(0)
                self.request(index, path)

        threads = [threading.Thread(target=worker, name=f"load-{i}", daemon=True) for i in range(IN_FLIGHT)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + DEADLOCK_BOUND_S
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        hung = [t.name for t in threads if t.is_alive()]
        if hung:
            self.barrier.abort()
            raise AssertionError(f"{len(hung)} threads still busy after {DEADLOCK_BOUND_S:.0f} s (deadlock?); {self.tally.requests} requests done")


def cpu_allocator(engine: Any) -> Any:
    """LMCache's CPU tier allocator (the one every chunk object comes from)."""
    cpu = engine.storage_manager.storage_backends["LocalCPUBackend"]
    inner = cpu.memory_allocator
    inner = getattr(inner, "pin_allocator", inner)  # MixedMemoryAllocator wraps a TensorMemoryAllocator
    return getattr(inner, "allocator", inner)


def build_engine(engines: EngineFactory, **config: Any) -> Any:
    return paged_engine(engines, GEOM, CHUNK, **config)


def fresh_cache() -> PagedCache:
    cache = make_paged(ASCEND_KV_TUPLES.fmt, GEOM, KV_DTYPE, torch.Generator().manual_seed(0))
    for t in cache.storage():
        t.zero_()
    return cache


def settled_allocations(engine: Any, kept: int) -> int:
    """Active allocations once in-flight remote puts let go of theirs (bounded wait)."""
    allocator = cpu_allocator(engine)
    deadline = time.monotonic() + DEADLOCK_BOUND_S
    while allocator.num_active_allocations != kept and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(allocator.num_active_allocations)


def check_run(run: LoadRun, engine: Any, need_hits: bool = True) -> None:
    tally = run.tally
    assert not tally.errors, "\n".join(tally.errors[:10])
    assert tally.requests == REQUESTS
    assert tally.max_in_flight >= IN_FLIGHT
    assert tally.in_flight == 0
    assert tally.chunks_hit > 0 or not need_hits, "prefix sharing never produced a hit"
    kept = len(engine.storage_manager.storage_backends["LocalCPUBackend"].hot_cache)  # 0 when local_cpu=False
    assert settled_allocations(engine, kept) == kept, "memory objects outlived their request"
    engine.clear()
    allocator = cpu_allocator(engine)
    assert allocator.num_active_allocations == 0
    assert allocator.total_allocated_size == 0


def test_many_concurrent_requests_local_cpu(remote_engines: EngineFactory) -> None:
    # ~0.6 MiB of chunk space: far fewer chunks than the run stores, so LRU
    # eviction runs while other threads look up and load.
    engine = build_engine(remote_engines, max_local_cpu_size=0.0006)
    run = LoadRun(engine, fresh_cache(), seed=1)
    run.run(run.paths(REQUESTS))
    check_run(run, engine)


def test_many_concurrent_requests_through_redis(redis: RedisServer, remote_engines: EngineFactory) -> None:
    # local_cpu=False: the CPU tier only lends buffers, so every hit is a Redis
    # get. The pool (16 MiB) holds every in-flight chunk plus pending puts:
    # LMCache 0.5.6's Redis get allocates its buffer on the event-loop thread
    # and waits there for memory, while the threads holding that memory wait on
    # the same loop (a deadlock under memory pressure; see docs/reliability.md).
    engine = build_engine(remote_engines, local_cpu=False, max_local_cpu_size=0.016, remote_url=redis.url, remote_serde="naive")
    first = LoadRun(engine, fresh_cache(), seed=2)
    paths = first.paths(REQUESTS)
    first.run(paths)
    check_run(first, engine, need_hits=False)  # puts are asynchronous: early hits depend on timing
    # Every put has finished (check_run waited for the buffers): the same
    # requests again must now load every chunk from Redis.
    second = LoadRun(engine, fresh_cache(), seed=3)
    second.run(paths)
    check_run(second, engine)
    assert second.tally.chunks_hit == second.tally.chunks_checked
