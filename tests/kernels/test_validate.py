"""``kernels/validate``: one check over descriptions for every front end.

The torch edge (``torch_edge.check_tensor``) and the description front end
(``described.check_object``, MindSpore's) judge a tensor by its description,
so the same fault gives the same words whichever framework made the tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmcache_ascend.core.tensor_desc import TensorDesc, describe
from lmcache_ascend.kernels import described, torch_edge
from lmcache_ascend.kernels.validate import check_desc, is_dense

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
