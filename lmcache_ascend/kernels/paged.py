"""The paged side of a transfer: buffers given as a pointer table or as tensors.

Upstream ops accept ``key_value_ptrs`` either as an int64 tensor of base
addresses (one per buffer, in the format's pointer-table order) or as the
tensors themselves (a flat list, a list of per-layer ``(K, V)`` tuples, or
SGLang's ``[[K layers], [V layers]]``). :func:`resolve_buffers` turns either
into a :class:`PagedBuffers` after checking count, shape, dtype and device, so
no bad address or undersized buffer reaches a kernel.
"""

from __future__ import annotations

import functools
import operator
import weakref
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch

from lmcache_ascend.core.kv_format import FormatSpec
from lmcache_ascend.core.planes import KVGeometry, buffer_bytes, buffer_count
from lmcache_ascend.core.plane_tuples import plane_tuple_geometry
from lmcache_ascend.core.tensor_desc import TensorDesc, contiguous_strides
from lmcache_ascend.kernels import torch_path
from lmcache_ascend.kernels.torch_edge import check_tensor, describe_tensor, dtype_name
from lmcache_ascend.kernels.validate import check_block_stride, check_buffer_count, check_paged_buffers, fail


@dataclass
class PagedBuffers:
    spec: FormatSpec
    geometry: KVGeometry
    device: torch.device
    ptrs: npt.NDArray[np.int64]  # int64 base address per buffer, pointer-table order
    tensors: list[torch.Tensor] | None  # kept alive for the call; None for pointer tables

    @property
    def is_host(self) -> bool:
        return self.device.type == "cpu"

    def byte_tensors(self) -> list[torch.Tensor]:
        if self.tensors is not None:
            return [torch_path.byte_view(t) for t in self.tensors]
        return [
            torch_path.device_bytes(int(p), buffer_bytes(self.spec, self.geometry, i), self.device)
            for i, p in enumerate(self.ptrs)
        ]


def engine_tensor(arg: object) -> torch.Tensor | None:
    """The first KV tensor of ``arg``, or None when ``arg`` is a pointer table."""
    while isinstance(arg, (list, tuple)) and arg:
        arg = arg[0]
    if isinstance(arg, torch.Tensor) and arg.dtype not in (torch.int64, torch.uint64):
        return arg
    return None


def first_plane_tuple(arg: object, name: str) -> tuple[torch.Tensor, ...]:
    """Layer 0's planes from a list of per-layer plane tuples (format 17).

    A pointer table cannot say how wide each plane is, so the tensors are required.
    """
    if not (isinstance(arg, (list, tuple)) and arg and isinstance(arg[0], (list, tuple)) and arg[0]):
        fail(TypeError, name, "must be a list of per-layer plane tuples for plane-tuple (MLA/DSA) caches")
    planes = tuple(arg[0])
    for i, t in enumerate(planes):
        if not isinstance(t, torch.Tensor):
            fail(TypeError, f"{name}[0][{i}]", f"must be a torch.Tensor, got {type(t).__name__}")
    return planes


def tuple_geometry(arg: object, name: str, num_layers: int) -> KVGeometry:
    """Geometry of ``num_layers`` layers shaped like layer 0's plane tuple in ``arg``.

    Computed once per distinct (shapes, dtypes): serving calls this for every chunk.
    """
    planes = first_plane_tuple(arg, name)
    return _tuple_geometry(tuple((tuple(t.shape), t.dtype) for t in planes), num_layers)


@functools.lru_cache(maxsize=64)
def _tuple_geometry(planes: tuple[tuple[tuple[int, ...], torch.dtype], ...], num_layers: int) -> KVGeometry:
    descs = [
        TensorDesc(0, shape, contiguous_strides(shape), dtype_name(dtype), dtype.itemsize)
        for shape, dtype in planes
    ]
    return plane_tuple_geometry(descs, num_layers)


def _flatten(arg: object) -> list[object]:
    if not isinstance(arg, (list, tuple)):
        return [arg]
    flat: list[object] = []
    for item in arg:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    # [[K layers], [V layers]] and [(K0, V0), (K1, V1)] both flatten to pointer-table order.
    return flat


def resolve_buffers(
    arg: object,
    spec: FormatSpec,
    geometry: KVGeometry,
    device: torch.device,
    dtype: torch.dtype,
    name: str,
) -> PagedBuffers:
    """Validate ``arg`` (pointer tensor or tensors) against the expected buffers."""
    check_block_stride(spec, geometry)
    need = buffer_count(spec, geometry)
    if isinstance(arg, torch.Tensor) and arg.dtype in (torch.int64, torch.uint64) and arg.dim() == 1:
        return _from_pointers(arg, spec, geometry, device, need, name)
    wrapped = isinstance(arg, torch.Tensor) and spec.buffers == "single"
    if wrapped:
        arg = [arg]
    if not isinstance(arg, (list, tuple)):
        fail(TypeError, name, f"must be an int64 pointer tensor or a list of tensors, got {type(arg).__name__}")
    hit = None if wrapped else cached_buffers(arg, spec, geometry, device, dtype)
    if hit is not None:
        return hit
    paged = _check_tensors(_flatten(arg), spec, geometry, device, dtype, name)
    if not wrapped and paged.tensors is not None:  # a fresh one-item list per call would only churn the cache
        entry = _Checked(tuple(weakref.ref(t) for t in paged.tensors), paged.ptrs.tolist(), paged.ptrs)
        remember(_CHECKED, (id(arg), spec, geometry, device, dtype), entry, _CHECKED_MAX)
    return paged


