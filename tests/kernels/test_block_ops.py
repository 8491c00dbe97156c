"""``multi_layer_block_kv_transfer`` (LMCache multi-process mode) against the reference."""

from __future__ import annotations

import pytest
import torch
from lmcache.lmcache_native import PageBufferShapeDesc

from lmcache_ascend import ops
from tests.kernels.helpers import DIRECTIONS, DTYPE_IDS, paged_arg, shape_desc
from tests.kernels.reference import (
    FORMAT_NAMES,
    PACKED_FORMATS,
    SINGLE_PLANE_FORMATS,
    Geom,
    PagedCache,
    as_bytes,
    assert_cache_equal,
    assert_tensor_equal,
    make_blocks_first,
    make_paged,
    object_shape,
    random_tensor,
    ref_block_transfer,
)

G = Geom(num_layers=2, num_blocks=20, block_size=4, num_heads=3, head_size=6)
CHUNK = 16  # 4 blocks per object

BLOCK_FORMATS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 18)
# (format, kv_size): packed 12/13 move fused [K | V] heads (kv_size 1, as upstream MP
# mode does) or split K and V planes (kv_size 2).
LAYOUTS = [(f, 1 if f in SINGLE_PLANE_FORMATS else 2) for f in BLOCK_FORMATS] + [(12, 1), (12, 2), (13, 1), (13, 2)]
LAYOUT_IDS = [f"{f}-{FORMAT_NAMES[f]}-kv{k}" for f, k in LAYOUTS]

# (number of block ids, skip_prefix_n_blocks)
CASES = {
    "2-full-objects": (8, 0),
    "partial-last-object": (10, 0),
    "skip5-into-second-object": (10, 5),
    "one-block": (1, 0),
    "4-objects-skip-all": (16, 16),
}


def make_objects(fmt: int, kv_size: int, g: Geom, n: int, dtype: torch.dtype, gen: torch.Generator) -> list[torch.Tensor]:
    shape = object_shape(fmt, g, CHUNK, fused=fmt in PACKED_FORMATS and kv_size == 1)
    assert shape[0] == kv_size
    return [random_tensor(shape, dtype, gen) for _ in range(n)]


