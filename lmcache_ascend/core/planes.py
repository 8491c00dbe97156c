"""Lowering of paged KV layouts and memory objects to plane tables.

A *plane* is the unit the host kernel copies (``csrc/plane_transfer.h``): for
one layer and one of K / V (or the one MLA latent, or the one K or V component
of a ``single_kv`` buffer), where each token slot of the paged buffer lives and
where each token row of the memory object lives.

Paged side (:class:`PagedPlane`, offsets relative to a buffer of the pointer
table): ``slot -> offset + (slot // block_size) * block_stride
+ (slot % block_size) * token_stride + head * head_stride``, ``num_heads`` runs
of ``head_bytes`` bytes each.

Object side (:class:`ObjectPlane`): token ``t``'s row starts at
``offset + t * token_stride`` and is ``num_heads * head_bytes`` bytes. A paged
plane with ``parts > 1`` (K and V of a head side by side, as in vLLM CPU's
packed layout) sends piece ``k`` of every head to ``offset + k * part_stride``,
so one pass moves a layer into separate K and V rows.

Memory-object layouts (LMCache ``MemoryFormat``), ``H = num_heads * head_size``:

- ``KV_2LTD`` ``[2, L, T, H]`` and ``KV_MLA_FMT`` ``[1, L, T, H]``: multi-layer.
  Single-plane formats (``kv_size == 1``: MLA with ``H = HS``, ``single_kv``
  with ``H = NH * HS``) use the ``[1, L, T, H]`` form.
- ``KV_T2D`` ``[T, 2, H]``: one layer, token-major (layerwise path).
- ``KV_2TD`` ``[2, T, H]``: one layer, K/V-major (blending buffers).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lmcache_ascend.core.kv_format import FormatSpec

PLANE_FIELDS = 12
NZ_PIECE = 16  # elements per fractal piece of the 310P "NZ" layout


@dataclass(frozen=True)
class KVGeometry:
    """Sizes of one paged KV cache (or one layer group of it).

    ``head_size`` is the size of one K (or V) head; for fused formats whose
    last axis packs ``[K | V]`` it is half of that axis. For NZ formats
    ``num_heads * head_size`` must be a multiple of 16. ``block_stride_elems``
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
    # Plane tuples only: (width in elements, itemsize) of each plane of a layer.
    # head_size / itemsize then describe the packed row in plane 0's elements.
    planes: tuple[tuple[int, int], ...] = ()

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
    parts: int = 1

    @property
    def row_bytes(self) -> int:
        return self.num_heads * self.head_bytes


@dataclass(frozen=True)
class ObjectPlane:
    offset: int
    token_stride: int
    part_stride: int = 0


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
        "NZC": g.num_heads * g.head_size // NZ_PIECE,
        "C16": NZ_PIECE,
    }


def _plane(g: KVGeometry, index: int) -> tuple[int, int]:
    return g.planes[index % len(g.planes)]


def buffer_shape(spec: FormatSpec, g: KVGeometry, index: int = 0) -> tuple[int, ...]:
    """Shape of buffer ``index`` of the pointer table, as the engine allocates it."""
    if spec.buffers == "layer_planes":
        return (g.num_blocks, g.block_size, 1, _plane(g, index)[0])
    sizes = _axis_sizes(spec, g)
    shape = tuple(sizes[a] for a in spec.axes)
    if spec.packed:
        return shape[:-2] + (shape[-2] * shape[-1],)
    return shape


def buffer_count(spec: FormatSpec, g: KVGeometry) -> int:
    per_layer = {"single": 0, "layer": 1, "layer_planes": len(g.planes)}.get(spec.buffers, 2)
    return per_layer * g.num_layers or 1


def buffer_itemsize(spec: FormatSpec, g: KVGeometry, index: int = 0) -> int:
    return _plane(g, index)[1] if spec.buffers == "layer_planes" else g.itemsize


def buffer_bytes(spec: FormatSpec, g: KVGeometry, index: int = 0) -> int:
    """Bytes buffer ``index`` spans (the block stride override may widen it)."""
    shape = buffer_shape(spec, g, index)
    tight = math.prod(shape) * buffer_itemsize(spec, g, index)
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
    if fused and not spec.kv_inner:
        raise ValueError(f"{spec.fmt.name} has no packed K/V axis to keep fused")
    layers = range(g.num_layers) if layers is None else layers
    if spec.buffers == "layer_planes":
        return tuple(_tuple_planes(g, layer) for layer in layers)
    strides = _byte_strides(spec, g)
    pbs = spec.pbs_fused
    # Formats with K and V side by side inside a head are walked as one plane
    # per layer: each head run covers [K | V] and is split on the object side.
    inner = spec.kv_inner
    if spec.is_nz:
        head_bytes = NZ_PIECE * g.itemsize
    else:
        head_bytes = g.head_size * g.itemsize * (2 if inner else 1)
    sizes = _axis_sizes(spec, g)
    common = dict(
        block_stride=g.num_slots * strides["PBS"] if pbs else strides["NB"],
        token_stride=strides["PBS"] if pbs else strides["BS"],
        head_stride=strides.get(spec.head_axis, head_bytes),
        num_heads=1 if spec.mla else sizes[spec.head_axis],
        head_bytes=head_bytes,
        block_size=g.num_slots if pbs else g.block_size,
        num_slots=g.num_slots,
        parts=2 if inner and not fused else 1,
    )
    kv_planes = 1 if inner else spec.kv_size
    return tuple(
        tuple(
            PagedPlane(*_locate(spec, strides, layer, kv, g.num_layers), **common)
            for kv in range(kv_planes)
        )
        for layer in layers
    )


