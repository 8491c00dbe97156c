"""Argument checks shared by every op.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape, range or device) whose message starts with the argument's name,
before any byte is copied. Nothing that fails here can reach the C++ core.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import torch

from lmcache_ascend.core.kv_format import FormatSpec, format_spec

# Transfer directions of every op (LMCache's CUDA op convention); the one definition.
H2D = 0  # memory object -> paged KV (load)
D2H = 1  # paged KV -> memory object (store)
_INT_DTYPES = (torch.int32, torch.int64)


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


def check_device(value: object, name: str) -> torch.device:
    """A torch.device (or its string / index form) whose backend is usable here."""
    if isinstance(value, bool) or not isinstance(value, (torch.device, str, int)):
        fail(TypeError, name, f"must be a torch.device or device string, got {type(value).__name__}")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{name} {value!r} is not a device: {exc}") from None
    if device.type != "cpu":
        module = getattr(torch, device.type, None)
        available = getattr(module, "is_available", None)
        if not callable(available) or not available():
            fail(ValueError, name, f"is {device}, but no {device.type} device is available in this process")
    return device


def check_tensor(
    t: object,
    name: str,
    *,
    ndim: int | None = None,
    shape: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    dense: bool = True,
    block_stride: int = 0,
) -> torch.Tensor:
    """Check kind, rank, shape, dtype, device and density (``block_stride``
    relaxes only the outermost stride, for views into blocks-first pools).
    Meta tensors (no storage) are refused whatever ``device`` says."""
    if not isinstance(t, torch.Tensor):
        fail(TypeError, name, f"must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type == "meta":
        fail(ValueError, name, "is a meta tensor: it has no data to copy")
    if ndim is not None and t.dim() != ndim:
        fail(ValueError, name, f"must be {ndim}-D, got shape {list(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        fail(ValueError, name, f"has shape {list(t.shape)}, expected {list(shape)}")
    if dtype is not None and t.dtype != dtype:
        fail(TypeError, name, f"has dtype {t.dtype}, expected {dtype}")
    if device is not None and t.device.type != torch.device(device).type:
        fail(ValueError, name, f"is on {t.device}, expected {device}")
    if dense and not _is_dense(t, block_stride):
        layout = f"with blocks {block_stride} elements apart (block_stride_elems)" if block_stride else "contiguous"
        fail(ValueError, name, f"must be {layout} (shape {list(t.shape)}, strides {list(t.stride())})")
    return t


def _is_dense(t: torch.Tensor, block_stride: int) -> bool:
    """Contiguous; with ``block_stride``, blocks (axis 0) exactly that many
    elements apart, each contiguous. A dense tensor with wider requested block
    stride is refused: the kernels would address past its last block."""
    if not block_stride:
        return t.is_contiguous()
    if t.dim() < 2:
        return False
    if t.shape[0] == 0:
        return True
    return (t.shape[0] == 1 or t.stride(0) == block_stride) and t[0].is_contiguous()


def check_slots(
    slots: object,
    name: str,
    num_tokens: int,
    num_slots: int,
    skip_prefix: int = 0,
) -> torch.Tensor:
    """1-D int32/int64 tensor of ``num_tokens`` entries, each < ``num_slots``
    (negative entries mean "skip this token")."""
    t = check_tensor(slots, name, ndim=1, dense=False)
    if t.dtype not in _INT_DTYPES:
        fail(TypeError, name, f"must hold int32 or int64 slot ids, got {t.dtype}")
    if t.numel() != num_tokens:
        fail(ValueError, name, f"has {t.numel()} entries for {num_tokens} tokens")
    # numpy reads a host tensor in place, several times cheaper than torch ops
    check_slot_range(t.numpy() if t.device.type == "cpu" else t, name, num_slots, skip_prefix)
    return t


def check_slot_range(slots: Any, name: str, num_slots: int, skip_prefix: int = 0) -> None:
    """ValueError naming the first of ``slots[skip_prefix:]`` (a 1-D numpy array or tensor)
    at or past ``num_slots``, as the host core words it."""
    live = slots[skip_prefix:]
    if len(live) and int(live.max()) >= num_slots:
        bad = int((live >= num_slots).nonzero()[0][0]) + skip_prefix
        fail(ValueError, f"{name}[{bad}]", f"= {int(slots[bad])} is outside the paged buffer ({num_slots} slots)")


def check_block_ids(block_ids: object, name: str, num_blocks: int) -> torch.Tensor:
    if isinstance(block_ids, (list, tuple)):
        block_ids = torch.tensor(block_ids, dtype=torch.int64)
    t = check_tensor(block_ids, name, ndim=1, dense=False)
    if t.dtype not in _INT_DTYPES:
        fail(TypeError, name, f"must hold int32 or int64 block ids, got {t.dtype}")
    # numpy reads a host tensor in place, several times cheaper than torch ops
    live = t.numpy() if t.device.type == "cpu" else t
    if t.numel() and (int(live.min()) < 0 or int(live.max()) >= num_blocks):
        bad = int(torch.nonzero((t < 0) | (t >= num_blocks))[0])
        fail(ValueError, name, f"[{bad}] = {int(t[bad])} is outside [0, {num_blocks})")
    return t
