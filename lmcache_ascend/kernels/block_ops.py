"""Block-based transfer for LMCache's multi-process mode.

``multi_layer_block_kv_transfer(paged_buffer_ptrs_tensor, lmcache_objects_ptrs,
block_ids, device, direction, shape_desc, lmcache_chunk_size, engine_kv_format,
skip_prefix_n_blocks)``, with the semantics of ``lmcache.cuda_ops`` and of the
torch baseline in ``lmcache.v1.platform.torch_ops.mp_mem_kernels``:

- ``shape_desc`` (``PageBufferShapeDesc``) gives the group's geometry:
  ``kv_size, nl, nb, bs, nh, hs, element_size, block_stride_elems``. For
  packed formats (12, 13) with ``kv_size == 1``, ``hs`` is the packed width
  ``CS`` and each head's ``[K | V]`` slice is moved as one.
- Format 18 (``NL_X_NB_BS_NH_HS``, SGLang "unified"): the paged side is
  ``nl`` buffers ``[nb, bs, nh, hs]``, one per K or V component (all K layers,
  then all V layers; ``nl`` counts components), and ``shape_desc`` must say
  ``kv_size == 1`` with the real ``nh`` (it is not MLA: ``nh`` may exceed 1).
  Each object is ``[nl, lmcache_chunk_size, nh * hs]`` (LMCache's single-plane
  chunk), component ``i`` in row block ``i``: byte-identical to LMCache's torch
  baseline (``_transfer_per_layer_fused``). MLA formats need ``nh == 1``.
- Every object is ``[kv_size, nl, lmcache_chunk_size, nh * hs]``; object ``i``
  holds blocks ``block_ids[i * bpo : (i + 1) * bpo]`` with
  ``bpo = lmcache_chunk_size / bs``. The last object may be partly filled.
- The first ``skip_prefix_n_blocks`` entries of ``block_ids`` (counted across
  objects) are left untouched in both directions.
- Block ids must lie in ``[0, nb)``: anything else is a ``ValueError`` here
  (upstream's CUDA kernel does not check).

When the KV, every object and the block ids are in host memory, the whole call
(every object) is one native ``transfer_blocks`` call: the core binds the plane
table and expands block ids to slots, so the Python front end is a fixed cost
per call, not per object. Otherwise each object goes through ``torch_run``.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from lmcache_ascend.core.kv_format import FormatSpec
from lmcache_ascend.core.planes import KVGeometry, PlaneSet, multi_layer_plane_set
from lmcache_ascend.kernels import dispatch, host, torch_path, torch_run
from lmcache_ascend.kernels.paged import PagedBuffers, cached_buffers, engine_tensor, remember, resolve_buffers, tuple_geometry
from lmcache_ascend.kernels.torch_edge import check_block_ids, check_device, check_tensor
from lmcache_ascend.kernels.validate import check_direction, check_format, check_int, fail

# Every field but the last (block_stride_elems: 0 = dense) must be >= 1.
_DESC_FIELDS = ("kv_size", "nl", "nb", "bs", "nh", "hs", "element_size", "block_stride_elems")
_read_fields = operator.attrgetter(*_DESC_FIELDS)
_DTYPES_BY_SIZE = {1: torch.uint8, 2: torch.float16, 4: torch.float32, 8: torch.float64}


class _Desc(NamedTuple):
    """A checked ``PageBufferShapeDesc`` (hashable: geometry is cached per distinct one)."""

    kv_size: int
    nl: int
    nb: int
    bs: int
    nh: int
    hs: int
    element_size: int
    block_stride_elems: int


def _read_desc(shape_desc: object) -> _Desc:
    try:
        values = _read_fields(shape_desc)
    except AttributeError:
        missing = [f for f in _DESC_FIELDS if not hasattr(shape_desc, f)]
        fail(TypeError, "shape_desc", f"must be a PageBufferShapeDesc; missing {', '.join(missing)}")
    # Plain ints >= 1 (the usual case) pass in one sweep; anything else is judged field by field.
    if not all(type(v) is int for v in values) or min(values[:-1]) < 1 or values[-1] < 0:
        values = tuple(check_int(v, f"shape_desc.{f}") for f, v in zip(_DESC_FIELDS, values))
        for f, v in zip(_DESC_FIELDS[:-1], values):
            if v < 1:
                fail(ValueError, f"shape_desc.{f}", f"must be >= 1, got {v}")
    return _Desc._make(values)


def _desc_dtype(shape_desc: object, element_size: int) -> torch.dtype:
    dtype = getattr(shape_desc, "dtype", None)
    if isinstance(dtype, torch.dtype):
        if dtype.itemsize != element_size:
            fail(ValueError, "shape_desc.dtype", f"{dtype} does not have element_size {element_size}")
        return dtype
    return _DTYPES_BY_SIZE.get(element_size, torch.uint8)


@functools.lru_cache(maxsize=64)  # every call of a request asks again; a bad desc raises (never cached)
def _geometry(spec: FormatSpec, desc: _Desc) -> tuple[KVGeometry, bool]:
    fused = spec.kv_inner and desc.kv_size == 1
    allowed = (1, 2) if spec.kv_inner else (spec.kv_size,)
    if desc.kv_size not in allowed:
        fail(ValueError, "shape_desc.kv_size", f"is {desc.kv_size}; {spec.fmt.name} needs {' or '.join(map(str, allowed))}")
    if spec.mla and desc.nh != 1:
        # an MLA token is one latent row: nh > 1 would size objects nh times too large
        fail(ValueError, "shape_desc.nh", f"is {desc.nh}; {spec.fmt.name} (MLA) has one head")
    head_size = desc.hs
    if fused:
        if head_size % 2:
            fail(ValueError, "shape_desc.hs", f"packed width {head_size} is odd")
        head_size //= 2
    pbs = spec.pbs_fused
    geometry = KVGeometry(
        num_layers=desc.nl,
        num_blocks=1 if pbs else desc.nb,
        block_size=desc.nb * desc.bs if pbs else desc.bs,
        num_heads=1 if spec.mla else desc.nh,
        head_size=head_size,
        itemsize=desc.element_size,
        block_stride_elems=desc.block_stride_elems,
    )
    return geometry, fused


def _plane_tuple_geometry(arg: object, desc: _Desc) -> KVGeometry:
    g = tuple_geometry(arg, "paged_buffer_ptrs_tensor", desc.nl)
    _check_tuple_desc(g, desc)
    return g


@functools.lru_cache(maxsize=64)
def _check_tuple_desc(g: KVGeometry, desc: _Desc) -> None:
    expected = {"kv_size": 1, "nh": 1, "hs": g.head_size, "nb": g.num_blocks, "bs": g.block_size, "element_size": g.itemsize}
    for field, value in expected.items():
        if getattr(desc, field) != value:
            fail(ValueError, f"shape_desc.{field}", f"is {getattr(desc, field)}, the plane tensors give {value}")


def _check_objects(objects: object, count_needed: int, nbytes: int) -> list[torch.Tensor | int]:
    """The first ``count_needed`` objects (tensors or addresses), checked. Every
    entry is checked (kind, null or negative address, size) even when the block
    ids need fewer: a malformed list is refused as a whole, whatever the call moves."""
    if not isinstance(objects, (list, tuple)) or not objects:
        fail(TypeError, "lmcache_objects_ptrs", "must be a non-empty list of pointers or tensors")
    if len(objects) < count_needed:
        fail(ValueError, "lmcache_objects_ptrs", f"has {len(objects)} objects; the block ids need {count_needed}")
    for i, o in enumerate(objects):
        _check_object(o, i, nbytes)
    return list(objects[:count_needed])


def _check_object(o: object, index: int, nbytes: int) -> None:
    if isinstance(o, torch.Tensor):
        check_tensor(o, f"lmcache_objects_ptrs[{index}]")
        if o.numel() * o.element_size() < nbytes:
            fail(ValueError, f"lmcache_objects_ptrs[{index}]", f"holds {o.numel() * o.element_size()} bytes, a chunk needs {nbytes}")
        return
    if isinstance(o, int) and not isinstance(o, bool):
        if o <= 0:
            fail(ValueError, f"lmcache_objects_ptrs[{index}]", f"is an invalid address {o} (null or negative)")
        return
    fail(TypeError, f"lmcache_objects_ptrs[{index}]", f"must be an int pointer or a tensor, got {type(o).__name__}")


def _object_view(o: torch.Tensor | int, nbytes: int, device: torch.device) -> torch.Tensor:
    """Byte view of a checked object, for the device-generic torch path."""
    if isinstance(o, torch.Tensor):
        return torch_path.byte_view(o)[:nbytes]
    return torch_path.device_bytes(o, nbytes, device)


def multi_layer_block_kv_transfer(
    paged_buffer_ptrs_tensor: object,
    # LMCache's multi-process path reads this annotation to learn that the op
    # takes tensors as well as pointers (transfer_context.base); keep "Tensor" in it.
    lmcache_objects_ptrs: "list[int] | list[torch.Tensor]",
    block_ids: object,
    device: object,
    direction: object,
    shape_desc: object,
    lmcache_chunk_size: object,
    engine_kv_format: object,
    skip_prefix_n_blocks: object,
) -> None:
    spec = check_format(engine_kv_format)
    direction = check_direction(direction)
    desc = _read_desc(shape_desc)
    chunk = check_int(lmcache_chunk_size, "lmcache_chunk_size", 1)
    skip = check_int(skip_prefix_n_blocks, "skip_prefix_n_blocks")
    dev = check_device(device, "device")
    paged, fused = _paged_side(paged_buffer_ptrs_tensor, spec, desc, shape_desc, dev)
    if chunk % desc.bs:
        fail(ValueError, "lmcache_chunk_size", f"{chunk} is not a multiple of the block size {desc.bs}")
    blocks = check_block_ids(block_ids, "block_ids", None)  # range: by the core, or below for the torch path
    per_object = chunk // desc.bs
    num_objects = -(-blocks.numel() // per_object)
    geometry = paged.geometry
    nbytes = desc.kv_size * desc.nl * chunk * desc.nh * desc.hs * desc.element_size
    objects = _check_objects(lmcache_objects_ptrs, num_objects, nbytes)
    planes = multi_layer_plane_set(spec, geometry, chunk, fused)
    if _all_on_host(paged, objects, dev):
        # One native call for every object: binding and slot ids cost nanoseconds there.
        if planes.paged and objects:
            addresses = [o.data_ptr() if isinstance(o, torch.Tensor) else o for o in objects]
            ids, id_array = _host_ids(blocks)
            host.run_blocks(planes.table, planes.buffer_index, paged.ptrs, addresses, id_array, desc.bs, per_object, desc.nb, skip, direction)
            del ids  # held until the core returned
        return
    check_block_ids(blocks, "block_ids", desc.nb)
    _run_per_object(_BlockCall(planes, paged, blocks, desc.bs, per_object, skip, direction), objects, nbytes, dev)


def _paged_side(arg: object, spec: FormatSpec, desc: _Desc, shape_desc: object, dev: torch.device) -> tuple[PagedBuffers, bool]:
    """The checked paged buffers and whether packed ``[K | V]`` heads stay fused.

    Serving passes the same KV list with the same description for every request: what
    was derived from them (geometry, dtype) is remembered per list, and reused while
    ``paged.cached_buffers`` finds the very tensors checked before (~5 us a call less).
    """
    given = getattr(shape_desc, "dtype", None)
    # A dtype other than torch's is ignored (by element size), but still differs from none given.
    key = (id(arg), spec, desc, given if isinstance(given, torch.dtype) else given is None, dev)
    known = _SIDES.get(key)
    if known is not None:
        hit = cached_buffers(arg, spec, known.geometry, dev, known.dtype)
        if hit is not None:
            return hit, known.fused
    if spec.buffers == "layer_planes":
        geometry, fused = _plane_tuple_geometry(arg, desc), False
    else:
        geometry, fused = _geometry(spec, desc)
    dtype = _paged_dtype(arg, shape_desc, desc)
    paged = resolve_buffers(arg, spec, geometry, dev, dtype, "paged_buffer_ptrs_tensor")
    if paged.tensors is not None:
        remember(_SIDES, key, _Side(geometry, fused, dtype), _SIDES_MAX)
    return paged, fused


@dataclass(frozen=True)
class _Side:
    geometry: KVGeometry
    fused: bool
    dtype: torch.dtype


# Keyed by the caller's KV list (by id: a hit still needs cached_buffers to find the same live tensors).
_SIDES: dict[tuple[object, ...], _Side] = {}
_SIDES_MAX = 8


def _paged_dtype(arg: object, shape_desc: object, desc: _Desc) -> torch.dtype:
    """The KV dtype: ``shape_desc.dtype`` when given, else the KV tensors' own, else by element size."""
    dtype = _desc_dtype(shape_desc, desc.element_size)
    first = engine_tensor(arg)
    if first is not None and getattr(shape_desc, "dtype", None) is None:
        if first.element_size() != desc.element_size:
            fail(TypeError, "paged_buffer_ptrs_tensor", f"holds {first.dtype}, shape_desc.element_size is {desc.element_size}")
        return first.dtype
    return dtype


