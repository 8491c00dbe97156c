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
``vllm_cached_tokens`` (those tokens' slots are left alone). Chunk bounds and
slots are checked when the generator starts, each layer's objects before the
first of them moves (``connector_checks``): errors name the argument, and a
refused layer leaves the engine KV as the previous layers left it. It subclasses
upstream's ``VLLMPagedMemLayerwiseGPUConnector`` only because LMCache's engine
checks for that class; none of its CUDA-stream code is used.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import torch
from lmcache.v1.gpu_connector.gpu_connectors import VLLMPagedMemLayerwiseGPUConnector
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from lmcache_ascend.integrations.lmcache import connector_checks as checks
from lmcache_ascend.integrations.lmcache.engine_kv import EngineKV
from lmcache_ascend.integrations.lmcache.kv_mover import ConnectorCore, KVMover, TorchMover
from lmcache_ascend.integrations.lmcache.paged_connector import require_kwarg
from lmcache_ascend.kernels.validate import D2H, H2D



class LayerwiseKVConnector(ConnectorCore, VLLMPagedMemLayerwiseGPUConnector):
    def __init__(
        self,
        *,
        num_layers: int,
        hidden_dim: int,
        use_mla: bool,
        device: torch.device | str,
        layout_hints: Mapping[str, Any] | None = None,
        engine: str = "vllm",
        mover: KVMover | None = None,
    ) -> None:
        # Deliberately not calling the upstream __init__: it creates CUDA streams.
        self._setup(
            num_layers=num_layers, hidden_dim=hidden_dim, use_mla=use_mla, mover=mover or TorchMover(device, layout_hints, engine)
        )
        self.use_gpu = False

    @property
    def memory_format(self) -> MemoryFormat:
        return MemoryFormat.KV_MLA_FMT if self.use_mla else MemoryFormat.KV_T2D

    def get_shape(self, num_tokens: int) -> torch.Size:
        if self.use_mla:
            return torch.Size([num_tokens, self.hidden_dim_size])
        return torch.Size([num_tokens, 2, self.hidden_dim_size])

    def _chunks(self, kv: EngineKV, kwargs: Mapping[str, Any], starts: object, ends: object, load: bool) -> tuple[list[Any], bool]:
        """Every chunk's slots (the mover's kind of array), checked; on load the engine's
        cached tokens are -1."""
        slot_mapping = self._mover.slot_mapping(require_kwarg(kwargs, "slot_mapping"))
        sync = bool(require_kwarg(kwargs, "sync"))
        count = len(checks.sequence(starts, "starts"))
        bounds = checks.chunk_bounds(starts, ends, count, len(slot_mapping))
        self._mover.check_chunk_slots(slot_mapping, bounds, kv.num_slots)
        cached = checks.cached_tokens(kwargs) if load else 0
        return [self._mover.skip_cached(slot_mapping[lo:hi], lo, cached) for lo, hi in bounds], sync

    def _layer_tensors(self, kv: EngineKV, objs: object, chunks: list[Any], layer: int, load: bool) -> list[torch.Tensor]:
        """The tensors of one layer's objects, all checked before any is used."""
        name = f"memory_objs[{layer}]"
        if not isinstance(objs, (list, tuple)) or len(objs) != len(chunks):
            got = len(objs) if isinstance(objs, (list, tuple)) else type(objs).__name__
            raise ValueError(f"{name}: layer {layer} expected {len(chunks)} memory objects, got {got}")
        dtype, fmt = checks.kv_dtype(kv), self.memory_format if load else None
        out = []
        for i, (obj, slots) in enumerate(zip(objs, chunks)):
            n = len(slots)  # torch, numpy (MindSpore adapter) or MindSpore slots: all 1-D
            shape = (n, kv.hidden_dim) if self.use_mla else (n, 2, kv.hidden_dim)
            out.append(checks.object_tensor(obj, f"{name}[{i}]", shape, dtype, fmt))
        return out

    def batched_to_gpu(self, starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> Generator[None, Any, None]:
        kv = self._engine_kv(kwargs)
        chunks, sync = self._chunks(kv, kwargs, starts, ends, load=True)
        for layer in range(self.num_layers):
            objs = yield
            self._layer_tensors(kv, objs, chunks, layer, load=True)
            with self._backend.use_stream(self.load_stream):
                for obj, slots in zip(objs, chunks):
                    self._mover.move_layer(kv, layer, obj, slots, H2D)
            if sync:
                self.load_stream.synchronize()
        yield
        self.load_stream.synchronize()
        yield

    def batched_from_gpu(
        self, memory_objs: Sequence[Sequence[MemoryObj]], starts: Sequence[int], ends: Sequence[int], **kwargs: Any
    ) -> Generator[None, None, None]:
        kv = self._engine_kv(kwargs)
        chunks, sync = self._chunks(kv, kwargs, starts, ends, load=False)
        layers = checks.object_list(memory_objs)
        if len(layers) != self.num_layers:
            raise ValueError(f"memory_objs has {len(layers)} layers of memory objects, the model {self.num_layers}")
        objs = [checks.object_list(layer_objs, f"memory_objs[{i}]") for i, layer_objs in enumerate(layers)]
        for i, layer_objs in enumerate(objs):
            self._layer_tensors(kv, layer_objs, chunks, i, load=False)
        for layer in range(self.num_layers):
            self.store_stream.wait_stream(self._backend.current_stream())
            with self._backend.use_stream(self.store_stream):
                for obj, slots in zip(objs[layer], chunks):
                    self._mover.move_layer(kv, layer, obj, slots, D2H)
                    obj.metadata.fmt = self.memory_format
            yield
            if sync:
                self.store_stream.synchronize()
        self.store_stream.synchronize()
        yield
