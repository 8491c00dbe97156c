"""What a device connector's bytes go through: the part that differs between tensor kinds.

A device connector (``paged_connector``, ``layerwise_connector``) is one shared
core (chunk bounds and checks, LMCache's generators, streams, the engine's cached
tokens) plus a *mover* it is built with. The mover knows the tensors:

- ``backend`` / ``device``: the device the engine's KV lives on (streams come from it);
- ``bind(connector, kwargs)``: this call's ``kwargs["kvcaches"]``, bound as the engine
  family needs (the core picks them, or the last ones bound, and checks the layer count);
- ``describe(connector, kvcaches)``: their detected description (cached);
- ``slot_mapping`` / ``check_chunk_slots`` / ``object_tensor``: the call's slot ids and
  each chunk's memory-object tensor, checked before any byte moves;
- ``move_chunk`` (all layers of one chunk) and ``move_layer`` (one layer of one chunk);
- ``skip_cached``: a chunk's slots with the engine's own tokens set to -1.

:class:`TorchMover` moves torch tensors through the ops (vLLM CPU, vllm-ascend,
SGLang's host pools); the MindSpore flavour has its own
(``integrations/mindspore/connectors.py``), and SGLang's layerwise connector
overrides only :meth:`TorchMover.move_layer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from lmcache.v1.gpu_connector.kv_format.contiguity import attempt_permute_to_contiguous_view
from lmcache.v1.memory_management import MemoryObj

from lmcache_ascend.core.devices import DeviceBackend, get_device
from lmcache_ascend.integrations.lmcache import connector_checks as checks
from lmcache_ascend.integrations.lmcache.engine_kv import EngineKV, EngineKVCache, check_structure
from lmcache_ascend.kernels.slot_ops import multi_layer_kv_transfer, single_layer_kv_transfer


class KVMover(Protocol):
    backend: DeviceBackend
    device: Any

    def bind(self, connector: Any, kwargs: Mapping[str, Any]) -> Any: ...

    def describe(self, connector: Any, kvcaches: Any) -> Any: ...

    def slot_mapping(self, slot_mapping: object) -> Any: ...

    def check_chunk_slots(self, slots: Any, bounds: checks.Bounds, num_slots: int) -> None: ...

    def object_tensor(self, obj: object, name: str, shape: Sequence[int], kv: Any, fmt: object) -> Any: ...

    def move_chunk(self, kv: Any, tensor: Any, slots: Any, direction: int, skip: int) -> None: ...

    def move_layer(self, kv: Any, layer: int, obj: MemoryObj, slots: Any, direction: int) -> None: ...

    def skip_cached(self, slots: Any, start: int, cached: int) -> Any: ...


class TorchMover:
    """Torch tensors through lmcache_ascend's ops, on the host core or the device-generic path."""

    def __init__(self, device: torch.device | str, layout_hints: Mapping[str, Any] | None, engine: str) -> None:
        self.device = torch.device(device)
        self.backend: DeviceBackend = get_device(self.device)
        self._kv_cache = EngineKVCache(engine, layout_hints)

    def bind(self, connector: Any, kwargs: Mapping[str, Any]) -> Any:
        """``kwargs["kvcaches"]`` through ``GPUConnectorInterface.initialize_kvcaches_ptr``,
        as the views that call bound (checked first: LMCache's helper walks them)."""
        check_structure(kwargs["kvcaches"])
        connector.initialize_kvcaches_ptr(**kwargs)
        return attempt_permute_to_contiguous_view(kwargs["kvcaches"])

    def describe(self, connector: Any, kvcaches: Any) -> EngineKV:
        return self._kv_cache.get(kvcaches)

    def slot_mapping(self, slot_mapping: object) -> torch.Tensor:
        return checks.slot_tensor(slot_mapping)

    def check_chunk_slots(self, slots: torch.Tensor, bounds: checks.Bounds, num_slots: int) -> None:
        checks.check_chunk_slots(slots, bounds, num_slots)

    def object_tensor(self, obj: object, name: str, shape: Sequence[int], kv: EngineKV, fmt: object) -> torch.Tensor:
        tensor: torch.Tensor = checks.object_tensor(obj, name, shape, checks.kv_dtype(kv), fmt)
        return tensor

    def move_chunk(self, kv: EngineKV, tensor: torch.Tensor, slots: torch.Tensor, direction: int, skip: int) -> None:
        multi_layer_kv_transfer(
            tensor, kv.pointers, slots, kv.device, kv.num_slots, direction, kv.fmt, kv.block_size, kv.head_size, skip
        )

    def move_layer(self, kv: EngineKV, layer: int, obj: MemoryObj, slots: torch.Tensor, direction: int) -> None:
        single_layer_kv_transfer(obj.tensor, kv.layer(layer), slots, direction, kv.fmt, token_major=True)

    def skip_cached(self, slots: torch.Tensor, start: int, cached: int) -> torch.Tensor:
        """The chunk's tokens the engine already computed (``< cached``) as -1 (a copy)."""
        skip = min(len(slots), max(0, cached - start))
        if skip == 0:
            return slots
        slots = slots.clone()
        slots[:skip] = -1
        return slots


class ConnectorCore:
    """What every device connector holds: the model's shape from LMCache's metadata, a mover,
    and the mover's device with the connector's own load and store streams."""

    num_layers: int
    kvcaches: Sequence[Any] | None

    def _setup(self, *, num_layers: int, hidden_dim: int, use_mla: bool, mover: KVMover) -> None:
        self.num_layers = num_layers
        self.hidden_dim_size = hidden_dim
        self.use_mla = use_mla
        self.kvcaches = None
        self._mover = mover
        self.device = mover.device
        self._backend = mover.backend
        self.load_stream = self._backend.new_stream()
        self.store_stream = self._backend.new_stream()

    @classmethod
    def from_metadata(cls, metadata: Any, device: torch.device | str, layout_hints: Mapping[str, Any] | None = None) -> Any:
        """Build from ``LMCacheMetadata`` (``kv_shape = (L, kv, chunk, heads, head_size)``)."""
        layers, _, _, heads, head_size = metadata.kv_shape
        return cls(
            num_layers=layers,
            hidden_dim=heads * head_size,
            use_mla=bool(metadata.use_mla),
            device=device,
            layout_hints=layout_hints,
            **cls._metadata_settings(metadata),
        )

    @classmethod
    def _metadata_settings(cls, metadata: Any) -> dict[str, Any]:
        """Further constructor arguments a connector reads from the metadata."""
        return {}

    def _engine_kv(self, kwargs: Mapping[str, Any]) -> Any:
        """The KV of this call: ``kwargs["kvcaches"]`` when given (else the last one bound).

        LMCache's ``initialize_kvcaches_ptr`` rebinds ``self.kvcaches`` on every call;
        read back from there, a call running beside another with different buffers
        (threads of one engine, the GIL released in the copies) could copy into the
        other's KV.
        """
        if kwargs.get("kvcaches") is not None:
            kvcaches = self._mover.bind(self, kwargs)
        else:
            kvcaches = self.kvcaches
        if kvcaches is None:
            raise ValueError("'kvcaches' should be provided in kwargs")
        kv = self._mover.describe(self, kvcaches)
        if kv.num_layers != self.num_layers:
            raise ValueError(f"kvcaches holds {kv.num_layers} layers, LMCache metadata {self.num_layers}")
        return kv
