"""Shared fixtures for the LMCache integration tests.

Engine KV is built with the independent reference in ``tests/kernels/reference.py``
(natural engine shapes, plain torch indexing); memory objects are real LMCache
``TensorMemoryObj`` from LMCache's own ``TensorMemoryAllocator``.
"""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from tests.kernels.reference import D2H, Geom, PagedCache, make_paged, ref_transfer


@dataclass(frozen=True)
class EngineLayout:
    """One way an engine registers its per-layer KV."""

    name: str
    fmt: int  # reference / EngineKVFormat id
    hints: dict[str, str]
    mla: bool = False


CPU_HND = EngineLayout("vllm_cpu_hnd", 12, {"kv_layout": "HND"})
ASCEND_KV_TUPLES = EngineLayout("vllm_ascend_kv_tuples", 16, {"kv_layout": "NHD"})
FLASH_NHD = EngineLayout("vllm_flash_nhd", 1, {"kv_layout": "NHD"})
MLA = EngineLayout("vllm_mla", 3, {}, mla=True)
LAYOUTS: tuple[EngineLayout, ...] = (CPU_HND, ASCEND_KV_TUPLES, FLASH_NHD, MLA)
LAYOUT_IDS = [layout.name for layout in LAYOUTS]

KV_DTYPE = torch.bfloat16


def chunk_bounds(num_tokens: int, chunk: int) -> tuple[list[int], list[int]]:
    """``starts`` / ``ends`` as LMCache's token database cuts a request."""
    starts = list(range(0, num_tokens, chunk))
    ends = [min(s + chunk, num_tokens) for s in starts]
    return starts, ends


def object_shape(layout: EngineLayout, geom: Geom, num_tokens: int) -> tuple[int, int, int, int]:
    """The non-layerwise memory object ``[kv, L, T, H]`` (KV_2LTD / KV_MLA_FMT)."""
    if layout.mla:
        return (1, geom.num_layers, num_tokens, geom.head_size)
    return (2, geom.num_layers, num_tokens, geom.num_heads * geom.head_size)


def hidden_dim(layout: EngineLayout, geom: Geom) -> int:
    return geom.head_size if layout.mla else geom.num_heads * geom.head_size


def reference_objects(cache: PagedCache, layout: EngineLayout, slots: torch.Tensor, starts: list[int], ends: list[int]) -> list[torch.Tensor]:
    """What a store must put in each chunk's object, by plain indexing."""
    out = []
    for s, e in zip(starts, ends):
        ref = torch.zeros(object_shape(layout, cache.geom, e - s), dtype=KV_DTYPE)
        ref_transfer(cache, ref, slots[s:e], D2H)
        out.append(ref)
    return out


def zero_cache(cache: PagedCache) -> None:
    for t in cache.storage():
        t.zero_()


def zeros_like_cache(cache: PagedCache) -> PagedCache:
    fresh = cache.clone()
    zero_cache(fresh)
    return fresh


class ObjectPool:
    """LMCache memory objects from LMCache's ``TensorMemoryAllocator``."""

    def __init__(self, nbytes: int = 16 << 20) -> None:
        self._allocator = TensorMemoryAllocator(torch.zeros(nbytes, dtype=torch.uint8))
        self._objects: list[MemoryObj] = []

    def new(self, shape: tuple[int, ...], fmt: MemoryFormat, dtype: torch.dtype = KV_DTYPE) -> MemoryObj:
        obj = self._allocator.allocate(torch.Size(shape), dtype, fmt)
        assert obj is not None, "test pool exhausted"
        assert obj.tensor is not None
        obj.tensor.fill_(0)
        self._objects.append(obj)
        return obj

    def release(self) -> None:
        for obj in self._objects:
            if obj.get_ref_count() > 0:
                obj.ref_count_down()
        self._objects.clear()


@pytest.fixture
def pool() -> Iterator[ObjectPool]:
    p = ObjectPool()
    yield p
    p.release()


CacheMaker = Callable[[EngineLayout, Geom], PagedCache]
SlotPair = tuple[torch.Tensor, torch.Tensor]
Mappings = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture
def make_cache(gen: torch.Generator) -> CacheMaker:
    def build(layout: EngineLayout, geom: Geom) -> PagedCache:
        return make_paged(layout.fmt, geom, KV_DTYPE, gen)

    return build


# ---------------------------------------------------------------- engines


