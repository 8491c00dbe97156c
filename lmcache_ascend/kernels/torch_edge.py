"""The torch edge of the op front end: torch arguments in, checked descriptions out.

The torch ops (``slot_ops``, ``block_ops``, ``memory_ops``, ``group_ops``) and
the LMCache connectors' argument checks take torch objects here:

- :func:`describe_tensor`, :func:`check_tensor`: a ``torch.Tensor`` (strided, not a meta tensor) is
  described (``core.TensorDesc``) and judged by ``validate.check_desc``, the check every
  front end shares; the tensor is returned for the caller's torch work. A plain host
  tensor asked only for its rank and density is judged by torch directly (same rules).
- :func:`check_device`, :func:`check_slots`, :func:`check_block_ids`: a device
  usable in this process; integer slot / block ids, read in place through numpy
  when in host memory.

A checked transfer runs through ``torch_run``.

Errors are ``TypeError`` / ``ValueError`` naming the argument, before any byte moves.
"""

from __future__ import annotations

from typing import cast

import torch

from lmcache_ascend.core.tensor_desc import TensorDesc, describe
from lmcache_ascend.kernels.validate import SLOT_DTYPES, check_desc, check_slot_count, check_slot_range, fail, in_range


_ID_DTYPES = (torch.int32, torch.int64)


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
    """``t`` after ``validate.check_desc`` passed on its description (see there).
    Meta tensors (no storage) are refused whatever ``device`` says."""
    # The common case, a plain host tensor judged only by rank and density, is decided by
    # torch itself (same rules: size-1 axes' strides do not matter): describing it would
    # cost more than the rest of a small op's checks.
    if (
        type(t) is torch.Tensor and t.is_cpu and t.layout == torch.strided and shape is None and dtype is None
        and device is None and not block_stride and (ndim is None or t.dim() == ndim) and (not dense or t.is_contiguous())
    ):
        return t
    check_desc(
        describe_tensor(t, name),
        name,
        ndim=ndim,
        shape=shape,
        dtype=None if dtype is None else dtype_name(dtype),
        device=None if device is None else torch.device(device).type,
        dense=dense,
        block_stride=block_stride,
    )
    return cast(torch.Tensor, t)  # describe_tensor refused anything else


def describe_tensor(t: object, name: str) -> TensorDesc:
    """The description of ``t``, which must be a ``torch.Tensor`` with storage (not meta)."""
    if not isinstance(t, torch.Tensor):
        fail(TypeError, name, f"must be a torch.Tensor, got {type(t).__name__}")
    if t.is_meta:
        fail(ValueError, name, "is a meta tensor: it has no data to copy")
    if t.layout != torch.strided:  # sparse and other layouts have no one base address to copy from
        fail(TypeError, name, f"must be a dense (strided) tensor, got layout {t.layout}")
    return describe(t)


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical dtype name descriptions use (``"bfloat16"``)."""
    return str(dtype).removeprefix("torch.")


def check_slots(slots: object, name: str, num_tokens: int, num_slots: int, skip_prefix: int = 0) -> torch.Tensor:
    """1-D int32/int64 tensor of ``num_tokens`` entries, each < ``num_slots``
    (negative entries mean "skip this token")."""
    t = check_tensor(slots, name, ndim=1, dense=False)
    if dtype_name(t.dtype) not in SLOT_DTYPES:
        fail(TypeError, name, f"must hold int32 or int64 slot ids, got {t.dtype}")
    check_slot_count(t.numel(), name, num_tokens)
    # numpy reads a host tensor in place, several times cheaper than torch ops
    check_slot_range(t.numpy() if t.device.type == "cpu" else t, name, num_slots, skip_prefix)
    return t


def check_block_ids(block_ids: object, name: str, num_blocks: int | None) -> torch.Tensor:
    """1-D int32 / int64 block ids (a list is converted), each in ``[0, num_blocks)``;
    ``num_blocks=None`` leaves the range to the caller (the host core checks it before
    any byte moves, in the same words)."""
    if isinstance(block_ids, (list, tuple)):
        block_ids = torch.tensor(block_ids, dtype=torch.int64)
    t = check_tensor(block_ids, name, ndim=1, dense=False)
    if t.dtype not in _ID_DTYPES:
        fail(TypeError, name, f"must hold int32 or int64 block ids, got {t.dtype}")
    if num_blocks is None or not t.numel():
        return t
    # numpy reads a host tensor in place, several times cheaper than torch ops
    if not in_range(t.numpy() if t.is_cpu else t, num_blocks):
        bad = int(torch.nonzero((t < 0) | (t >= num_blocks))[0])
        fail(ValueError, name, f"[{bad}] = {int(t[bad])} is outside [0, {num_blocks})")
    return t
