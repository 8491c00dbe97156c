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

from lmcache_ascend.core.detection import KVCacheLayout, detect_kv_layout
from lmcache_ascend.core.kv_format import KVFormat


@dataclass(frozen=True)
class EngineKV:
    layout: KVCacheLayout
    pointers: torch.Tensor  # int64 base addresses, pointer-table order, on the host
    device: torch.device
    tensors: tuple[Any, ...]  # the engine's tensors, kept referenced while in use

    @property
    def fmt(self) -> KVFormat:
        return self.layout.fmt

    @property
    def num_layers(self) -> int:
        return self.layout.geometry.num_layers

    @property
    def num_slots(self) -> int:
        return self.layout.geometry.num_slots

    @property
    def block_size(self) -> int:
        return self.layout.geometry.block_size

    @property
    def head_size(self) -> int:
        return self.layout.geometry.head_size

    @property
    def hidden_dim(self) -> int:
        return self.layout.hidden_dim


def _flat(kvcaches: Sequence[Any]) -> list[Any]:
    return [t for layer in kvcaches for t in (layer if isinstance(layer, (list, tuple)) else (layer,))]


class EngineKVCache:
    """Detects the engine KV layout once per distinct set of buffers."""

    def __init__(self, engine: str, layout_hints: Mapping[str, Any] | None) -> None:
        self._engine = engine
        self._hints = dict(layout_hints or {})
        self._key: tuple[int, ...] | None = None
        self._kv: EngineKV | None = None

    def get(self, kvcaches: Sequence[Any]) -> EngineKV:
        if not isinstance(kvcaches, (list, tuple)) or not kvcaches:
            raise ValueError("kvcaches must be a non-empty list of per-layer KV tensors")
        tensors = _flat(kvcaches)
        key = tuple(t.data_ptr() for t in tensors)
        if key != self._key or self._kv is None:
            layout = detect_kv_layout(list(kvcaches), self._engine, self._hints)
            device = tensors[0].device
            pointers = torch.tensor(layout.buffer_ptrs, dtype=torch.int64)
            self._kv = EngineKV(layout, pointers, device, tuple(tensors))
            self._key = key
        return self._kv
