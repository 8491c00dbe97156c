"""Real LMCache engines built in-process, and what tests and benchmarks read off them.

:class:`EngineFactory` builds ``LMCacheEngine`` instances the way LMCache's
vLLM adapter does (``LMCacheEngineBuilder.get_or_create`` with a device
connector and single-process broadcasts), remembering their names so the
caller can destroy them. :func:`make_metadata` is the worker's
``LMCacheMetadata`` for a KV shape. :func:`cpu_allocator` finds the allocator
under the engine's CPU backend, whose counters say what is still held
(:func:`active_buffers`, :func:`allocated_bytes`, :func:`wait_idle`).
Used by ``tests/integrations/lmcache``, ``benchmarks/remote_tiers.py`` and the
engine-session worker probe (``testkit/vllm_session.py``).
"""

from __future__ import annotations

import gc
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch


def make_metadata(
    *,
    num_layers: int,
    num_heads: int,
    head_size: int,
    chunk_size: int = 256,
    model_name: str = "org/tiny-model",
    worker_id: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.bfloat16,
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


def _broadcast(tensor: torch.Tensor, src: int) -> torch.Tensor:
    return tensor


def _broadcast_object(obj: Any, src: int) -> Any:
    return obj


@dataclass
class EngineFactory:
    """Builds real LMCache engines (in whatever ``LMCacheEngineBuilder`` registry is current)."""

    created: list[str] = field(default_factory=list)

    def build(self, connector: Any, metadata: Any, *, instance_id: str | None = None, post_init: bool = True, **config: Any) -> Any:
        """An engine with ``connector``; ``config``: LMCache settings over small-CPU-tier defaults."""
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


def cpu_allocator(engine: Any) -> Any:
    """The allocator under the engine's CPU backend (MixedMemoryAllocator wraps one); None without one."""
    backend = engine.storage_manager.storage_backends.get("LocalCPUBackend")
    if backend is None:
        return None
    allocator = backend.memory_allocator
    inner = getattr(allocator, "pin_allocator", allocator)
    return getattr(inner, "allocator", inner)


def active_buffers(engine: Any) -> int:
    """CPU buffers the engine's allocator has handed out and not had back."""
    return int(cpu_allocator(engine).num_active_allocations)


def allocated_bytes(engine: Any) -> int:
    """Bytes of the CPU allocator handed out and not had back."""
    return int(cpu_allocator(engine).total_allocated_size)


def wait_idle(engine: Any, timeout_s: float = 120.0) -> None:
    """Until every put is acknowledged (the staging allocator has nothing out); TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while active_buffers(engine):
        if time.monotonic() > deadline:
            raise TimeoutError(f"puts still in flight after {timeout_s:.0f} s")
        time.sleep(0.002)