def _tuple_planes(g: KVGeometry, layer: int) -> tuple[PagedPlane, ...]:
    """One paged plane per tensor of a plane-tuple layer ``[NB, BS, 1, W_p]``."""
    out = []
    for p, (width, itemsize) in enumerate(g.planes):
        row = width * itemsize
        out.append(
            PagedPlane(
                buffer=layer * len(g.planes) + p,
                offset=0,
                block_stride=g.block_size * row,
                token_stride=row,
                head_stride=row,
                num_heads=1,
                head_bytes=row,
                block_size=g.block_size,
                num_slots=g.num_slots,
            )
        )
    return tuple(out)


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


@dataclass(frozen=True, eq=False)
class PlaneSet:
    """Matched paged and object planes, with their ``PlaneSpec`` rows prebuilt.

    ``table`` holds addresses relative to each plane's buffer (column 0) and
    to the memory object (column 8); :meth:`bind` adds the real base
    addresses, so a cached set costs one small numpy add per call.
    """

    paged: tuple[PagedPlane, ...]
    objects: tuple[ObjectPlane, ...]
    table: npt.NDArray[np.int64]
    buffer_index: npt.NDArray[np.int64]
    token_bytes: int  # what one token moves over every plane: columns 4 x 5 (heads x bytes per head), summed

    @classmethod
    def build(cls, paged: Sequence[PagedPlane], objects: Sequence[ObjectPlane]) -> PlaneSet:
        if len(paged) != len(objects):
            raise ValueError(f"{len(paged)} paged planes but {len(objects)} object planes")
        table = np.array(
            [
                (p.offset, p.block_stride, p.token_stride, p.head_stride, p.num_heads, p.head_bytes,
                 p.block_size, p.num_slots, o.offset, o.token_stride, p.parts, o.part_stride)
                for p, o in zip(paged, objects)
            ],
            dtype=np.int64,
        ).reshape(len(paged), PLANE_FIELDS)
        index = np.array([p.buffer for p in paged], dtype=np.int64)
        table.setflags(write=False)
        index.setflags(write=False)
        return cls(tuple(paged), tuple(objects), table, index, int((table[:, 4] * table[:, 5]).sum()))

    def bind(self, buffer_ptrs: npt.NDArray[np.int64], object_ptr: int) -> npt.NDArray[np.int64]:
        """The int64 ``[P, 10]`` table ``csrc/plane_transfer.h`` reads (``PlaneSpec``)."""
        table = self.table.copy()
        table[:, 0] += buffer_ptrs[self.buffer_index]
        table[:, 8] += object_ptr
        return table


def _row_bytes(spec: FormatSpec, g: KVGeometry, fused: bool) -> int:
    heads = 1 if spec.mla else g.num_heads
    return heads * g.head_size * g.itemsize * (2 if fused else 1)


@functools.lru_cache(maxsize=512)
def multi_layer_plane_set(
    spec: FormatSpec,
    g: KVGeometry,
    num_tokens: int,
    fused: bool = False,
    object_layers: int | None = None,
    object_layer_offset: int = 0,
) -> PlaneSet:
    """Every layer of ``g`` <-> a ``[kv, L, T, H]`` object (``KV_2LTD`` / ``KV_MLA_FMT``).

    Paged layer ``l`` maps to object layer ``object_layer_offset + l`` of an
    object holding ``object_layers`` layers (default: the paged layer count).
    """
    kv_planes = 1 if fused else spec.kv_size
    total = g.num_layers if object_layers is None else object_layers
    layers = range(object_layer_offset, object_layer_offset + g.num_layers)
    row = _row_bytes(spec, g, fused)
    objects = [o for r in kv_2ltd_planes(kv_planes, total, num_tokens, row, layers) for o in r]
    paged = [p for r in paged_planes(spec, g, fused=fused) for p in r]
    if spec.kv_inner and not fused:
        # One paged plane per layer; its V half lands one K/V plane further on.
        objects = [dataclasses.replace(o, part_stride=total * num_tokens * row) for o in objects[::2]]
    if spec.buffers == "layer_planes":
        objects = _split_columns(objects, g)
    return PlaneSet.build(paged, objects)


def _split_columns(rows: list[ObjectPlane], g: KVGeometry) -> list[ObjectPlane]:
    """Plane tuples: each layer's object row holds its planes' bytes side by side."""
    out = []
    for o in rows:
        column = 0
        for width, itemsize in g.planes:
            out.append(dataclasses.replace(o, offset=o.offset + column))
            column += width * itemsize
    return out


@functools.lru_cache(maxsize=512)
def single_layer_plane_set(spec: FormatSpec, g: KVGeometry, num_tokens: int, token_major: bool) -> PlaneSet:
    """Layer 0 of ``g`` <-> a one-layer object ``[T, kv, H]`` or ``[kv, T, H]``."""
    row = _row_bytes(spec, g, False)
    objects = single_layer_planes(spec.kv_size, num_tokens, row, token_major)
    paged = list(paged_planes(spec, g)[0])
    if spec.kv_inner:
        objects = [dataclasses.replace(objects[0], part_stride=objects[1].offset - objects[0].offset)]
    if spec.buffers == "layer_planes":
        objects = _split_columns(objects, g)
    return PlaneSet.build(paged, objects)
