"""Argument checks over descriptions and scalars, shared by every op front end.

The torch ops describe their tensors at the edge (``kernels/torch_edge.py``);
other frameworks' front ends (MindSpore: ``integrations/mindspore/transfer.py``
through ``kernels/described.py``) describe theirs. Both come here, so a tensor
is judged by its description (:class:`lmcache_ascend.core.tensor_desc.TensorDesc`:
address, shape, strides, dtype name, device), whatever framework made it, in
the same words. Slot ids are checked as numpy arrays (host) or anything that
indexes like one (a device tensor).

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape, range or device) whose message starts with the argument's name,
before any byte is copied. Nothing that fails here can reach the C++ core.
This module imports no tensor framework (an import contract checks it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from lmcache_ascend.core.kv_format import FormatSpec, format_spec
from lmcache_ascend.core.planes import KVGeometry, buffer_count, buffer_shape
from lmcache_ascend.core.tensor_desc import TensorDesc, contiguous_strides, is_row_major

# Transfer directions of every op (LMCache's CUDA op convention); the one definition.
H2D = 0  # memory object -> paged KV (load)
D2H = 1  # paged KV -> memory object (store)
SLOT_DTYPES = ("int32", "int64")


def fail(kind: type[Exception], name: str, message: str) -> NoReturn:
    raise kind(f"{name} {message}")


def _enum_value(value: object, name: str, kind: str) -> int:
    """int of an int, IntEnum or pybind11 enum (those are not int subclasses)."""
    if isinstance(value, bool) or isinstance(value, (float, str, bytes)) or not hasattr(value, "__int__"):
        fail(TypeError, name, f"must be a {kind} or int, got {type(value).__name__}")
    return int(value)  # type: ignore[call-overload,unused-ignore]


def check_format(value: object, name: str = "engine_kv_format") -> FormatSpec:
    number = _enum_value(value, name, "EngineKVFormat")
    try:
        return format_spec(number)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def check_direction(value: object, name: str = "direction") -> int:
    number = _enum_value(value, name, "TransferDirection")
    if number not in (H2D, D2H):
        fail(ValueError, name, f"must be 0 (H2D, object -> paged) or 1 (D2H, paged -> object), got {number}")
    return number


def check_int(value: object, name: str, minimum: int = 0) -> int:
    """A Python or numpy integer (what a pybind11 int argument takes), never a bool, >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        fail(TypeError, name, f"must be an int, got {type(value).__name__}")
    if value < minimum:
        fail(ValueError, name, f"must be >= {minimum}, got {value}")
    return int(value)


def check_desc(
    d: TensorDesc,
    name: str,
    *,
    ndim: int | None = None,
    shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    device: str | None = None,
    dense: bool = True,
    block_stride: int = 0,
) -> TensorDesc:
    """Check rank, shape, dtype (a canonical name), device (``"cpu"`` means host
    memory; otherwise only the device type is compared) and density
    (``block_stride`` relaxes only the outermost stride, for views into
    blocks-first pools)."""
    if ndim is not None and d.ndim != ndim:
        fail(ValueError, name, f"must be {ndim}-D, got shape {list(d.shape)}")
    if shape is not None and d.shape != tuple(shape):
        fail(ValueError, name, f"has shape {list(d.shape)}, expected {list(shape)}")
    if dtype is not None and d.dtype != dtype:
        fail(TypeError, name, f"has dtype {d.dtype}, expected {dtype}")
    if device is not None and d.device.split(":")[0] != device.split(":")[0]:
        wanted = "it must be in host memory" if device == "cpu" else f"expected {device}"
        fail(ValueError, name, f"is on {d.device}; {wanted}")
    if dense and not is_dense(d, block_stride):
        layout = f"with blocks {block_stride} elements apart (block_stride_elems)" if block_stride else "contiguous"
        fail(ValueError, name, f"must be {layout} (shape {list(d.shape)}, strides {list(d.strides)})")
    return d


def is_dense(d: TensorDesc, block_stride: int = 0) -> bool:
    """Contiguous; with ``block_stride``, blocks (axis 0) exactly that many
    elements apart, each contiguous. A dense tensor with wider requested block
    stride is refused: the kernels would address past its last block."""
    if not block_stride:
        return d.is_contiguous
    if d.ndim < 2:
        return False
    if d.shape[0] == 0:
        return True
    return (d.shape[0] == 1 or d.strides[0] == block_stride) and is_row_major(d.shape[1:], d.strides[1:])


def check_slot_count(num_entries: int, name: str, num_tokens: int) -> None:
    if num_entries != num_tokens:
        fail(ValueError, name, f"has {num_entries} entries for {num_tokens} tokens")


