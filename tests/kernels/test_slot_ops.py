"""``multi_layer_kv_transfer`` (and ``_unilateral``) against the independent reference.

Every test starts from random paged buffers and a random memory object and
compares *all* bytes of both afterwards, so a load that writes a slot it should
not, or a store that writes a skipped object row, fails.
"""

from __future__ import annotations

import pytest
import torch

from lmcache_ascend import ops
from tests.kernels.helpers import (
    DIRECTIONS,
    DTYPE_IDS,
    FLOAT_DTYPES,
    call_multi_layer,
    check_against_reference,
    forms_for,
    paged_arg,
)
from tests.kernels.reference import (
    FORMAT_NAMES,
    PACKED_FORMATS,
    SINGLE_PLANE_FORMATS,
    SLOT_FORMATS,
    Geom,
    as_bytes,
    make_blocks_first,
    make_paged,
    object_shape,
    random_slots,
    random_tensor,
)

# Deliberately odd sizes: 3 heads of 6 elements, 20 blocks of 16 tokens.
G = Geom(num_layers=2, num_blocks=20, block_size=16, num_heads=3, head_size=6)

# (format, fused object) for every layout: packed 12/13 with both object forms.
LAYOUTS = [(f, False) for f in SLOT_FORMATS] + [(f, True) for f in sorted(PACKED_FORMATS)]
LAYOUT_IDS = [f"{f}-{FORMAT_NAMES[f]}" + ("-fused" if fused else "") for f, fused in LAYOUTS]

# (num_tokens, slots set to -1, skip_prefix_n_tokens)
CASES = {
    "T0": (0, 0, 0),
    "T1": (1, 0, 0),
    "T37-holes-skip5": (37, 6, 5),
    "T255-holes": (255, 20, 0),
    "T37-skip-all": (37, 3, 37),
}


def _setup(fmt: int, fused: bool, dtype: torch.dtype, num_tokens: int, holes: int, gen: torch.Generator):
    cache = make_paged(fmt, G, dtype, gen)
    obj = random_tensor(object_shape(fmt, G, num_tokens, fused), dtype, gen)
    slots = random_slots(num_tokens, G.num_slots, gen, holes)
    return cache, obj, slots


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=[DTYPE_IDS[d] for d in FLOAT_DTYPES])
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_matches_reference(backend: str, layout: tuple[int, bool], dtype: torch.dtype, direction: int, case: str, gen: torch.Generator) -> None:
    fmt, fused = layout
    num_tokens, holes, skip = CASES[case]
    cache, obj, slots = _setup(fmt, fused, dtype, num_tokens, holes, gen)
    check_against_reference(
        cache, obj, slots, direction,
        lambda c, o: call_multi_layer(c, o, slots, direction, skip=skip),
        skip=skip, fused=fused,
    )


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
@pytest.mark.parametrize("fmt", sorted(SINGLE_PLANE_FORMATS), ids=[FORMAT_NAMES[f] for f in sorted(SINGLE_PLANE_FORMATS)])
def test_single_plane_integer_dtypes(backend: str, fmt: int, dtype: torch.dtype, direction: int, gen: torch.Generator) -> None:
    cache, obj, slots = _setup(fmt, False, dtype, 37, 5, gen)
    check_against_reference(cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction, skip=2), skip=2)


FORM_CASES = [(f, form) for f in SLOT_FORMATS for form in forms_for(f) if form != "ptr"]


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt,form", FORM_CASES, ids=[f"{f}-{FORMAT_NAMES[f]}-{form}" for f, form in FORM_CASES])
def test_tensor_forms(backend: str, fmt: int, form: str, direction: int, gen: torch.Generator) -> None:
    """``key_value_ptrs`` given as tensors (list, (K, V) tuples, [[K], [V]], one tensor)."""
    cache, obj, slots = _setup(fmt, False, torch.bfloat16, 37, 5, gen)
    check_against_reference(
        cache, obj, slots, direction,
        lambda c, o: call_multi_layer(c, o, slots, direction, form=form, skip=3), skip=3,
    )


MLA_SLOT_FORMATS = (3, 5)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt", MLA_SLOT_FORMATS, ids=[FORMAT_NAMES[f] for f in MLA_SLOT_FORMATS])
def test_mla_page_buffer_size_zero_takes_the_slots_from_the_tensors(backend: str, fmt: int, direction: int, gen: torch.Generator) -> None:
    """LMCache's CUDA kernel ignores page_buffer_size for MLA and its tests pass 0."""
    cache, obj, slots = _setup(fmt, False, torch.bfloat16, 37, 5, gen)
    check_against_reference(
        cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction, form="list", page_buffer_size=0)
    )
    bad = slots.clone()
    bad[4] = G.num_slots  # the tensors' slot count still bounds the slots
    with pytest.raises(ValueError, match="slot_mapping"):
        call_multi_layer(cache, obj, bad, direction, form="list", page_buffer_size=0)


