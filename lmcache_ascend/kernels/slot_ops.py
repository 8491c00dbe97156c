"""Slot-based transfers: one memory object <-> token slots of a paged cache.

Contracts (same names, arguments and semantics as ``lmcache.cuda_ops``):

``multi_layer_kv_transfer``
    ``key_value`` ``[kv, L, T, H]`` (``KV_2LTD`` with kv = 2, ``KV_MLA_FMT`` with
    kv = 1) <-> the paged buffers of ``L`` layers. Token ``t`` goes to slot
    ``slot_mapping[t]``; ``slot < 0`` and ``t < skip_prefix_n_tokens`` are left
    untouched in both directions. For packed formats (12, 13) ``kv = 2`` moves
    K and V as separate planes (the ``KV_2LTD`` object every other format
    produces) and ``kv = 1`` keeps each head's ``[K | V]`` slice together, as
    upstream's CUDA kernel does; ``head_size`` is then the size of K alone.
    Format 18 (one K or V component per buffer) takes kv = 1 with
    ``H = NH * HS`` and ``L`` = the number of component buffers. Upstream's
    torch baseline has no working slot path for 18 (LMCache moves it only with
    ``multi_layer_block_kv_transfer``); this is the same addressing.
``multi_layer_kv_transfer_unilateral``
    SGLang MHA: ``2 * L`` buffers ``[PBS, H]`` (K layers, then V layers).
    Single-plane formats (MLA, 18) go through ``multi_layer_kv_transfer``.
``single_layer_kv_transfer``
    One layer: ``lmc_key_value_cache`` ``[T, 2, H]`` (``token_major``, the
    layerwise ``KV_T2D`` object), ``[2, T, H]``, or ``[T, H]`` for single-plane
    formats (MLA; 18 with ``H = NH * HS``) <-> one layer's paged tensor (a
    ``(K, V)`` tuple for format 16).
``single_layer_kv_transfer_sgl``
    One SGLang layer: separate K and V caches ``[NB, BS, NH, HS]`` or
    ``[PBS, NH, HS]``.
``load_and_reshape_flash`` / ``reshape_and_cache_back_flash``
    Layer ``layer_idx`` of a ``[2, L, T, H]`` object <-> a K and a V cache
    ``[NB, BS, NH, HS]`` (paged -> object, and object -> paged).

Direction: 0 (H2D) object -> paged (load), 1 (D2H) paged -> object (store).
"""

from __future__ import annotations

import dataclasses

import torch

from lmcache_ascend.core.kv_format import FormatSpec, KVFormat, format_spec
from lmcache_ascend.core.planes import KVGeometry, multi_layer_plane_set, single_layer_plane_set
from lmcache_ascend.kernels import torch_run
from lmcache_ascend.kernels.geometry import block_size_matters, slot_geometry, tensor_geometry
from lmcache_ascend.kernels.paged import engine_tensor, first_plane_tuple, resolve_buffers, tuple_geometry
from lmcache_ascend.kernels.torch_edge import check_device, check_slots, check_tensor
from lmcache_ascend.kernels.validate import H2D, D2H, check_direction, check_format, check_int, fail


def multi_layer_kv_transfer(
    key_value: object,
    key_value_ptrs: object,
    slot_mapping: object,
    paged_memory_device: object,
    page_buffer_size: object,
    direction: object,
    engine_kv_format: object,
    block_size: object = 0,
    head_size: object = 0,
    skip_prefix_n_tokens: object = 0,
    block_stride_elems: object = 0,
) -> None:
    spec = check_format(engine_kv_format)
    direction = check_direction(direction)
    kv = check_tensor(key_value, "key_value", ndim=4)
    kv_planes, num_layers, num_tokens, row = kv.shape
    # LMCache's CUDA kernel ignores page_buffer_size for MLA, and its own tests
    # pass 0 there; the paged tensors then give the slot count (see below).
    pbs = check_int(page_buffer_size, "page_buffer_size", 0 if spec.mla else 1)
    skip = check_int(skip_prefix_n_tokens, "skip_prefix_n_tokens")
    scalars = dict(
        kv_planes=kv_planes,
        num_layers=num_layers,
        row_elems=row,
        itemsize=kv.element_size(),
        page_buffer_size=pbs,
        block_size=check_int(block_size, "block_size"),
        head_size=check_int(head_size, "head_size"),
        block_stride_elems=check_int(block_stride_elems, "block_stride_elems"),
    )
    first = engine_tensor(key_value_ptrs)
    if spec.buffers == "layer_planes" and first is not None:
        geometry, fused = _plane_tuple_geometry(key_value_ptrs, **scalars), False
    elif first is not None:
        geometry, fused = _geometry_from_tensors(spec, first, **scalars)
    elif pbs == 0:
        fail(ValueError, "page_buffer_size", "is 0, which needs the paged tensors: a pointer table does not say how many slots a buffer holds")
    else:
        geometry, fused = slot_geometry(spec, **scalars)
    device = check_device(paged_memory_device, "paged_memory_device")
    paged = resolve_buffers(key_value_ptrs, spec, geometry, device, kv.dtype, "key_value_ptrs")
    slots = check_slots(slot_mapping, "slot_mapping", num_tokens, geometry.num_slots, skip)
    planes = multi_layer_plane_set(spec, geometry, num_tokens, fused)
    torch_run.run(planes, paged, kv, slots, skip, direction)