def cached_buffers(arg: object, spec: FormatSpec, geometry: KVGeometry, device: torch.device, dtype: torch.dtype) -> PagedBuffers | None:
    """What :func:`resolve_buffers` found for this very list of tensors before, if they are
    still alive at the same addresses (see :class:`_Checked`); None otherwise (nothing is checked)."""
    hit = _CHECKED.get((id(arg), spec, geometry, device, dtype))
    if hit is None:
        return None
    tensors = _flatten(arg)
    if not hit.matches(tensors):
        return None
    return PagedBuffers(spec, geometry, device, hit.ptrs, cast(list[torch.Tensor], tensors))  # matched: all tensors


@dataclass(frozen=True)
class _Checked:
    """Tensors that passed :func:`_check_tensors` for one (format, geometry,
    device, dtype), held weakly, and their addresses.

    Serving passes the same KV cache list for every chunk; describing and
    checking its 64 tensors (16 layers of DSA-C8 planes) again costs ~0.2 ms,
    as much as copying a few MiB (a hit: ~10 us). A hit needs the very same tensor objects,
    alive, at the same addresses: a replaced layer, a freed cache or a storage
    swapped by ``set_`` is checked again. Like upstream's cached pointer
    tables, it assumes KV tensors are not reshaped in place.
    """

    refs: tuple[weakref.ref[torch.Tensor], ...]
    addresses: list[int]
    ptrs: npt.NDArray[np.int64]

    def matches(self, tensors: list[object]) -> bool:
        if len(tensors) != len(self.refs):
            return False
        # map() over C functions: this runs on every call (64 tensors for 16 DSA-C8 layers)
        alive = [r() for r in self.refs]
        if not all(map(operator.is_, alive, tensors)):
            return False
        try:
            return list(map(_data_ptr, cast(list[torch.Tensor], alive))) == self.addresses
        except TypeError:  # a dead reference (None) matched a None entry: not a hit
            return False


# Keyed by the caller's list (by id: a reused id still needs the same live
# tensors to hit), bounded: one entry per engine cache in practice.
_CHECKED: dict[tuple[object, ...], _Checked] = {}
_CHECKED_MAX = 8
_data_ptr = torch.Tensor.data_ptr
T = TypeVar("T")


def remember(cache: dict[tuple[object, ...], T], key: tuple[object, ...], entry: T, limit: int) -> None:
    """Put ``entry`` in a small per-KV-list cache, newest last, dropping the oldest past ``limit``."""
    cache.pop(key, None)
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = entry


def _check_tensors(
    tensors: list[object],
    spec: FormatSpec,
    geometry: KVGeometry,
    device: torch.device,
    dtype: torch.dtype,
    name: str,
) -> PagedBuffers:
    """The torch edge of ``validate.check_paged_buffers``: each entry must be a
    tensor with storage; its description is what is judged."""
    check_buffer_count(len(tensors), spec, geometry, name)  # a short list is reported as such, not by its entries
    descs = [describe_tensor(t, f"{name}[{i}]") for i, t in enumerate(tensors)]
    ptrs = check_paged_buffers(descs, spec, geometry, device.type, dtype_name(dtype), name)
    return PagedBuffers(spec, geometry, device, ptrs, cast(list[torch.Tensor], tensors))


def _from_pointers(
    ptrs: torch.Tensor, spec: FormatSpec, geometry: KVGeometry, device: torch.device, need: int, name: str
) -> PagedBuffers:
    check_tensor(ptrs, name, dense=False)
    if ptrs.numel() < need:
        fail(ValueError, name, f"has {ptrs.numel()} pointers; {spec.fmt.name} with {geometry.num_layers} layers needs {need}")
    # uint64 tables are read as int64: an address >= 2**63 then shows up negative.
    if ptrs.is_cpu:
        values = ptrs.numpy()[:need].view(np.int64)  # zero-copy view, read only; numpy slices cheaper than torch
    else:
        values = np.array(ptrs[:need].view(torch.int64).tolist(), dtype=np.int64)
    if values.size and values.min() <= 0:
        # Neither a null nor a negative address is host or device memory.
        bad = int(np.argmin(values > 0))
        fail(ValueError, name, f"holds an invalid address {int(values[bad])} at index {bad} (null or negative)")
    return PagedBuffers(spec, geometry, device, values, None)
