"""LMCache device connector for hybrid models: several KV groups, one memory object per chunk.

A model served with vLLM's hybrid KV manager (``SupportsHMA``) has several
KV-cache groups, each with its own layers, block table and block size; a
sliding-window group keeps only each request's last ``window`` tokens. The
vLLM connector uses this connector instead of :class:`PagedKVConnector` when
it is given more than one group or a sliding-window group
(``integrations/vllm/hybrid_groups.py``). Single full-attention models never
come here.

Contract (what LMCache's engine passes a device connector):

- ``kvcaches``: the engine's per-layer KV in registration order; group ``g``'s
  layers are found by name (:meth:`HybridKVConnector.bind_layers`, called with
  the registered names before the first transfer);
- ``slot_mapping``: int64 ``[T, G]``; column ``g`` is group ``g``'s slot for
  each of the request's tokens, ``-1`` where the group holds nothing (vLLM's
  null block);
- on load, ``vllm_cached_tokens``: tokens the engine computed itself (left alone);
- memory objects: ``KV_2LTD`` ``uint8`` ``[1, 1, n, U]`` for a chunk of ``n``
  tokens, ``U = ceil(ChunkLayout(n).nbytes / n)``, so LMCache's token count of
  an object stays ``n``. :class:`HybridMetadata` makes LMCache allocate them;
  their bytes are :class:`~lmcache_ascend.core.kv_groups.ChunkLayout`'s
  segments (full groups: every token; sliding-window groups: the chunk's last
  ``window`` tokens), moved by :func:`~lmcache_ascend.kernels.group_ops.transfer_chunk`.

Every chunk of a call is checked before the first copy; a bad argument raises
``ValueError``/``TypeError`` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.memory_management import MemoryFormat, MemoryObj
from lmcache.v1.metadata import LMCacheMetadata

from lmcache_ascend.core.detection import detect_kv_layout
from lmcache_ascend.core.kv_groups import ChunkLayout, GroupKind, KVGroupSpec
from lmcache_ascend.integrations.lmcache import connector_checks as checks
from lmcache_ascend.integrations.lmcache.engine_kv import buffer_key, check_structure, flat_buffers
from lmcache_ascend.kernels.group_ops import transfer_chunk
from lmcache_ascend.kernels.torch_edge import check_tensor
from lmcache_ascend.kernels.validate import D2H, H2D, fail

SERVED_KINDS: tuple[GroupKind, ...] = ("full", "sliding_window")


@dataclass(frozen=True)
class HybridGroup:
    """One KV-cache group as the connector serves it."""

    name: str  # how errors name it, e.g. "group 1 (SlidingWindowSpec)"
    kind: GroupKind
    layer_names: tuple[str, ...]
    sliding_window: int | None = None
    window_align: int = 1  # see KVGroupSpec: whole blocks for vLLM CPU's packed KV

    def __post_init__(self) -> None:
        if self.kind not in SERVED_KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} cannot be stored chunk by chunk (served: {SERVED_KINDS})")
        if not self.layer_names:
            raise ValueError(f"{self.name}: has no layers")


class HybridKVConnector(GPUConnectorInterface):
    """Paged KV of several groups <-> one memory object per chunk."""

    def __init__(
        self,
        groups: Sequence[HybridGroup],
        chunk_size: int,
        device: torch.device | str,
        layout_hints: Mapping[str, Any] | None = None,
        engine: str = "vllm",
    ) -> None:
        from lmcache_ascend.core.devices import get_device

        if not groups:
            raise ValueError("groups must name at least one KV-cache group")
        self.groups = tuple(groups)
        self.chunk_size = chunk_size
        self.device = torch.device(device)
        self.kvcaches: Sequence[Any] | None = None
        self._hints = dict(layout_hints or {})
        self._engine = engine
        self._names: list[str] | None = None
        self._key: tuple[Any, ...] | None = None
        self._specs: tuple[KVGroupSpec, ...] = ()
        self._caches: list[list[Any]] = []
        self._layouts: dict[int, ChunkLayout] = {}  # by tokens per chunk, for the current specs
        self._backend = get_device(self.device)
        self.load_stream = self._backend.new_stream()
        self.store_stream = self._backend.new_stream()

    @property
    def memory_format(self) -> MemoryFormat:
        return MemoryFormat.KV_2LTD

    def bind_layers(self, kv_caches: Mapping[str, Any]) -> None:
        """The engine's registered KV by layer name (its order is ``kvcaches``'); detects each group's layout."""
        names = list(kv_caches)
        for group in self.groups:
            missing = [n for n in group.layer_names if n not in kv_caches]
            if missing:
                raise ValueError(f"{group.name}: layers {missing[:3]} are not among the registered KV caches")
        self._names = names
        self._detect(list(kv_caches.values()))

    def _detect(self, kvcaches: Sequence[Any]) -> None:
        if self._names is None:
            raise ValueError("kvcaches: bind_layers() was not called with the registered KV caches")
        if len(kvcaches) != len(self._names):
            fail(ValueError, "kvcaches", f"has {len(kvcaches)} layers, {len(self._names)} were registered")
        check_structure(kvcaches)
        key = buffer_key(flat_buffers(kvcaches))
        if key == self._key:
            return
        index = {n: i for i, n in enumerate(self._names)}
        caches, specs = [], []
        for group in self.groups:
            layers = [kvcaches[index[n]] for n in group.layer_names]
            try:
                layout = detect_kv_layout(layers, self._engine, self._hints)
            except ValueError as exc:
                raise ValueError(f"kvcaches of {group.name}: {exc}") from None
            caches.append(layers)
            specs.append(KVGroupSpec(layout, group.kind, 1, group.sliding_window, group.window_align))
        self._caches, self._specs, self._layouts, self._key = caches, tuple(specs), {}, key

    def layout(self, tokens: int) -> ChunkLayout:
        """The layout of a chunk of ``tokens`` tokens (after :meth:`bind_layers`)."""
        if not self._specs:
            raise ValueError("the KV caches are not registered yet (bind_layers)")
        if tokens not in self._layouts:
            self._layouts[tokens] = ChunkLayout(self._specs, self.chunk_size, tokens)
        return self._layouts[tokens]

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([1, 1, num_tokens, math.ceil(self.layout(num_tokens).nbytes / num_tokens)])

    def _plan(self, objs: object, starts: object, ends: object, kwargs: Mapping[str, Any]) -> tuple[list[tuple[Any, int, int]], list[torch.Tensor]]:
        """The non-empty chunks ``(object, start, end)`` and each group's slot column, all checked."""
        if "kvcaches" not in kwargs:
            raise ValueError("'kvcaches' should be provided in kwargs")
        self.kvcaches = kwargs["kvcaches"]
        self._detect(self.kvcaches)  # type: ignore[arg-type]
        slots = self._slots(kwargs.get("slot_mapping"))
        objs = checks.object_list(objs)
        bounds = checks.chunk_bounds(starts, ends, len(objs), slots.shape[0])
        columns = [slots[:, g].contiguous() for g in range(len(self.groups))]
        for column, spec in zip(columns, self._specs):
            checks.check_chunk_slots(column, bounds, spec.layout.geometry.num_slots)
        plan = []
        for i, (obj, (lo, hi)) in enumerate(zip(objs, bounds)):
            if hi == lo:
                continue
            tensor = checks.memory_obj_tensor(obj, f"memory_objs[{i}]")
            check_tensor(tensor, f"memory_objs[{i}]", shape=tuple(self.get_shape(hi - lo)), dtype=torch.uint8)
            plan.append((obj, lo, hi))
        return plan, columns

    def _slots(self, slot_mapping: object) -> torch.Tensor:
        if slot_mapping is None:
            raise ValueError("'slot_mapping' should be provided in kwargs")
        t = check_tensor(slot_mapping, "slot_mapping", ndim=2, dense=False)
        if t.dtype != torch.int64 or t.shape[1] != len(self.groups):
            fail(ValueError, "slot_mapping", f"must be int64 [tokens, {len(self.groups)} groups], got {t.dtype} {list(t.shape)}")
        return t

    def _move(self, obj: Any, columns: list[torch.Tensor], lo: int, hi: int, direction: int, skip: int = 0) -> None:
        transfer_chunk(self.layout(hi - lo), self._caches, obj.tensor, columns, lo, hi, direction, skip)

    def batched_from_gpu(self, memory_objs: Sequence[MemoryObj], starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> None:
        plan, columns = self._plan(memory_objs, starts, ends, kwargs)
        # The engine wrote this KV on its compute stream: copy after it.
        self.store_stream.wait_stream(self._backend.current_stream())
        with self._backend.use_stream(self.store_stream):
            for obj, lo, hi in plan:
                self._move(obj, columns, lo, hi, D2H)
                obj.metadata.fmt = self.memory_format
        self.store_stream.synchronize()

    def batched_to_gpu(self, memory_objs: Sequence[MemoryObj], starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> None:
        plan, columns = self._plan(memory_objs, starts, ends, kwargs)
        cached = checks.cached_tokens(kwargs)
        with self._backend.use_stream(self.load_stream):
            for obj, lo, hi in plan:
                self._move(obj, columns, lo, hi, H2D, cached)
        self.load_stream.synchronize()

    def from_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs: Any) -> None:
        self.batched_from_gpu([memory_obj], [start], [end], **kwargs)

    def to_gpu(self, memory_obj: MemoryObj, start: int, end: int, **kwargs: Any) -> None:
        self.batched_to_gpu([memory_obj], [start], [end], **kwargs)


@dataclass
class HybridMetadata(LMCacheMetadata):
    """LMCache's engine metadata whose chunk objects are a hybrid connector's (see the module docstring)."""

    object_shape: Callable[[int], torch.Size] | None = None

    @classmethod
    def wrap(cls, metadata: LMCacheMetadata, object_shape: Callable[[int], torch.Size]) -> HybridMetadata:
        return cls(**{f.name: getattr(metadata, f.name) for f in fields(metadata)}, object_shape=object_shape)

    def get_shapes(self, num_tokens: int | None = None) -> list[torch.Size]:
        assert self.object_shape is not None
        return [self.object_shape(self.chunk_size if num_tokens is None else num_tokens)]

    def get_dtypes(self) -> list[torch.dtype]:
        return [torch.uint8]
