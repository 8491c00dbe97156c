"""``kernels/described.py``: the host front end over descriptions, with numpy objects and slot
arrays (what a non-torch front end hands it), exact against the plain-indexing reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmcache_ascend.core.detection import detect_kv_layout
from lmcache_ascend.core.kv_format import format_spec
from lmcache_ascend.core.tensor_desc import describe
from lmcache_ascend.kernels import described, torch_edge
from tests.kernels.reference import D2H, H2D, Geom, assert_cache_equal, byte_equal, make_paged, object_shape, random_slots, random_tensor, ref_transfer

GEOM = Geom(num_layers=3, num_blocks=6, block_size=16, num_heads=2, head_size=32)
# (format, layout hints): vLLM flash NHD, vllm-ascend (K, V) tuples, MLA.
CASES = [(1, {"kv_layout": "NHD"}), (16, {"kv_layout": "NHD"}), (3, {"kv_layout": "NHD"})]
DTYPES = [torch.bfloat16, torch.float32]


def run(cache, obj: torch.Tensor, slots: torch.Tensor, direction: int, skip: int, hints: dict) -> None:
    layout = detect_kv_layout(cache.data, "vllm", hints)
    assert int(layout.fmt) == cache.fmt
    # float32 objects go as numpy arrays (numpy has no bfloat16: those stay torch); slots as numpy
    d = describe(obj.numpy() if obj.dtype == torch.float32 else obj)
    assert d.ptr == obj.data_ptr() or obj.numel() == 0
    ids = described.check_slot_values(slots.numpy(), "slot_mapping", obj.shape[2], layout.geometry.num_slots, skip)
    ptrs = np.array(layout.buffer_ptrs, dtype=np.int64)
    described.run_multi_layer(format_spec(layout.fmt), layout.geometry, ptrs, d, ids, skip, direction)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("fmt", "hints"), CASES, ids=[str(c[0]) for c in CASES])
@pytest.mark.parametrize(("num_tokens", "invalid", "skip"), [(37, 0, 0), (37, 5, 0), (40, 3, 16), (0, 0, 0), (8, 0, 8)])
def test_store_then_load_is_exact(fmt: int, hints: dict, dtype: torch.dtype, num_tokens: int, invalid: int, skip: int) -> None:
    gen = torch.Generator().manual_seed(fmt * 100 + num_tokens)
    cache = make_paged(fmt, GEOM, dtype, gen)
    slots = random_slots(num_tokens, GEOM.num_slots, gen, invalid)
    shape = object_shape(fmt, GEOM, num_tokens)
    got = random_tensor(shape, dtype, gen)
    want = got.clone()
    run(cache, got, slots, D2H, skip, hints)
    ref_transfer(cache, want, slots, D2H, skip)
    assert byte_equal(got, want)

    into, ref = cache.clone(), cache.clone()
    source = random_tensor(shape, dtype, gen)
    run(into, source, slots, H2D, skip, hints)
    ref_transfer(ref, source, slots, H2D, skip)
    assert_cache_equal(into, ref)


def test_object_checks_name_the_argument() -> None:
    d = describe(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"memory_obj has shape \[2, 3, 4\], expected \[2, 3, 5\]"):
        described.check_object(d, (2, 3, 5), "float32")
    with pytest.raises(TypeError, match="memory_obj has dtype float32, expected bfloat16"):
        described.check_object(d, (2, 3, 4), "bfloat16")
    strided = describe(np.zeros((2, 4, 3), np.float32).transpose(0, 2, 1))
    with pytest.raises(ValueError, match="memory_obj must be contiguous"):
        described.check_object(strided, (2, 3, 4), "float32")
    assert described.check_object(d, (2, 3, 4), "float32") is d


def test_slot_checks_name_the_argument() -> None:
    with pytest.raises(ValueError, match="slot_mapping must be 1-D"):
        described.check_slot_values(np.zeros((2, 2), np.int64), "slot_mapping", 4, 10)
    with pytest.raises(TypeError, match="slot_mapping must hold integer slot ids"):
        described.check_slot_values(np.zeros(4, np.float32), "slot_mapping", 4, 10)
    with pytest.raises(ValueError, match="slot_mapping has 3 entries for 4 tokens"):
        described.check_slot_values(np.zeros(3, np.int64), "slot_mapping", 4, 10)
    with pytest.raises(ValueError, match=r"slot_mapping\[2\] = 10 is outside the paged buffer \(10 slots\)") as got:
        described.check_slot_values(np.array([0, -1, 10, 3]), "slot_mapping", 4, 10)
    # The torch ops word it the same (one check serves both front ends).
    with pytest.raises(ValueError) as torch_got:
        torch_edge.check_slots(torch.tensor([0, -1, 10, 3]), "slot_mapping", 4, 10)
    assert str(torch_got.value) == str(got.value)
    # A skipped prefix is not checked; -1 means "leave this token alone"; int32 becomes int64.
    out = described.check_slot_values(np.array([99, -1, 9], np.int32), "slot_mapping", 3, 10, skip_prefix=1)
    assert out.dtype == np.int64 and out.flags.c_contiguous and out.tolist() == [99, -1, 9]
    copy = described.slot_ids(np.arange(4), "slots", copy=True)
    assert copy.tolist() == [0, 1, 2, 3]
