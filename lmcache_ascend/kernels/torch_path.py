"""Device-generic backend: the same plane tables, executed with torch indexing.

Used for device-resident KV (NPU through torch_npu) until native NPU kernels
exist, and on CPU when forced (so the tests exercise it). Every buffer is seen
as raw bytes, so one code path serves every dtype and every plane width.

When the paged buffers and the memory object live on different devices, all
planes are gathered on the paged device into one staging tensor and moved with
a single copy (store), or moved with a single copy and scattered on the paged
device (load).
"""

from __future__ import annotations

import ctypes

import torch

from lmcache_ascend.core.planes import ObjectPlane, PagedPlane

H2D = 0
D2H = 1


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """Flat uint8 tensor over ``t``'s storage, starting at ``t``'s first element."""
    start = t.storage_offset() * t.element_size()
    storage = t.untyped_storage()
    out = torch.empty(0, dtype=torch.uint8, device=t.device)
    return out.set_(storage, start, (storage.nbytes() - start,), (1,))


def host_bytes(addr: int, nbytes: int) -> torch.Tensor:
    """Flat uint8 CPU tensor over ``nbytes`` at ``addr`` (caller keeps it alive)."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(addr), dtype=torch.uint8)


def device_bytes(addr: int, nbytes: int, device: torch.device) -> torch.Tensor:
    """Flat uint8 tensor over device memory at ``addr``, through LMCache's device ops."""
    if device.type == "cpu":
        return host_bytes(addr, nbytes)
    from lmcache.v1.platform import resolve_device_ops

    return resolve_device_ops(device.type).tensor_from_ptr(addr, (nbytes,), torch.uint8, device)


def _paged_view(buf: torch.Tensor, p: PagedPlane) -> torch.Tensor:
    num_blocks = p.num_slots // p.block_size
    return buf.as_strided(
        (num_blocks, p.block_size, p.num_heads, p.head_bytes),
        (p.block_stride, p.token_stride, p.head_stride, 1),
        buf.storage_offset() + p.offset,
    )


def _object_view(obj: torch.Tensor, o: ObjectPlane, num_tokens: int, row: int) -> torch.Tensor:
    return obj.as_strided((num_tokens, row), (o.token_stride, 1), obj.storage_offset() + o.offset)


def run_planes(
    paged: list[PagedPlane],
    buffers: list[torch.Tensor],
    objects: list[ObjectPlane],
    obj: torch.Tensor,
    slots: torch.Tensor,
    skip_prefix: int,
    direction: int,
) -> None:
    """Copy along planes; ``buffers`` and ``obj`` are flat uint8 tensors."""
    num_tokens = slots.numel()
    if not paged or num_tokens == 0:
        return
    slots = slots.to(dtype=torch.long)
    keep = slots >= 0
    keep[: min(skip_prefix, num_tokens)] = False
    tokens = torch.nonzero(keep).flatten().to(obj.device)
    if tokens.numel() == 0:
        return
    page_dev = buffers[0].device
    valid = slots[keep].to(page_dev)
    staged = page_dev != obj.device
    rows = []
    for p, o in zip(paged, objects):
        view = _paged_view(buffers[p.buffer], p)
        blocks, offsets = valid // p.block_size, valid % p.block_size
        ov = _object_view(obj, o, num_tokens, p.row_bytes)
        if direction == D2H:
            gathered = view[blocks, offsets].reshape(-1, p.row_bytes)
            if staged:
                rows.append(gathered)
            else:
                ov[tokens] = gathered
        elif not staged:
            view[blocks, offsets] = ov[tokens].reshape(-1, p.num_heads, p.head_bytes)
        else:
            rows.append(ov[tokens])
    if not staged:
        return
    # One transfer between devices for all planes.
    moved = torch.cat(rows, dim=1).to(obj.device if direction == D2H else page_dev)
    col = 0
    for p, o in zip(paged, objects):
        part = moved[:, col : col + p.row_bytes]
        col += p.row_bytes
        if direction == D2H:
            _object_view(obj, o, num_tokens, p.row_bytes)[tokens] = part
        else:
            view = _paged_view(buffers[p.buffer], p)
            view[valid // p.block_size, valid % p.block_size] = part.reshape(-1, p.num_heads, p.head_bytes)
