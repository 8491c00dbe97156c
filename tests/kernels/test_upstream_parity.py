"""Our ops against upstream LMCache's torch baseline (``lmcache.v1.platform.torch_ops``),
bit for bit, wherever the baseline supports the case."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from lmcache.v1.platform import torch_ops

from lmcache_ascend import ops
from tests.kernels.helpers import DIRECTIONS, DTYPE_IDS, FLOAT_DTYPES, paged_arg, shape_desc
from tests.kernels.reference import (
    FORMAT_NAMES,
    MLA_FORMATS,
    PACKED_FORMATS,
    SINGLE_PLANE_FORMATS,
    Geom,
    PagedCache,
    assert_cache_equal,
    assert_tensor_equal,
    buffer_shape,
    byte_equal,
    layer_cache,
    make_paged,
    object_shape,
    random_slots,
    random_tensor,
)

G = Geom(num_layers=2, num_blocks=16, block_size=8, num_heads=2, head_size=8)
CPU = torch.device("cpu")
Op = Callable[[PagedCache, torch.Tensor], None]


def compare(cache: PagedCache, obj: torch.Tensor, ours: Op, theirs: Op, *, changes: bool = True) -> None:
    """Run both implementations on identical copies; every byte must agree."""
    mine_cache, mine_obj = cache.clone(), obj.clone()
    base_cache, base_obj = cache.clone(), obj.clone()
    ours(mine_cache, mine_obj)
    theirs(base_cache, base_obj)
    assert_cache_equal(mine_cache, base_cache)
    assert_tensor_equal(mine_obj, base_obj, "memory object")
    if changes:  # guard against a vacuous comparison
        moved = not byte_equal(mine_obj, obj) or any(
            not byte_equal(a, b) for a, b in zip(mine_cache.storage(), cache.storage())
        )
        assert moved, "the transfer moved nothing"


SLOT_CASES = {"T1": (1, 0, 0), "T37-holes-skip4": (37, 5, 4), "T127-holes": (127, 11, 0)}


@pytest.mark.parametrize("case", list(SLOT_CASES), ids=list(SLOT_CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=[DTYPE_IDS[d] for d in FLOAT_DTYPES])
@pytest.mark.parametrize("fmt", [1, 2, 3, 5], ids=[FORMAT_NAMES[f] for f in (1, 2, 3, 5)])
def test_multi_layer_kv_transfer(backend: str, fmt: int, dtype: torch.dtype, direction: int, case: str, gen: torch.Generator) -> None:
    num_tokens, holes, skip = SLOT_CASES[case]
    cache = make_paged(fmt, G, dtype, gen)
    obj = random_tensor(object_shape(fmt, G, num_tokens), dtype, gen)
    slots = random_slots(num_tokens, G.num_slots, gen, holes)
    args = (slots, CPU, G.num_slots, direction, ops.EngineKVFormat(fmt), G.block_size, G.head_size, skip)
    compare(
        cache, obj,
        lambda c, o: ops.multi_layer_kv_transfer(o, c.pointers(), *args),
        lambda c, o: torch_ops.multi_layer_kv_transfer(o, c.pointers(), *args),
    )


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt", [4, 3, 5], ids=[FORMAT_NAMES[f] for f in (4, 3, 5)])
def test_multi_layer_kv_transfer_unilateral(backend: str, fmt: int, direction: int, gen: torch.Generator) -> None:
    cache = make_paged(fmt, G, torch.bfloat16, gen)
    obj = random_tensor(object_shape(fmt, G, 60), torch.bfloat16, gen)
    slots = random_slots(60, G.num_slots, gen, 9)
    args = (slots, CPU, G.num_slots, direction, ops.EngineKVFormat(fmt))
    compare(
        cache, obj,
        lambda c, o: ops.multi_layer_kv_transfer_unilateral(o, c.pointers(), *args),
        lambda c, o: torch_ops.multi_layer_kv_transfer_unilateral(o, c.pointers(), *args),
    )


def _lmc(fmt: int, num_tokens: int, token_major: bool, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    row = G.num_heads * G.head_size
    if fmt in MLA_FORMATS:
        return random_tensor((num_tokens, G.head_size), dtype, gen)
    return random_tensor((num_tokens, 2, row) if token_major else (2, num_tokens, row), dtype, gen)


SINGLE = [(1, False), (1, True), (2, False), (2, True), (3, False)]


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt,token_major", SINGLE, ids=[f"{FORMAT_NAMES[f]}-{'tm' if t else 'km'}" for f, t in SINGLE])
def test_single_layer_kv_transfer(backend: str, fmt: int, token_major: bool, direction: int, gen: torch.Generator) -> None:
    one = Geom(1, G.num_blocks, G.block_size, G.num_heads, G.head_size)
    cache = make_paged(fmt, one, torch.float16, gen)
    lmc = _lmc(fmt, 33, token_major, torch.float16, gen)
    slots = random_slots(33, G.num_slots, gen, 4)

    def run(impl) -> Op:
        return lambda c, o: impl.single_layer_kv_transfer(o, c.data[0], slots, direction, ops.EngineKVFormat(fmt), token_major)

    compare(cache, lmc, run(ops), run(torch_ops))


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("token_major", [False, True], ids=["km", "tm"])
def test_single_layer_kv_transfer_sgl(backend: str, token_major: bool, direction: int, gen: torch.Generator) -> None:
    shape = buffer_shape(9, G)
    cache = layer_cache(9, G, (random_tensor(shape, torch.bfloat16, gen), random_tensor(shape, torch.bfloat16, gen)))
    lmc = _lmc(9, 40, token_major, torch.bfloat16, gen)
    slots = random_slots(40, G.num_slots, gen, 6)

    def run(impl) -> Op:
        return lambda c, o: impl.single_layer_kv_transfer_sgl(o, c.data[0][0], c.data[1][0], slots, direction, token_major)

    compare(cache, lmc, run(ops), run(torch_ops))


@pytest.mark.parametrize("op", ["load_and_reshape_flash", "reshape_and_cache_back_flash"])
def test_flash_ops(backend: str, op: str, gen: torch.Generator) -> None:
    """No -1 slots here: the baseline does not skip them (it would index block -1)."""
    shape = buffer_shape(16, G)
    cache = layer_cache(16, G, (random_tensor(shape, torch.float32, gen), random_tensor(shape, torch.float32, gen)))
    key_value = random_tensor((2, 3, 50, G.num_heads * G.head_size), torch.float32, gen)
    slots = random_slots(50, G.num_slots, gen)

    def run(impl) -> Op:
        return lambda c, o: getattr(impl, op)(o, c.data[0][0], c.data[0][1], slots, 2)

    compare(cache, key_value, run(ops), run(torch_ops))


CHUNK = 32  # 4 blocks of 8
BLOCK_LAYOUTS = [(f, 1 if f in SINGLE_PLANE_FORMATS else 2) for f in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 18)] + [(12, 1), (13, 1)]
BLOCK_CASES = {"full": (8, 0), "partial-last-skip3": (10, 3), "skip6-into-second": (11, 6)}


@pytest.mark.parametrize("case", list(BLOCK_CASES), ids=list(BLOCK_CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("layout", BLOCK_LAYOUTS, ids=[f"{f}-{FORMAT_NAMES[f]}-kv{k}" for f, k in BLOCK_LAYOUTS])
def test_multi_layer_block_kv_transfer(backend: str, layout: tuple[int, int], direction: int, case: str, gen: torch.Generator) -> None:
    fmt, kv_size = layout
    n_blocks, skip = BLOCK_CASES[case]
    cache = make_paged(fmt, G, torch.bfloat16, gen)
    n_objects = -(-n_blocks // (CHUNK // G.block_size))
    # All objects live in one tensor: the state compared is [objects, kv, L, chunk, row].
    one = object_shape(fmt, G, CHUNK, fused=fmt in PACKED_FORMATS and kv_size == 1)
    objs = random_tensor((n_objects, *one), torch.bfloat16, gen)
    blocks = torch.randperm(G.num_blocks, generator=gen)[:n_blocks].clone()
    desc = shape_desc(fmt, kv_size, G, torch.bfloat16, 2)
    form = "tuples" if fmt == 16 else "ptr"  # the baseline takes (K, V) tuples only for 16

    def run(impl) -> Op:
        return lambda c, o: impl.multi_layer_block_kv_transfer(
            paged_arg(c, form), [o[i].data_ptr() for i in range(n_objects)], blocks, CPU, direction, desc, CHUNK,
            ops.EngineKVFormat(fmt), skip,
        )

    compare(cache, objs, run(ops), run(torch_ops))