@dataclass
class EngineFactory:
    """Builds real LMCache engines in an isolated ``LMCacheEngineBuilder`` registry."""

    created: list[str] = field(default_factory=list)

    def build(
        self,
        connector: Any,
        metadata: Any,
        *,
        instance_id: str | None = None,
        post_init: bool = True,
        **config: Any,
    ) -> Any:
        from lmcache.v1.cache_engine import LMCacheEngineBuilder
        from lmcache.v1.config import LMCacheEngineConfig

        settings: dict[str, Any] = dict(
            chunk_size=metadata.chunk_size,
            local_cpu=True,
            max_local_cpu_size=0.01,  # GiB
            pre_caching_hash_algorithm="sha256_cbor",
        )
        settings.update(config)
        cfg = LMCacheEngineConfig.from_defaults(**settings)
        name = instance_id or f"lmcache-ascend-test-{uuid.uuid4().hex[:12]}"
        # LMCacheEngine.__init__ runs a full gc.collect(); over torch + vLLM's heap that
        # takes seconds. Freezing the (long-lived) heap first keeps it to the new objects.
        gc.freeze()
        try:
            engine = LMCacheEngineBuilder.get_or_create(name, cfg, metadata, connector, _broadcast, _broadcast_object)
        finally:
            gc.unfreeze()
        self.created.append(name)
        if post_init:
            engine.post_init()
        return engine

    def destroy(self, name: str) -> None:
        from lmcache.v1.cache_engine import LMCacheEngineBuilder

        if name in self.created:
            self.created.remove(name)
            LMCacheEngineBuilder.destroy(name)

    def name_of(self, engine: Any) -> str:
        from lmcache.v1.cache_engine import LMCacheEngineBuilder

        for name in self.created:
            if LMCacheEngineBuilder.get(name) is engine:
                return name
        raise KeyError("engine not built by this factory")


@pytest.fixture
def disk_writes_guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``plugin.guard_disk_writes`` installed for this test; LMCache's class restored after it."""
    from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend

    from lmcache_ascend.integrations.lmcache import plugin

    monkeypatch.setattr(LocalDiskBackend, "async_save_bytes_to_disk", LocalDiskBackend.async_save_bytes_to_disk)
    plugin.guard_disk_writes()
    yield


def _cpu_allocator(engine: Any) -> Any:
    """The allocator under the engine's CPU backend (MixedMemoryAllocator wraps one)."""
    allocator = engine.storage_manager.storage_backends["LocalCPUBackend"].memory_allocator
    inner = getattr(allocator, "pin_allocator", allocator)
    return getattr(inner, "allocator", inner)


def active_buffers(engine: Any) -> int:
    """CPU buffers the engine's allocator has handed out and not had back."""
    return int(_cpu_allocator(engine).num_active_allocations)


def allocated_bytes(engine: Any) -> int:
    """Bytes of the CPU allocator handed out and not had back."""
    return int(_cpu_allocator(engine).total_allocated_size)


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` every 50 ms; AssertionError naming ``what`` after ``timeout_s``."""
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        pause.wait(0.05)
    raise AssertionError(f"{what} not reached in {timeout_s:.0f} s")


def _broadcast(tensor: torch.Tensor, src: int) -> torch.Tensor:
    return tensor


def _broadcast_object(obj: Any, src: int) -> Any:
    return obj


@pytest.fixture
def isolated_builder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A private ``LMCacheEngineBuilder`` registry: engines other tests (or the vLLM
    tests) registered are invisible here, and ours never leak out."""
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    for attr in ("_instances", "_cfgs", "_metadatas", "_stat_loggers"):
        monkeypatch.setattr(LMCacheEngineBuilder, attr, {})
    yield
    for name in list(LMCacheEngineBuilder._instances):
        LMCacheEngineBuilder.destroy(name)


@pytest.fixture
def engines(isolated_builder: None) -> Iterator[EngineFactory]:
    factory = EngineFactory()
    yield factory
    for name in list(factory.created):
        factory.destroy(name)


@pytest.fixture
def remote_engines(isolated_builder: None) -> Iterator[EngineFactory]:
    """Like ``engines``, but remote connectors are closed first with a bound
    (``remote_tier.close_remote_backends``: LMCache 0.5.6's own close hangs on redis://)."""
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    from lmcache_ascend.integrations.lmcache import remote_tier

    factory = EngineFactory()
    yield factory
    for name in list(factory.created):
        engine = LMCacheEngineBuilder.get(name)
        if engine is not None:
            remote_tier.close_remote_backends(engine, timeout_s=10.0)
        factory.destroy(name)


def make_metadata(
    *,
    num_layers: int,
    num_heads: int,
    head_size: int,
    chunk_size: int = 256,
    model_name: str = "org/tiny-model",
    worker_id: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = KV_DTYPE,
    use_mla: bool = False,
) -> Any:
    from lmcache.v1.metadata import LMCacheMetadata

    return LMCacheMetadata(
        model_name=model_name,
        world_size=world_size,
        local_world_size=world_size,
        worker_id=worker_id,
        local_worker_id=worker_id,
        kv_dtype=dtype,
        kv_shape=(num_layers, 1 if use_mla else 2, chunk_size, num_heads, head_size),
        use_mla=use_mla,
        role="worker",
        chunk_size=chunk_size,
    )


def paged_engine(
    engines: EngineFactory, geom: Geom, chunk_size: int, layout: EngineLayout = ASCEND_KV_TUPLES, *, model_name: str = "org/tiny-model", **config: Any
) -> Any:
    """A real LMCache engine with our paged device connector over ``geom``'s KV in ``layout``;
    ``config``: LMCache settings (``EngineFactory.build``)."""
    from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector

    meta = make_metadata(num_layers=geom.num_layers, num_heads=geom.num_heads, head_size=geom.head_size, chunk_size=chunk_size, model_name=model_name)
    conn = PagedKVConnector.from_metadata(meta, device="cpu", layout_hints=layout.hints)
    return engines.build(conn, meta, **config)
