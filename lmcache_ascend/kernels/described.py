"""The host op front end over descriptions (``core.TensorDesc``), for tensors that are not torch's.

The torch ops (``slot_ops``, ``block_ops``) validate torch tensors and run on
the host core or the device-generic torch path. Front ends whose tensors are
another framework's (MindSpore, ``integrations/mindspore/transfer.py``) describe
them (:func:`lmcache_ascend.core.tensor_desc.describe`) and come here: the same
checks, the same plane tables (``core.planes``) and the same host core, so their
memory objects are byte for byte the torch ops'.

- :func:`check_object`: a memory object description of ``shape`` and ``dtype``,
  dense, in host memory.
- :func:`slot_ids`: slot ids as a dense 1-D int64 host array;
- :func:`check_slot_values`: the same, of
  ``num_tokens`` entries, every live one (after ``skip_prefix``, not negative)
  below ``num_slots``.
- :func:`run_multi_layer` / :func:`run_single_layer`: every layer of, or one
  layer of, a paged KV given by its geometry and buffer addresses <-> a checked
  object, in direction ``H2D`` (object -> paged) or ``D2H``.

Errors are ``TypeError`` / ``ValueError`` naming the argument, raised before
any byte moves.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from lmcache_ascend.core.kv_format import FormatSpec
from lmcache_ascend.core.planes import KVGeometry, multi_layer_plane_set, single_layer_plane_set
from lmcache_ascend.core.tensor_desc import TensorDesc
from lmcache_ascend.kernels import dispatch
from lmcache_ascend.kernels.validate import check_slot_range, fail


def check_object(d: TensorDesc, shape: tuple[int, ...], dtype: str, name: str = "memory_obj") -> TensorDesc:
    """``d`` after checking it is a dense host object of ``shape`` and ``dtype``."""
    if d.shape != shape:
        fail(ValueError, name, f"has shape {list(d.shape)}, expected {list(shape)}")
    if d.dtype != dtype:
        fail(TypeError, name, f"has dtype {d.dtype}, the paged KV {dtype}")
    if not d.is_host:
        fail(ValueError, name, f"is on {d.device}; it must be in host memory")
    if not d.is_contiguous:
        fail(ValueError, name, f"must be contiguous (shape {list(d.shape)}, strides {list(d.strides)})")
    return d


def slot_ids(values: npt.NDArray[np.generic], name: str, copy: bool = False) -> npt.NDArray[np.int64]:
    """``values`` (1-D, integer) as a dense int64 host array; a private copy with ``copy``."""
    if values.ndim != 1:
        fail(ValueError, name, f"must be 1-D, got shape {list(values.shape)}")
    if values.dtype.kind not in "iu" and values.size:
        fail(TypeError, name, f"must hold integer slot ids, got {values.dtype}")
    if copy:
        return np.array(values, dtype=np.int64, order="C", copy=True)
    return np.ascontiguousarray(values, dtype=np.int64)


def check_slot_values(
    values: npt.NDArray[np.generic], name: str, num_tokens: int, num_slots: int, skip_prefix: int = 0
) -> npt.NDArray[np.int64]:
    """``values`` as dense int64 host slot ids (see the module docstring)."""
    slots = slot_ids(values, name)
    if slots.shape[0] != num_tokens:
        fail(ValueError, name, f"has {slots.shape[0]} entries for {num_tokens} tokens")
    check_slot_range(slots, name, num_slots, skip_prefix)
    return slots


def run_multi_layer(
    spec: FormatSpec,
    geometry: KVGeometry,
    buffer_ptrs: npt.NDArray[np.int64],
    obj: TensorDesc,
    slots: npt.NDArray[np.int64],
    skip_prefix: int,
    direction: int,
) -> None:
    """Every layer of the paged KV <-> ``obj`` ``[kv, L, T, H]`` (both checked by the caller)."""
    num_tokens = obj.shape[2]
    if num_tokens == 0 or skip_prefix >= num_tokens:
        return  # no plane table to build
    dispatch.run_host(multi_layer_plane_set(spec, geometry, num_tokens), buffer_ptrs, obj.ptr, slots, skip_prefix, direction)


def run_single_layer(
    spec: FormatSpec,
    geometry: KVGeometry,
    layer_ptrs: npt.NDArray[np.int64],
    obj: TensorDesc,
    slots: npt.NDArray[np.int64],
    direction: int,
    token_major: bool = True,
) -> None:
    """One layer (its buffers at ``layer_ptrs``) <-> ``obj`` ``[T, kv, H]`` / ``[T, H]`` (token-major)."""
    num_tokens = obj.shape[0] if token_major else obj.shape[-2]
    if num_tokens == 0:
        return  # no plane table to build
    one_layer = dataclasses.replace(geometry, num_layers=1)
    dispatch.run_host(single_layer_plane_set(spec, one_layer, num_tokens, token_major=token_major), layer_ptrs, obj.ptr, slots, 0, direction)
