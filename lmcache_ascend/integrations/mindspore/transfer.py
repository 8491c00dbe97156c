"""MindSpore paged KV <-> LMCache memory objects, through the host C++ core.

MindSpore tensors are described (``core.TensorDesc``) and go through the ops'
front end over descriptions (``kernels/described.py``): the same checks, plane
tables and host core as the PyTorch flavour, so the memory objects are byte for
byte the PyTorch flavour's:

``multi_layer(kv, obj, slot_mapping, direction, skip_prefix=0)``
    ``obj`` ``[2, L, T, H]`` (``KV_2LTD``) or ``[1, L, T, H]`` for MLA
    (``KV_MLA_FMT``) <-> every layer of ``kv``.
``single_layer(kv, layer, obj, slot_mapping, direction)``
    ``obj`` ``[T, 2, H]`` (``KV_T2D``, layerwise) or ``[T, H]`` for MLA <-> one layer.

``H = num_kv_heads * head_size`` (``head_size`` for MLA). Token ``t`` goes to
slot ``slot_mapping[t]``, ``slot = block_id * block_size + offset``; tokens
with a negative slot, and the first ``skip_prefix`` tokens, are left alone in
both directions. Direction 0 (H2D) loads object -> paged KV, 1 (D2H) stores
paged KV -> object.

``obj`` is the memory object's tensor: a torch tensor (LMCache's allocator), a
numpy array or a MindSpore tensor, in host memory, dense, of the KV's dtype.
``slot_mapping`` is a 1-D integer torch / MindSpore tensor, numpy array or list.
Every argument is checked before any byte moves (``TypeError`` / ``ValueError``
naming it); the copy is complete when the call returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmcache_ascend.core.kv_format import format_spec
from lmcache_ascend.core.tensor_desc import TensorDesc, describe
from lmcache_ascend.integrations.mindspore.engine_kv import MindSporeKV
from lmcache_ascend.kernels import described
from lmcache_ascend.kernels.validate import D2H, H2D, check_direction, check_int

__all__ = ["D2H", "H2D", "check_direction", "check_object", "describe_object", "host_slots", "multi_layer", "single_layer", "slot_array"]


def _as_numpy(values: Any, name: str) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    if isinstance(values, (list, tuple)):
        return np.asarray(values)
    asnumpy = getattr(values, "asnumpy", None)  # MindSpore
    if callable(asnumpy):
        return np.asarray(asnumpy())
    if all(callable(getattr(values, m, None)) for m in ("detach", "cpu", "numpy")):  # torch
        return values.detach().cpu().numpy()
    raise TypeError(f"{name} must be a 1-D integer tensor, array or list, got {type(values).__name__}")


def host_slots(slot_mapping: Any, name: str = "slot_mapping", copy: bool = False) -> np.ndarray:
    """``slot_mapping`` as a dense 1-D int64 host array (a private copy with ``copy``)."""
    return described.slot_ids(_as_numpy(slot_mapping, name), name, copy)


def slot_array(slot_mapping: Any, num_tokens: int, num_slots: int, skip_prefix: int = 0, name: str = "slot_mapping") -> np.ndarray:
    """``slot_mapping`` as a dense int64 host array of ``num_tokens`` entries, every
    live one (after ``skip_prefix``, not negative) < ``num_slots``."""
    return described.check_slot_values(_as_numpy(slot_mapping, name), name, num_tokens, num_slots, skip_prefix)


def describe_object(obj: Any, ndim: int, name: str = "memory_obj") -> TensorDesc:
    """The memory object's description; it must be a tensor / array of ``ndim`` dims."""
    try:
        d = describe(obj)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None
    if d.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {list(d.shape)}")
    return d


def check_object(d: TensorDesc, kv: MindSporeKV, shape: tuple[int, ...], name: str = "memory_obj") -> TensorDesc:
    """``d`` after checking it is a dense host object of ``shape`` and the KV's dtype."""
    return described.check_object(d, shape, kv.dtype, name)


def multi_layer(kv: MindSporeKV, obj: Any, slot_mapping: Any, direction: object, skip_prefix: int = 0) -> None:
    """All layers of ``kv`` <-> ``obj`` ``[kv, L, T, H]`` (see the module docstring)."""
    direction = check_direction(direction)
    skip = check_int(skip_prefix, "skip_prefix")
    spec = format_spec(kv.fmt)
    d = describe_object(obj, 4)
    num_tokens = d.shape[2]
    check_object(d, kv, (spec.kv_size, kv.num_layers, num_tokens, kv.hidden_dim))
    slots = slot_array(slot_mapping, num_tokens, kv.num_slots, skip)
    described.run_multi_layer(spec, kv.layout.geometry, kv.ptrs, d, slots, skip, direction)


def single_layer(kv: MindSporeKV, layer: int, obj: Any, slot_mapping: Any, direction: object) -> None:
    """Layer ``layer`` of ``kv`` <-> token-major ``obj`` ``[T, 2, H]`` (``[T, H]`` for MLA)."""
    direction = check_direction(direction)
    layer = check_int(layer, "layer")
    if layer >= kv.num_layers:
        raise ValueError(f"layer {layer} is outside the paged KV's {kv.num_layers} layers")
    spec = format_spec(kv.fmt)
    d = describe_object(obj, 2 if kv.use_mla else 3)
    num_tokens = d.shape[0]
    shape = (num_tokens, kv.hidden_dim) if kv.use_mla else (num_tokens, 2, kv.hidden_dim)
    check_object(d, kv, shape)
    slots = slot_array(slot_mapping, num_tokens, kv.num_slots)
    described.run_single_layer(spec, kv.layout.geometry, kv.layer_ptrs(layer), d, slots, direction)
