"""Framework-neutral tensor description.

A :class:`TensorDesc` is what the kernel core needs to know about a tensor:
its address, shape, strides (in elements), dtype name, element size and device.
It is built from a torch tensor, a numpy array or a MindSpore tensor by
:func:`describe`, without importing any of those frameworks here: the object's
type is recognised by its module name, so this module stays importable in an
environment that has only one of them.

Dtype names are the short canonical names shared by torch, numpy and MindSpore
(``"bfloat16"``, ``"float16"``, ``"float32"``, ``"int8"``, ...). Device strings
are ``"cpu"`` for host memory and ``"<type>:<index>"`` otherwise (``"npu:0"``).

A MindSpore tensor's address is read with ``data_ptr()``, which waits for
pending asynchronous work on it first (see REFERENCE: MindSpore 2.7.1 on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Element sizes of the dtypes that appear in KV caches and slot mappings.
ITEMSIZE: dict[str, int] = {
    "bfloat16": 2,
    "float16": 2,
    "float32": 4,
    "float64": 8,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "uint64": 8,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}

_NUMPY_ALIASES = {"float16": "float16", "bool_": "bool"}
# MindSpore prints dtypes in CamelCase ("BFloat16", "Float8E4M3FN"); lower-cased,
# most match the canonical names, these do not.
_MINDSPORE_ALIASES = {"bool_": "bool", "float8e4m3fn": "float8_e4m3fn", "float8e5m2": "float8_e5m2"}


@dataclass(frozen=True, slots=True)
class TensorDesc:
    """Address, geometry and element type of one tensor (strides in elements)."""

    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    itemsize: int
    device: str = "cpu"

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.strides):
            raise ValueError(
                f"shape {self.shape} and strides {self.strides} differ in length"
            )
        if self.itemsize <= 0:
            raise ValueError(f"itemsize must be > 0, got {self.itemsize}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_host(self) -> bool:
        return self.device == "cpu"

    @property
    def is_contiguous(self) -> bool:
        """Dense in row-major order, as torch's ``is_contiguous()`` decides: the
        stride of a dimension of size 1 is never used, and an empty view is dense."""
        return is_row_major(self.shape, self.strides)

    def span_bytes(self) -> int:
        """Bytes from ``ptr`` to one past the last element the view can reach."""
        if self.numel == 0:
            return 0
        last = sum((n - 1) * s for n, s in zip(self.shape, self.strides))
        return (last + 1) * self.itemsize


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    acc = 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def is_row_major(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether ``strides`` address ``shape`` densely in row-major order (see ``is_contiguous``)."""
    if 0 in shape:
        return True
    expected = 1
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def describe(tensor: Any) -> TensorDesc:
    """Describe a torch tensor, numpy array or MindSpore tensor.

    Raises:
        TypeError: for any other object (the message names its type).
    """
    if isinstance(tensor, TensorDesc):
        return tensor
    root = type(tensor).__module__.split(".", 1)[0]
    if root == "torch":
        return _from_torch(tensor)
    if root == "numpy":
        return _from_numpy(tensor)
    if root == "mindspore" or _is_mindspore(tensor):
        return _from_mindspore(tensor)
    raise TypeError(
        f"expected a torch.Tensor, numpy.ndarray or mindspore.Tensor, "
        f"got {type(tensor).__module__}.{type(tensor).__qualname__}"
    )


def _from_torch(t: Any) -> TensorDesc:
    # Every torch op describes its tensors on each call: read torch's own
    # tuples and ints as they are (shape, strides and sizes are ints already).
    device = "cpu" if t.is_cpu else f"{t.device.type}:{t.device.index or 0}"
    # ptr, shape, strides, dtype ("torch.bfloat16" -> "bfloat16"), itemsize, device
    return TensorDesc(t.data_ptr(), tuple(t.shape), t.stride(), str(t.dtype)[6:], t.element_size(), device)


def _from_numpy(a: Any) -> TensorDesc:
    itemsize = int(a.itemsize)
    if any(s % itemsize for s in a.strides):
        raise ValueError("numpy array strides are not multiples of its itemsize")
    name = _NUMPY_ALIASES.get(a.dtype.name, a.dtype.name)
    return TensorDesc(
        ptr=int(a.ctypes.data),
        shape=tuple(int(n) for n in a.shape),
        strides=tuple(int(s) // itemsize for s in a.strides),
        dtype=name,
        itemsize=itemsize,
        device="cpu",
    )


def _is_mindspore(t: Any) -> bool:
    """True for MindSpore tensor subclasses defined elsewhere (``Parameter``'s
    class is created in module ``abc``), recognised through the class hierarchy."""
    return any(c.__module__.split(".", 1)[0] == "mindspore" for c in type(t).__mro__)


def _from_mindspore(t: Any) -> TensorDesc:
    """Describe a MindSpore tensor (``Tensor``, ``Parameter``).

    ``data_ptr()`` waits for the asynchronous work pending on the tensor, so the
    address is safe to read and write through once this returns; it includes
    the view's storage offset. Strides come from ``stride()`` (in elements).
    MindSpore names host tensors' device ``"CPU"``; any other device is taken to
    be an Ascend NPU (MindSpore tensors carry no device index).
    """
    name = str(t.dtype).lower()
    name = _MINDSPORE_ALIASES.get(name, name)
    if name not in ITEMSIZE:
        raise TypeError(f"unsupported MindSpore dtype {t.dtype}")
    shape = tuple(int(n) for n in t.shape)
    strides_fn = getattr(t, "stride", None)
    strides = tuple(int(s) for s in strides_fn()) if callable(strides_fn) else contiguous_strides(shape)
    place = str(getattr(t, "device", "CPU")).lower()
    device = "cpu" if place.startswith("cpu") else "npu:0"
    return TensorDesc(
        ptr=int(t.data_ptr()),
        shape=shape,
        strides=strides,
        dtype=name,
        itemsize=ITEMSIZE[name],
        device=device,
    )