def check_slot_range(slots: Any, name: str, num_slots: int, skip_prefix: int = 0) -> None:
    """ValueError naming the first of ``slots[skip_prefix:]`` (a 1-D numpy array or tensor)
    at or past ``num_slots``, as the host core words it. Negative slots mean "skip"."""
    live = slots[skip_prefix:]
    if len(live) and int(live.max()) >= num_slots:
        bad = int((live >= num_slots).nonzero()[0][0]) + skip_prefix
        fail(ValueError, f"{name}[{bad}]", f"= {int(slots[bad])} is outside the paged buffer ({num_slots} slots)")


def in_range(values: Any, stop: int) -> bool:
    """Whether every entry of ``values`` (a non-empty 1-D numpy array or tensor) lies in ``[0, stop)``."""
    if isinstance(values, np.ndarray) and values.size <= _FEW_IDS:
        # A call's block ids are a chunk's few: Python's min / max of a list beat two numpy reductions.
        listed = values.tolist()
        return bool(min(listed) >= 0 and max(listed) < stop)
    return int(values.min()) >= 0 and int(values.max()) < stop


_FEW_IDS = 256


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
    """``values`` as dense int64 host slot ids of ``num_tokens`` entries, every live
    one (after ``skip_prefix``, not negative) below ``num_slots``."""
    slots = slot_ids(values, name)
    check_slot_count(slots.shape[0], name, num_tokens)
    check_slot_range(slots, name, num_slots, skip_prefix)
    return slots


def check_buffer_count(count: int, spec: FormatSpec, geometry: KVGeometry, name: str) -> None:
    need = buffer_count(spec, geometry)
    if count != need:
        fail(ValueError, name, f"has {count} buffers; {spec.fmt.name} with {geometry.num_layers} layers needs {need}")


def check_paged_buffers(
    buffers: Sequence[TensorDesc], spec: FormatSpec, geometry: KVGeometry, device: str, dtype: str, name: str
) -> npt.NDArray[np.int64]:
    """The base addresses (pointer-table order) of ``buffers``, each checked to be the
    dense buffer ``i`` of ``geometry`` (shape, strides, dtype, device type).

    Plane tuples repeat layer 0's per-plane dtypes; plane 0 carries the object's
    ``dtype``. A buffer that fails gets :func:`check_desc`'s message, naming ``name[i]``.
    """
    check_buffer_count(len(buffers), spec, geometry, name)
    period = len(geometry.planes) if spec.buffers == "layer_planes" else 1
    dtypes = [dtype] + [b.dtype for b in buffers[1:period]]
    layouts = _dense_layouts(spec, geometry, period)
    block_stride = geometry.block_stride_elems
    kind = device.split(":")[0]
    ptrs = np.empty(len(buffers), dtype=np.int64)
    for i, b in enumerate(buffers):
        shape, strides = layouts[i % period]
        # A plane tuple cache has a buffer per plane and layer (64 for DSA-C8 with
        # 16 layers): the common case is decided by comparing tuples.
        if not (b.shape == shape and b.strides == strides and b.dtype == dtypes[i % period] and b.device.split(":")[0] == kind):
            check_desc(b, f"{name}[{i}]", shape=shape, dtype=dtypes[i % period], device=device, block_stride=block_stride)
        ptrs[i] = b.ptr
    return ptrs


@functools.lru_cache(maxsize=256)
def _dense_layouts(spec: FormatSpec, geometry: KVGeometry, period: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """(shape, strides) of a dense buffer ``i`` for ``i < period`` (shapes repeat
    with that period); the block axis is ``block_stride_elems`` apart when set."""
    out = []
    for i in range(period):
        shape = buffer_shape(spec, geometry, i)
        strides = contiguous_strides(shape)
        if geometry.block_stride_elems and shape:
            strides = (geometry.block_stride_elems, *strides[1:])
        out.append((shape, strides))
    return tuple(out)


def check_block_stride(spec: FormatSpec, geometry: KVGeometry) -> None:
    """``block_stride_elems`` (0: blocks end to end) applies only to buffers with
    the block axis outermost, and cannot be smaller than one block. Plane tuples
    carry it as plane 0's stride; their geometry is checked by the caller."""
    stride = geometry.block_stride_elems
    if not stride or spec.buffers == "layer_planes":
        return
    if spec.axes[0] != "NB":
        fail(ValueError, "block_stride_elems", f"is {stride}, but {spec.fmt.name} buffers do not have the block axis outermost")
    tight = math.prod(buffer_shape(spec, geometry)[1:])
    if stride < tight:
        fail(ValueError, "block_stride_elems", f"{stride} is smaller than one block ({tight} elements)")