def _all_on_host(paged: PagedBuffers, objects: list[torch.Tensor | int], dev: torch.device) -> bool:
    """Whether the host core runs every object of the call (as ``dispatch.use_host`` decides)."""
    on_host = paged.is_host and all(o.is_cpu if isinstance(o, torch.Tensor) else dev.type == "cpu" for o in objects)
    return dispatch.use_host(on_host, lambda: _device_memory(paged, objects, dev))


def _device_memory(paged: PagedBuffers, objects: list[torch.Tensor | int], dev: torch.device) -> str:
    devices = [o.device if isinstance(o, torch.Tensor) else dev for o in objects]
    elsewhere = [d for d in devices if d.type != "cpu"]
    return f"the transfer touches device memory (paged on {paged.device}, object on {next(iter(elsewhere or devices), dev)})"


def _host_ids(blocks: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Contiguous host block ids (hold them for the call) and their (address, itemsize, count)."""
    ids = blocks if blocks.is_cpu else blocks.cpu()
    ids = ids if ids.is_contiguous() else ids.contiguous()
    return ids, (ids.data_ptr(), ids.element_size(), ids.numel())


@dataclass(frozen=True)
class _BlockCall:
    planes: PlaneSet
    paged: PagedBuffers
    blocks: torch.Tensor
    block_size: int
    per_object: int
    skip: int
    direction: int


def _run_per_object(call: _BlockCall, objects: list[torch.Tensor | int], nbytes: int, dev: torch.device) -> None:
    """Objects some of whose memory is on a device: each through ``torch_run.run``."""
    bs, per_object, paged = call.block_size, call.per_object, call.paged
    slot_dev = dev if not paged.is_host else torch.device("cpu")
    slots = (call.blocks.to(slot_dev, torch.int64)[:, None] * bs + torch.arange(bs, device=slot_dev)).reshape(-1)
    for i, obj in enumerate(objects):
        first_block = i * per_object
        span = slice(first_block * bs, (first_block + per_object) * bs)
        obj_skip = min(max(call.skip - first_block, 0), per_object) * bs
        torch_run.run(call.planes, paged, _object_view(obj, nbytes, dev), slots[span], obj_skip, call.direction)
