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
        """``kvcaches`` has passed :func:`check_structure` (``kv_mover.TorchMover.engine_kv``)."""
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
