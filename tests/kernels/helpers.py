"""Calling the ops under test the way LMCache does, and checking them against the reference."""

from __future__ import annotations

from typing import Callable

import torch

from lmcache.lmcache_native import PageBufferShapeDesc

from lmcache_ascend import ops
from tests.kernels.reference import (
    KV_LAYER_FORMATS,
    MLA_FORMATS,
    Geom,
    LAYER_KV_FORMATS,
    SINGLE_BUFFER_FORMATS,
    PagedCache,
    assert_cache_equal,
    assert_tensor_equal,
    ref_transfer,
)

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPE_IDS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int8: "int8", torch.uint8: "uint8"}
DIRECTIONS = {"load": 0, "store": 1}


def paged_arg(cache: PagedCache, form: str) -> object:
    """``key_value_ptrs`` in one of the forms upstream accepts."""
    if form == "ptr":
        return cache.pointers()
    d = cache.data
    if form == "tensor":
        assert cache.fmt in SINGLE_BUFFER_FORMATS
        return d
    if form == "list":
        return cache.buffers()
    if form == "tuples":
        assert cache.fmt in LAYER_KV_FORMATS
        return [tuple(pair) for pair in d]  # type: ignore[union-attr]
    if form == "nested":
        assert cache.fmt in KV_LAYER_FORMATS
        return [list(d[0]), list(d[1])]  # type: ignore[index]
    raise ValueError(form)


def forms_for(fmt: int) -> tuple[str, ...]:
    if fmt in SINGLE_BUFFER_FORMATS:
        return ("ptr", "tensor", "list")
    if fmt in LAYER_KV_FORMATS:
        return ("ptr", "tuples", "list")
    if fmt in KV_LAYER_FORMATS:
        return ("ptr", "nested", "list")
    return ("ptr", "list")


def call_multi_layer(
    cache: PagedCache,
    obj: torch.Tensor,
    slots: torch.Tensor,
    direction: int,
    *,
    form: str = "ptr",
    skip: int = 0,
    block_size: int | None = None,
    head_size: int | None = None,
    block_stride_elems: int = 0,
    page_buffer_size: int | None = None,
) -> None:
    g = cache.geom
    ops.multi_layer_kv_transfer(
        obj,
        paged_arg(cache, form),
        slots,
        torch.device("cpu"),
        g.num_slots if page_buffer_size is None else page_buffer_size,
        direction,
        ops.EngineKVFormat(cache.fmt),
        g.block_size if block_size is None else block_size,
        g.head_size if head_size is None else head_size,
        skip,
        block_stride_elems,
    )


def check_against_reference(
    cache: PagedCache,
    obj: torch.Tensor,
    slots: torch.Tensor,
    direction: int,
    run: Callable[[PagedCache, torch.Tensor], None],
    *,
    skip: int = 0,
    fused: bool = False,
) -> None:
    """Run ``run`` and the reference on copies of the same state; compare every byte
    of the paged cache and of the memory object (so untouched regions are checked)."""
    want_cache, want_obj = cache.clone(), obj.clone()
    ref_transfer(want_cache, want_obj, slots, direction, skip, fused)
    run(cache, obj)
    assert_cache_equal(cache, want_cache)
    assert_tensor_equal(obj, want_obj, "memory object")


def shape_desc(
    fmt: int, kv_size: int, g: Geom, dtype: torch.dtype | None, itemsize: int, block_stride: int = 0
) -> PageBufferShapeDesc:
    """``PageBufferShapeDesc`` as LMCache's MP mode fills it (``hs`` = CS for fused 12/13)."""
    d = PageBufferShapeDesc()
    d.kv_size = kv_size
    d.nl = g.num_layers
    d.nb = g.num_blocks
    d.bs = g.block_size
    d.nh = 1 if fmt in MLA_FORMATS else g.num_heads
    d.hs = 2 * g.head_size if (fmt in (12, 13) and kv_size == 1) else g.head_size
    d.element_size = itemsize
    d.block_stride_elems = block_stride
    if dtype is not None:
        d.dtype = dtype
    return d