def _geometry_from_tensors(spec: FormatSpec, first: torch.Tensor, **scalars: int) -> tuple[KVGeometry, bool]:
    """Paged tensors are authoritative; the scalar arguments must agree with them."""
    kv_planes, row = scalars["kv_planes"], scalars["row_elems"]
    fused = spec.kv_inner and kv_planes == 1
    if kv_planes not in ((1, 2) if spec.kv_inner else (spec.kv_size,)):
        fail(ValueError, "key_value", f"has {kv_planes} K/V planes, which {spec.fmt.name} does not produce")
    g = tensor_geometry(spec, tuple(first.shape), first.element_size(), scalars["num_layers"], "key_value_ptrs[0]")
    g = dataclasses.replace(g, block_stride_elems=scalars["block_stride_elems"])
    if scalars["page_buffer_size"] not in (0, g.num_slots):  # 0: MLA only (checked above)
        fail(ValueError, "page_buffer_size", f"is {scalars['page_buffer_size']} but the paged tensors hold {g.num_slots} slots")
    if scalars["block_size"] and block_size_matters(spec) and scalars["block_size"] != g.block_size:
        fail(ValueError, "block_size", f"is {scalars['block_size']} but the paged tensors have blocks of {g.block_size}")
    tensor_row = g.num_heads * g.head_size * (2 if fused else 1)
    if tensor_row != row:
        fail(ValueError, "key_value", f"rows have {row} elements; the paged tensors give {tensor_row} per token")
    return g, fused


def _plane_tuple_geometry(arg: object, **scalars: int) -> KVGeometry:
    """Plane tuples: geometry from layer 0's planes, checked against the scalars."""
    g = tuple_geometry(arg, "key_value_ptrs", scalars["num_layers"])
    if scalars["kv_planes"] != 1:
        fail(ValueError, "key_value", f"must be [1, L, T, H] for plane tuples, got {scalars['kv_planes']} K/V planes")
    if scalars["page_buffer_size"] not in (0, g.num_slots):
        fail(ValueError, "page_buffer_size", f"is {scalars['page_buffer_size']} but the planes hold {g.num_slots} slots")
    if g.head_size != scalars["row_elems"]:
        fail(ValueError, "key_value", f"rows have {scalars['row_elems']} elements; the planes pack {g.head_size} per token")
    # Planes differ in width, so one stride fits plane 0 only: LMCache passes that one.
    tight = g.block_size * g.planes[0][0]
    if scalars["block_stride_elems"] not in (0, tight):
        fail(ValueError, "block_stride_elems", f"is {scalars['block_stride_elems']}; plane tuples take 0 or plane 0's block ({tight})")
    return g


def multi_layer_kv_transfer_unilateral(
    key_value: object,
    key_value_ptrs: object,
    slot_mapping: object,
    paged_memory_device: object,
    page_buffer_size: object,
    direction: object,
    engine_kv_format: object,
) -> None:
    spec = check_format(engine_kv_format)
    # Only the two-plane SGLang MHA pool is "unilateral" (K and V buffers per
    # layer); single-plane formats (MLA, 18) already address like the plain op.
    fmt = spec.fmt if spec.kv_size == 1 else KVFormat.TWO_X_NL_X_NBBS_NH_HS
    multi_layer_kv_transfer(
        key_value, key_value_ptrs, slot_mapping, paged_memory_device, page_buffer_size, direction, fmt
    )


def single_layer_kv_transfer(
    lmc_key_value_cache: object,
    vllm_key_value_cache: object,
    slot_mapping: object,
    direction: object,
    engine_kv_format: object,
    token_major: object = False,
) -> None:
    spec = check_format(engine_kv_format)
    if spec.buffers not in ("layer", "layer_kv", "layer_planes"):
        fail(ValueError, "engine_kv_format", f"{spec.fmt.name} is not a per-layer format")
    direction = check_direction(direction)
    paged_arg = vllm_key_value_cache
    if spec.buffers == "layer_planes":
        planes = first_plane_tuple([paged_arg], "vllm_key_value_cache")
        g = tuple_geometry([paged_arg], "vllm_key_value_cache", 1)
        _single_layer(spec, g, list(planes), "vllm_key_value_cache", lmc_key_value_cache, slot_mapping, direction, bool(token_major))
        return
    if spec.buffers == "layer_kv":
        if not (isinstance(paged_arg, (list, tuple)) and len(paged_arg) == 2):
            fail(TypeError, "vllm_key_value_cache", f"must be a (K, V) tuple for {spec.fmt.name}")
        first = check_tensor(paged_arg[0], "vllm_key_value_cache[0]")
        buffers = list(paged_arg)
    else:
        first = check_tensor(paged_arg, "vllm_key_value_cache")
        buffers = [paged_arg]
    g = tensor_geometry(spec, tuple(first.shape), first.element_size(), 1, "vllm_key_value_cache")
    _single_layer(spec, g, buffers, "vllm_key_value_cache", lmc_key_value_cache, slot_mapping, direction, bool(token_major))


