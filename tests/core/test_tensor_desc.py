"""``core.tensor_desc``: descriptions of torch and numpy tensors, and density as torch decides it.

The op front end judges every framework's tensors by their descriptions
(``kernels/validate.check_desc``), so a description must call dense exactly
the views torch calls contiguous (size-1 dims' strides ignored, empty views dense).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_ascend.core.tensor_desc import TensorDesc, describe, is_row_major


@st.composite
def views(draw: st.DrawFn) -> torch.Tensor:
    """A view of a small tensor: permuted, sliced with steps, with size-0 and size-1 dims."""
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    base = torch.arange(int(np.prod(shape)) if shape else 1, dtype=torch.float32).reshape(shape)
    perm = draw(st.permutations(range(len(shape))))
    view = base.permute(*perm) if shape else base
    for dim in range(view.dim()):
        start = draw(st.integers(0, 1))
        step = draw(st.integers(1, 2))
        view = view.narrow(dim, min(start, view.shape[dim]), max(view.shape[dim] - start, 0))[(slice(None),) * dim + (slice(None, None, step),)]
    return view


@settings(max_examples=300, deadline=None)
@given(views())
def test_density_matches_torch(view: torch.Tensor) -> None:
    d = describe(view)
    assert d.is_contiguous == view.is_contiguous(), (tuple(view.shape), view.stride())
    assert (d.ptr, d.shape, d.strides, d.dtype, d.itemsize, d.device) == (
        view.data_ptr(), tuple(view.shape), view.stride(), "float32", 4, "cpu"
    )


@pytest.mark.parametrize(
    ("shape", "strides", "dense"),
    [
        ((2, 3), (3, 1), True),
        ((2, 3), (1, 2), False),
        ((1, 3), (99, 1), True),  # a size-1 dim's stride is never used
        ((3, 1), (1, 7), True),
        ((0, 5), (1, 1), True),  # nothing to address
        ((2, 2), (4, 1), False),  # rows apart: a gap
        ((), (), True),
    ],
)
def test_is_row_major(shape: tuple[int, ...], strides: tuple[int, ...], dense: bool) -> None:
    assert is_row_major(shape, strides) is dense
    assert TensorDesc(1, shape, strides, "int8", 1).is_contiguous is dense


def test_numpy_and_torch_describe_alike() -> None:
    a = np.zeros((2, 3, 4), np.float16)[:, ::2]
    t = torch.from_numpy(a)
    da, dt = describe(a), describe(t)
    assert (da.ptr, da.shape, da.strides, da.dtype, da.itemsize) == (dt.ptr, dt.shape, dt.strides, dt.dtype, dt.itemsize)
    assert not da.is_contiguous and not t.is_contiguous()


def test_unknown_objects_are_refused_by_type() -> None:
    with pytest.raises(TypeError, match="expected a torch.Tensor, numpy.ndarray or mindspore.Tensor, got builtins.list"):
        describe([1, 2])
