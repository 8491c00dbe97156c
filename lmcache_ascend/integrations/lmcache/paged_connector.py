"""Non-layerwise LMCache device connector for host (vLLM CPU) and NPU KV caches.

Implements LMCache's ``GPUConnectorInterface`` on ``lmcache_ascend.ops`` and the
device abstraction, with no ``torch.cuda`` call:

- ``from_gpu`` / ``batched_from_gpu`` (store): paged KV -> memory objects.
- ``to_gpu`` / ``batched_to_gpu`` (load): memory objects -> paged KV.

Memory objects are ``KV_2LTD`` ``[2, L, T, H]`` (``KV_MLA_FMT`` ``[1, L, T, H]``
for MLA), the objects CUDA LMCache produces, ``H = num_kv_heads * head_size``.
Token ``t`` of ``[start, end)`` lives at ``slot_mapping[start + t]``. Required
kwargs (LMCache passes them): ``kvcaches`` (per-layer KV in model order) and
``slot_mapping``; on load, ``vllm_cached_tokens`` (tokens the engine already
holds; those slots are not overwritten, as upstream's connector does).

Every call is complete when it returns: LMCache frees or publishes the memory
objects right after. On NPU the copies run on the connector's own streams and
are synchronized before returning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from lmcache_ascend.integrations.lmcache.engine_kv import EngineKV, EngineKVUser
from lmcache_ascend.kernels.slot_ops import multi_layer_kv_transfer

H2D = 0
D2H = 1


def require_kwarg(kwargs: Mapping[str, Any], name: str) -> Any:
    if name not in kwargs:
        raise ValueError(f"'{name}' should be provided in kwargs")
    return kwargs[name]


class PagedKVConnector(EngineKVUser, GPUConnectorInterface):
    """Paged KV <-> ``KV_2LTD`` memory objects, one chunk per object."""

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
        self._setup(
            num_layers=num_layers, hidden_dim=hidden_dim, use_mla=use_mla, device=device, layout_hints=layout_hints, engine=engine
        )

    @property
    def memory_format(self) -> MemoryFormat:
        return MemoryFormat.KV_MLA_FMT if self.use_mla else MemoryFormat.KV_2LTD

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([1 if self.use_mla else 2, self.num_layers, num_tokens, self.hidden_dim_size])

    def _transfer(self, kv: EngineKV, obj: MemoryObj, slots: torch.Tensor, direction: int, skip: int) -> None:
        if obj.tensor is None:
            raise ValueError("memory object has no tensor")
        multi_layer_kv_transfer(
            obj.tensor,
            kv.pointers,
            slots,
            kv.device,
            kv.num_slots,
            direction,
            kv.fmt,
            kv.block_size,
            kv.head_size,
            skip,
        )

    def to_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs: Any) -> None:
        kv = self._engine_kv(kwargs)
        slots = require_kwarg(kwargs, "slot_mapping")
        if memory_obj.metadata.fmt != self.memory_format:
            raise ValueError(f"memory object is {memory_obj.metadata.fmt}, this connector loads {self.memory_format}")
        # Slots the engine computed itself may be shared with other requests:
        # leave them alone, as upstream's connector does.
        cached = int(kwargs.get("vllm_cached_tokens", 0))
        skip = min(end - start, max(0, cached - start))
        self._transfer(kv, memory_obj, slots[start:end], H2D, skip)

    def from_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs: Any) -> None:
        kv = self._engine_kv(kwargs)
        slots = require_kwarg(kwargs, "slot_mapping")
        self._transfer(kv, memory_obj, slots[start:end], D2H, 0)
        memory_obj.metadata.fmt = self.memory_format

    def batched_to_gpu(self, memory_objs: Sequence[MemoryObj], starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> None:
        with self._backend.use_stream(self.load_stream):
            for obj, start, end in zip(memory_objs, starts, ends, strict=True):
                self.to_gpu(obj, start, end, **kwargs)
        self.load_stream.synchronize()

    def batched_from_gpu(self, memory_objs: Sequence[MemoryObj], starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> None:
        # The engine wrote this KV on its compute stream: copy after it.
        self.store_stream.wait_stream(self._backend.current_stream())
        with self._backend.use_stream(self.store_stream):
            for obj, start, end in zip(memory_objs, starts, ends, strict=True):
                self.from_gpu(obj, start, end, **kwargs)
        self.store_stream.synchronize()
