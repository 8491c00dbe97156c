"""Host memory ops: allocators, ``batched_memcpy`` and ``lmcache_memcpy_async``
(the last two also against upstream's torch baseline)."""

from __future__ import annotations

import ctypes
import os
from typing import Callable

import pytest
import torch
from lmcache.v1.platform import torch_ops
from lmcache.v1.platform.torch_ops import mem_kernels

from lmcache_ascend import ops

PAGE = os.sysconf("SC_PAGE_SIZE")


def host_view(ptr: int, nbytes: int) -> torch.Tensor:
    return torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=torch.uint8)


# (alloc, free, free takes a size)
ALLOCATORS: dict[str, tuple[Callable[..., int], Callable[..., None], bool]] = {
    "pinned": (ops.alloc_pinned_ptr, ops.free_pinned_ptr, False),
    "pinned_numa": (ops.alloc_pinned_numa_ptr, ops.free_pinned_numa_ptr, True),
    "numa": (ops.alloc_numa_ptr, ops.free_numa_ptr, True),
    "hugepage_pinned": (ops.alloc_hugepage_pinned_ptr, ops.free_hugepage_pinned_ptr, True),
    "hugepage_pinned_numa": (ops.alloc_hugepage_pinned_numa_ptr, ops.free_hugepage_pinned_numa_ptr, True),
}


def _free(kind: str, ptr: int, size: int) -> None:
    _, free, sized = ALLOCATORS[kind]
    if sized:
        free(ptr, size)
    else:
        free(ptr)


@pytest.mark.parametrize("size", [1, PAGE + 1, 3 << 20], ids=["1B", "page+1", "3MiB"])
@pytest.mark.parametrize("kind", list(ALLOCATORS))
def test_alloc_is_aligned_zeroed_writable(kind: str, size: int) -> None:
    alloc = ALLOCATORS[kind][0]
    ptr = alloc(size, 0)
    try:
        assert isinstance(ptr, int) and ptr != 0
        assert ptr % PAGE == 0
        view = host_view(ptr, size)
        assert not view.any(), "fresh allocation is not zero-filled"
        pattern = torch.arange(size, dtype=torch.int64).remainder(251).to(torch.uint8)
        view.copy_(pattern)
        assert torch.equal(host_view(ptr, size), pattern)
    finally:
        _free(kind, ptr, size)


@pytest.mark.parametrize("kind", list(ALLOCATORS))
def test_alloc_default_arguments(kind: str) -> None:
    """Upstream's callers pass only the size: page-aligned, zeroed, writable, freed once."""
    alloc = ALLOCATORS[kind][0]
    ptr = alloc(4096)
    assert ptr != 0 and ptr % PAGE == 0
    view = host_view(ptr, 4096)
    assert not view.any()
    view.fill_(0x5A)
    assert int(host_view(ptr, 4096).min()) == 0x5A
    _free(kind, ptr, 4096)
    with pytest.raises(ValueError, match="ptr"):  # the first free released it
        _free(kind, ptr, 4096)


def test_reused_memory_is_zeroed_again() -> None:
    sizes = [8192] * 8
    ptrs = [ops.alloc_pinned_ptr(s) for s in sizes]
    for p, s in zip(ptrs, sizes):
        host_view(p, s).fill_(0xAB)
        ops.free_pinned_ptr(p)
    again = [ops.alloc_pinned_ptr(s) for s in sizes]
    try:
        for p, s in zip(again, sizes):
            assert not host_view(p, s).any()
    finally:
        for p in again:
            ops.free_pinned_ptr(p)


@pytest.mark.parametrize("kind", list(ALLOCATORS))
def test_double_free_is_value_error(kind: str) -> None:
    ptr = ALLOCATORS[kind][0](100, 0)
    _free(kind, ptr, 100)
    with pytest.raises(ValueError, match="ptr"):
        _free(kind, ptr, 100)