@pytest.mark.parametrize("fmt", MLA_SLOT_FORMATS, ids=[FORMAT_NAMES[f] for f in MLA_SLOT_FORMATS])
def test_mla_page_buffer_size_zero_needs_the_tensors(fmt: int, gen: torch.Generator) -> None:
    cache, obj, slots = _setup(fmt, False, torch.bfloat16, 8, 0, gen)
    with pytest.raises(ValueError, match="page_buffer_size is 0, which needs the paged tensors"):
        call_multi_layer(cache, obj, slots, DIRECTIONS["store"], form="ptr", page_buffer_size=0)


BLOCKS_FIRST = [(12, False), (12, True), (13, False), (13, True), (3, False)]


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("form", ["ptr", "list"])
@pytest.mark.parametrize(
    "fmt,fused", BLOCKS_FIRST, ids=[FORMAT_NAMES[f] + ("-fused" if u else "") for f, u in BLOCKS_FIRST]
)
def test_blocks_first_views(backend: str, fmt: int, fused: bool, form: str, direction: int, gen: torch.Generator) -> None:
    """Per-layer views ``buf[:, l]`` of one ``[NB, NL, ...]`` pool, with block_stride_elems
    (LMCache passes ``view.stride(0)`` for formats 3, 12 and 13)."""
    cache = make_blocks_first(fmt, G, torch.float16, gen)
    stride = cache.buffers()[0].stride(0)
    assert stride == G.num_layers * cache.buffers()[0][0].numel()
    obj = random_tensor(object_shape(fmt, G, 41, fused), torch.float16, gen)
    slots = random_slots(41, G.num_slots, gen, 4)
    check_against_reference(
        cache, obj, slots, direction,
        lambda c, o: call_multi_layer(c, o, slots, direction, form=form, skip=1, block_stride_elems=stride),
        skip=1, fused=fused,
    )


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_partial_chunk(backend: str, layout: tuple[int, bool], direction: int, gen: torch.Generator) -> None:
    """A 64-token chunk object of which only the first 40 tokens have slots."""
    fmt, fused = layout
    cache = make_paged(fmt, G, torch.bfloat16, gen)
    obj = random_tensor(object_shape(fmt, G, 64, fused), torch.bfloat16, gen)
    slots = torch.full((64,), -1, dtype=torch.int64)
    slots[:40] = random_slots(40, G.num_slots, gen)
    before = obj[:, :, 40:].clone()
    check_against_reference(cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction), fused=fused)
    assert torch.equal(obj[:, :, 40:], before)


# Formats where a token's heads form one contiguous run: head_size is not needed
# (upstream ignores it), and block_size only where blocks are not laid end to end.
NO_HEAD_SIZE = [
    (0, True), (1, False), (2, True), (3, False), (4, False), (5, False), (9, False), (13, False), (16, False), (18, False)
]


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt,needs_bs", NO_HEAD_SIZE, ids=[FORMAT_NAMES[f] for f, _ in NO_HEAD_SIZE])
def test_nhd_without_head_size(backend: str, fmt: int, needs_bs: bool, direction: int, gen: torch.Generator) -> None:
    fused = fmt == 13
    cache, obj, slots = _setup(fmt, fused, torch.float32, 29, 3, gen)
    bs = G.block_size if needs_bs else 0
    check_against_reference(
        cache, obj, slots, direction,
        lambda c, o: call_multi_layer(c, o, slots, direction, block_size=bs, head_size=0),
        fused=fused,
    )


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt", [1, 6, 13], ids=[FORMAT_NAMES[f] for f in (1, 6, 13)])
def test_int32_and_noncontiguous_slot_mapping(backend: str, fmt: int, direction: int, gen: torch.Generator) -> None:
    cache, obj, slots = _setup(fmt, False, torch.float16, 33, 4, gen)
    wide = torch.stack([slots, torch.zeros_like(slots)], dim=1).to(torch.int32)
    strided = wide[:, 0]  # int32, stride 2
    assert not strided.is_contiguous()
    check_against_reference(cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, strided, direction))


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("form", ["ptr", "nested", "list"])
def test_unilateral_sglang_mha(backend: str, form: str, direction: int, gen: torch.Generator) -> None:
    cache, obj, slots = _setup(4, False, torch.bfloat16, 50, 7, gen)

    def run(c, o) -> None:
        ops.multi_layer_kv_transfer_unilateral(
            o, paged_arg(c, form), slots, torch.device("cpu"), G.num_slots, direction, ops.EngineKVFormat(4)
        )

    check_against_reference(cache, obj, slots, direction, run)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt", sorted(SINGLE_PLANE_FORMATS), ids=[FORMAT_NAMES[f] for f in sorted(SINGLE_PLANE_FORMATS)])
