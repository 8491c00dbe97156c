"""Shared fixtures for the LMCache integration tests.

Engine KV is built with the independent reference in ``tests/kernels/reference.py``
(natural engine shapes, plain torch indexing); memory objects are real LMCache
``TensorMemoryObj`` from LMCache's own ``TensorMemoryAllocator``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from testkit.lmcache_engines import EngineFactory, active_buffers, allocated_bytes, make_metadata
from tests.kernels.reference import D2H, Geom, PagedCache, make_paged, ref_transfer

__all__ = ["EngineFactory", "active_buffers", "allocated_bytes", "make_metadata"]  # imported by the tests from here


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


@pytest.fixture
def disk_writes_guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``plugin.guard_disk_writes`` installed for this test; LMCache's class restored after it."""
    from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend

    from lmcache_ascend.integrations.lmcache import plugin

    monkeypatch.setattr(LocalDiskBackend, "async_save_bytes_to_disk", LocalDiskBackend.async_save_bytes_to_disk)
    plugin.guard_disk_writes()
    yield


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition", detail: Callable[[], str] | None = None) -> None:
    """Poll ``condition`` every 50 ms; AssertionError naming ``what`` after ``timeout_s``
    (and, given ``detail``, what it reports then: the state a failure is read from)."""
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        pause.wait(0.05)
    raise AssertionError(f"{what} not reached in {timeout_s:.0f} s" + (f"; {detail()}" if detail else ""))


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


def paged_engine(
    engines: EngineFactory, geom: Geom, chunk_size: int, layout: EngineLayout = ASCEND_KV_TUPLES, *, model_name: str = "org/tiny-model", **config: Any
) -> Any:
    """A real LMCache engine with our paged device connector over ``geom``'s KV in ``layout``;
    ``config``: LMCache settings (``EngineFactory.build``)."""
    from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector

    meta = make_metadata(num_layers=geom.num_layers, num_heads=geom.num_heads, head_size=geom.head_size, chunk_size=chunk_size, model_name=model_name)
    conn = PagedKVConnector.from_metadata(meta, device="cpu", layout_hints=layout.hints)
    return engines.build(conn, meta, **config)
