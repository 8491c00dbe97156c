"""Host memory ops: allocation, memcpy and batched memcpy.

Signatures follow LMCache's ``DeviceOps`` defaults (the torch baseline), which is
what ``lmcache.device_ops`` callers use:

- ``alloc_pinned_ptr(size, device_id=0) -> int`` / ``free_pinned_ptr(ptr)``
  and the NUMA (``numa_id``) and huge-page variants: page-aligned, zero-filled
  host memory from the C++ core. On an accelerator host the buffer is also
  registered with the device through LMCache's ``DeviceSpec.pin_memory``
  (``aclrtHostRegister`` on Ascend) so transfers can use it directly. The NUMA
  node is not enforced (as in upstream's non-CUDA baseline). Freeing an address
  this module did not hand out is a ``ValueError``, never a crash.
- ``lmcache_memcpy_async(dest, src, nbytes, direction, host_buffer_offset,
  host_buffer_alignment)``: tensors are copied with ``copy_``; raw pointers are
  host memory on a CPU host (multi-threaded memcpy) and host <-> device
  (direction decides which is which) on an accelerator host.
- ``batched_memcpy(src_ptrs, dst_ptrs, sizes)``: host memcpy of many regions,
  split across threads.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from lmcache_ascend.kernels import host, torch_path
from lmcache_ascend.kernels.torch_edge import check_tensor
from lmcache_ascend.kernels.validate import D2H, check_direction, check_int, fail

_HUGE_PAGE = 2 << 20


def _accelerator_spec() -> Any:
    """LMCache's current device spec when it is an accelerator, else None."""
    from lmcache.v1.platform._device_detect import current_device_spec

    spec = current_device_spec()
    return None if spec.device_type == "cpu" else spec


def _alloc(size: object, huge_pages: bool) -> int:
    nbytes = check_int(size, "size", 1)
    ptr = host.host_alloc(nbytes, _HUGE_PAGE if huge_pages else 0, huge_pages)
    spec = _accelerator_spec()
    if spec is not None and spec.is_pin_supported():
        spec.pin_memory(ptr, nbytes)  # best effort: pageable memory still works
    return ptr


def _free(ptr: object) -> None:
    addr = check_int(ptr, "ptr", 1)
    if host.host_allocation_size(addr) < 0:
        fail(ValueError, "ptr", f"{addr:#x} was not allocated by lmcache_ascend or is already freed")
    spec = _accelerator_spec()
    if spec is not None and spec.is_pin_supported():
        spec.unpin_memory(addr)
    host.host_free(addr)


def alloc_pinned_ptr(size: object, device_id: object = 0) -> int:
    return _alloc(size, huge_pages=False)


def free_pinned_ptr(ptr: object) -> None:
    _free(ptr)


def alloc_pinned_numa_ptr(size: object, numa_id: object = 0) -> int:
    return _alloc(size, huge_pages=False)


def free_pinned_numa_ptr(ptr: object, size: object = None) -> None:
    _free(ptr)


def alloc_numa_ptr(size: object, numa_id: object = 0) -> int:
    return _alloc(size, huge_pages=False)


def free_numa_ptr(ptr: object, size: object = None) -> None:
    _free(ptr)


def alloc_hugepage_pinned_ptr(size: object, device_id: object = 0) -> int:
    return _alloc(size, huge_pages=True)


def free_hugepage_pinned_ptr(ptr: object, size: object = 0) -> None:
    _free(ptr)


def alloc_hugepage_pinned_numa_ptr(size: object, numa_id: object = 0) -> int:
    return _alloc(size, huge_pages=True)


def free_hugepage_pinned_numa_ptr(ptr: object, size: object = 0) -> None:
    _free(ptr)


def batched_memcpy(src_ptrs: object, dst_ptrs: object, sizes: object) -> None:
    src, dst, n = _ints(src_ptrs, "src_ptrs"), _ints(dst_ptrs, "dst_ptrs"), _ints(sizes, "sizes")
    if not len(src) == len(dst) == len(n):
        fail(ValueError, "src_ptrs", f"has {len(src)} entries, dst_ptrs {len(dst)}, sizes {len(n)}")
    for i, (s, d, k) in enumerate(zip(src, dst, n)):
        if k < 0:
            fail(ValueError, f"sizes[{i}]", f"must be >= 0, got {k}")
        for name, addr in (("src_ptrs", s), ("dst_ptrs", d)):
            if k and addr <= 0:
                fail(ValueError, f"{name}[{i}]", f"is an invalid address {addr} (null or negative)")
    host.batched_copy(src, dst, n)


def _ints(values: object, name: str) -> list[int]:
    """A sequence of ints (Python, numpy or 0-d tensors; never bool or float)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        fail(TypeError, name, f"must be a sequence of ints, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        try:
            if isinstance(v, bool):
                raise TypeError("bool")
            out.append(operator.index(v))
        except TypeError:
            fail(TypeError, f"{name}[{i}]", f"must be an int, got {type(v).__name__} {v!r}")
    return out


def lmcache_memcpy_async(
    dest: object, src: object, nbytes: object, direction: object, host_buffer_offset: object, host_buffer_alignment: object
) -> None:
    direction = check_direction(direction)
    nbytes = check_int(nbytes, "nbytes")
    check_int(host_buffer_offset, "host_buffer_offset")
    align = check_int(host_buffer_alignment, "host_buffer_alignment", 1)
    if align & (align - 1):
        fail(ValueError, "host_buffer_alignment", f"must be a power of two, got {align}")
    if isinstance(dest, torch.Tensor) or isinstance(src, torch.Tensor):
        _copy_tensors(dest, src, nbytes)
        return
    dst_addr, src_addr = check_int(dest, "dest", 1), check_int(src, "src", 1)
    if nbytes == 0:
        return
    spec = _accelerator_spec()
    if spec is None:
        host.batched_copy([src_addr], [dst_addr], [nbytes])
        return
    module = getattr(torch, spec.torch_module_name)
    device = torch.device(spec.device_type, module.current_device())
    host_addr, dev_addr = (dst_addr, src_addr) if direction == D2H else (src_addr, dst_addr)
    host_view = torch_path.host_bytes(host_addr, nbytes)
    dev_view = torch_path.device_bytes(dev_addr, nbytes, device)
    if direction == D2H:
        host_view.copy_(dev_view, non_blocking=True)
    else:
        dev_view.copy_(host_view, non_blocking=True)


def _copy_tensors(dest: object, src: object, nbytes: int) -> None:
    if not (isinstance(dest, torch.Tensor) and isinstance(src, torch.Tensor)):
        fail(TypeError, "dest", "and src must both be tensors or both be int pointers")
    for name, t in (("dest", dest), ("src", src)):
        check_tensor(t, name)  # refuses meta and non-contiguous tensors
        if t.numel() * t.element_size() < nbytes:
            fail(ValueError, name, f"holds {t.numel() * t.element_size()} bytes, fewer than nbytes={nbytes}")
    if nbytes:
        torch_path.byte_view(dest)[:nbytes].copy_(torch_path.byte_view(src)[:nbytes], non_blocking=True)

