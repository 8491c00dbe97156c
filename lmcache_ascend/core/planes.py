"""Lowering of paged KV layouts and memory objects to plane tables.

A *plane* is the unit the host kernel copies (``csrc/plane_transfer.h``): for
one layer and one of K / V (or the one MLA latent), where each token slot of
the paged buffer lives and where each token row of the memory object lives.

Paged side (:class:`PagedPlane`, offsets relative to a buffer of the pointer
table): ``slot -> offset + (slot // block_size) * block_stride
+ (slot % block_size) * token_stride + head * head_stride``, ``num_heads`` runs
of ``head_bytes`` bytes each.

Object side (:class:`ObjectPlane`): token ``t``'s row starts at
``offset + t * token_stride`` and is ``num_heads * head_bytes`` bytes.

Memory-object layouts (LMCache ``MemoryFormat``), ``H = num_heads * head_size``:

- ``KV_2LTD`` ``[2, L, T, H]`` and ``KV_MLA_FMT`` ``[1, L, T, H]``: multi-layer.
- ``KV_T2D`` ``[T, 2, H]``: one layer, token-major (layerwise path).
- ``KV_2TD`` ``[2, T, H]``: one layer, K/V-major (blending buffers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmcache_ascend.core.kv_format import FormatSpec

PLANE_FIELDS = 10


@dataclass(frozen=True)
class KVGeometry:
    """Sizes of one paged KV cache (or one layer group of it).

    ``head_size`` is the size of one K (or V) head; for fused formats whose
    last axis packs ``[K | V]`` it is half of that axis. ``block_stride_elems``
    (0 = tight) overrides the block stride for per-layer views into a
    blocks-first allocation, in elements.
    """

    num_layers: int
    num_blocks: int
    block_size: int
    num_heads: int
    head_size: int
    itemsize: int
    block_stride_elems: int = 0

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size


@dataclass(frozen=True)
class PagedPlane:
    buffer: int
    offset: int
    block_stride: int
    token_stride: int
    head_stride: int
    num_heads: int
    head_bytes: int
    block_size: int
    num_slots: int

    @property
    def row_bytes(self) -> int:
        return self.num_heads * self.head_bytes


@dataclass(frozen=True)
class ObjectPlane:
    offset: int
    token_stride: int


def _axis_sizes(spec: FormatSpec, g: KVGeometry) -> dict[str, int]:
    return {
        "NB": g.num_blocks,
        "BS": g.block_size,
        "PBS": g.num_slots,
        "NH": 1 if spec.mla else g.num_heads,
        "HS": g.head_size,
        "TWO": 2,
        "NL": g.num_layers,
        "ONE": 1,
    }


def buffer_shape(spec: FormatSpec, g: KVGeometry) -> tuple[int, ...]:
    """Shape of one buffer of the pointer table, as the engine allocates it."""
    sizes = _axis_sizes(spec, g)
    shape = tuple(sizes[a] for a in spec.axes)
    if spec.packed:
        return shape[:-2] + (shape[-2] * shape[-1],)
    return shape


def buffer_count(spec: FormatSpec, g: KVGeometry) -> int:
    return {"single": 1, "layer": g.num_layers}.get(spec.buffers, 2 * g.num_layers)


def buffer_bytes(spec: FormatSpec, g: KVGeometry) -> int:
    """Bytes one buffer spans (the block stride override may widen it)."""
    shape = buffer_shape(spec, g)
    tight = math.prod(shape) * g.itemsize
    if not g.block_stride_elems or "NB" not in spec.axes:
        return tight
    strides = _byte_strides(spec, g)
    nb_axis = spec.axes.index("NB")
    return (g.num_blocks - 1) * strides["NB"] + math.prod(shape[nb_axis + 1 :]) * g.itemsize


def _byte_strides(spec: FormatSpec, g: KVGeometry) -> dict[str, int]:
    sizes = _axis_sizes(spec, g)
    strides: dict[str, int] = {}
    acc = g.itemsize
    for axis in reversed(spec.axes):
        strides[axis] = acc
        acc *= sizes[axis]
    if g.block_stride_elems:
        if spec.axes[0] != "NB":
            raise ValueError(
                f"block_stride_elems applies only to formats whose block axis is outermost, not {spec.fmt.name}"
            )
        tight = strides["NB"] // g.itemsize
        if g.block_stride_elems < tight:
            raise ValueError(f"block_stride_elems {g.block_stride_elems} is smaller than one block ({tight} elements)")
        strides["NB"] = g.block_stride_elems * g.itemsize
    return strides


@functools.lru_cache(maxsize=256)
def paged_planes(
    spec: FormatSpec, g: KVGeometry, layers: range | None = None, fused: bool = False
) -> tuple[tuple[PagedPlane, ...], ...]:
    """Planes of ``layers`` (default: all), indexed ``[layer][kv]``.

    ``fused`` (packed formats only) keeps each head's ``[K | V]`` slice as one
    plane per layer: the ``[1, L, T, NH * CS]`` object upstream's CUDA kernel
    moves for formats 12/13. Otherwise K and V are separate planes, which is
    the ``KV_2LTD`` object every other format produces.
    """
    if fused and not spec.packed:
        raise ValueError(f"{spec.fmt.name} has no packed K/V axis to keep fused")
    layers = range(g.num_layers) if layers is None else layers
    strides = _byte_strides(spec, g)
    pbs = spec.pbs_fused
    head_bytes = g.head_size * g.itemsize * (2 if fused else 1)
    common = dict(
        block_stride=g.num_slots * strides["PBS"] if pbs else strides["NB"],
        token_stride=strides["PBS"] if pbs else strides["BS"],
        head_stride=strides.get("NH", head_bytes),
        num_heads=1 if spec.mla else g.num_heads,
        head_bytes=head_bytes,
        block_size=g.num_slots if pbs else g.block_size,
        num_slots=g.num_slots,
    )
    kv_planes = 1 if fused else spec.kv_size
    return tuple(
        tuple(
            PagedPlane(*_locate(spec, strides, layer, kv, g.num_layers), **common)
            for kv in range(kv_planes)
        )
        for layer in layers
    )


def _locate(spec: FormatSpec, strides: dict[str, int], layer: int, kv: int, num_layers: int) -> tuple[int, int]:
    """Which buffer holds (layer, kv), and at what byte offset inside it."""
    kv_offset = kv * strides["TWO"] if "TWO" in strides else 0
    if spec.buffers == "single":
        return 0, layer * strides["NL"] + kv_offset
    if spec.buffers == "layer":
        return layer, kv_offset
    if spec.buffers == "kv_layer":
        return kv * num_layers + layer, 0
    return 2 * layer + kv, 0  # "layer_kv"


def kv_2ltd_planes(kv_size: int, num_layers: int, num_tokens: int, row_bytes: int, layers: range | None = None) -> list[list[ObjectPlane]]:
    """Object planes of ``[kv_size, L, T, H]`` (KV_2LTD / KV_MLA_FMT), ``[layer][kv]``."""
    layers = range(num_layers) if layers is None else layers
    return [
        [ObjectPlane(((kv * num_layers + layer) * num_tokens) * row_bytes, row_bytes) for kv in range(kv_size)]
        for layer in layers
    ]


def single_layer_planes(kv_size: int, num_tokens: int, row_bytes: int, token_major: bool) -> list[ObjectPlane]:
    """Object planes of one layer: ``[T, kv, H]`` (token-major, KV_T2D) or ``[kv, T, H]``."""
    if token_major:
        return [ObjectPlane(kv * row_bytes, kv_size * row_bytes) for kv in range(kv_size)]
    return [ObjectPlane(kv * num_tokens * row_bytes, row_bytes) for kv in range(kv_size)]


def plane_table(
    paged: Sequence[PagedPlane],
    buffer_ptrs: Sequence[int],
    objects: Sequence[ObjectPlane],
    object_ptr: int,
) -> np.ndarray:
    """The int64 ``[P, 10]`` table ``csrc/plane_transfer.h`` reads (``PlaneSpec``)."""
    if len(paged) != len(objects):
        raise ValueError(f"{len(paged)} paged planes but {len(objects)} object planes")
    table = np.empty((len(paged), PLANE_FIELDS), dtype=np.int64)
    for i, (p, o) in enumerate(zip(paged, objects)):
        table[i] = (
            buffer_ptrs[p.buffer] + p.offset,
            p.block_stride,
            p.token_stride,
            p.head_stride,
            p.num_heads,
            p.head_bytes,
            p.block_size,
            p.num_slots,
            object_ptr + o.offset,
            o.token_stride,
        )
    return table
