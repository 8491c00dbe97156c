"""``core.tensor_desc.describe`` on real MindSpore 2.7.1 tensors (CPU)."""

from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from lmcache_ascend.core import tensor_desc  # noqa: E402
from lmcache_ascend.core.detection import detect_kv_layout  # noqa: E402
from lmcache_ascend.core.kv_format import KVFormat  # noqa: E402
from lmcache_ascend.core.tensor_desc import TensorDesc, describe  # noqa: E402

DTYPES = [
    (ms.bfloat16, "bfloat16", 2),
    (ms.float16, "float16", 2),
    (ms.float32, "float32", 4),
    (ms.float64, "float64", 8),
    (ms.int8, "int8", 1),
    (ms.uint8, "uint8", 1),
    (ms.int16, "int16", 2),
    (ms.int32, "int32", 4),
    (ms.int64, "int64", 8),
    (ms.bool_, "bool", 1),
]


def tensor(shape: tuple[int, ...], dtype=ms.float32):
    return ms.Tensor(np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)).astype(dtype)


@pytest.mark.parametrize("dtype,name,itemsize", DTYPES, ids=[d[1] for d in DTYPES])
def test_dtype_names_and_sizes(dtype, name: str, itemsize: int) -> None:
    t = tensor((3, 5), dtype)
    d = describe(t)
    assert d == TensorDesc(ptr=t.data_ptr(), shape=(3, 5), strides=(5, 1), dtype=name, itemsize=itemsize, device="cpu")


def test_float8_names_map_to_the_canonical_ones() -> None:
    # MindSpore 2.7.1 cannot create float8 tensors on CPU; its dtype names are checked instead.
    assert tensor_desc._MINDSPORE_ALIASES[str(ms.float8_e4m3fn).lower()] == "float8_e4m3fn"
    assert tensor_desc._MINDSPORE_ALIASES[str(ms.float8_e5m2).lower()] == "float8_e5m2"


def test_address_is_the_bytes_numpy_sees() -> None:
    t = tensor((4, 6), ms.float16)
    d = describe(t)
    raw = t.asnumpy()  # zero-copy on CPU
    assert d.ptr == raw.ctypes.data
    assert d.nbytes == raw.nbytes == 48


def test_views_keep_offset_and_strides() -> None:
    t = tensor((4, 6, 8), ms.bfloat16)
    base = describe(t).ptr
    rows = describe(t[1:3])
    assert (rows.ptr - base, rows.shape, rows.strides, rows.is_contiguous) == (48 * 2, (2, 6, 8), (48, 8, 1), True)
    cols = describe(t[:, 2:4])
    assert (cols.ptr - base, cols.shape, cols.strides, cols.is_contiguous) == (2 * 8 * 2, (4, 2, 8), (48, 8, 1), False)
    swapped = describe(t.swapaxes(0, 1))
    assert (swapped.ptr, swapped.shape, swapped.strides, swapped.is_contiguous) == (base, (6, 4, 8), (8, 48, 1), False)


def test_parameter_is_a_mindspore_tensor() -> None:
    p = ms.Parameter(tensor((2, 3), ms.float16), name="kv")
    assert type(p).__module__ == "abc"  # why describe() looks at the class hierarchy
    d = describe(p)
    assert (d.ptr, d.shape, d.dtype, d.device) == (p.data_ptr(), (2, 3), "float16", "cpu")


def test_unsupported_dtype_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unsupported MindSpore dtype Complex64"):
        describe(tensor((2,), ms.complex64))


def test_detection_takes_mindspore_kv_tuples() -> None:
    layers = [(tensor((6, 16, 2, 8), ms.bfloat16), tensor((6, 16, 2, 8), ms.bfloat16)) for _ in range(3)]
    layout = detect_kv_layout(layers, "vllm")
    assert layout.fmt == KVFormat.NL_X_TWO_X_NB_BS_NH_HS
    assert (layout.geometry.num_layers, layout.geometry.num_blocks, layout.geometry.block_size) == (3, 6, 16)
    assert (layout.geometry.num_heads, layout.geometry.head_size, layout.dtype, layout.device) == (2, 8, "bfloat16", "cpu")
    assert layout.buffer_ptrs == [t.data_ptr() for layer in layers for t in layer]
