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

Every chunk of a call is checked (``connector_checks``) before the first copy:
a bad argument raises ``ValueError``/``TypeError`` naming it, KV untouched.
Every call is complete when it returns: LMCache frees or publishes the memory
objects right after. On NPU the copies run on the connector's own streams and
are synchronized before returning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from lmcache_ascend.integrations.lmcache import connector_checks as checks
from lmcache_ascend.integrations.lmcache.engine_kv import EngineKV
from lmcache_ascend.integrations.lmcache.kv_mover import ConnectorCore, KVMover, TorchMover
from lmcache_ascend.kernels.validate import D2H, H2D



@dataclass(frozen=True)
class _Job:
    """One checked chunk: the object, its tensor, its slots, tokens to leave alone."""

    obj: Any
    tensor: Any  # torch (or, for the MindSpore flavour, MindSpore) tensor
    slots: Any
    skip: int


def require_kwarg(kwargs: Mapping[str, Any], name: str) -> Any:
    if name not in kwargs:
        raise ValueError(f"'{name}' should be provided in kwargs")
    return kwargs[name]


class PagedKVConnector(ConnectorCore, GPUConnectorInterface):
    """Paged KV <-> ``KV_2LTD`` memory objects, one chunk per object, through ``mover``
    (default: :class:`~.kv_mover.TorchMover` for torch KV)."""

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
        # Not GPUConnectorInterface's constructor: there is none to run (an interface).
        self._setup(
            num_layers=num_layers, hidden_dim=hidden_dim, use_mla=use_mla, mover=mover or TorchMover(device, layout_hints, engine)
        )

    @property
    def memory_format(self) -> MemoryFormat:
        return MemoryFormat.KV_MLA_FMT if self.use_mla else MemoryFormat.KV_2LTD

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([1 if self.use_mla else 2, self.num_layers, num_tokens, self.hidden_dim_size])

    def _plan(self, kv: EngineKV, objs: object, starts: object, ends: object, kwargs: Mapping[str, Any], load: bool) -> list[_Job]:
        """Check every chunk (objects, bounds, slots) before the first copy: a
        bad one refuses the whole call and the engine KV stays as it was."""
        slots = self._mover.slot_mapping(require_kwarg(kwargs, "slot_mapping"))
        objs = checks.object_list(objs)
        bounds = checks.chunk_bounds(starts, ends, len(objs), len(slots))
        self._mover.check_chunk_slots(slots, bounds, kv.num_slots)
        cached = checks.cached_tokens(kwargs) if load else 0
        kv_planes, fmt = (1 if self.use_mla else 2), self.memory_format if load else None
        jobs = []
        for i, (obj, (lo, hi)) in enumerate(zip(objs, bounds)):
            shape = (kv_planes, kv.num_layers, hi - lo, kv.hidden_dim)
            tensor = self._mover.object_tensor(obj, f"memory_objs[{i}]", shape, kv, fmt)
            # Slots the engine computed itself may be shared with other
            # requests: leave them alone, as upstream's connector does.
            jobs.append(_Job(obj, tensor, slots[lo:hi], min(hi - lo, max(0, cached - lo))))
        return jobs

    def to_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs: Any) -> None:
        kv = self._engine_kv(kwargs)
        for job in self._plan(kv, [memory_obj], [start], [end], kwargs, load=True):
            self._mover.move_chunk(kv, job.tensor, job.slots, H2D, job.skip)

    def from_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs: Any) -> None:
        kv = self._engine_kv(kwargs)
        self._store(kv, self._plan(kv, [memory_obj], [start], [end], kwargs, load=False))

    def _store(self, kv: EngineKV, jobs: list[_Job]) -> None:
        for job in jobs:
            self._mover.move_chunk(kv, job.tensor, job.slots, D2H, 0)
            job.obj.metadata.fmt = self.memory_format

    def batched_to_gpu(self, memory_objs: Sequence[MemoryObj], starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> None:
        kv = self._engine_kv(kwargs)
        jobs = self._plan(kv, memory_objs, starts, ends, kwargs, load=True)
        with self._backend.use_stream(self.load_stream):
            for job in jobs:
                self._mover.move_chunk(kv, job.tensor, job.slots, H2D, job.skip)
        self.load_stream.synchronize()

    def batched_from_gpu(self, memory_objs: Sequence[MemoryObj], starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> None:
        kv = self._engine_kv(kwargs)
        jobs = self._plan(kv, memory_objs, starts, ends, kwargs, load=False)
        # The engine wrote this KV on its compute stream: copy after it.
        self.store_stream.wait_stream(self._backend.current_stream())
        with self._backend.use_stream(self.store_stream):
            self._store(kv, jobs)
        self.store_stream.synchronize()
