"""The engine's paged KV, as the kernels need it.

LMCache hands device connectors ``kvcaches``: the engine's per-layer KV
(tensors, or ``(K, V)`` tuples on vllm-ascend) in model order. :class:`EngineKV`
is that structure detected once (format, geometry) with its pointer table;
:class:`EngineKVCache` rebuilds it only when the engine's buffers change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lmcache.v1.gpu_connector.kv_format.contiguity import attempt_permute_to_contiguous_view

from lmcache_ascend.core.detection import KVCacheLayout, LayoutFacts, detect_kv_layout
from lmcache_ascend.core.last_built import LastBuilt


@dataclass(frozen=True)
class EngineKV(LayoutFacts):
    layout: KVCacheLayout
    pointers: torch.Tensor  # int64 base addresses, pointer-table order, on the host
    device: torch.device
    tensors: tuple[Any, ...]  # the engine's tensors, kept referenced while in use
    # Per-layer entries of the call's kvcaches (a tensor or a tuple of tensors): what
    # layer-by-layer moves index, so a call never reads another call's buffers.
    layers: tuple[Any, ...] = ()

    def layer(self, index: int) -> Any:
        entry = self.layers[index]
        return tuple(entry) if isinstance(entry, (list, tuple)) else entry


def flat_buffers(kvcaches: Sequence[Any]) -> list[Any]:
    return [t for layer in kvcaches for t in (layer if isinstance(layer, (list, tuple)) else (layer,))]


def buffer_key(tensors: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    """Identity of the engine's buffers: a different view of the same memory (shape, strides,
    dtype) is a different layout."""
    return tuple((t.data_ptr(), t.dtype, t.device, *t.shape, *t.stride()) for t in tensors)


def _kind(t: object) -> str:
    return f"a meta tensor {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


class EngineKVCache:
    """Detects the engine KV layout once per distinct set of buffers."""

    def __init__(self, engine: str, layout_hints: Mapping[str, Any] | None) -> None:
        self._engine = engine
        self._hints = dict(layout_hints or {})
        self._last: LastBuilt[EngineKV] = LastBuilt()

    def get(self, kvcaches: Sequence[Any]) -> EngineKV:
        """``kvcaches`` has passed :func:`check_structure` (``EngineKVUser._engine_kv``)."""
        tensors = flat_buffers(kvcaches)
        return self._last.get(buffer_key(tensors), lambda: self._detect(kvcaches, tensors))

    def _detect(self, kvcaches: Sequence[Any], tensors: list[Any]) -> EngineKV:
        try:
            layout = detect_kv_layout(list(kvcaches), self._engine, self._hints)
        except ValueError as exc:
            raise ValueError(f"kvcaches: {exc}") from None
        pointers = torch.tensor(layout.buffer_ptrs, dtype=torch.int64)
        return EngineKV(layout, pointers, tensors[0].device, tuple(tensors), tuple(kvcaches))


def check_structure(kvcaches: object) -> None:
    """A non-empty list of per-layer tensors or tuples of tensors."""
    if not isinstance(kvcaches, (list, tuple)) or not kvcaches:
        raise ValueError(f"kvcaches must be a non-empty list of per-layer KV tensors, got {type(kvcaches).__name__}")
    for i, t in enumerate(flat_buffers(kvcaches)):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            raise TypeError(f"kvcaches buffer {i} must be a torch.Tensor with data, got {_kind(t)}")


class EngineKVUser:
    """What both device connectors share: construction from LMCache metadata,
    their streams on the KV's device, and the engine KV detected from kwargs."""

    num_layers: int
    kvcaches: Sequence[Any] | None

    def _setup(
        self,
        *,
        num_layers: int,
        hidden_dim: int,
        use_mla: bool,
        device: torch.device | str,
        layout_hints: Mapping[str, Any] | None,
        engine: str,
    ) -> None:
        from lmcache_ascend.core.devices import get_device

        self.num_layers = num_layers
        self.hidden_dim_size = hidden_dim
        self.use_mla = use_mla
        self.device = torch.device(device)
        self.kvcaches = None
        self._backend = get_device(self.device)
        self.load_stream = self._backend.new_stream()
        self.store_stream = self._backend.new_stream()
        self._kv_cache = EngineKVCache(engine, layout_hints)

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
        )

    def _engine_kv(self, kwargs: Mapping[str, Any]) -> EngineKV:
        """The KV of this call: ``kwargs["kvcaches"]`` when given (else the last one bound).

        LMCache's ``initialize_kvcaches_ptr`` rebinds ``self.kvcaches`` on every call; read
        back from there, a call running beside another with different buffers (threads of
        one engine, the GIL released in the copies) could copy into the other's KV.
        """
        kvcaches = kwargs.get("kvcaches")
        if kvcaches is not None:
            check_structure(kvcaches)  # before LMCache's own helper walks it
            self.initialize_kvcaches_ptr(**kwargs)  # type: ignore[attr-defined]  (GPUConnectorInterface)
            kvcaches = attempt_permute_to_contiguous_view(kvcaches)  # what that call bound
        else:
            kvcaches = self.kvcaches
        if kvcaches is None:
            raise ValueError("'kvcaches' should be provided in kwargs")
        kv = self._kv_cache.get(kvcaches)
        if kv.num_layers != self.num_layers:
            raise ValueError(f"kvcaches holds {kv.num_layers} layers, LMCache metadata {self.num_layers}")
        return kv