def test_foreign_and_interior_pointers_are_value_errors() -> None:
    t = torch.zeros(4096, dtype=torch.uint8)
    with pytest.raises(ValueError, match="ptr"):
        ops.free_pinned_ptr(t.data_ptr())
    ptr = ops.alloc_pinned_ptr(8192)
    try:
        with pytest.raises(ValueError, match="ptr"):
            ops.free_pinned_ptr(ptr + PAGE)
    finally:
        ops.free_pinned_ptr(ptr)
    assert not t.any()


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-5, ValueError), (1.5, TypeError), ("8", TypeError)])
def test_bad_sizes_and_pointers(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="size"):
        ops.alloc_pinned_ptr(bad)
    with pytest.raises(exc, match="ptr"):
        ops.free_pinned_ptr(bad)


def _regions(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int], list[int]]:
    src = torch.randint(0, 256, (10000,), dtype=torch.uint8, generator=gen)
    dst = torch.randint(0, 256, (10000,), dtype=torch.uint8, generator=gen)
    offsets = [(0, 5000, 100), (100, 0, 0), (300, 7000, 2999), (9000, 200, 1000), (4000, 9999, 1)]
    s = [src.data_ptr() + a for a, _, _ in offsets]
    d = [dst.data_ptr() + b for _, b, _ in offsets]
    n = [k for _, _, k in offsets]
    return src, dst, s, d, n


def test_batched_memcpy_matches_baseline(gen: torch.Generator) -> None:
    src, dst, s, d, n = _regions(gen)
    src2, dst2 = src.clone(), dst.clone()
    ops.batched_memcpy(s, d, n)
    s2 = [p - src.data_ptr() + src2.data_ptr() for p in s]
    d2 = [p - dst.data_ptr() + dst2.data_ptr() for p in d]
    torch_ops.batched_memcpy(s2, d2, n)
    assert torch.equal(dst, dst2)
    assert torch.equal(src, src2)
    assert torch.equal(dst[5000:5100], src[:100])


def test_batched_memcpy_length_mismatch(gen: torch.Generator) -> None:
    src, dst, s, d, n = _regions(gen)
    before = dst.clone()
    with pytest.raises(ValueError, match="src_ptrs"):
        ops.batched_memcpy(s, d[:-1], n)
    assert torch.equal(dst, before)


@pytest.mark.parametrize("nbytes", [0, 1, 4096, 12345])
@pytest.mark.parametrize("direction", [0, 1], ids=["H2D", "D2H"])
def test_memcpy_async_tensor_mode_matches_baseline(nbytes: int, direction: int, gen: torch.Generator) -> None:
    src = torch.randn(4000, generator=gen)  # 16000 bytes
    dst = torch.randn(4000, generator=gen)
    dst2 = dst.clone()
    nbytes -= nbytes % 4  # the baseline copies whole elements
    ops.lmcache_memcpy_async(dst, src, nbytes, direction, 0, 4096)
    torch_ops.lmcache_memcpy_async(dst2, src, nbytes, direction, 0, 4096)
    assert torch.equal(dst.view(torch.uint8), dst2.view(torch.uint8))
    assert torch.equal(dst.view(torch.uint8)[:nbytes], src.view(torch.uint8)[:nbytes])


@pytest.mark.parametrize("offset,align", [(0, 4096), (100, 4096), (4095, 1 << 30), (7, 1)])
@pytest.mark.parametrize("direction", [0, 1], ids=["H2D", "D2H"])
def test_memcpy_async_pointer_mode_matches_baseline(
    offset: int, align: int, direction: int, gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine has a libcudart but no driver (cudaMemcpy fails with 35): pin the
    # baseline to its documented CPU-host path.
    monkeypatch.setattr(mem_kernels, "_get_copy_lib", lambda: None)
    nbytes = 3 * 4096 + 17
    src = torch.randint(0, 256, (nbytes + 64,), dtype=torch.uint8, generator=gen)
    dst = torch.randint(0, 256, (nbytes + 64,), dtype=torch.uint8, generator=gen)
    dst2 = dst.clone()
    ops.lmcache_memcpy_async(dst.data_ptr() + 3, src.data_ptr() + 5, nbytes, direction, offset, align)
    torch_ops.lmcache_memcpy_async(dst2.data_ptr() + 3, src.data_ptr() + 5, nbytes, direction, offset, align)
    assert torch.equal(dst, dst2)
    assert torch.equal(dst[3 : 3 + nbytes], src[5 : 5 + nbytes])


def test_memcpy_async_into_allocated_memory(gen: torch.Generator) -> None:
    nbytes = 5 * PAGE
    ptr = ops.alloc_pinned_ptr(nbytes)
    try:
        src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen)
        ops.lmcache_memcpy_async(ptr, src.data_ptr(), nbytes, 1, 0, 2 * PAGE)
        assert torch.equal(host_view(ptr, nbytes), src)
    finally:
        ops.free_pinned_ptr(ptr)


