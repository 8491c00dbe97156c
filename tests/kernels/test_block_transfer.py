"""The block ops' native path (``_kvcore.transfer_blocks``) and what the op remembers per KV list.

``multi_layer_block_kv_transfer`` hands a whole call (every object) to the core, which
binds the plane table and turns block ids into slots itself: its semantics and its
second-line checks are pinned here against a numpy reference. The op also remembers
the geometry it derived for a KV list; a list whose tensors were replaced must be
derived afresh, never served the old geometry or addresses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmcache_ascend import _kvcore, ops
from lmcache_ascend.core.planes import ObjectPlane, PagedPlane, PlaneSet
from tests.kernels.helpers import DIRECTIONS
from tests.kernels.reference import assert_tensor_equal
from tests.kernels.reference_ascend import PLANE_LAYOUTS, block_slot_list, make_plane_cache, ref_plane_transfer, row_elems
from tests.kernels.test_ascend_layouts import BS, CHUNK, CPU, F17, NB, NL, plane_desc

ROW = 24  # bytes per token of the one-plane pool below
POOL_BLOCKS = 8
PER_OBJECT = 2


def one_plane() -> PlaneSet:
    """One plane over a dense ``[POOL_BLOCKS, BS, ROW]`` byte pool, object rows of ``ROW`` bytes."""
    paged = PagedPlane(0, 7, BS * ROW, ROW, ROW, 1, ROW, BS, POOL_BLOCKS * BS)  # offset 7: bound, not absolute
    return PlaneSet.build([paged], [ObjectPlane(0, ROW)])


def run_core(planes: PlaneSet, pool: np.ndarray, objects: list[np.ndarray], ids: np.ndarray, skip: int, direction: int,
             *, num_objects: int | None = None, index: np.ndarray | None = None) -> None:
    addresses = [o.ctypes.data for o in objects][: num_objects if num_objects is not None else len(objects)]
    _kvcore.transfer_blocks(
        planes.table, planes.buffer_index if index is None else index, np.array([pool.ctypes.data], dtype=np.int64),
        addresses, ids.ctypes.data, ids.itemsize, ids.size, BS, PER_OBJECT, POOL_BLOCKS, skip, direction, 2, 0,
    )


def reference(pool: np.ndarray, objects: list[np.ndarray], ids: list[int], skip: int, direction: int) -> None:
    for i, obj in enumerate(objects):
        for j in range(PER_OBJECT):
            flat = i * PER_OBJECT + j
            if flat < skip or flat >= len(ids):
                continue
            src = slice(7 + ids[flat] * BS * ROW, 7 + (ids[flat] + 1) * BS * ROW)
            rows = obj[j * BS * ROW : (j + 1) * BS * ROW]
            if direction == 1:
                rows[:] = pool[src]
            else:
                pool[src] = rows


def random_bytes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("count,skip", [(4, 0), (3, 0), (5, 3), (3, 3), (1, 0)], ids=["full", "partial-last", "skip-into-third", "skip-all", "one"])
def test_core_matches_the_reference(direction: int, dtype: type, count: int, skip: int) -> None:
    planes = one_plane()
    pool = random_bytes(7 + POOL_BLOCKS * BS * ROW + 5, 0)
    ids = np.random.default_rng(1).permutation(POOL_BLOCKS)[:count].astype(dtype)
    objects = [random_bytes(PER_OBJECT * BS * ROW, 2 + i) for i in range(-(-count // PER_OBJECT))]
    want_pool, want_objects = pool.copy(), [o.copy() for o in objects]
    reference(want_pool, want_objects, ids.tolist(), skip, direction)
    run_core(planes, pool, objects, ids, skip, direction)
    assert np.array_equal(pool, want_pool)
    for got, want in zip(objects, want_objects):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("bad", [POOL_BLOCKS, -1, 2**40])
def test_core_refuses_a_bad_block_id_before_moving_anything(direction: int, bad: int) -> None:
    """The bad id is in the last object: nothing of the earlier ones may have moved."""
    pool = random_bytes(7 + POOL_BLOCKS * BS * ROW, 0)
    objects = [random_bytes(PER_OBJECT * BS * ROW, 3 + i) for i in range(3)]
    ids = np.array([0, 1, 2, 3, bad], dtype=np.int64)
    before = pool.copy(), [o.copy() for o in objects]
    with pytest.raises(ValueError, match=rf"block_ids \[4\] = {bad} is outside \[0, {POOL_BLOCKS}\)"):
        run_core(one_plane(), pool, objects, ids, 0, direction)
    assert np.array_equal(pool, before[0])
    assert all(np.array_equal(o, b) for o, b in zip(objects, before[1]))


def test_core_refuses_a_malformed_call() -> None:
    planes, pool = one_plane(), random_bytes(7 + POOL_BLOCKS * BS * ROW, 0)
    objects = [random_bytes(PER_OBJECT * BS * ROW, 1) for _ in range(2)]
    ids = np.arange(4, dtype=np.int64)
    with pytest.raises(ValueError, match="4 block ids need 2 objects, got 1"):
        run_core(planes, pool, objects, ids, 0, 1, num_objects=1)
    with pytest.raises(ValueError, match="plane 0 names buffer 1 of 1"):
        run_core(planes, pool, objects, ids, 0, 1, index=np.array([1], dtype=np.int64))
    with pytest.raises(ValueError, match="one buffer per plane"):
        run_core(planes, pool, objects, ids, 0, 1, index=np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="object 1 is null"):
        _kvcore.transfer_blocks(planes.table, planes.buffer_index, np.array([pool.ctypes.data]), [objects[0].ctypes.data, 0],
                                ids.ctypes.data, 8, 4, BS, PER_OBJECT, POOL_BLOCKS, 0, 1, 1, 0)
    with pytest.raises(ValueError, match="must be > 0"):
        _kvcore.transfer_blocks(planes.table, planes.buffer_index, np.array([pool.ctypes.data]), [],
                                ids.ctypes.data, 8, 0, BS, 0, POOL_BLOCKS, 0, 1, 1, 0)


# ------------------------------------------------ the op's memory of a KV list


def block_run(kv: list, objs: torch.Tensor, blocks: torch.Tensor, layout: str, direction: int) -> None:
    planes = PLANE_LAYOUTS[layout]
    arg = [objs[i] for i in range(objs.shape[0])]
    ops.multi_layer_block_kv_transfer(kv, arg, blocks, CPU, direction, plane_desc(planes, row_elems(planes)), CHUNK, F17, 0)


def expected(cache, objs: torch.Tensor, blocks: torch.Tensor, direction: int) -> tuple:
    want_cache, want_objs = cache.clone(), objs.clone()
    for i in range(objs.shape[0]):
        ref_plane_transfer(want_cache, want_objs[i], block_slot_list(blocks.tolist(), i, CHUNK // BS, BS, 0), direction)
    return want_cache, want_objs


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("second", ["DSA-C8-bf16", "MLA-bf16"], ids=["same-shapes", "other-widths"])
def test_a_kv_list_refilled_with_other_tensors_is_derived_afresh(direction: int, second: str, gen: torch.Generator) -> None:
    """One list object, first holding one cache, then (in place) another: the second call must
    use the new tensors' addresses and, when their widths differ, their geometry."""
    blocks = torch.randperm(NB, generator=gen)[:5].clone()
    first = make_plane_cache(PLANE_LAYOUTS["DSA-C8-bf16"], NL, NB, BS, gen)
    kv = first.arg()
    h = row_elems(PLANE_LAYOUTS["DSA-C8-bf16"])
    block_run(kv, torch.zeros(2, 1, NL, CHUNK, h, dtype=torch.bfloat16), blocks, "DSA-C8-bf16", 1)
    first_before = first.clone()

    cache = make_plane_cache(PLANE_LAYOUTS[second], NL, NB, BS, gen)
    kv[:] = cache.arg()
    h = row_elems(PLANE_LAYOUTS[second])
    objs = torch.randn(2, 1, NL, CHUNK, h, generator=gen).to(torch.bfloat16)
    want_cache, want_objs = expected(cache, objs, blocks, direction)
    block_run(kv, objs, blocks, second, direction)
    assert_tensor_equal(objs, want_objs, "memory objects")
    for i, (got, want) in enumerate(zip(cache.storage(), want_cache.storage())):
        assert_tensor_equal(got, want, f"paged buffer {i}")
    for i, (got, want) in enumerate(zip(first.storage(), first_before.storage())):
        assert_tensor_equal(got, want, f"first cache buffer {i} (no longer in the list)")


def test_core_sizes_its_slot_ids_by_the_blocks_given() -> None:
    """A chunk of 2**40 blocks with one block id moves one block: the core must not size
    its slot list by the chunk (that would be 2**44 slot ids, and fail to allocate)."""
    planes, pool = one_plane(), random_bytes(7 + POOL_BLOCKS * BS * ROW, 0)
    obj = random_bytes(BS * ROW, 1)
    ids = np.array([5], dtype=np.int64)
    want = pool[7 + 5 * BS * ROW : 7 + 6 * BS * ROW].copy()
    _kvcore.transfer_blocks(planes.table, planes.buffer_index, np.array([pool.ctypes.data]), [obj.ctypes.data],
                            ids.ctypes.data, 8, 1, BS, 2**40, POOL_BLOCKS, 0, 1, 1, 0)
    assert np.array_equal(obj, want)