def test_unilateral_single_plane_goes_through_multi_layer(backend: str, fmt: int, direction: int, gen: torch.Generator) -> None:
    cache, obj, slots = _setup(fmt, False, torch.float16, 50, 7, gen)

    def run(c, o) -> None:
        ops.multi_layer_kv_transfer_unilateral(
            o, c.pointers(), slots, torch.device("cpu"), G.num_slots, direction, ops.EngineKVFormat(fmt)
        )

    check_against_reference(cache, obj, slots, direction, run)


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_store_then_load_round_trip(backend: str, layout: tuple[int, bool], gen: torch.Generator) -> None:
    """Store from one cache, load into a fresh one: the stored slots come back bit-exact."""
    fmt, fused = layout
    src, obj, slots = _setup(fmt, fused, torch.bfloat16, 100, 9, gen)
    call_multi_layer(src, obj, slots, 1)
    dst = make_paged(fmt, G, torch.bfloat16, gen)
    call_multi_layer(dst, obj, slots, 0)
    back = torch.zeros_like(obj)
    call_multi_layer(dst, back, slots, 1)
    live = slots >= 0
    assert torch.equal(as_bytes(back[:, :, live]), as_bytes(obj[:, :, live]))
    assert not back[:, :, ~live].any()


BIG = Geom(num_layers=2, num_blocks=80, block_size=16, num_heads=8, head_size=36)
BIG_LAYOUTS = [(0, False), (1, False), (3, False), (6, False), (9, False), (12, False), (12, True), (13, True), (16, False)]


@pytest.mark.parametrize("threads", ["1", "3", "8"])
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("layout", BIG_LAYOUTS, ids=[f"{f}-{FORMAT_NAMES[f]}" + ("-fused" if u else "") for f, u in BIG_LAYOUTS])
def test_large_multithreaded(
    backend: str, layout: tuple[int, bool], direction: int, threads: str, gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transfers above the host core's parallel threshold, split into tiles across threads."""
    monkeypatch.setenv("LMCACHE_ASCEND_NUM_THREADS", threads)
    fmt, fused = layout
    cache = make_paged(fmt, BIG, torch.float32, gen)
    obj = random_tensor(object_shape(fmt, BIG, 1111, fused), torch.float32, gen)
    slots = random_slots(1111, BIG.num_slots, gen, 97)
    assert obj[:, :, 61:].numel() * 4 > 256 * 1024  # above the single-thread cut-off
    check_against_reference(
        cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction, skip=61), skip=61, fused=fused
    )


@pytest.mark.parametrize("form", ["ptr", "list"])
@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
@pytest.mark.parametrize("fmt", [1, 5, 7, 12], ids=[FORMAT_NAMES[f] for f in (1, 5, 7, 12)])
def test_views_with_storage_offset(backend: str, fmt: int, direction: int, form: str, gen: torch.Generator) -> None:
    """Memory objects are slices of one big host buffer and vLLM layer caches slices of
    one allocation: contiguous tensors whose storage offset is not zero."""
    shape = object_shape(fmt, G, 45)
    pool = random_tensor((3, *shape), torch.float16, gen)
    obj = pool[1]
    assert obj.is_contiguous() and obj.storage_offset() > 0
    layers = random_tensor((G.num_layers + 1, *make_paged(fmt, G, torch.float16, gen).buffers()[0].shape), torch.float16, gen)
    cache = make_paged(fmt, G, torch.float16, gen)
    cache.data = [layers[layer + 1] for layer in range(G.num_layers)]
    slots = random_slots(45, G.num_slots, gen, 5)
    pool_before, spare_layer = pool.clone(), layers[0].clone()
    check_against_reference(cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction, form=form, skip=2), skip=2)
    assert torch.equal(pool[0], pool_before[0]) and torch.equal(pool[2], pool_before[2])
    assert torch.equal(layers[0], spare_layer)


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
def test_any_negative_slot_is_skipped(backend: str, direction: int, gen: torch.Generator) -> None:
    cache, obj, slots = _setup(2, False, torch.float32, 12, 0, gen)
    slots[[1, 4, 7, 11]] = torch.tensor([-2, -1000, -(2**40), -1])
    check_against_reference(cache, obj, slots, direction, lambda c, o: call_multi_layer(c, o, slots, direction))


@pytest.mark.parametrize("direction", list(DIRECTIONS.values()), ids=list(DIRECTIONS))
def test_uint64_pointer_table(backend: str, direction: int, gen: torch.Generator) -> None:
    cache, obj, slots = _setup(16, False, torch.bfloat16, 30, 3, gen)
    ptrs = cache.pointers().to(torch.uint64)
    check_against_reference(
        cache, obj, slots, direction,
        lambda c, o: ops.multi_layer_kv_transfer(o, ptrs, slots, "cpu", G.num_slots, direction, 16, G.block_size, G.head_size),
    )