def single_layer_kv_transfer_sgl(
    lmc_key_value_cache: object,
    sgl_key_cache: object,
    sgl_value_cache: object,
    slot_mapping: object,
    direction: object,
    token_major: object = False,
) -> None:
    direction = check_direction(direction)
    k = check_tensor(sgl_key_cache, "sgl_key_cache")
    check_tensor(sgl_value_cache, "sgl_value_cache", shape=tuple(k.shape), dtype=k.dtype)
    if k.dim() not in (3, 4):
        fail(ValueError, "sgl_key_cache", f"must be [NB, BS, NH, HS] or [PBS, NH, HS], got {list(k.shape)}")
    fmt = KVFormat.TWO_X_NL_X_NB_BS_NH_HS if k.dim() == 4 else KVFormat.TWO_X_NL_X_NBBS_NH_HS
    spec = format_spec(fmt)
    g = tensor_geometry(spec, tuple(k.shape), k.element_size(), 1, "sgl_key_cache")
    _single_layer(spec, g, [sgl_key_cache, sgl_value_cache], "sgl_key_cache", lmc_key_value_cache, slot_mapping, direction, bool(token_major))


def _single_layer(spec: FormatSpec, g: KVGeometry, buffers: list[object], name: str, lmc: object, slot_mapping: object, direction: int, token_major: bool) -> None:
    row = g.num_heads * g.head_size if not spec.mla else g.head_size
    kv_size = spec.kv_size
    expected: tuple[int, ...]
    if kv_size == 1:
        obj = check_tensor(lmc, "lmc_key_value_cache", ndim=2)
        num_tokens = obj.shape[0]
        expected = (num_tokens, row)
    else:
        obj = check_tensor(lmc, "lmc_key_value_cache", ndim=3)
        num_tokens = obj.shape[0] if token_major else obj.shape[1]
        expected = (num_tokens, 2, row) if token_major else (2, num_tokens, row)
    if tuple(obj.shape) != expected:
        fail(ValueError, "lmc_key_value_cache", f"has shape {list(obj.shape)}, expected {list(expected)}")
    first = engine_tensor(buffers)
    if first is None:
        fail(TypeError, name, "holds no tensor")
    device = first.device
    paged = resolve_buffers(buffers, spec, g, device, obj.dtype, name)
    slots = check_slots(slot_mapping, "slot_mapping", num_tokens, g.num_slots)
    planes = single_layer_plane_set(spec, g, num_tokens, token_major)
    torch_run.run(planes, paged, obj, slots, 0, direction)


def _flash(key_value: object, key_cache: object, value_cache: object, slot_mapping: object, layer_idx: object, direction: int) -> None:
    kv = check_tensor(key_value, "key_value", ndim=4)
    k = check_tensor(key_cache, "key_cache", ndim=4)
    check_tensor(value_cache, "value_cache", shape=tuple(k.shape), dtype=k.dtype)
    if kv.shape[0] != 2:
        fail(ValueError, "key_value", f"must be [2, L, T, H], got {list(kv.shape)}")
    _, num_layers, num_tokens, row = kv.shape
    layer = check_int(layer_idx, "layer_idx")
    if layer >= num_layers:
        fail(ValueError, "layer_idx", f"{layer} is outside key_value's {num_layers} layers")
    spec = format_spec(KVFormat.NL_X_TWO_X_NB_BS_NH_HS)
    g = tensor_geometry(spec, tuple(k.shape), k.element_size(), 1, "key_cache")
    if g.num_heads * g.head_size != row:
        fail(ValueError, "key_value", f"rows have {row} elements; key_cache gives {g.num_heads * g.head_size}")
    paged = resolve_buffers([key_cache, value_cache], spec, g, k.device, kv.dtype, "key_cache")
    slots = check_slots(slot_mapping, "slot_mapping", num_tokens, g.num_slots)
    planes = multi_layer_plane_set(spec, g, num_tokens, object_layers=num_layers, object_layer_offset=layer)
    torch_run.run(planes, paged, kv, slots, 0, direction)


def load_and_reshape_flash(key_value: object, key_cache: object, value_cache: object, slot_mapping: object, layer_idx: object) -> None:
    _flash(key_value, key_cache, value_cache, slot_mapping, layer_idx, D2H)


def reshape_and_cache_back_flash(key_value: object, key_cache: object, value_cache: object, slot_mapping: object, layer_idx: object) -> None:
    _flash(key_value, key_cache, value_cache, slot_mapping, layer_idx, H2D)
