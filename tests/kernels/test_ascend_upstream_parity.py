"""Plane-tuple chunks (format 17) are the same bytes as upstream LMCache's.

Upstream's torch baseline (``lmcache.v1.platform.torch_ops.multi_layer_block_kv_transfer``)
is the only upstream path for format 17; its objects are ``[nl, chunk, H]`` tensors.
Ours produce ``[1, nl, chunk, H]`` objects through the block op and the slot op; both
must hold exactly the bytes upstream writes, and both must load upstream-made chunks
into our paged planes exactly as upstream does.
"""

from __future__ import annotations

import pytest
import torch
from lmcache.lmcache_native import PageBufferShapeDesc
from lmcache.v1.platform import torch_ops

from lmcache_ascend import ops
from tests.kernels.reference import as_bytes, assert_tensor_equal, byte_equal, random_tensor
from tests.kernels.reference_ascend import PLANE_LAYOUTS, PlaneCache, block_slot_list, make_plane_cache, row_elems

CPU = torch.device("cpu")
NL, NB, BS, CHUNK = 2, 16, 4, 16  # 4 blocks per object
PER_OBJECT = CHUNK // BS
F17 = ops.EngineKVFormat(17)
STORE, LOAD = 1, 0
# (number of block ids, skip_prefix_n_blocks)
CASES = {"3-full-objects": (12, 0), "partial-last-skip2": (10, 2), "skip5-into-second": (9, 5)}
OPS = ("block", "slot")


def _desc(planes: tuple, h: int) -> PageBufferShapeDesc:
    d = PageBufferShapeDesc()
    d.kv_size, d.nl, d.nb, d.bs, d.nh, d.hs = 1, NL, NB, BS, 1, h
    d.element_size = planes[0][1].itemsize
    d.block_stride_elems = BS * planes[0][0]
    d.dtype = planes[0][1]
    return d


def _setup(layout: str, case: str, gen: torch.Generator) -> tuple[tuple, int, torch.Tensor, int, int]:
    planes = PLANE_LAYOUTS[layout]
    n_blocks, skip = CASES[case]
    blocks = torch.randperm(NB, generator=gen)[:n_blocks].clone()
    return planes, row_elems(planes), blocks, skip, -(-n_blocks // PER_OBJECT)


def _upstream(cache: PlaneCache, objects: torch.Tensor, blocks: torch.Tensor, direction: int, desc: PageBufferShapeDesc, skip: int) -> None:
    """``objects`` ``[n, nl, chunk, H]``; upstream gets one tensor per object."""
    torch_ops.multi_layer_block_kv_transfer(
        cache.arg(), [objects[i] for i in range(objects.shape[0])], blocks, CPU, direction, desc, CHUNK, F17, skip
    )


def _ours(op: str, cache: PlaneCache, objects: list[torch.Tensor], blocks: torch.Tensor, direction: int,
          desc: PageBufferShapeDesc, skip: int, h: int) -> None:
    """``objects`` as ``[1, nl, chunk, H]`` (or upstream's ``[nl, chunk, H]`` for the block op)."""
    if op == "block":
        ops.multi_layer_block_kv_transfer(cache.arg(), objects, blocks, CPU, direction, desc, CHUNK, F17, skip)
        return
    for i, obj in enumerate(objects):
        slots = block_slot_list(blocks.tolist(), i, PER_OBJECT, BS, skip)
        ops.multi_layer_kv_transfer(obj.reshape(1, NL, CHUNK, h), cache.arg(), slots, CPU, NB * BS, direction, F17, BS, h)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", list(PLANE_LAYOUTS))
def test_stored_chunks_equal_upstream_bytes(backend: str, layout: str, case: str, op: str, gen: torch.Generator) -> None:
    planes, h, blocks, skip, n = _setup(layout, case, gen)
    cache = make_plane_cache(planes, NL, NB, BS, gen)
    pristine = cache.clone()
    init = random_tensor((n, NL, CHUNK, h), planes[0][1], gen)
    theirs = init.clone()
    _upstream(cache.clone(), theirs, blocks, STORE, _desc(planes, h), skip)
    assert not byte_equal(theirs, init), "upstream stored nothing"
    ours = init.clone().unsqueeze(1)  # [n, 1, nl, chunk, H]
    _ours(op, cache, [ours[i] for i in range(n)], blocks, STORE, _desc(planes, h), skip, h)
    assert torch.equal(as_bytes(ours), as_bytes(theirs)), "stored chunk bytes differ from upstream's"
    for got, want in zip(cache.storage(), pristine.storage()):
        assert_tensor_equal(got, want, "paged plane (store must not write it)")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout", list(PLANE_LAYOUTS))
def test_upstream_chunks_load_into_our_planes(backend: str, layout: str, case: str, op: str, gen: torch.Generator) -> None:
    planes, h, blocks, skip, n = _setup(layout, case, gen)
    desc = _desc(planes, h)
    chunks = random_tensor((n, NL, CHUNK, h), planes[0][1], gen)
    # upstream makes the chunks, from every block (no skip)
    _upstream(make_plane_cache(planes, NL, NB, BS, gen), chunks, blocks, STORE, desc, 0)
    made = chunks.clone()
    dst = make_plane_cache(planes, NL, NB, BS, gen)
    theirs, ours = dst.clone(), dst.clone()
    _upstream(theirs, chunks.clone(), blocks, LOAD, desc, skip)
    # our block op takes upstream's [nl, chunk, H] tensors as they are
    _ours(op, ours, [chunks[i] for i in range(n)], blocks, LOAD, desc, skip, h)
    assert any(not byte_equal(a, b) for a, b in zip(theirs.storage(), dst.storage())), "upstream loaded nothing"
    for i, (got, want) in enumerate(zip(ours.storage(), theirs.storage())):
        assert_tensor_equal(got, want, f"paged plane {i}")
    assert_tensor_equal(chunks, made, "chunks (load must not write them)")
