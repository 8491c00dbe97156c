"""Layerwise LMCache device connector (``use_layerwise``) for host and NPU KV.

LMCache drives it as two generators (``LMCacheEngine.retrieve_layer`` /
``store_layer``); per layer and chunk the memory object is ``KV_T2D``
``[T, 2, H]`` (``[T, H]`` for MLA):

``batched_to_gpu(starts, ends, **kw)`` (load) yields ``num_layers + 2`` times:
    prime with ``next()``, then ``send(objects_of_layer_i)`` once per layer,
    which loads layer ``i``; the final ``next()`` waits for the last layer.
``batched_from_gpu(memory_objs, starts, ends, **kw)`` (store) yields
    ``num_layers + 1`` times: each ``next()`` stores one layer (in order); the
    last one waits for the last layer.

Required kwargs: ``kvcaches``, ``slot_mapping``, ``sync``; on load also
``vllm_cached_tokens`` (those tokens' slots are left alone). It subclasses
upstream's ``VLLMPagedMemLayerwiseGPUConnector`` only because LMCache's engine
checks for that class; none of its CUDA-stream code is used.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import torch
from lmcache.v1.gpu_connector.gpu_connectors import VLLMPagedMemLayerwiseGPUConnector
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from lmcache_ascend.integrations.lmcache.engine_kv import EngineKV, EngineKVUser
from lmcache_ascend.integrations.lmcache.paged_connector import require_kwarg
from lmcache_ascend.kernels.slot_ops import single_layer_kv_transfer

H2D = 0
D2H = 1


class LayerwiseKVConnector(EngineKVUser, VLLMPagedMemLayerwiseGPUConnector):
    def __init__(
        self,
        *,
        num_layers: int,
        hidden_dim: int,
        use_mla: bool,
        device: torch.device | str,
        layout_hints: Mapping[str, Any] | None = None,
        engine: str = "vllm",
    ) -> None:
        # Deliberately not calling the upstream __init__: it creates CUDA streams.
        self._setup(
            num_layers=num_layers, hidden_dim=hidden_dim, use_mla=use_mla, device=device, layout_hints=layout_hints, engine=engine
        )
        self.use_gpu = False

    @property
    def memory_format(self) -> MemoryFormat:
        return MemoryFormat.KV_MLA_FMT if self.use_mla else MemoryFormat.KV_T2D

    def get_shape(self, num_tokens: int) -> torch.Size:
        if self.use_mla:
            return torch.Size([num_tokens, self.hidden_dim_size])
        return torch.Size([num_tokens, 2, self.hidden_dim_size])

    def _layer(self, layer: int) -> Any:
        entry = self.kvcaches[layer]  # type: ignore[index]
        return tuple(entry) if isinstance(entry, (list, tuple)) else entry

    def _move(self, kv: EngineKV, layer: int, obj: MemoryObj, slots: torch.Tensor, direction: int) -> None:
        if obj.tensor is None:
            raise ValueError("memory object has no tensor")
        single_layer_kv_transfer(obj.tensor, self._layer(layer), slots, direction, kv.fmt, token_major=True)

    def batched_to_gpu(self, starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> Generator[None, Any, None]:
        kv = self._engine_kv(kwargs)
        slot_mapping = require_kwarg(kwargs, "slot_mapping")
        sync = bool(require_kwarg(kwargs, "sync"))
        cached = int(kwargs.get("vllm_cached_tokens", 0))
        chunks = [self._skip_cached(slot_mapping[s:e], s, cached) for s, e in zip(starts, ends, strict=True)]
        for layer in range(self.num_layers):
            objs = yield
            if objs is None or len(objs) != len(chunks):
                raise ValueError(f"layer {layer}: expected {len(chunks)} memory objects, got {0 if objs is None else len(objs)}")
            with self._backend.use_stream(self.load_stream):
                for obj, slots in zip(objs, chunks):
                    if obj.metadata.fmt != self.memory_format:
                        raise ValueError(f"memory object is {obj.metadata.fmt}, this connector loads {self.memory_format}")
                    self._move(kv, layer, obj, slots, H2D)
            if sync:
                self.load_stream.synchronize()
        yield
        self.load_stream.synchronize()
        yield

    @staticmethod
    def _skip_cached(slots: Any, start: int, cached: int) -> Any:
        """Mark the chunk's tokens the engine already computed (``< cached``) as -1."""
        skip = min(len(slots), max(0, cached - start))
        if skip == 0:
            return slots
        slots = slots.clone()
        slots[:skip] = -1
        return slots

    def batched_from_gpu(
        self, memory_objs: Sequence[Sequence[MemoryObj]], starts: Sequence[int], ends: Sequence[int], **kwargs: Any
    ) -> Generator[None, None, None]:
        kv = self._engine_kv(kwargs)
        slot_mapping = require_kwarg(kwargs, "slot_mapping")
        sync = bool(require_kwarg(kwargs, "sync"))
        chunks = [slot_mapping[s:e] for s, e in zip(starts, ends, strict=True)]
        for layer in range(self.num_layers):
            self.store_stream.wait_stream(self._backend.current_stream())
            with self._backend.use_stream(self.store_stream):
                for obj, slots in zip(memory_objs[layer], chunks, strict=True):
                    self._move(kv, layer, obj, slots, D2H)
                    obj.metadata.fmt = self.memory_format
            yield
            if sync:
                self.store_stream.synchronize()
        self.store_stream.synchronize()
        yield
