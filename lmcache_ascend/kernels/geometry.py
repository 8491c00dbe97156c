"""Geometry of a paged KV cache from op arguments.

Upstream ops describe the paged side by scalars (``page_buffer_size``,
``block_size``, ``head_size``) plus the row width of the memory object, or by
the shape of a paged tensor. These helpers turn either into a
:class:`KVGeometry`, and refuse combinations that would make the layout
ambiguous (an HND cache without ``head_size``, a block size that does not
divide the buffer) with a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import functools

from lmcache_ascend.core.kv_format import FormatSpec
from lmcache_ascend.core.planes import NZ_PIECE, KVGeometry
from lmcache_ascend.kernels.validate import fail


def block_size_matters(spec: FormatSpec) -> bool:
    """False when blocks are laid end to end, so any block size addresses alike."""
    if spec.pbs_fused or "NB" not in spec.axes:
        return False
    nb = spec.axes.index("NB")
    return spec.axes[nb + 1] != "BS"


def heads_matter(spec: FormatSpec) -> bool:
    """False when one token's heads form one contiguous run (NHD, MLA)."""
    if spec.mla:
        return False
    token = spec.axes.index("PBS" if spec.pbs_fused else "BS")
    return spec.is_hnd or spec.kv_inner or spec.axes[token + 1] != "NH"


# Pure functions of hashable arguments, asked on every op call: computed once per distinct call shape.
@functools.lru_cache(maxsize=256)
def slot_geometry(
    spec: FormatSpec,
    *,
    kv_planes: int,
    num_layers: int,
    row_elems: int,
    itemsize: int,
    page_buffer_size: int,
    block_size: int,
    head_size: int,
    block_stride_elems: int,
) -> tuple[KVGeometry, bool]:
    """Geometry for a slot transfer, and whether packed K/V stays fused.

    ``kv_planes`` and ``row_elems`` are the memory object's first and last
    dimensions. Packed formats (12/13) accept ``kv_planes == 2`` (K and V split,
    ``KV_2LTD``) or ``1`` (each head's ``[K | V]`` slice kept, as upstream's CUDA
    kernel does; then ``head_size`` is the size of K alone, as there).
    """
    if spec.buffers == "layer_planes":
        fail(ValueError, "key_value_ptrs", f"must be the plane tensors for {spec.fmt.name}: a pointer table does not give plane widths")
    fused = spec.kv_inner and kv_planes == 1
    allowed = (1, 2) if spec.kv_inner else (spec.kv_size,)
    if kv_planes not in allowed:
        fail(ValueError, "key_value", f"has {kv_planes} K/V planes; {spec.fmt.name} needs {' or '.join(map(str, allowed))}")
    if page_buffer_size % max(block_size, 1):
        fail(ValueError, "block_size", f"{block_size} does not divide page_buffer_size {page_buffer_size}")
    if block_size == 0:
        if block_size_matters(spec):
            fail(ValueError, "block_size", f"must be > 0 for {spec.fmt.name}")
        block_size = page_buffer_size
    if spec.pbs_fused:
        block_size = page_buffer_size
    num_heads, head = _heads(spec, row_elems, head_size, fused)
    geometry = KVGeometry(
        num_layers=num_layers,
        num_blocks=page_buffer_size // block_size,
        block_size=block_size,
        num_heads=num_heads,
        head_size=head,
        itemsize=itemsize,
        block_stride_elems=block_stride_elems,
    )
    return geometry, fused


def _heads(spec: FormatSpec, row_elems: int, head_size: int, fused: bool) -> tuple[int, int]:
    if spec.is_nz:
        # NZ splits the whole row into 16-element pieces, whatever the heads are.
        if row_elems % NZ_PIECE:
            fail(ValueError, "key_value", f"row of {row_elems} elements is not a multiple of {NZ_PIECE} (NZ layout)")
        return 1, row_elems
    if not heads_matter(spec) or (fused and not spec.is_hnd):
        # One contiguous run per token: how it splits into heads does not
        # change any address, so head_size is not needed (upstream ignores it).
        if fused and row_elems % 2:
            fail(ValueError, "key_value", f"row of {row_elems} elements cannot hold packed [K | V]")
        return 1, row_elems // 2 if fused else row_elems
    if head_size == 0:
        fail(ValueError, "head_size", f"must be > 0 for {spec.fmt.name}")
    per_head = 2 * head_size if fused else head_size
    if row_elems % per_head:
        fail(ValueError, "head_size", f"{head_size} does not divide the memory object row of {row_elems} elements")
    return row_elems // per_head, head_size


@functools.lru_cache(maxsize=256)
def tensor_geometry(spec: FormatSpec, shape: tuple[int, ...], itemsize: int, num_layers: int, name: str) -> KVGeometry:
    """Geometry read off one paged buffer's shape (the engine's own tensor)."""
    if spec.buffers == "layer_planes":
        fail(ValueError, name, f"{spec.fmt.name} geometry comes from a layer's plane tuple, not one tensor")
    axes = spec.axes[:-2] + ("CS",) if spec.packed else spec.axes
    if len(shape) != len(axes):
        fail(ValueError, name, f"has shape {list(shape)}; {spec.fmt.name} buffers are [{', '.join(axes)}]")
    size = dict(zip(axes, shape))
    if "NL" in size and size["NL"] != num_layers:
        fail(ValueError, name, f"holds {size['NL']} layers, the memory object {num_layers}")
    if "CS" in size and size["CS"] % 2:
        fail(ValueError, name, f"packed K/V axis of {size['CS']} elements is odd")
    slots = size.get("PBS", 0)
    if "NZC" in size:
        if size["C16"] != NZ_PIECE:
            fail(ValueError, name, f"has NZ pieces of {size['C16']} elements, expected {NZ_PIECE}")
        head_size = size["NZC"] * size["C16"]
    else:
        head_size = size["CS"] // 2 if "CS" in size else size["HS"]
    return KVGeometry(
        num_layers=num_layers,
        num_blocks=1 if slots else size["NB"],
        block_size=slots or size["BS"],
        num_heads=size.get("NH", 1),
        head_size=head_size,
        itemsize=itemsize,
    )
