"""``integrations.mindspore.transfer``: MindSpore paged KV <-> memory objects, exactly.

Real MindSpore 2.7.1 tensors on CPU; memory objects are torch tensors as
LMCache allocates them. Every expectation comes from numpy indexing on 16-bit
patterns (``helpers``). Loads are checked twice: the raw bytes, and the values
a MindSpore op (a cast) reads afterwards, since the copy bypasses MindSpore.
"""

from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
torch = pytest.importorskip("torch")

from lmcache_ascend.integrations.mindspore import transfer  # noqa: E402
from lmcache_ascend.integrations.mindspore.engine_kv import describe_kv  # noqa: E402
from tests.integrations.mindspore.helpers import (  # noqa: E402
    DTYPES,
    SENTINEL,
    Geom,
    expected_kv,
    expected_object,
    filled_kv,
    kv_bits,
    kv_values,
    object_bits,
    random_kv,
    values_of_bits,
)

GEOMS = {"kv": Geom(), "mla": Geom(num_heads=1, head_size=24, mla=True)}
T = 40


def slots_with_holes(rng: np.random.Generator, geom: Geom, num_tokens: int = T) -> np.ndarray:
    slots = rng.permutation(geom.num_slots)[:num_tokens].astype(np.int64)
    slots[[3, 17, num_tokens - 1]] = -1  # tokens the engine does not hold: skipped both ways
    return slots


def sentinel_object(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    bits = torch.full(shape, SENTINEL, dtype=torch.int32).to(torch.int16)
    return bits.view(DTYPES[dtype][1]).clone()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261123)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["kv", "mla"])
@pytest.mark.parametrize("skip", [0, 5])
def test_multi_layer_store_then_load(rng: np.random.Generator, dtype: str, layout: str, skip: int) -> None:
    geom = GEOMS[layout]
    src = random_kv(geom, dtype, rng)
    bits = kv_bits(src)
    slots = slots_with_holes(rng, geom)
    obj = sentinel_object((geom.planes, geom.num_layers, T, geom.row), dtype)
    before = object_bits(obj)

    transfer.multi_layer(describe_kv(src), obj, torch.from_numpy(slots), transfer.D2H, skip)

    stored = object_bits(obj)
    assert np.array_equal(stored, expected_object(bits, slots, before, skip))
    assert np.array_equal(kv_bits(src), bits)  # a store leaves the KV alone

    new_slots = slots_with_holes(rng, geom)
    dst = filled_kv(geom, dtype)
    dst_before = kv_bits(dst)
    transfer.multi_layer(describe_kv(dst), obj, new_slots, transfer.H2D, skip)

    want = expected_kv(dst_before, stored, new_slots, skip)
    assert np.array_equal(kv_bits(dst), want)
    assert np.array_equal(kv_values(dst), values_of_bits(want, dtype))
    assert np.array_equal(object_bits(obj), stored)  # a load leaves the object alone


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["kv", "mla"])
def test_single_layer_token_major_store_then_load(rng: np.random.Generator, dtype: str, layout: str) -> None:
    geom = GEOMS[layout]
    src = random_kv(geom, dtype, rng)
    bits = kv_bits(src)
    slots = slots_with_holes(rng, geom)
    dst = filled_kv(geom, dtype)
    dst_before = kv_bits(dst)
    kv_src, kv_dst = describe_kv(src), describe_kv(dst)
    for layer in range(geom.num_layers):
        shape = (T, geom.row) if geom.mla else (T, 2, geom.row)
        obj = sentinel_object(shape, dtype)
        before = object_bits(obj)
        transfer.single_layer(kv_src, layer, obj, slots, transfer.D2H)

        want_obj = before.reshape(T, geom.planes, geom.row).copy()
        for t, slot in enumerate(slots):
            if slot >= 0:
                want_obj[t] = bits[layer, :, slot]
        assert np.array_equal(object_bits(obj).reshape(T, geom.planes, geom.row), want_obj)

        transfer.single_layer(kv_dst, layer, obj, slots, transfer.H2D)
    want = dst_before.copy()
    for slot in slots[slots >= 0]:
        want[:, :, slot] = bits[:, :, slot]  # every layer moved through its own object
    assert np.array_equal(kv_bits(dst), want)
    assert np.array_equal(kv_values(dst), values_of_bits(want, dtype))


@pytest.mark.parametrize(
    "as_mapping",
    [
        lambda s: s,
        lambda s: s.tolist(),
        lambda s: torch.from_numpy(s),
        lambda s: torch.from_numpy(s).to(torch.int32),
        lambda s: ms.Tensor(s),
        lambda s: ms.Tensor(s.astype(np.int32)),
    ],
    ids=["numpy", "list", "torch_int64", "torch_int32", "mindspore_int64", "mindspore_int32"],
)
def test_slot_mapping_of_any_framework_gives_the_same_object(rng: np.random.Generator, as_mapping) -> None:
    geom = GEOMS["kv"]
    src = random_kv(geom, "bfloat16", rng)
    slots = slots_with_holes(rng, geom)
    obj = sentinel_object((2, geom.num_layers, T, geom.row), "bfloat16")
    before = object_bits(obj)
    transfer.multi_layer(describe_kv(src), obj, as_mapping(slots), transfer.D2H)
    assert np.array_equal(object_bits(obj), expected_object(kv_bits(src), slots, before))


def test_memory_object_may_be_a_mindspore_tensor(rng: np.random.Generator) -> None:
    geom = GEOMS["kv"]
    src = random_kv(geom, "float16", rng)
    slots = slots_with_holes(rng, geom)
    obj = ms.Tensor(np.zeros((2, geom.num_layers, T, geom.row), np.float16))
    transfer.multi_layer(describe_kv(src), obj, slots, transfer.D2H)
    got = obj.asnumpy().view(np.uint16)
    assert np.array_equal(got, expected_object(kv_bits(src), slots, np.zeros_like(got)))


def test_empty_chunk_and_full_skip_copy_nothing(rng: np.random.Generator) -> None:
    geom = GEOMS["kv"]
    kv = describe_kv(random_kv(geom, "bfloat16", rng))
    empty = sentinel_object((2, geom.num_layers, 0, geom.row), "bfloat16")
    transfer.multi_layer(kv, empty, np.zeros(0, np.int64), transfer.D2H)
    obj = sentinel_object((2, geom.num_layers, 4, geom.row), "bfloat16")
    before = object_bits(obj)
    transfer.multi_layer(kv, obj, np.arange(4), transfer.D2H, skip_prefix=4)
    assert np.array_equal(object_bits(obj), before)
