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
import math

import torch

from lmcache_ascend.core.planes import ObjectPlane, PagedPlane
from lmcache_ascend.kernels.validate import D2H



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

    view: torch.Tensor = resolve_device_ops(device.type).tensor_from_ptr(addr, (nbytes,), torch.uint8, device)
    return view


_UNITS = ((8, torch.int64), (4, torch.int32), (2, torch.int16), (1, torch.uint8))


def _unit(paged: list[PagedPlane], objects: list[ObjectPlane], tensors: list[torch.Tensor]) -> tuple[int, torch.dtype]:
    """Widest element that divides every offset, stride, piece and base address:
    indexing 8-byte words instead of bytes is several times faster."""
    g = 0
    for p in paged:
        for v in (p.offset, p.block_stride, p.token_stride, p.head_stride, p.head_bytes // p.parts):
            g = math.gcd(g, v)
    for o in objects:
        g = math.gcd(math.gcd(math.gcd(g, o.offset), o.token_stride), o.part_stride)
    for t in tensors:
        g = math.gcd(math.gcd(g, t.data_ptr()), t.numel())
    return next((size, dtype) for size, dtype in _UNITS if g % size == 0)


def _typed(flat: torch.Tensor, unit: int, dtype: torch.dtype) -> torch.Tensor:
    return flat if unit == 1 else flat.view(dtype)


def _paged_view(buf: torch.Tensor, p: PagedPlane, u: int) -> torch.Tensor:
    """``[blocks, block_size, heads, parts, piece]`` of one plane, in units of ``u`` bytes."""
    piece = p.head_bytes // p.parts // u
    return buf.as_strided(
        (p.num_slots // p.block_size, p.block_size, p.num_heads, p.parts, piece),
        (p.block_stride // u, p.token_stride // u, p.head_stride // u, piece, 1),
        buf.storage_offset() + p.offset // u,
    )


def _object_view(obj: torch.Tensor, o: ObjectPlane, p: PagedPlane, num_tokens: int, u: int) -> torch.Tensor:
    """``[tokens, heads, parts, piece]`` of one plane's object rows."""
    piece = p.head_bytes // p.parts // u
    return obj.as_strided(
        (num_tokens, p.num_heads, p.parts, piece),
        (o.token_stride // u, piece, o.part_stride // u, 1),
        obj.storage_offset() + o.offset // u,
    )


def _slot_rows(buf: torch.Tensor, p: PagedPlane, u: int) -> torch.Tensor | None:
    """``[num_slots, row]`` view when every slot's row is one run at a fixed
    stride (NHD layouts): then index_select / index_copy_ move whole rows."""
    heads_dense = p.parts == 1 and (p.num_heads == 1 or p.head_stride == p.head_bytes)
    if not heads_dense or p.block_stride != p.block_size * p.token_stride:
        return None
    return buf.as_strided((p.num_slots, p.row_bytes // u), (p.token_stride // u, 1), buf.storage_offset() + p.offset // u)


def _gather(buf: torch.Tensor, p: PagedPlane, valid: torch.Tensor, u: int) -> torch.Tensor:
    rows = _slot_rows(buf, p, u)
    if rows is not None:
        return rows.index_select(0, valid)
    return _paged_view(buf, p, u)[valid // p.block_size, valid % p.block_size].reshape(valid.numel(), -1)


def _scatter(buf: torch.Tensor, p: PagedPlane, valid: torch.Tensor, data: torch.Tensor, u: int) -> None:
    rows = _slot_rows(buf, p, u)
    if rows is not None:
        rows.index_copy_(0, valid, data.reshape(valid.numel(), -1))
        return
    view = _paged_view(buf, p, u)
    view[valid // p.block_size, valid % p.block_size] = data.reshape(valid.numel(), *view.shape[2:])


def _read_object(obj: torch.Tensor, o: ObjectPlane, p: PagedPlane, num_tokens: int, tokens: torch.Tensor, u: int) -> torch.Tensor:
    return _object_view(obj, o, p, num_tokens, u)[tokens].reshape(tokens.numel(), -1)


def _write_object(obj: torch.Tensor, o: ObjectPlane, p: PagedPlane, num_tokens: int, tokens: torch.Tensor, data: torch.Tensor, u: int) -> None:
    view = _object_view(obj, o, p, num_tokens, u)
    view[tokens] = data.reshape(tokens.numel(), *view.shape[1:])


def run_planes(
    paged: list[PagedPlane],
    buffers: list[torch.Tensor],
    objects: list[ObjectPlane],
    obj: torch.Tensor,
    slots: torch.Tensor,
    skip_prefix: int,
    direction: int,
) -> None:
    """Copy along planes; ``buffers`` and ``obj`` are flat uint8 tensors.

    Store gathers each plane on the paged device and writes the object rows;
    load reads the object rows and scatters on the paged device. Across
    devices, all planes travel in one copy.
    """
    num_tokens = slots.numel()
    if not paged or num_tokens == 0:
        return
    slots = slots.to(dtype=torch.long)
    keep = slots >= 0
    keep[: min(skip_prefix, num_tokens)] = False
    tokens = torch.nonzero(keep).flatten().to(obj.device)
    if tokens.numel() == 0:
        return
    u, dtype = _unit(paged, objects, [*buffers, obj])
    bufs = [_typed(b, u, dtype) for b in buffers]
    objv = _typed(obj, u, dtype)
    page_dev = bufs[0].device
    valid = slots[keep].to(page_dev)
    if direction == D2H:
        parts = [_gather(bufs[p.buffer], p, valid, u) for p in paged]
        if page_dev != obj.device:
            parts = _one_copy(parts, obj.device)
        for p, o, data in zip(paged, objects, parts):
            _write_object(objv, o, p, num_tokens, tokens, data, u)
    else:
        parts = [_read_object(objv, o, p, num_tokens, tokens, u) for p, o in zip(paged, objects)]
        if page_dev != obj.device:
            parts = _one_copy(parts, page_dev)
        for p, data in zip(paged, parts):
            _scatter(bufs[p.buffer], p, valid, data, u)


def _one_copy(parts: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Move every plane's rows to ``device`` as a single transfer."""
    moved = torch.cat(parts, dim=1).to(device)
    return list(torch.split(moved, [p.shape[1] for p in parts], dim=1))
