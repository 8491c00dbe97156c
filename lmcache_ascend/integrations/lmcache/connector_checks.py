"""Argument checks for the LMCache device connectors, run before any byte moves.

The connectors hand the ops the engine KV as a pointer table (cheap to reuse
across calls), and an op given raw addresses must trust the memory object for
the geometry (row width, dtype, layer count). So the connectors check every
memory object against the engine KV they detected, and every chunk's bounds
and slots, for *all* chunks of a batched call before the first copy: a bad
argument is a ``ValueError``/``TypeError`` whose message contains its name
(``memory_objs``, ``starts``, ``ends``, ``slot_mapping``, ``kvcaches``,
``vllm_cached_tokens``) and the engine KV is left untouched.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lmcache_ascend.core.detection import LayoutFacts
from lmcache_ascend.kernels.torch_edge import check_slots, check_tensor
from lmcache_ascend.kernels.validate import fail

Bounds = list[tuple[int, int]]


def _index(value: object, name: str) -> int:
    if isinstance(value, bool):
        fail(TypeError, name, "must be an int, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        fail(TypeError, name, f"must be an int, got {type(value).__name__}")


def sequence(value: object, name: str) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, torch.Tensor)):
        fail(TypeError, name, f"must be a sequence, got {type(value).__name__}")
    return list(value)


def slot_tensor(slot_mapping: object) -> torch.Tensor:
    """The request's slot mapping: a 1-D int32/int64 tensor (any strides)."""
    t = check_tensor(slot_mapping, "slot_mapping", ndim=1, dense=False)
    if t.dtype not in (torch.int32, torch.int64):
        fail(TypeError, "slot_mapping", f"must hold int32 or int64 slot ids, got {t.dtype}")
    return t


def object_list(objs: object, name: str = "memory_objs") -> list[Any]:
    if not isinstance(objs, (list, tuple)):
        fail(TypeError, name, f"must be a list of MemoryObj, got {type(objs).__name__}")
    return list(objs)


def chunk_bounds(starts: object, ends: object, count: int, num_tokens: int) -> Bounds:
    """``[(start, end)]`` of ``count`` chunks, each inside ``[0, num_tokens]``."""
    s, e = sequence(starts, "starts"), sequence(ends, "ends")
    if not len(s) == len(e) == count:
        fail(ValueError, "starts", f"has {len(s)} entries, ends {len(e)}, memory_objs {count}")
    out = []
    for i, (a, b) in enumerate(zip(s, e)):
        lo, hi = _index(a, f"starts[{i}]"), _index(b, f"ends[{i}]")
        if not 0 <= lo <= hi <= num_tokens:
            fail(ValueError, f"starts[{i}]", f"/ends[{i}] = [{lo}, {hi}) is not inside slot_mapping's {num_tokens} tokens")
        out.append((lo, hi))
    return out


def cached_tokens(kwargs: Mapping[str, Any]) -> int:
    """``vllm_cached_tokens`` (default 0): tokens the engine already holds."""
    value = _index(kwargs.get("vllm_cached_tokens", 0), "vllm_cached_tokens")
    if value < 0:
        fail(ValueError, "vllm_cached_tokens", f"must be >= 0, got {value}")
    return value


def check_chunk_slots(slots: torch.Tensor, bounds: Bounds, num_slots: int) -> None:
    """Every live slot of every chunk addresses the engine KV."""
    for lo, hi in bounds:
        check_slots(slots[lo:hi], "slot_mapping", hi - lo, num_slots)


def memory_obj_tensor(obj: object, name: str, fmt: object = None) -> Any:
    """The memory object's tensor, unchecked (any framework), after its ``fmt`` on load."""
    tensor = getattr(obj, "tensor", None)
    metadata = getattr(obj, "metadata", None)
    if tensor is None or metadata is None:
        fail(TypeError, name, f"must be a MemoryObj with a tensor, got {type(obj).__name__}")
    if fmt is not None and metadata.fmt != fmt:
        fail(ValueError, name, f"is {metadata.fmt}, this connector loads {fmt}")
    return tensor


def object_tensor(obj: object, name: str, shape: Sequence[int], dtype: torch.dtype, fmt: object = None) -> torch.Tensor:
    """The memory object's torch tensor, exactly ``shape`` and ``dtype`` (and ``fmt``, on load)."""
    tensor = memory_obj_tensor(obj, name, fmt)
    check_tensor(tensor, name, shape=tuple(shape), dtype=dtype)
    return tensor


def kv_dtype(kv: LayoutFacts) -> torch.dtype:
    """The torch dtype of the engine KV's first buffer (MindSpore KV too: memory objects are torch tensors)."""
    return getattr(torch, kv.dtype)
