"""LMCache device connectors for MindSpore paged KV (vllm-mindspore).

The PyTorch flavour's connectors (``integrations/lmcache/``: their chunk, stream
and generator logic) built with :class:`MindSporeMover` instead of the torch
mover (``kv_mover``), same contract: LMCache hands ``kvcaches`` (per layer ``(K, V)`` or
``(latent,)`` MindSpore tensors, see ``engine_kv``), ``slot_mapping`` and, on
load, ``vllm_cached_tokens``; memory objects are LMCache's own.

- :class:`MindSporePagedConnector`: ``KV_2LTD`` ``[2, L, T, H]`` (``KV_MLA_FMT``
  ``[1, L, T, H]`` for MLA), one chunk per object.
- :class:`MindSporeLayerwiseConnector` (``use_layerwise``): ``KV_T2D``
  ``[T, 2, H]`` per layer and chunk (``[T, H]`` for MLA).

What differs is only where the bytes go: MindSpore work is synchronized before
pointers are taken, and the host C++ core copies through them (``transfer``).
The engine's slots the engine computed itself (``vllm_cached_tokens``) are left
alone on load; a negative slot skips its token. Every call is complete when it
returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmcache.v1.memory_management import MemoryObj

from lmcache_ascend.core.devices import MindSporeBackend
from lmcache_ascend.integrations.lmcache import connector_checks as checks
from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
from lmcache_ascend.integrations.mindspore import transfer
from lmcache_ascend.integrations.mindspore.engine_kv import MindSporeKV, MindSporeKVCache


class MindSporeMover:
    """The mover for MindSpore KV (``integrations/lmcache/kv_mover.py``): MindSpore work is
    synchronized before pointers are taken, and the host core copies through the ops'
    front end over descriptions (``transfer``).

    In a vllm-mindspore process ``torch`` is msadapter: LMCache's memory objects
    and the slot mapping it passes are MindSpore tensors with torch-like
    methods. So slots and objects are read only through what torch and
    MindSpore tensors both offer (``core.tensor_desc.describe``: data pointer,
    shape, strides, dtype, device), never as torch tensors.
    """

    def __init__(self, engine_device: Any) -> None:
        # ``engine_device`` is the engine's device string ("cpu", "npu", ...). The KV's
        # own tensors say where it lives; only host KV is moved (describe).
        self.engine_device = str(engine_device)
        self.device = "cpu"
        self.backend = MindSporeBackend()
        self._kv_cache = MindSporeKVCache()

    def bind(self, connector: Any, kwargs: Mapping[str, Any]) -> Any:
        # Not GPUConnectorInterface.initialize_kvcaches_ptr: its torch-only view
        # fix-up recurses without end into MindSpore tensors (they iterate as
        # tensors). Permuted views are handled by our own detection instead.
        kvcaches = kwargs["kvcaches"]
        connector.kvcaches = kvcaches
        return kvcaches  # this call's own, not read back: another thread may rebind meanwhile

    def describe(self, connector: Any, kvcaches: Any) -> MindSporeKV:
        # The engine's kernels that wrote (store) or will read (load) this KV are
        # ordered by MindSpore; copies through raw pointers are not, so wait first.
        self.backend.synchronize()
        kv = self._kv_cache.get(kvcaches)
        if kv.use_mla != connector.use_mla:
            raise ValueError(f"kvcaches is {'MLA' if kv.use_mla else '(K, V)'} but LMCache metadata says use_mla={connector.use_mla}")
        if kv.hidden_dim != connector.hidden_dim_size:
            raise ValueError(f"kvcaches has {kv.hidden_dim} elements per token and layer, LMCache metadata {connector.hidden_dim_size}")
        return kv

    def slot_mapping(self, slot_mapping: object) -> np.ndarray:
        return transfer.host_slots(slot_mapping)

    def check_chunk_slots(self, slots: np.ndarray, bounds: checks.Bounds, num_slots: int) -> None:
        for lo, hi in bounds:
            transfer.slot_array(slots[lo:hi], hi - lo, num_slots)

    def object_tensor(self, obj: object, name: str, shape: Sequence[int], kv: MindSporeKV, fmt: object) -> Any:
        tensor = checks.memory_obj_tensor(obj, name, fmt)
        transfer.check_object(transfer.describe_object(tensor, len(shape), name), kv, tuple(shape), name)
        return tensor

    def move_chunk(self, kv: MindSporeKV, tensor: Any, slots: Any, direction: int, skip: int) -> None:
        # ``tensor`` is the memory object's, already checked against ``kv`` (object_tensor).
        transfer.multi_layer(kv, tensor, slots, direction, skip)

    def move_layer(self, kv: MindSporeKV, layer: int, obj: MemoryObj, slots: Any, direction: int) -> None:
        if obj.tensor is None:
            raise ValueError("memory object has no tensor")
        transfer.single_layer(kv, layer, obj.tensor, slots, direction)

    def skip_cached(self, slots: Any, start: int, cached: int) -> Any:
        # Tokens the engine already holds get slot -1 on a host copy of the
        # chunk's mapping (the mapping may be a MindSpore tensor).
        skip = min(len(slots), max(0, cached - start))
        if skip == 0:
            return slots
        out = transfer.host_slots(slots, copy=True)
        out[:skip] = -1
        return out


class MindSporePagedConnector(PagedKVConnector):
    """Paged MindSpore KV <-> ``KV_2LTD`` / ``KV_MLA_FMT`` memory objects (the paged connector with :class:`MindSporeMover`)."""

    def __init__(self, *, num_layers: int, hidden_dim: int, use_mla: bool, device: Any, layout_hints: Mapping[str, Any] | None = None, engine: str = "vllm") -> None:
        # MindSpore KV is described from its own tensors: layout hints do not apply.
        super().__init__(num_layers=num_layers, hidden_dim=hidden_dim, use_mla=use_mla, device="cpu", mover=MindSporeMover(device))


class MindSporeLayerwiseConnector(LayerwiseKVConnector):
    """Paged MindSpore KV <-> per-layer ``KV_T2D`` memory objects, driven as LMCache's generators."""

    def __init__(self, *, num_layers: int, hidden_dim: int, use_mla: bool, device: Any, layout_hints: Mapping[str, Any] | None = None, engine: str = "vllm") -> None:
        super().__init__(num_layers=num_layers, hidden_dim=hidden_dim, use_mla=use_mla, device="cpu", mover=MindSporeMover(device))


def create_device_connector(config: Any, metadata: Any, device: Any, layout_hints: Any = None) -> PagedKVConnector | LayerwiseKVConnector:
    """The paged or layerwise connector LMCache's ``config`` asks for (``plugin.ConnectorFactory``'s
    signature, as the PyTorch flavour's). MindSpore KV is described from its own tensors: vLLM's
    ``layout_hints`` do not apply and are ignored."""
    if config.enable_blending:
        raise ValueError("enable_blending: CacheBlend runs on PyTorch KV caches only, not on MindSpore ones")
    cls = MindSporeLayerwiseConnector if config.use_layerwise else MindSporePagedConnector
    return cls.from_metadata(metadata, device=device)