@pytest.mark.parametrize("align", [0, 3, -4096])
def test_memcpy_async_bad_alignment(align: int) -> None:
    a, b = torch.ones(16), torch.zeros(16)
    with pytest.raises(ValueError, match="host_buffer_alignment"):
        ops.lmcache_memcpy_async(b, a, 64, 0, 0, align)
    with pytest.raises(ValueError):
        torch_ops.lmcache_memcpy_async(b, a, 64, 0, 0, align)
    assert not b.any()


def test_memcpy_async_mixed_pointer_and_tensor() -> None:
    a, b = torch.ones(16), torch.zeros(16)
    with pytest.raises(TypeError, match="dest"):
        ops.lmcache_memcpy_async(b, a.data_ptr(), 64, 0, 0, 4096)
    with pytest.raises(TypeError):
        torch_ops.lmcache_memcpy_async(b, a.data_ptr(), 64, 0, 0, 4096)
    assert not b.any()


def test_memcpy_async_too_many_bytes_for_tensor() -> None:
    a, b = torch.ones(16), torch.zeros(8)
    with pytest.raises(ValueError, match="dest"):
        ops.lmcache_memcpy_async(b, a, 64, 0, 0, 4096)
    assert not b.any()


@pytest.mark.parametrize("kind", ["pinned", "hugepage_pinned"])
def test_impossible_allocation_raises(kind: str) -> None:
    with pytest.raises((MemoryError, RuntimeError)):
        ALLOCATORS[kind][0](1 << 60, 0)


def test_batched_memcpy_empty_and_zero_sized_entries(gen: torch.Generator) -> None:
    src, dst, s, d, n = _regions(gen)
    before = dst.clone()
    ops.batched_memcpy([], [], [])
    ops.batched_memcpy([0], [0], [0])  # a zero-sized entry is skipped (null pointers included), as upstream does
    assert torch.equal(dst, before)
    # Zero-sized entries next to a real one: only the real one moves.
    ops.batched_memcpy([0, s[0], s[1]], [0, d[0], d[1]], [0, n[0], 0])
    want = before.clone()
    want[5000:5100] = src[:100]
    assert torch.equal(dst, want)


@pytest.mark.parametrize("threads", ["1", "4"])
@pytest.mark.parametrize("shift", [1000, -1000], ids=["dst-after-src", "dst-before-src"])
def test_batched_memcpy_overlapping_region_is_memmove(
    shift: int, threads: str, gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream's batched_memcpy is a memmove loop (CUDA host code and the torch
    baseline's ctypes.memmove): an entry whose source and destination overlap
    copies as if through a temporary buffer."""
    monkeypatch.setenv("LMCACHE_ASCEND_NUM_THREADS", threads)
    nbytes = 3 << 20
    buf = torch.randint(0, 256, (nbytes + 4096,), dtype=torch.uint8, generator=gen)
    base = buf.clone()
    src_off, dst_off = 2048, 2048 + shift
    want = base.clone()
    want[dst_off : dst_off + nbytes] = base[src_off : src_off + nbytes]
    ops.batched_memcpy([buf.data_ptr() + src_off], [buf.data_ptr() + dst_off], [nbytes])
    theirs = base.clone()
    torch_ops.batched_memcpy([theirs.data_ptr() + src_off], [theirs.data_ptr() + dst_off], [nbytes])
    assert torch.equal(theirs, want)  # the baseline is memmove
    assert torch.equal(buf, want)
