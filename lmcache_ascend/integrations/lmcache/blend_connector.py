"""CacheBlend's layerwise buffer device connector (``KV_2TD``) for host and NPU KV.

The counterpart of upstream's ``VLLMBufferLayerwiseGPUConnector`` on
lmcache_ascend's kernels and device abstraction (no ``torch.cuda``). Per layer
and segment the memory object is ``KV_2TD`` ``[2, T, H]``; it carries
``metadata.cached_positions``, the positions its tokens had when stored.

``batched_from_gpu(objs[L][S], starts, ends, **kw)`` (store) yields
    ``num_layers + 1`` times: each ``next()`` copies one layer's segments out of
    the paged cache and records their positions; the last waits.
``batched_to_gpu(starts, ends, **kw)`` (load) yields ``num_layers + 2`` times:
    prime with ``next()``, ``send(objs_of_layer_i)`` per layer, final ``next()``.
    A per-request buffer ``[2, N, H]`` covers every token of the request
    (``N = len(slot_mapping)``, so holes and an uncached tail have rows too).
    After ``send`` of layer ``i``: the segments' K is re-rotated from their
    cached positions to their positions here (:class:`~lmcache_ascend.blend.rope.KeyRotator`),
    rows no segment covers are zero, rows of the first ``vllm_cached_tokens``
    hold the engine's own KV, and :meth:`get_kv` returns ``(K, V)`` of layer ``i``
    for the blender to complete in place. At the next step layer ``i - 1`` goes
    from the buffer to the paged cache, except the ``vllm_cached_tokens`` rows.

Formats: every per-layer format whose tokens can be addressed one by one,
through lmcache_ascend's ``single_layer_kv_transfer``. vLLM CPU's format 12
packs K inside each block; on the ISAs whose packing is known (``vec``,
``vec16``) tokens are moved through strided views instead
(:mod:`lmcache_ascend.integrations.lmcache.cpu_kv_layout`, checked against vLLM's
own writer), other ISAs (AMX tiles) are refused. MLA caches are refused
(upstream CacheBlend refuses MLA too).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, Protocol

import torch
from lmcache.v1.gpu_connector.gpu_connectors import VLLMBufferLayerwiseGPUConnector
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from lmcache_ascend.core.kv_format import KVFormat
from lmcache_ascend.integrations.lmcache.cpu_kv_layout import gather_rows, scatter_rows, token_views
from lmcache_ascend.integrations.lmcache.engine_kv import EngineKV
from lmcache_ascend.integrations.lmcache.kv_mover import ConnectorCore, TorchMover
from lmcache_ascend.integrations.lmcache.paged_connector import require_kwarg
from lmcache_ascend.kernels.slot_ops import single_layer_kv_transfer
from lmcache_ascend.kernels.validate import D2H, H2D

PACKED_FORMATS = frozenset({KVFormat.NL_X_NB_NH_BS_CS})


class KeyRotator(Protocol):
    """Re-rotates K rows ``[T, heads * head_size]`` in place from old to new positions.

    The model-specific implementation (:class:`lmcache_ascend.blend.rope.KeyRotator`)
    lives with CacheBlend, which sits above this package and attaches it.
    """

    def __call__(self, old_positions: torch.Tensor, new_positions: torch.Tensor, rows: torch.Tensor) -> None: ...


class BlendBufferConnector(ConnectorCore, VLLMBufferLayerwiseGPUConnector):
    def __init__(
        self,
        *,
        num_layers: int,
        hidden_dim: int,
        use_mla: bool,
        device: torch.device | str,
        layout_hints: Mapping[str, Any] | None = None,
        engine: str = "vllm",
        kv_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        # Deliberately not calling the upstream __init__: it creates CUDA streams.
        if use_mla:
            raise ValueError("use_mla: CacheBlend does not support MLA KV caches")
        # Torch KV only: its moves are per-token row copies of its own (_move below).
        self._setup(num_layers=num_layers, hidden_dim=hidden_dim, use_mla=False, mover=TorchMover(device, layout_hints, engine))
        self.use_gpu = False
        self.dtype = kv_dtype
        self.rotator: KeyRotator | None = None  # set by the blender (model-specific)
        self.buffer_mapping: dict[int, torch.Tensor] = {}  # type: ignore[assignment]

    @classmethod
    def _metadata_settings(cls, metadata: Any) -> dict[str, Any]:
        return {"kv_dtype": metadata.kv_dtype}

    @property
    def memory_format(self) -> MemoryFormat:
        return MemoryFormat.KV_2TD

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([2, num_tokens, self.hidden_dim_size])

    def get_kv(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, V)`` rows ``[N, H]`` of a loaded layer; writes go to the paged cache."""
        if layer_id not in self.buffer_mapping:
            raise ValueError(f"layer_id {layer_id} is not in the blend buffer")
        buf = self.buffer_mapping[layer_id]
        return buf[0], buf[1]

    def _blend_kv(self, kwargs: Mapping[str, Any]) -> EngineKV:
        kv = self._engine_kv(kwargs)
        if kv.hidden_dim != self.hidden_dim_size:
            raise ValueError(f"kvcaches hold {kv.hidden_dim} values per token, LMCache metadata {self.hidden_dim_size}")
        if kv.fmt in PACKED_FORMATS:
            token_views(kv.layer(0))  # refuses an ISA whose packing is unknown, before any copy
        return kv

    def _move(self, rows: torch.Tensor, layer: int, slots: torch.Tensor, direction: int, kv: EngineKV) -> None:
        """``rows[2, n, H]`` to (H2D) or from (D2H) the paged cache of ``layer`` at ``slots`` (< 0 skipped)."""
        if kv.fmt in PACKED_FORMATS:
            if direction == H2D:
                scatter_rows(rows, kv.layer(layer), slots)
            else:
                gather_rows(kv.layer(layer), slots, rows)
            return
        single_layer_kv_transfer(rows, kv.layer(layer), slots, direction, kv.fmt, token_major=False)

    def batched_from_gpu(
        self, memory_objs: Sequence[Sequence[MemoryObj]], starts: Sequence[int], ends: Sequence[int], **kwargs: Any
    ) -> Generator[None, None, None]:
        kv = self._blend_kv(kwargs)
        slot_mapping = require_kwarg(kwargs, "slot_mapping")
        sync = bool(kwargs.get("sync", True))
        bounds = list(zip(starts, ends, strict=True))
        slots = torch.cat([slot_mapping[s:e] for s, e in bounds]) if bounds else slot_mapping[:0]
        staging = torch.empty(tuple(self.get_shape(len(slots))), dtype=self.dtype, device=kv.device)
        offsets = [0]
        for s, e in bounds:
            offsets.append(offsets[-1] + e - s)
        for layer in range(self.num_layers):
            self.store_stream.wait_stream(self._backend.current_stream())
            with self._backend.use_stream(self.store_stream):
                self._move(staging, layer, slots, D2H, kv)
                for obj, (s, e), a, b in zip(memory_objs[layer], bounds, offsets[:-1], offsets[1:], strict=True):
                    if obj.tensor is None:
                        raise ValueError("memory object has no tensor")
                    obj.tensor.copy_(staging[:, a:b])
                    obj.metadata.fmt = self.memory_format
                    obj.metadata.cached_positions = torch.arange(s, e, dtype=torch.int64)
            yield
            if sync:
                self.store_stream.synchronize()
        self.store_stream.synchronize()
        yield

    def batched_to_gpu(self, starts: Sequence[int], ends: Sequence[int], **kwargs: Any) -> Generator[None, Any, None]:
        kv = self._blend_kv(kwargs)
        if self.rotator is None:
            raise ValueError("rotator: no KeyRotator attached; build the SegmentBlender before loading")
        slot_mapping = require_kwarg(kwargs, "slot_mapping")
        num_tokens = len(slot_mapping)
        bounds = list(zip(starts, ends, strict=True))
        for s, e in bounds:
            if not 0 <= s < e <= num_tokens:
                raise ValueError(f"starts/ends: segment [{s}, {e}) outside the {num_tokens} tokens of slot_mapping")
        fixed = min(num_tokens, max(0, int(kwargs.get("vllm_cached_tokens", 0))))
        write_slots = slot_mapping.clone()
        write_slots[:fixed] = -1  # the engine computed these itself and may share them
        covered = torch.zeros(num_tokens, dtype=torch.bool)
        for s, e in bounds:
            covered[s:e] = True
        gaps = (~covered).nonzero().squeeze(1).to(kv.device)
        old_positions: list[torch.Tensor] = []
        buffers = [torch.zeros(tuple(self.get_shape(num_tokens)), dtype=self.dtype, device=kv.device) for _ in range(2)]
        for step in range(self.num_layers + 2):
            if step > 1:
                done = self.buffer_mapping.pop(step - 2)
                self._move(done, step - 2, write_slots, H2D, kv)
            if 0 < step <= self.num_layers:
                self._finish_layer(kv, step - 1, buffers[(step - 1) % 2], bounds, old_positions, gaps, slot_mapping[:fixed])
            if step < self.num_layers:
                objs = yield
                self._receive(buffers[step % 2], objs, bounds, old_positions if step == 0 else None)
            elif step == self.num_layers:
                yield
        self.load_stream.synchronize()
        yield

    def _receive(self, buf: torch.Tensor, objs: Any, bounds: list[tuple[int, int]], positions: list[torch.Tensor] | None) -> None:
        if objs is None or len(objs) != len(bounds):
            raise ValueError(f"expected {len(bounds)} memory objects, got {0 if objs is None else len(objs)}")
        with self._backend.use_stream(self.load_stream):
            for obj, (s, e) in zip(objs, bounds):
                if obj.metadata.fmt != self.memory_format or obj.tensor is None:
                    raise ValueError(f"memory object is {obj.metadata.fmt}, this connector loads {self.memory_format}")
                buf[:, s:e].copy_(obj.tensor, non_blocking=True)
                if positions is not None:
                    cached = obj.metadata.cached_positions
                    if cached is None or cached.numel() != e - s:
                        raise ValueError(
                            f"memory object of segment [{s}, {e}) carries no cached_positions "
                            "(stored through a tier that drops position metadata)"
                        )
                    positions.append(cached.to(torch.int64))
        self.load_stream.synchronize()

    def _finish_layer(
        self,
        kv: EngineKV,
        layer: int,
        buf: torch.Tensor,
        bounds: list[tuple[int, int]],
        old_positions: list[torch.Tensor],
        gaps: torch.Tensor,
        fixed_slots: torch.Tensor,
    ) -> None:
        assert self.rotator is not None
        for (s, e), old in zip(bounds, old_positions, strict=True):
            self.rotator(old, torch.arange(s, e, dtype=torch.int64), buf[0, s:e])
        if gaps.numel():
            buf[:, gaps] = 0
        if fixed_slots.numel():
            engine_rows = torch.empty(tuple(self.get_shape(fixed_slots.numel())), dtype=self.dtype, device=buf.device)
            self._move(engine_rows, layer, fixed_slots, D2H, kv)
            buf[:, : fixed_slots.numel()] = engine_rows
        self.buffer_mapping[layer] = buf