def random_blocks(n: int, g: Geom, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(g.num_blocks, generator=gen)[:n].clone()


def check_block_op(
    cache: PagedCache,
    objects: list[torch.Tensor],
    blocks: torch.Tensor,
    direction: int,
    desc: PageBufferShapeDesc,
    skip: int,
    fused: bool,
    *,
    paged_form: str = "ptr",
    objects_as_ptrs: bool = True,
) -> None:
    want_cache, want_objects = cache.clone(), [o.clone() for o in objects]
    ref_block_transfer(want_cache, want_objects, blocks.tolist(), direction, CHUNK, skip, fused)
    obj_arg: list = [o.data_ptr() for o in objects] if objects_as_ptrs else list(objects)
    ops.multi_layer_block_kv_transfer(
        paged_arg(cache, paged_form), obj_arg, blocks, torch.device("cpu"), direction, desc, CHUNK,
        ops.EngineKVFormat(cache.fmt), skip,
    )
    assert_cache_equal(cache, want_cache)
    for i, (o, w) in enumerate(zip(objects, want_objects)):
        assert_tensor_equal(o, w, f"object {i}")


@pytest.mark.parametrize("objects_as_ptrs", [True, False], ids=["obj-ptrs", "obj-tensors"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_matches_reference(backend: str, layout: tuple[int, int], direction: int, case: str, objects_as_ptrs: bool, gen: torch.Generator) -> None:
    fmt, kv_size = layout
    n_blocks, skip = CASES[case]
    cache = make_paged(fmt, G, torch.bfloat16, gen)
    n_objects = -(-n_blocks // (CHUNK // G.block_size))
    objects = make_objects(fmt, kv_size, G, n_objects, torch.bfloat16, gen)
    blocks = random_blocks(n_blocks, G, gen)
    desc = shape_desc(fmt, kv_size, G, torch.bfloat16, 2)
    fused = fmt in (12, 13) and kv_size == 1
    check_block_op(cache, objects, blocks, direction, desc, skip, fused, objects_as_ptrs=objects_as_ptrs)


DTYPE_CASES = [(f, d) for f in (1, 7, 13, 18) for d in (torch.float16, torch.float32, torch.int8)] + [
    (3, torch.uint8), (5, torch.int8), (3, torch.float32), (18, torch.uint8)
]


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt,dtype", DTYPE_CASES, ids=[f"{FORMAT_NAMES[f]}-{DTYPE_IDS[d]}" for f, d in DTYPE_CASES])
def test_dtypes(backend: str, fmt: int, dtype: torch.dtype, direction: int, gen: torch.Generator) -> None:
    kv_size = 1 if fmt in SINGLE_PLANE_FORMATS or fmt == 13 else 2
    cache = make_paged(fmt, G, dtype, gen)
    objects = make_objects(fmt, kv_size, G, 3, dtype, gen)
    blocks = random_blocks(11, G, gen)
    desc = shape_desc(fmt, kv_size, G, dtype, dtype.itemsize)
    check_block_op(cache, objects, blocks, direction, desc, 2, fmt == 13)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt,form", [(16, "tuples"), (16, "list"), (9, "nested"), (4, "list"), (0, "tensor"), (2, "list"), (18, "list")])
def test_paged_given_as_tensors(backend: str, fmt: int, form: str, direction: int, gen: torch.Generator) -> None:
    kv_size = 1 if fmt in SINGLE_PLANE_FORMATS else 2
    cache = make_paged(fmt, G, torch.float16, gen)
    objects = make_objects(fmt, kv_size, G, 2, torch.float16, gen)
    blocks = random_blocks(7, G, gen)
    desc = shape_desc(fmt, kv_size, G, torch.float16, 2)
    check_block_op(cache, objects, blocks, direction, desc, 1, False, paged_form=form, objects_as_ptrs=False)


BLOCKS_FIRST = [(12, 1), (12, 2), (13, 1), (13, 2), (3, 1)]


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt,kv_size", BLOCKS_FIRST, ids=[f"{FORMAT_NAMES[f]}-kv{k}" for f, k in BLOCKS_FIRST])
def test_blocks_first_pool(backend: str, fmt: int, kv_size: int, direction: int, gen: torch.Generator) -> None:
    """Per-layer views ``pool[:, l]`` with ``shape_desc.block_stride_elems = view.stride(0)``
    (what LMCache's MP mode passes for formats 3, 12 and 13)."""
    cache = make_blocks_first(fmt, G, torch.bfloat16, gen)
    stride = cache.buffers()[0].stride(0)
    objects = make_objects(fmt, kv_size, G, 3, torch.bfloat16, gen)
    blocks = random_blocks(9, G, gen)
    desc = shape_desc(fmt, kv_size, G, torch.bfloat16, 2, block_stride=stride)
    check_block_op(cache, objects, blocks, direction, desc, 2, fmt != 3 and kv_size == 1)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
def test_shape_desc_without_dtype_moves_bytes(backend: str, direction: int, gen: torch.Generator) -> None:
    """Without ``shape_desc.dtype`` (the C++ struct has none) bf16 data still moves bit-exact."""
    cache = make_paged(1, G, torch.bfloat16, gen)
    objects = make_objects(1, 2, G, 2, torch.bfloat16, gen)
    blocks = random_blocks(8, G, gen)
    check_block_op(cache, objects, blocks, direction, shape_desc(1, 2, G, None, 2), 0, False)


def test_block_and_slot_ops_agree(backend: str, gen: torch.Generator) -> None:
    """A block store equals a slot store of the same slots into a ``KV_2LTD`` object."""
    cache = make_paged(6, G, torch.float16, gen)
    blocks = random_blocks(4, G, gen)
    obj = torch.zeros(2, G.num_layers, CHUNK, G.num_heads * G.head_size, dtype=torch.float16)
    ops.multi_layer_block_kv_transfer(
        cache.pointers(), [obj.data_ptr()], blocks, "cpu", 1, shape_desc(6, 2, G, torch.float16, 2), CHUNK, 6, 0
    )
    slots = (blocks[:, None] * G.block_size + torch.arange(G.block_size)).reshape(-1)
    obj2 = torch.zeros_like(obj)
    ops.multi_layer_kv_transfer(obj2, cache.pointers(), slots, "cpu", G.num_slots, 1, 6, G.block_size, G.head_size)
    assert torch.equal(obj, obj2)
    assert obj.any()


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("ids_form", ["list", "int32", "empty", "strided"])
def test_block_id_forms(backend: str, ids_form: str, direction: int, gen: torch.Generator) -> None:
    cache = make_paged(2, G, torch.float16, gen)
    objects = make_objects(2, 2, G, 2, torch.float16, gen)
    blocks = random_blocks(0 if ids_form == "empty" else 6, G, gen)
    want_cache, want_objects = cache.clone(), [o.clone() for o in objects]
    ref_block_transfer(want_cache, want_objects, blocks.tolist(), direction, CHUNK, 1)
    arg: object = blocks.tolist() if ids_form == "list" else blocks.to(torch.int32)
    if ids_form == "strided":  # every other entry of a longer tensor: not contiguous
        arg = torch.stack([blocks, torch.full_like(blocks, 10**6)], dim=1)[:, 0]
        assert not arg.is_contiguous()
    ops.multi_layer_block_kv_transfer(
        cache.pointers(), [o.data_ptr() for o in objects], arg, "cpu", direction, shape_desc(2, 2, G, torch.float16, 2), CHUNK, 2, 1
    )
    assert_cache_equal(cache, want_cache)
    for o, w in zip(objects, want_objects):
        assert_tensor_equal(o, w)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
def test_objects_are_slices_of_one_buffer(backend: str, direction: int, gen: torch.Generator) -> None:
    """LMCache objects are contiguous slices of one pinned buffer (non-zero storage offset)."""
    cache = make_paged(7, G, torch.bfloat16, gen)
    pool = random_tensor((4, 2, G.num_layers, CHUNK, G.num_heads * G.head_size), torch.bfloat16, gen)
    objects = [pool[2], pool[1]]
    blocks = random_blocks(7, G, gen)
    pool_before = pool.clone()
    check_block_op(cache, objects, blocks, direction, shape_desc(7, 2, G, torch.bfloat16, 2), 3, False, objects_as_ptrs=False)
    assert torch.equal(pool[0], pool_before[0]) and torch.equal(pool[3], pool_before[3])


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt,kv_size", [(3, 1), (12, 1), (13, 1), (18, 1)], ids=[FORMAT_NAMES[f] for f in (3, 12, 13, 18)])
def test_tight_block_stride_given_explicitly(backend: str, fmt: int, kv_size: int, direction: int, gen: torch.Generator) -> None:
    """LMCache passes ``stride(0)`` even for a tight cache (formats 3, 12, 13 and 18
    are its block-axis formats): it must equal the tight default."""
    cache = make_paged(fmt, G, torch.float16, gen)
    stride = cache.buffers()[0].stride(0)
    objects = make_objects(fmt, kv_size, G, 2, torch.float16, gen)
    blocks = random_blocks(6, G, gen)
    desc = shape_desc(fmt, kv_size, G, torch.float16, 2, block_stride=stride)
    check_block_op(cache, objects, blocks, direction, desc, 1, fmt != 3)


# Format 18 (SGLang unified): NL counts K and V component tensors, so it is even
# for a real pool; odd NL and NH = 1 (tensor parallelism) must work all the same.
SINGLE_KV_GEOMS = {
    "NL4-NH3": Geom(num_layers=4, num_blocks=11, block_size=4, num_heads=3, head_size=6),
    "NL2-NH1": Geom(num_layers=2, num_blocks=9, block_size=8, num_heads=1, head_size=16),
    "NL6-NH1-HS1": Geom(num_layers=6, num_blocks=7, block_size=2, num_heads=1, head_size=1),
    "NL3-NH5-BS1": Geom(num_layers=3, num_blocks=13, block_size=1, num_heads=5, head_size=3),
}
# (number of block ids, skip_prefix_n_blocks); the chunk holds 16 tokens.
SINGLE_KV_CASES = {"partial-last-skip2": (7, 2), "empty": (0, 0), "all-skipped": (5, 5), "one": (1, 0)}


@pytest.mark.parametrize("case", list(SINGLE_KV_CASES), ids=list(SINGLE_KV_CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("geom", list(SINGLE_KV_GEOMS), ids=list(SINGLE_KV_GEOMS))
def test_single_kv_geometries(backend: str, geom: str, direction: int, case: str, gen: torch.Generator) -> None:
    """Format 18 against the reference, and, independently of it, every block that
    is not moved (not listed, or skipped) keeps its bytes on a load."""
    g = SINGLE_KV_GEOMS[geom]
    n_blocks, skip = SINGLE_KV_CASES[case]
    n_blocks = min(n_blocks, g.num_blocks)
    cache = make_paged(18, g, torch.bfloat16, gen)
    before = [t.clone() for t in cache.buffers()]
    n_objects = max(1, -(-n_blocks // (CHUNK // g.block_size)))
    objects = [random_tensor(object_shape(18, g, CHUNK), torch.bfloat16, gen) for _ in range(n_objects)]
    blocks = random_blocks(n_blocks, g, gen)
    check_block_op(cache, objects, blocks, direction, shape_desc(18, 1, g, torch.bfloat16, 2), skip, False, paged_form="list")
    moved = set(blocks[skip:].tolist())
    for i, (t, b) in enumerate(zip(cache.buffers(), before)):
        for block in range(g.num_blocks):
            if direction == 1 or block not in moved:
                assert torch.equal(as_bytes(t[block]), as_bytes(b[block])), f"component {i} block {block} changed"
