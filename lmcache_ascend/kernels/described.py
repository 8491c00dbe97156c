"""The host op front end over descriptions (``core.TensorDesc``), for tensors that are not torch's.

The torch ops (``slot_ops``, ``block_ops``) describe their tensors at the
torch edge (``torch_edge``) and run on the host core or the device-generic torch
executor. Front ends whose tensors are another framework's (MindSpore,
``integrations/mindspore/transfer.py``) describe them
(:func:`lmcache_ascend.core.tensor_desc.describe`) and come here: the same
checks over descriptions (``validate``), the same plane tables
(``core.planes``) and the same host core, so their memory objects are byte for
byte the torch ops'. This module imports no tensor framework.

- :func:`check_object`: a memory object description of ``shape`` and ``dtype``,
  dense, in host memory.
- :func:`slot_ids`: slot ids as a dense 1-D int64 host array;
- :func:`check_slot_values`: the same, of
  ``num_tokens`` entries, every live one (after ``skip_prefix``, not negative)
  below ``num_slots`` (both from ``validate``, re-exported for the front ends).
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
from lmcache_ascend.kernels.validate import check_desc, check_slot_values, slot_ids

__all__ = ["check_object", "check_slot_values", "run_multi_layer", "run_single_layer", "slot_ids"]


def check_object(d: TensorDesc, shape: tuple[int, ...], dtype: str, name: str = "memory_obj") -> TensorDesc:
    """``d`` after checking it is a dense host object of ``shape`` and ``dtype``."""
    return check_desc(d, name, shape=shape, dtype=dtype, device="cpu")


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
