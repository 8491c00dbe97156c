"""Every op LMCache's multi-process path calls on a CPU host, ours vs LMCache's torch
baseline, with the call shapes that path uses (facts: LMCache 0.5.6 MP mode):

- engine-driven (vLLM worker): ``multi_layer_block_kv_transfer`` with per-layer
  paged tensors, chunk tensors ``[NL, chunk, NH * CS]``, block ids as a list;
- LMCache-driven (server): the same op with a pointer tensor for the paged
  layers and pointers for 1 to 4 temporary chunk buffers;
- host pool: ``alloc_pinned_ptr`` / ``free_pinned_ptr``; ``lmcache_memcpy_async``.

Stored chunks must be byte-identical, and loads must leave identical caches.
"""

from __future__ import annotations

import ctypes

import pytest
import torch
from lmcache.lmcache_native import PageBufferShapeDesc
from lmcache.v1.platform import torch_ops as baseline

import lmcache_ascend.ops as ops

NL, NB, NH, BS, HS = 3, 12, 2, 32, 8
CS = 2 * HS
CHUNK = 64
D2H, H2D = 1, 0
FMT_CPU = 12  # vLLM CPU: per layer [NB, NH, BS, 2 * HS]


def _desc() -> PageBufferShapeDesc:
    d = PageBufferShapeDesc()
    d.kv_size, d.nl, d.nb, d.bs, d.nh, d.hs = 1, NL, NB, BS, NH, CS
    d.element_size, d.block_stride_elems, d.dtype = 2, 0, torch.bfloat16
    return d


def _paged(gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(NB, NH, BS, CS, generator=gen).to(torch.bfloat16) for _ in range(NL)]


def _chunks(n: int) -> list[torch.Tensor]:
    return [torch.zeros(NL, CHUNK, NH * CS, dtype=torch.bfloat16) for _ in range(n)]


BLOCKS = [7, 2, 9, 0, 11, 4]  # three chunks of two blocks


@pytest.mark.parametrize("skip", [0, 1, 3])
def test_engine_driven_tensor_path(gen: torch.Generator, skip: int) -> None:
    paged = _paged(gen)
    ours, theirs = _chunks(3), _chunks(3)
    ops.multi_layer_block_kv_transfer(paged, ours, list(BLOCKS), "cpu", D2H, _desc(), CHUNK, FMT_CPU, skip)
    baseline.multi_layer_block_kv_transfer(paged, theirs, list(BLOCKS), torch.device("cpu"), D2H, _desc(), CHUNK, FMT_CPU, skip)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    assert any(c.abs().sum() > 0 for c in ours)

    back_ours, back_theirs = [torch.zeros_like(t) for t in paged], [torch.zeros_like(t) for t in paged]
    ops.multi_layer_block_kv_transfer(back_ours, theirs, list(BLOCKS), "cpu", H2D, _desc(), CHUNK, FMT_CPU, skip)
    baseline.multi_layer_block_kv_transfer(back_theirs, ours, list(BLOCKS), torch.device("cpu"), H2D, _desc(), CHUNK, FMT_CPU, skip)
    for a, b in zip(back_ours, back_theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("objects", [1, 2, 3])
def test_lmcache_driven_pointer_path(gen: torch.Generator, objects: int) -> None:
    paged = _paged(gen)
    ptrs = torch.tensor([t.data_ptr() for t in paged], dtype=torch.int64)
    blocks = torch.tensor(BLOCKS[: 2 * objects], dtype=torch.int64)
    ours, theirs = _chunks(objects), _chunks(objects)
    ops.multi_layer_block_kv_transfer(ptrs, [c.data_ptr() for c in ours], blocks, "cpu", D2H, _desc(), CHUNK, FMT_CPU, 0)
    baseline.multi_layer_block_kv_transfer(ptrs, [c.data_ptr() for c in theirs], blocks, torch.device("cpu"), D2H, _desc(), CHUNK, FMT_CPU, 0)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))

    target_ours, target_theirs = _paged(gen), None
    target_theirs = [t.clone() for t in target_ours]
    t_ptrs_ours = torch.tensor([t.data_ptr() for t in target_ours], dtype=torch.int64)
    t_ptrs_theirs = torch.tensor([t.data_ptr() for t in target_theirs], dtype=torch.int64)
    ops.multi_layer_block_kv_transfer(t_ptrs_ours, [c.data_ptr() for c in ours], blocks, "cpu", H2D, _desc(), CHUNK, FMT_CPU, 1)
    baseline.multi_layer_block_kv_transfer(t_ptrs_theirs, [c.data_ptr() for c in theirs], blocks, torch.device("cpu"), H2D, _desc(), CHUNK, FMT_CPU, 1)
    for a, b in zip(target_ours, target_theirs):
        assert torch.equal(a, b)


def test_host_pool_allocation_like_lmcache_uses_it() -> None:
    size = 3 * 4096 + 123
    ptr = ops.alloc_pinned_ptr(size, 0)
    try:
        assert ptr % 4096 == 0
        view = (ctypes.c_uint8 * size).from_address(ptr)
        assert bytes(view) == bytes(size)  # zero-filled, every page touched
        view[size - 1] = 7
    finally:
        ops.free_pinned_ptr(ptr)
    with pytest.raises(ValueError, match="ptr"):
        ops.free_pinned_ptr(ptr)


def test_memcpy_async_pointer_mode_matches_baseline(gen: torch.Generator) -> None:
    src = torch.randint(0, 255, (10_000,), dtype=torch.uint8, generator=gen)
    ours, theirs = torch.zeros_like(src), torch.zeros_like(src)
    ops.lmcache_memcpy_async(ours.data_ptr() + 16, src.data_ptr(), 5000, D2H, 0, 4096)
    ops.lmcache_memcpy_async(ours, src, 300, H2D, 0, 4096)
    baseline._copy_bytes_with_tensor(theirs.data_ptr() + 16, src.data_ptr(), 5000)
    theirs[:300] = src[:300]
    assert torch.equal(ours, theirs)
