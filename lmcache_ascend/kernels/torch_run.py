"""Run a checked transfer of the torch ops: host C++ core or torch executor.

:func:`run` copies along a plane set (``core/planes.py``) between the paged
buffers (``paged.PagedBuffers``, checked by ``paged.resolve_buffers``) and a
checked memory object: on the host C++ core when every side is in host memory
(addresses and numpy slot ids only, ``dispatch.run_host``), on the
device-generic torch executor (``torch_path``) otherwise, as ``dispatch``
decides from ``$LMCACHE_ASCEND_KERNEL_BACKEND``.
"""

from __future__ import annotations

import torch

from lmcache_ascend.core.planes import PlaneSet
from lmcache_ascend.kernels import dispatch, torch_path
from lmcache_ascend.kernels.paged import PagedBuffers


def host_backend(paged: PagedBuffers, obj_device: torch.device) -> bool:
    """Whether a transfer between ``paged`` and an object on ``obj_device`` runs on the C++ core."""
    on_host = paged.is_host and obj_device.type == "cpu"
    return dispatch.use_host(on_host, lambda: f"the transfer touches device memory (paged on {paged.device}, object on {obj_device})")


def run(planes: PlaneSet, paged: PagedBuffers, obj: torch.Tensor, slots: torch.Tensor, skip_prefix: int, direction: int) -> None:
    """Copy ``slots`` tokens along the planes (see ``core/planes.py``)."""
    num_tokens = slots.numel()
    if not planes.paged or num_tokens == 0 or skip_prefix >= num_tokens:
        return
    if host_backend(paged, obj.device):
        host_slots = slots if slots.device.type == "cpu" and slots.is_contiguous() else slots.cpu().contiguous()
        dispatch.run_host(planes, paged.ptrs, obj.data_ptr(), host_slots.numpy(), skip_prefix, direction)
        return
    torch_path.run_planes(
        list(planes.paged),
        paged.byte_tensors(),
        list(planes.objects),
        torch_path.byte_view(obj),
        slots,
        skip_prefix,
        direction,
    )
