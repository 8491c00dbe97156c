"""Ascend layouts (plane tuples = format 17, 310P NZ = 100 / 101) against the independent
reference in ``reference_ascend.py``, on the host C++ core and the torch path.

Paged caches and memory objects start random and every byte of both is compared
with the reference, so untouched slots, skipped tokens and -1 slots are checked too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from lmcache.lmcache_native import PageBufferShapeDesc

from lmcache_ascend import ops
from lmcache_ascend.core.kv_format import KVFormat
from tests.kernels.helpers import DIRECTIONS, DTYPE_IDS, FLOAT_DTYPES
from tests.kernels.reference import assert_tensor_equal, byte_equal, random_slots, random_tensor
from tests.kernels.reference_ascend import (
    PLANE_LAYOUTS,
    NZCache,
    PlaneCache,
    block_slot_list,
    make_nz_cache,
    make_plane_cache,
    ref_nz_transfer,
    ref_plane_transfer,
    row_elems,
)

CPU = torch.device("cpu")
NL, NB, BS = 3, 12, 4
NS = NB * BS
PIECES = 3  # NZ: a 48-element row (3 heads x 16) in 3 pieces of 16
NZ_HEAD = 16
F17 = ops.EngineKVFormat(17)
NZ_FORMATS = {False: KVFormat.NL_X_TWO_X_NB_NZC_BS_C16, True: KVFormat.NL_X_TWO_NB_NZC_BS_C16}
NZ_IDS = {False: "NZ-separate-100", True: "NZ-merged-101"}

# (tokens, -1 slots, skip_prefix_n_tokens)
CASES = {
    "T0": (0, 0, 0),
    "T1": (1, 0, 0),
    "T37-holes5-skip4": (37, 5, 4),
    "all-slots-holes7": (NS, 7, 0),
    "T9-skip-all": (9, 0, 9),
}

Cache = PlaneCache | NZCache


def check(cache: Cache, obj: torch.Tensor, run: Callable[[Cache, torch.Tensor], None],
          ref: Callable[[Cache, torch.Tensor], None], moves: bool) -> None:
    """Run op and reference on copies of one state; compare every paged and object byte."""
    want_cache, want_obj = cache.clone(), obj.clone()
    ref(want_cache, want_obj)
    if moves:  # guard against a vacuous comparison
        changed = not byte_equal(want_obj, obj) or any(
            not byte_equal(a, b) for a, b in zip(want_cache.storage(), cache.storage()))
        assert changed, "the reference moved nothing"
    run(cache, obj)
    for i, (got, want) in enumerate(zip(cache.storage(), want_cache.storage())):
        assert_tensor_equal(got, want, f"paged buffer {i}")
    assert_tensor_equal(obj, want_obj, "memory object")


def _moves(num_tokens: int, holes: int, skip: int) -> bool:
    return num_tokens - max(holes, skip) > 0 and skip < num_tokens


# ---------------------------------------------------------------- plane tuples (17)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("layout", list(PLANE_LAYOUTS))
def test_plane_tuple_multi_layer(backend: str, layout: str, direction: int, case: str, gen: torch.Generator) -> None:
    planes = PLANE_LAYOUTS[layout]
    num_tokens, holes, skip = CASES[case]
    cache = make_plane_cache(planes, NL, NB, BS, gen)
    h = row_elems(planes)
    obj = random_tensor((1, NL, num_tokens, h), planes[0][1], gen)
    slots = random_slots(num_tokens, NS, gen, holes)

    def run(c: Cache, o: torch.Tensor) -> None:
        ops.multi_layer_kv_transfer(o, c.arg(), slots, CPU, NS, direction, F17, BS, h, skip)

    check(cache, obj, run, lambda c, o: ref_plane_transfer(c, o, slots, direction, skip), _moves(num_tokens, holes, skip))


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("layout", list(PLANE_LAYOUTS))
def test_plane_tuple_page_buffer_size_zero(backend: str, layout: str, direction: int, gen: torch.Generator) -> None:
    """MLA plane tuples take page_buffer_size=0 (as LMCache's CUDA op); the planes give the slots."""
    planes = PLANE_LAYOUTS[layout]
    cache = make_plane_cache(planes, NL, NB, BS, gen)
    h = row_elems(planes)
    obj = random_tensor((1, NL, 29, h), planes[0][1], gen)
    slots = random_slots(29, NS, gen, 4)

    def run(c: Cache, o: torch.Tensor) -> None:
        ops.multi_layer_kv_transfer(o, c.arg(), slots, CPU, 0, direction, F17, BS, h)

    check(cache, obj, run, lambda c, o: ref_plane_transfer(c, o, slots, direction, 0), True)


@pytest.mark.parametrize("layout", list(PLANE_LAYOUTS))
def test_plane_tuple_round_trip(backend: str, layout: str, gen: torch.Generator) -> None:
    """Store from one cache, load into another: the live slots end up equal, the rest is kept."""
    planes = PLANE_LAYOUTS[layout]
    src, dst = make_plane_cache(planes, NL, NB, BS, gen), make_plane_cache(planes, NL, NB, BS, gen)
    before = dst.clone()
    h, t = row_elems(planes), 31
    slots = random_slots(t, NS, gen, 3)
    obj = torch.zeros(1, NL, t, h, dtype=planes[0][1])
    ops.multi_layer_kv_transfer(obj, src.arg(), slots, CPU, NS, 1, F17, BS, h)
    ops.multi_layer_kv_transfer(obj, dst.arg(), slots, CPU, NS, 0, F17, BS, h)
    live = slots[slots >= 0]
    moved = torch.zeros(NS, dtype=torch.bool)
    moved[live] = True
    for layer in range(NL):
        for s, d, b in zip(src.layers[layer], dst.layers[layer], before.layers[layer]):
            flat_s, flat_d, flat_b = (x.reshape(NS, -1) for x in (s, d, b))
            assert byte_equal(flat_d[moved], flat_s[moved])
            assert byte_equal(flat_d[~moved], flat_b[~moved])


@pytest.mark.parametrize("token_major", [False, True], ids=["km", "tm"])
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("layout", list(PLANE_LAYOUTS))
def test_plane_tuple_single_layer(backend: str, layout: str, direction: int, token_major: bool, gen: torch.Generator) -> None:
    planes = PLANE_LAYOUTS[layout]
    cache = make_plane_cache(planes, 1, NB, BS, gen)
    lmc = random_tensor((29, row_elems(planes)), planes[0][1], gen)
    slots = random_slots(29, NS, gen, 4)

    def run(c: Cache, o: torch.Tensor) -> None:
        ops.single_layer_kv_transfer(o, c.layers[0], slots, direction, F17, token_major)

    check(cache, lmc, run, lambda c, o: ref_plane_transfer(c, o, slots, direction), True)


CHUNK = 12  # 3 blocks per object
BLOCK_CASES = {"2-full-objects": (6, 0), "partial-last": (5, 0), "skip4-into-second": (8, 4), "no-blocks": (0, 0)}


def plane_desc(planes: tuple, h: int) -> PageBufferShapeDesc:
    """As LMCache's MP mode fills it for format 17: plane 0's itemsize and block stride."""
    d = PageBufferShapeDesc()
    d.kv_size, d.nl, d.nb, d.bs, d.nh, d.hs = 1, NL, NB, BS, 1, h
    d.element_size = planes[0][1].itemsize
    d.block_stride_elems = BS * planes[0][0]
    d.dtype = planes[0][1]
    return d


def block_objects(n_blocks: int, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """All objects in one tensor ``[n, *shape]`` so one comparison covers them."""
    return random_tensor((max(1, -(-n_blocks // (CHUNK // BS))), *shape), dtype, gen)


@pytest.mark.parametrize("objects_as_ptrs", [True, False], ids=["obj-ptrs", "obj-tensors"])
@pytest.mark.parametrize("case", list(BLOCK_CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("layout", ["MLA-bf16", "DSA-bf16", "DSA-C8-bf16", "int8-first", "odd-bytes"])
def test_plane_tuple_block(backend: str, layout: str, direction: int, case: str, objects_as_ptrs: bool, gen: torch.Generator) -> None:
    planes = PLANE_LAYOUTS[layout]
    n_blocks, skip = BLOCK_CASES[case]
    cache = make_plane_cache(planes, NL, NB, BS, gen)
    h = row_elems(planes)
    objs = block_objects(n_blocks, (1, NL, CHUNK, h), planes[0][1], gen)
    blocks = torch.randperm(NB, generator=gen)[:n_blocks].clone()

    def run(c: Cache, o: torch.Tensor) -> None:
        arg = [o[i].data_ptr() if objects_as_ptrs else o[i] for i in range(o.shape[0])]
        ops.multi_layer_block_kv_transfer(c.arg(), arg, blocks, CPU, direction, plane_desc(planes, h), CHUNK, F17, skip)

    def ref(c: Cache, o: torch.Tensor) -> None:
        for i in range(o.shape[0]):
            ref_plane_transfer(c, o[i], block_slot_list(blocks.tolist(), i, CHUNK // BS, BS, skip), direction)

    check(cache, objs, run, ref, n_blocks > skip)


# ---------------------------------------------------------------- 310P NZ (100, 101)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=[DTYPE_IDS[d] for d in FLOAT_DTYPES])
@pytest.mark.parametrize("merged", [False, True], ids=NZ_IDS.get)
def test_nz_multi_layer(backend: str, merged: bool, dtype: torch.dtype, direction: int, case: str, gen: torch.Generator) -> None:
    num_tokens, holes, skip = CASES[case]
    cache = make_nz_cache(merged, NL, NB, PIECES, BS, dtype, gen)
    obj = random_tensor((2, NL, num_tokens, 16 * PIECES), dtype, gen)
    slots = random_slots(num_tokens, NS, gen, holes)

    def run(c: Cache, o: torch.Tensor) -> None:
        ops.multi_layer_kv_transfer(o, c.arg("list"), slots, CPU, NS, direction, NZ_FORMATS[merged], BS, NZ_HEAD, skip)

    check(cache, obj, run, lambda c, o: ref_nz_transfer(c, o, slots, direction, skip), _moves(num_tokens, holes, skip))


NZ_FORMS = [(False, "tuples"), (False, "list"), (False, "ptr"), (True, "list"), (True, "ptr")]


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("merged,form", NZ_FORMS, ids=[f"{NZ_IDS[m]}-{f}" for m, f in NZ_FORMS])
def test_nz_pointer_forms_and_wide_rows(backend: str, merged: bool, form: str, direction: int, gen: torch.Generator) -> None:
    """8 pieces (2 heads x 64), blocks of 16; the pointer table gives no shapes."""
    nb, bs, pieces = 6, 16, 8
    cache = make_nz_cache(merged, 2, nb, pieces, bs, torch.float16, gen)
    obj = random_tensor((2, 2, 53, 16 * pieces), torch.float16, gen)
    slots = random_slots(53, nb * bs, gen, 6)

    def run(c: Cache, o: torch.Tensor) -> None:
        ops.multi_layer_kv_transfer(o, c.arg(form), slots, CPU, nb * bs, direction, NZ_FORMATS[merged], bs, 64, 2)

    check(cache, obj, run, lambda c, o: ref_nz_transfer(c, o, slots, direction, 2), True)


@pytest.mark.parametrize("token_major", [False, True], ids=["km", "tm"])
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("merged", [False, True], ids=NZ_IDS.get)
def test_nz_single_layer(backend: str, merged: bool, direction: int, token_major: bool, gen: torch.Generator) -> None:
    cache = make_nz_cache(merged, 1, NB, PIECES, BS, torch.bfloat16, gen)
    t = 23
    lmc = random_tensor((t, 2, 16 * PIECES) if token_major else (2, t, 16 * PIECES), torch.bfloat16, gen)
    slots = random_slots(t, NS, gen, 3)

    def as_2ltd(o: torch.Tensor) -> torch.Tensor:
        return o.permute(1, 0, 2).unsqueeze(1) if token_major else o.unsqueeze(1)

    def run(c: Cache, o: torch.Tensor) -> None:
        ops.single_layer_kv_transfer(o, c.layers[0], slots, direction, NZ_FORMATS[merged], token_major)

    check(cache, lmc, run, lambda c, o: ref_nz_transfer(c, as_2ltd(o), slots, direction), True)


@pytest.mark.parametrize("case", ["partial-last", "skip4-into-second"])
@pytest.mark.parametrize("form", ["tensors", "ptr"])
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("merged", [False, True], ids=NZ_IDS.get)
def test_nz_block(backend: str, merged: bool, direction: int, form: str, case: str, gen: torch.Generator) -> None:
    n_blocks, skip = BLOCK_CASES[case]
    cache = make_nz_cache(merged, NL, NB, PIECES, BS, torch.bfloat16, gen)
    objs = block_objects(n_blocks, (2, NL, CHUNK, 16 * PIECES), torch.bfloat16, gen)
    blocks = torch.randperm(NB, generator=gen)[:n_blocks].clone()
    desc = PageBufferShapeDesc()
    desc.kv_size, desc.nl, desc.nb, desc.bs, desc.nh, desc.hs = 2, NL, NB, BS, PIECES, NZ_HEAD
    desc.element_size, desc.block_stride_elems, desc.dtype = 2, 0, torch.bfloat16

    def run(c: Cache, o: torch.Tensor) -> None:
        paged = c.arg("ptr") if form == "ptr" else (c.layers if merged else c.arg("tuples"))
        ops.multi_layer_block_kv_transfer(paged, [o[i].data_ptr() for i in range(o.shape[0])], blocks, CPU,
                                          direction, desc, CHUNK, NZ_FORMATS[merged], skip)

    def ref(c: Cache, o: torch.Tensor) -> None:
        for i in range(o.shape[0]):
            ref_nz_transfer(c, o[i], block_slot_list(blocks.tolist(), i, CHUNK // BS, BS, skip), direction)

    check(cache, objs, run, ref, True)


# ---------------------------------------------------------------- bad input


def _c8(gen: torch.Generator) -> tuple[PlaneCache, int]:
    planes = PLANE_LAYOUTS["DSA-C8-bf16"]
    return make_plane_cache(planes, NL, NB, BS, gen), row_elems(planes)


def test_plane_tuple_bad_input_names_the_argument(gen: torch.Generator) -> None:
    cache, h = _c8(gen)
    slots = random_slots(5, NS, gen)
    obj = torch.zeros(1, NL, 5, h, dtype=torch.bfloat16)

    def call(o: torch.Tensor, paged: object, fmt: object = F17) -> None:
        ops.multi_layer_kv_transfer(o, paged, slots, CPU, NS, 1, fmt, BS, h)

    ptrs = torch.tensor([t.data_ptr() for t in cache.storage()], dtype=torch.int64)
    with pytest.raises(ValueError, match="key_value_ptrs"):
        call(obj, ptrs)  # a pointer table carries no plane widths
    with pytest.raises(ValueError, match="key_value"):
        call(torch.zeros(2, NL, 5, h, dtype=torch.bfloat16), cache.arg())
    with pytest.raises(ValueError, match="key_value"):
        call(torch.zeros(1, NL, 5, h - 1, dtype=torch.bfloat16), cache.arg())
    with pytest.raises(ValueError, match="page_buffer_size"):
        ops.multi_layer_kv_transfer(obj, cache.arg(), slots, CPU, NS - 1, 1, F17, BS, h)
    wrong_dtype = [cache.layers[0], (*cache.layers[1][:2], cache.layers[1][2].view(torch.uint8), cache.layers[1][3]), cache.layers[2]]
    with pytest.raises(TypeError, match=r"key_value_ptrs\[6\]"):
        call(obj, wrong_dtype)
    not_a_tensor = [cache.layers[0], (*cache.layers[1][:2], 7, cache.layers[1][3]), cache.layers[2]]
    with pytest.raises(TypeError, match=r"key_value_ptrs\[6\] must be a torch.Tensor, got int"):
        call(obj, not_a_tensor)
    first_not_a_tensor = [(*cache.layers[0][:2], 7, cache.layers[0][3]), *cache.layers[1:]]
    with pytest.raises(TypeError, match=r"key_value_ptrs\[0\]\[2\] must be a torch.Tensor, got int"):
        call(obj, first_not_a_tensor)
    wrong_width = [cache.layers[0], (cache.layers[1][0], cache.layers[1][1][..., :32].contiguous(), *cache.layers[1][2:]), cache.layers[2]]
    with pytest.raises(ValueError, match=r"key_value_ptrs\[5\]"):
        call(obj, wrong_width)
    with pytest.raises(ValueError, match="key_value_ptrs"):
        call(obj, cache.arg()[:2])  # object has 3 layers, the caches 2
    with pytest.raises(ValueError, match="slot_mapping"):
        ops.multi_layer_kv_transfer(obj, cache.arg(), torch.tensor([0, 1, NS, 2, 3]), CPU, NS, 1, F17, BS, h)


def test_plane_tuple_block_bad_input_names_the_argument(gen: torch.Generator) -> None:
    cache, h = _c8(gen)
    obj = torch.zeros(1, NL, CHUNK, h, dtype=torch.bfloat16)
    blocks = torch.tensor([0, 1, 2])
    ptrs = torch.tensor([t.data_ptr() for t in cache.storage()], dtype=torch.int64)
    good = plane_desc(PLANE_LAYOUTS["DSA-C8-bf16"], h)
    with pytest.raises(TypeError, match="paged_buffer_ptrs_tensor"):
        ops.multi_layer_block_kv_transfer(ptrs, [obj], blocks, CPU, 1, good, CHUNK, F17, 0)
    bad = plane_desc(PLANE_LAYOUTS["DSA-C8-bf16"], h + 1)
    with pytest.raises(ValueError, match=r"shape_desc\.hs"):
        ops.multi_layer_block_kv_transfer(cache.arg(), [obj], blocks, CPU, 1, bad, CHUNK, F17, 0)
    with pytest.raises(ValueError, match=r"lmcache_objects_ptrs\[0\]"):
        ops.multi_layer_block_kv_transfer(cache.arg(), [torch.zeros(1, NL, CHUNK - 1, h, dtype=torch.bfloat16)], blocks, CPU, 1, good, CHUNK, F17, 0)
    with pytest.raises(ValueError, match="block_ids"):
        ops.multi_layer_block_kv_transfer(cache.arg(), [obj], torch.tensor([0, NB]), CPU, 1, good, CHUNK, F17, 0)


def test_nz_bad_input_names_the_argument(gen: torch.Generator) -> None:
    cache = make_nz_cache(False, NL, NB, PIECES, BS, torch.float16, gen)
    slots = random_slots(4, NS, gen)
    fmt = NZ_FORMATS[False]
    with pytest.raises(ValueError, match="key_value"):  # a row that is not whole pieces of 16
        ops.multi_layer_kv_transfer(torch.zeros(2, NL, 4, 40, dtype=torch.float16), cache.arg("ptr"), slots, CPU, NS, 1, fmt, BS, 8)
    with pytest.raises(ValueError, match="key_value"):
        ops.multi_layer_kv_transfer(torch.zeros(1, NL, 4, 48, dtype=torch.float16), cache.arg("list"), slots, CPU, NS, 1, fmt, BS, 16)
    broken = [(k[..., :8].contiguous(), v[..., :8].contiguous()) for k, v in cache.layers]
    with pytest.raises(ValueError, match="key_value_ptrs"):  # pieces of 8, not 16
        ops.multi_layer_kv_transfer(torch.zeros(2, NL, 4, 24, dtype=torch.float16), broken, slots, CPU, NS, 1, fmt, BS, 8)
