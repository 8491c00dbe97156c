"""Bad input to the MindSpore adapter: a TypeError / ValueError naming the argument,
and not one byte copied (the object and the KV are compared before and after)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
torch = pytest.importorskip("torch")

from lmcache_ascend.integrations.mindspore import transfer  # noqa: E402
from lmcache_ascend.integrations.mindspore.engine_kv import MindSporeKVCache, describe_kv  # noqa: E402
from tests.integrations.mindspore.helpers import Geom, kv_bits, object_bits, random_kv  # noqa: E402

GEOM = Geom(num_layers=2, num_blocks=8, block_size=16, num_heads=2, head_size=8)
T = 6


@pytest.fixture
def kv_layers() -> list[tuple[Any, ...]]:
    return random_kv(GEOM, "bfloat16", np.random.default_rng(7))


def obj(shape: tuple[int, ...] = (2, GEOM.num_layers, T, GEOM.row), dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape).to(dtype)


SLOTS = np.arange(T, dtype=np.int64)
CASES: dict[str, tuple[Callable[[Any], None], type[Exception], str]] = {
    "object_shape": (lambda kv: transfer.multi_layer(kv, obj((2, GEOM.num_layers, T, GEOM.row + 1)), SLOTS, 1), ValueError, "memory_obj has shape"),
    "object_layers": (lambda kv: transfer.multi_layer(kv, obj((2, 3, T, GEOM.row)), SLOTS, 1), ValueError, "memory_obj has shape"),
    "object_rank": (lambda kv: transfer.multi_layer(kv, obj((2, T, GEOM.row)), SLOTS, 1), ValueError, "memory_obj must be 4-D"),
    "object_dtype": (lambda kv: transfer.multi_layer(kv, obj(dtype=torch.float16), SLOTS, 0), TypeError, "memory_obj has dtype float16"),
    "object_not_contiguous": (
        lambda kv: transfer.multi_layer(kv, obj((2, GEOM.num_layers, GEOM.row, T)).transpose(2, 3), SLOTS, 0),
        ValueError,
        "memory_obj must be contiguous",
    ),
    "object_kind": (lambda kv: transfer.multi_layer(kv, "not a tensor", SLOTS, 0), TypeError, "memory_obj"),
    "slot_out_of_range": (
        lambda kv: transfer.multi_layer(kv, obj(), np.array([0, 1, 2, GEOM.num_slots, 4, 5]), 0),
        ValueError,
        f"slot_mapping[3] = {GEOM.num_slots} is outside",
    ),
    "slot_count": (lambda kv: transfer.multi_layer(kv, obj(), SLOTS[:-1], 0), ValueError, "slot_mapping has 5 entries for 6 tokens"),
    "slot_dtype": (lambda kv: transfer.multi_layer(kv, obj(), SLOTS.astype(np.float32), 0), TypeError, "slot_mapping must hold integer"),
    "slot_rank": (lambda kv: transfer.multi_layer(kv, obj(), SLOTS.reshape(2, 3), 0), ValueError, "slot_mapping must be 1-D"),
    "slot_kind": (lambda kv: transfer.multi_layer(kv, obj(), object(), 0), TypeError, "slot_mapping must be"),
    "direction_value": (lambda kv: transfer.multi_layer(kv, obj(), SLOTS, 2), ValueError, "direction must be 0"),
    "direction_kind": (lambda kv: transfer.multi_layer(kv, obj(), SLOTS, "D2H"), TypeError, "direction must be"),
    "skip_negative": (lambda kv: transfer.multi_layer(kv, obj(), SLOTS, 0, -1), ValueError, "skip_prefix must be >= 0"),
    "layer_out_of_range": (lambda kv: transfer.single_layer(kv, 2, obj((T, 2, GEOM.row)), SLOTS, 0), ValueError, "layer 2 is outside"),
    "layer_object_shape": (lambda kv: transfer.single_layer(kv, 0, obj((2, T, GEOM.row)), SLOTS, 0), ValueError, "memory_obj has shape"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_before_any_copy(kv_layers: list[tuple[Any, ...]], case: str) -> None:
    call, kind, message = CASES[case]
    kv = describe_kv(kv_layers)
    kv_before = kv_bits(kv_layers)
    probe = obj()
    probe_before = object_bits(probe)
    with pytest.raises(kind, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(kv)
    assert np.array_equal(kv_bits(kv_layers), kv_before)
    assert np.array_equal(object_bits(probe), probe_before)


def zeros(shape: tuple[int, ...], dtype: Any = None) -> Any:
    return ms.Tensor(np.zeros(shape, np.float32)).astype(dtype or ms.bfloat16)


KV_SHAPE = (8, 16, 2, 8)
STRUCTURES: dict[str, tuple[Any, type[Exception], str]] = {
    "empty": ([], ValueError, "kvcaches must be a non-empty list"),
    "not_a_list": (zeros(KV_SHAPE), ValueError, "kvcaches must be a non-empty list"),
    "three_planes": ([(zeros(KV_SHAPE),) * 3], ValueError, r"kvcaches\[0\] holds 3 tensors"),
    "mixed_layers": ([(zeros(KV_SHAPE), zeros(KV_SHAPE)), (zeros((8, 16, 1, 8)),)], ValueError, "mixes"),
    "k_v_shapes_differ": ([(zeros(KV_SHAPE), zeros((8, 16, 2, 4)))], ValueError, "kvcaches: unrecognised"),
    "k_v_dtypes_differ": ([(zeros(KV_SHAPE), zeros(KV_SHAPE, ms.float16))], ValueError, "kvcaches: kv_caches buffer 1 is float16"),
    "latent_with_heads": ([(zeros((8, 16, 2, 8)),)], ValueError, r"kvcaches\[0\]\[0\] is an MLA latent of shape \[8, 16, 2, 8\]"),
    "not_tensors": ([("k", "v")], TypeError, "kvcaches: expected a torch.Tensor"),
    "non_dense_view": ([(zeros((8, 16, 2, 16))[..., :8], zeros(KV_SHAPE))], ValueError, "not dense"),
}


@pytest.mark.parametrize("case", sorted(STRUCTURES))
def test_unusable_kv_structures(case: str) -> None:
    kvcaches, kind, message = STRUCTURES[case]
    with pytest.raises(kind, match=message):
        describe_kv(kvcaches)


def test_cache_redescribes_when_buffers_change(kv_layers: list[tuple[Any, ...]]) -> None:
    cache = MindSporeKVCache()
    first = cache.get(kv_layers)
    assert cache.get(list(kv_layers)) is first  # same buffers: reused
    other = random_kv(GEOM, "bfloat16", np.random.default_rng(8))
    second = cache.get(other)
    assert second is not first
    assert second.ptrs.tolist() == [t.data_ptr() for layer in other for t in layer]
