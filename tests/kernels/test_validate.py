"""``kernels/validate``: one check over descriptions for every front end.

The torch edge (``torch_edge.check_tensor``) and the description front end
(``described.check_object``, MindSpore's) judge a tensor by its description,
so the same fault gives the same words whichever framework made the tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_ascend.core.kv_format import KVFormat, format_spec
from lmcache_ascend.core.tensor_desc import TensorDesc, describe
from lmcache_ascend.kernels import described, torch_edge
from lmcache_ascend.kernels.geometry import tensor_geometry
from lmcache_ascend.kernels.validate import check_desc, check_paged_buffers, in_range, is_dense

SHAPE = (2, 3, 4)


def _faults() -> list[tuple[str, np.ndarray, tuple[int, ...], str]]:
    """(what, array, expected shape, expected dtype) that fail one check each."""
    base = np.zeros(SHAPE, np.float32)
    return [
        ("shape", base, (2, 3, 5), "float32"),
        ("dtype", base, SHAPE, "bfloat16"),
        ("density", np.zeros((2, 4, 3), np.float32).transpose(0, 2, 1), SHAPE, "float32"),
    ]


@pytest.mark.parametrize("fault", _faults(), ids=lambda f: f[0])
def test_torch_and_described_front_ends_word_a_fault_alike(fault: tuple[str, np.ndarray, tuple[int, ...], str]) -> None:
    _, array, shape, dtype = fault
    with pytest.raises((TypeError, ValueError)) as from_numpy:
        described.check_object(describe(array), shape, dtype, "memory_obj")
    torch_dtype = getattr(torch, dtype)
    with pytest.raises((TypeError, ValueError)) as from_torch:
        torch_edge.check_tensor(torch.from_numpy(array), "memory_obj", shape=shape, dtype=torch_dtype, device=torch.device("cpu"))
    assert from_torch.type is from_numpy.type
    assert str(from_torch.value) == str(from_numpy.value)
    assert str(from_numpy.value).startswith("memory_obj ")


def test_device_memory_is_refused_where_host_memory_is_needed() -> None:
    npu = TensorDesc(1 << 20, SHAPE, (12, 4, 1), "float32", 4, "npu:0")
    with pytest.raises(ValueError, match="memory_obj is on npu:0; it must be in host memory"):
        described.check_object(npu, SHAPE, "float32")
    with pytest.raises(ValueError, match="key is on cpu; expected npu"):
        check_desc(describe(np.zeros(SHAPE, np.float32)), "key", device="npu")
    # Only the device type counts: any NPU index is an NPU.
    assert check_desc(npu, "key", device="npu:1") is npu


def test_meta_tensors_and_other_objects_are_refused_at_the_torch_edge() -> None:
    with pytest.raises(ValueError, match="key_value is a meta tensor"):
        torch_edge.check_tensor(torch.empty(SHAPE, device="meta"), "key_value")
    with pytest.raises(TypeError, match="key_value must be a torch.Tensor, got ndarray"):
        torch_edge.check_tensor(np.zeros(SHAPE), "key_value")


@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr"])
def test_sparse_tensors_are_refused_by_name(layout: str) -> None:
    dense = torch.zeros(4, 4)
    sparse = dense.to_sparse() if layout == "sparse_coo" else dense.to_sparse_csr()
    with pytest.raises(TypeError, match=rf"slot_mapping must be a dense \(strided\) tensor, got layout torch.{layout}"):
        torch_edge.check_tensor(sparse, "slot_mapping", ndim=2, dense=False)
    with pytest.raises(TypeError, match="key_value must be a dense"):
        torch_edge.check_tensor(sparse, "key_value")


@pytest.mark.parametrize(
    ("shape", "strides", "block_stride", "dense"),
    [
        ((3, 4, 2), (8, 2, 1), 0, True),
        ((3, 4, 2), (10, 2, 1), 10, True),  # blocks 10 elements apart, 8 used
        ((3, 4, 2), (10, 2, 1), 0, False),
        ((3, 4, 2), (8, 2, 1), 10, False),  # dense, but the kernels would step 10 per block
        ((1, 4, 2), (8, 2, 1), 10, True),  # one block: its stride is never used
        ((0, 4, 2), (10, 2, 1), 10, True),
        ((3, 4, 2), (10, 1, 4), 10, False),  # a block is not dense inside
        ((8,), (1,), 10, False),  # no block axis
    ],
)
def test_block_stride_density(shape: tuple[int, ...], strides: tuple[int, ...], block_stride: int, dense: bool) -> None:
    assert is_dense(TensorDesc(64, shape, strides, "bfloat16", 2), block_stride) is dense


def _layers(num_layers: int, dtype: type = np.float16) -> list[np.ndarray]:
    """SGLang-style K and V buffers [NB, BS, NH, HS] per layer, as numpy arrays."""
    return [np.zeros((4, 8, 2, 16), dtype) for _ in range(2 * num_layers)]


def test_paged_buffers_are_checked_by_description() -> None:
    spec = format_spec(KVFormat.NL_X_TWO_X_NB_BS_NH_HS)
    layers = _layers(3)
    g = tensor_geometry(spec, layers[0].shape, 2, 3, "kv")
    ptrs = check_paged_buffers([describe(a) for a in layers], spec, g, "cpu", "float16", "kv")
    assert ptrs.tolist() == [a.ctypes.data for a in layers]
    with pytest.raises(ValueError, match=r"kv has 4 buffers; NL_X_TWO_X_NB_BS_NH_HS with 3 layers needs 6"):
        check_paged_buffers([describe(a) for a in layers[:4]], spec, g, "cpu", "float16", "kv")
    bad = [*layers[:2], np.zeros((4, 8, 2, 8), np.float16), *layers[3:]]
    with pytest.raises(ValueError, match=r"kv\[2\] has shape \[4, 8, 2, 8\], expected \[4, 8, 2, 16\]"):
        check_paged_buffers([describe(a) for a in bad], spec, g, "cpu", "float16", "kv")
    with pytest.raises(TypeError, match=r"kv\[0\] has dtype float32, expected float16"):
        check_paged_buffers([describe(a) for a in _layers(3, np.float32)], spec, g, "cpu", "float16", "kv")
    with pytest.raises(ValueError, match=r"kv\[0\] is on cpu; expected npu"):
        check_paged_buffers([describe(a) for a in layers], spec, g, "npu:0", "float16", "kv")
    # A view torch calls contiguous (a size-1 axis with any stride) is dense here too.
    one_block = [np.zeros((1, 8, 2, 16), np.float16) for _ in range(6)]
    g1 = tensor_geometry(spec, one_block[0].shape, 2, 3, "kv")
    descs = [describe(a) for a in one_block]
    descs[1] = TensorDesc(descs[1].ptr, descs[1].shape, (7, 32, 16, 1), "float16", 2)
    assert check_paged_buffers(descs, spec, g1, "cpu", "float16", "kv")[1] == descs[1].ptr
    descs[1] = TensorDesc(descs[1].ptr, descs[1].shape, (7, 32, 1, 2), "float16", 2)  # heads interleaved
    with pytest.raises(ValueError, match=r"kv\[1\] must be contiguous"):
        check_paged_buffers(descs, spec, g1, "cpu", "float16", "kv")


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.integers(-3, 40), min_size=1, max_size=600),
    stop=st.integers(1, 40),
    as_tensor=st.booleans(),
)
def test_in_range_agrees_with_numpy(ids: list[int], stop: int, as_tensor: bool) -> None:
    """Short lists (Python's min / max) and long ones (numpy's reductions) alike, numpy and torch input."""
    array = np.array(ids, dtype=np.int64)
    values = torch.from_numpy(array) if as_tensor else array
    assert in_range(values, stop) == bool(((array >= 0) & (array < stop)).all())
