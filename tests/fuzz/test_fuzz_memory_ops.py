"""Fuzz the host memory ops: ``alloc_*`` / ``free_*``, ``batched_memcpy`` and
``lmcache_memcpy_async``.

Contract (oracle in ``tests/fuzz/oracle.py``): a valid call does what a plain
Python reference does (allocations are page-aligned, zero-filled and freeable;
copies move exactly the requested bytes); a call with a bad argument raises
``ValueError``/``TypeError`` whose message starts with the argument's name,
and every byte of the source and destination buffers is unchanged.

Raw addresses are checked for kind, null and sign only: an address that is
positive but points nowhere cannot be told from a good one (same limitation
as the pointer tables in ``test_fuzz_slot_ops``), so none is fuzzed. Frees,
by contrast, know every live allocation: any address the allocator did not
hand out (foreign, interior, already freed) is a ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmcache_ascend import ops
from lmcache_ascend.kernels import torch_path
from tests.fuzz.faults import BAD_DIRECTIONS, Fault, apply_faults, bad_count, bad_scalar, benign_value, strided_copy
from tests.fuzz.oracle import FUZZ, FUZZ_SMALL, Call, check_call

PAGE = 4096
ALLOCATORS = {
    "pinned": (ops.alloc_pinned_ptr, ops.free_pinned_ptr),
    "pinned_numa": (ops.alloc_pinned_numa_ptr, ops.free_pinned_numa_ptr),
    "numa": (ops.alloc_numa_ptr, ops.free_numa_ptr),
    "hugepage_pinned": (ops.alloc_hugepage_pinned_ptr, ops.free_hugepage_pinned_ptr),
    "hugepage_pinned_numa": (ops.alloc_hugepage_pinned_numa_ptr, ops.free_hugepage_pinned_numa_ptr),
}
BAD_POINTERS: tuple[object, ...] = (0, -1, -(2**63), 1.5, None, "4096", True, b"\x01")


@dataclass(repr=False)
class CopyCase:
    """A fuzzed copy call and the two buffers it may touch (not printed)."""

    call: Call
    src: torch.Tensor
    dst: torch.Tensor

    def __repr__(self) -> str:
        return f"CopyCase({self.call!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def _refused(exc: type[Exception] | tuple[type[Exception], ...], name: str, run: object) -> None:
    with pytest.raises(exc) as info:
        run()  # type: ignore[operator]
    assert str(info.value).startswith(name), f"{info.value!r} does not start with {name!r}"


# ------------------------------------------------------------ alloc / free


@FUZZ_SMALL
@given(kind=st.sampled_from(sorted(ALLOCATORS)), size=st.integers(1, 3 * PAGE + 1), bad=bad_count(1))
def test_alloc_and_free(kind: str, size: int, bad: object) -> None:
    """Good sizes give zeroed, aligned, writable memory; bad sizes and every
    address the allocator did not hand out are refused naming the argument."""
    alloc, free = ALLOCATORS[kind]
    _refused((TypeError, ValueError), "size", lambda: alloc(bad))
    ptr = alloc(size)
    try:
        assert ptr % PAGE == 0, f"{kind} gave {ptr:#x}, not page-aligned"
        view = torch_path.host_bytes(ptr, size)
        assert not view.any(), f"{kind} memory is not zero-filled"
        view.fill_(0xA5)
        _refused(ValueError, "ptr", lambda: free(ptr + 1 + size // 2))  # interior pointer
    finally:
        free(ptr)
    _refused(ValueError, "ptr", lambda: free(ptr))  # double free


@FUZZ_SMALL
@given(kind=st.sampled_from(sorted(ALLOCATORS)), bad=st.one_of(bad_count(1), st.sampled_from(["foreign", "stack"])))
def test_free_refuses_foreign_addresses(kind: str, bad: object) -> None:
    _, free = ALLOCATORS[kind]
    t = torch.full((64,), 7, dtype=torch.uint8)
    addr = t.data_ptr() if bad == "foreign" else id(t) if bad == "stack" else bad
    _refused((TypeError, ValueError), "ptr", lambda: free(addr))
    assert bool((t == 7).all()), "refusing a free touched the memory behind the address"


# ------------------------------------------------------------ batched_memcpy


def _lists(call: Call) -> tuple[list[object], list[object], list[object]] | None:
    kw = call.kwargs
    parts = (kw["src_ptrs"], kw["dst_ptrs"], kw["sizes"])
    return tuple(list(p) for p in parts) if all(isinstance(p, list) for p in parts) else None  # type: ignore[return-value]


def _entry(kind: str) -> Fault:
    """Rewrite entry ``i`` of one of the three lists."""

    def apply(draw: st.DrawFn, call: Call) -> None:
        lists = _lists(call)
        if lists is None or not lists[0]:
            return
        i = draw(st.integers(0, len(lists[0]) - 1))
        src, dst, sizes = lists
        if kind == "empty":
            sizes[i], src[i], dst[i] = 0, 0, 0  # a zero-sized entry may hold null pointers
            call.kwargs.update(src_ptrs=src, dst_ptrs=dst, sizes=sizes)
            call.mark_benign(f"entry {i} empty with null pointers")
            return
        if kind == "size":
            sizes[i] = draw(st.one_of(st.integers(-(2**40), -1), st.sampled_from([1.5, None, "8", True])))
            arg, names = "sizes", ("sizes",)
        else:
            arg = draw(st.sampled_from(["src_ptrs", "dst_ptrs"]))
            target = src if arg == "src_ptrs" else dst
            names = (arg,)
            if sizes[i] == 0 and isinstance(sizes[i], int):
                # A null pointer is harmless where nothing is copied; with one
                # byte to copy, the other pointer of the entry may be null too.
                sizes[i], names = 1, ("src_ptrs", "dst_ptrs")
            target[i] = draw(st.sampled_from(BAD_POINTERS))
        call.kwargs.update(src_ptrs=src, dst_ptrs=dst, sizes=sizes)
        call.mark_bad(f"{arg}[{i}] {kind}", *names)

    return Fault(f"entry-{kind}", apply)


def _length(draw: st.DrawFn, call: Call) -> None:
    arg = draw(st.sampled_from(["src_ptrs", "dst_ptrs", "sizes"]))
    value = call.kwargs[arg]
    if not isinstance(value, list):
        return
    call.kwargs[arg] = value[:-1] if value and draw(st.booleans()) else [*value, 0]
    call.mark_bad(f"{arg} length", "src_ptrs")  # the lengths are compared, reported at src_ptrs


def _spelling(draw: st.DrawFn, call: Call) -> None:
    """Same values as numpy ints, 0-d tensors, a tuple or an int64 tensor."""
    arg = draw(st.sampled_from(["src_ptrs", "dst_ptrs", "sizes"]))
    value = call.kwargs[arg]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return
    kind = draw(st.sampled_from(["numpy", "tensor", "tuple", "0d"]))
    call.kwargs[arg] = {
        "numpy": lambda: [np.int64(v) for v in value],
        "tensor": lambda: torch.tensor(value, dtype=torch.int64),
        "tuple": lambda: tuple(value),
        "0d": lambda: [torch.tensor(v) for v in value],
    }[kind]()
    call.mark_benign(f"{arg} as {kind}")


def _container(draw: st.DrawFn, call: Call) -> None:
    arg = draw(st.sampled_from(["src_ptrs", "dst_ptrs", "sizes"]))
    value = draw(st.sampled_from([None, 12345, 1.5, "12", b"12"]))
    call.set(arg, value, f"{arg}={value!r}", (arg,))


MEMCPY_FAULTS = [
    _entry("empty"),
    _entry("size"),
    _entry("pointer"),
    Fault("length", _length),
    Fault("spelling", _spelling),
    Fault("container", _container),
]


@st.composite
def memcpy_calls(draw: st.DrawFn) -> CopyCase:
    """Disjoint destination regions (copies may run in any order) from a source buffer."""
    src = torch.randint(0, 256, (512,), dtype=torch.uint8, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    dst = torch.zeros(512, dtype=torch.uint8)
    cuts = sorted(draw(st.lists(st.integers(0, 512), max_size=8, unique=True)))
    regions = list(zip([0, *cuts], [*cuts, 512]))[: draw(st.integers(0, 6))]
    s, d, n = [], [], []
    for lo, hi in regions:
        size = draw(st.integers(0, hi - lo))
        s.append(src.data_ptr() + draw(st.integers(0, 512 - size)))
        d.append(dst.data_ptr() + lo)
        n.append(size)
    call = Call(dict(src_ptrs=s, dst_ptrs=d, sizes=n))
    apply_faults(draw, call, MEMCPY_FAULTS)
    return CopyCase(call, src, dst)


@FUZZ
@given(case=memcpy_calls())
def test_batched_memcpy(case: CopyCase) -> None:
    call, src, dst = case.call, case.src, case.dst
    want = dst.clone()
    kw = call.kwargs
    if not check_call(call, lambda: ops.batched_memcpy(**kw), [src, dst]):
        return
    for s, d, k in zip(kw["src_ptrs"], kw["dst_ptrs"], kw["sizes"]):
        k = int(k)
        if k:
            lo = int(d) - dst.data_ptr()
            want[lo : lo + k] = src[int(s) - src.data_ptr() :][:k]
    assert torch.equal(dst, want), f"batched_memcpy result differs (faults {call.applied})"


# ------------------------------------------------------ lmcache_memcpy_async


def _tensor_mode(call: Call) -> bool:
    return call.ctx["mode"] == "tensor"


def _buffer(kind: str) -> Fault:
    def apply(draw: st.DrawFn, call: Call) -> None:
        arg = draw(st.sampled_from(["dest", "src"]))
        t = call.kwargs[arg]
        if not isinstance(t, torch.Tensor):
            return
        if kind == "strided":
            new: object = strided_copy(t)
            if new.is_contiguous():  # type: ignore[union-attr]
                return
        elif kind == "short":
            n = call.kwargs["nbytes"]
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                return  # nothing to be short of
            new = t.contiguous().view(torch.uint8)[: n - 1].clone()
        else:
            new = {"meta": lambda: t.to("meta"), "pointer": t.data_ptr, "none": lambda: None}[kind]()
        call.kwargs[arg] = new
        # a tensor beside an address is reported at dest
        call.mark_bad(f"{arg} {kind}", arg, "dest")

    return Fault(f"buffer-{kind}", apply, _tensor_mode)


def _address(draw: st.DrawFn, call: Call) -> None:
    arg = draw(st.sampled_from(["dest", "src"]))
    call.set(arg, draw(st.sampled_from(BAD_POINTERS)), f"{arg} bad address", (arg, "dest"))


def _alignment(draw: st.DrawFn, call: Call) -> None:
    value = draw(st.one_of(st.sampled_from([0, 3, 6, 4095, -4096, 1.0, None, True]), st.integers(-(2**20), 0)))
    call.set("host_buffer_alignment", value, f"alignment {value!r}", ("host_buffer_alignment",))


MEMCPY_ASYNC_FAULTS = [
    benign_value("direction", lambda call: ops.TransferDirection(call.kwargs["direction"])),
    bad_scalar("direction", st.sampled_from(BAD_DIRECTIONS)),
    bad_scalar("nbytes", bad_count(0)),
    bad_scalar("host_buffer_offset", bad_count(0)),
    Fault("alignment", _alignment),
    *(_buffer(k) for k in ("strided", "short", "meta", "pointer", "none")),
    Fault("address", _address, lambda call: not _tensor_mode(call)),
]


@st.composite
def memcpy_async_calls(draw: st.DrawFn) -> CopyCase:
    dtype = draw(st.sampled_from([torch.uint8, torch.float16, torch.float32]))
    src = torch.randint(0, 100, (128,), generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))).to(dtype)
    dst = torch.zeros(128, dtype=dtype)
    mode = draw(st.sampled_from(["tensor", "pointer"]))
    nbytes = draw(st.integers(0, 128)) * dtype.itemsize
    call = Call(
        dict(
            dest=dst if mode == "tensor" else dst.data_ptr(),
            src=src if mode == "tensor" else src.data_ptr(),
            nbytes=nbytes,
            direction=draw(st.sampled_from([0, 1])),
            host_buffer_offset=draw(st.integers(0, 4096)),
            host_buffer_alignment=2 ** draw(st.integers(0, 21)),
        )
    )
    call.ctx["mode"] = mode
    apply_faults(draw, call, MEMCPY_ASYNC_FAULTS)
    return CopyCase(call, src, dst)


@FUZZ
@given(case=memcpy_async_calls())
def test_lmcache_memcpy_async(case: CopyCase) -> None:
    call, src, dst = case.call, case.src, case.dst
    kw = call.kwargs
    if not check_call(call, lambda: ops.lmcache_memcpy_async(**kw), [src, dst]):
        return
    n = kw["nbytes"]
    got, want = dst.view(torch.uint8), src.view(torch.uint8)
    assert torch.equal(got[:n], want[:n]), f"copied bytes differ (faults {call.applied})"
    assert not got[n:].any(), f"bytes past nbytes were written (faults {call.applied})"
