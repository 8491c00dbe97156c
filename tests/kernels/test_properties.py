"""Property-based tests: random format, geometry, dtype, slot mapping, skip and direction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmcache_ascend import ops
from tests.kernels.helpers import call_multi_layer, shape_desc
from tests.kernels.reference import (
    PACKED_FORMATS,
    SINGLE_PLANE_FORMATS,
    SLOT_FORMATS,
    Geom,
    as_bytes,
    assert_cache_equal,
    assert_tensor_equal,
    make_paged,
    object_shape,
    random_tensor,
    ref_block_transfer,
    ref_transfer,
)

LAYOUTS = [(f, False) for f in SLOT_FORMATS] + [(f, True) for f in sorted(PACKED_FORMATS)]
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.int8, torch.uint8, torch.float64]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Case:
    fmt: int
    fused: bool
    geom: Geom
    dtype: torch.dtype
    slots: torch.Tensor
    skip: int
    direction: int
    seed: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    fmt, fused = draw(st.sampled_from(LAYOUTS))
    g = Geom(
        num_layers=draw(st.integers(1, 3)),
        num_blocks=draw(st.integers(1, 8)),
        block_size=draw(st.integers(1, 16)),
        num_heads=draw(st.integers(1, 4)),
        head_size=draw(st.integers(1, 16)),
    )
    num_tokens = draw(st.integers(0, min(g.num_slots, 48)))
    order = draw(st.permutations(range(g.num_slots)))
    dropped = draw(st.lists(st.booleans(), min_size=num_tokens, max_size=num_tokens))
    slots = torch.tensor([-1 if d else s for s, d in zip(order[:num_tokens], dropped)], dtype=torch.int64)
    return Case(
        fmt, fused, g,
        dtype=draw(st.sampled_from(DTYPES)),
        slots=slots,
        skip=draw(st.integers(0, num_tokens)),
        direction=draw(st.sampled_from([0, 1])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@SETTINGS
@given(case=cases())
def test_transfer_equals_reference(backend: str, case: Case) -> None:
    gen = _generator(case.seed)
    cache = make_paged(case.fmt, case.geom, case.dtype, gen)
    obj = random_tensor(object_shape(case.fmt, case.geom, case.slots.numel(), case.fused), case.dtype, gen)
    want_cache, want_obj = cache.clone(), obj.clone()
    ref_transfer(want_cache, want_obj, case.slots, case.direction, case.skip, case.fused)
    call_multi_layer(cache, obj, case.slots, case.direction, skip=case.skip)
    assert_cache_equal(cache, want_cache)
    assert_tensor_equal(obj, want_obj)


@SETTINGS
@given(case=cases())
def test_store_then_load_round_trip(backend: str, case: Case) -> None:
    """Store from a random cache, load into a zeroed one, store again: the live rows
    come back bit-exact, and every other row stays zero."""
    gen = _generator(case.seed)
    src = make_paged(case.fmt, case.geom, case.dtype, gen)
    shape = object_shape(case.fmt, case.geom, case.slots.numel(), case.fused)
    obj = torch.zeros(shape, dtype=case.dtype)
    call_multi_layer(src, obj, case.slots, 1, skip=case.skip)
    dst = src.clone()
    for t in dst.storage():
        t.zero_()
    call_multi_layer(dst, obj, case.slots, 0, skip=case.skip)
    back = torch.zeros(shape, dtype=case.dtype)
    call_multi_layer(dst, back, case.slots, 1, skip=case.skip)
    assert_tensor_equal(back, obj, "round trip")
    live = (case.slots >= 0) & (torch.arange(case.slots.numel()) >= case.skip)
    assert not as_bytes(obj[:, :, ~live]).any()


@st.composite
def block_cases(draw: st.DrawFn) -> tuple[Case, list[int], int]:
    case = draw(cases())
    g = case.geom
    blocks_per_object = draw(st.integers(1, 4))
    n_blocks = draw(st.integers(1, min(g.num_blocks, 4 * blocks_per_object)))
    blocks = draw(st.permutations(range(g.num_blocks)))[:n_blocks]
    case.skip = draw(st.integers(0, n_blocks))
    return case, list(blocks), blocks_per_object * g.block_size


@SETTINGS
@given(args=block_cases())
def test_block_transfer_equals_reference(backend: str, args: tuple[Case, list[int], int]) -> None:
    case, blocks, chunk = args
    g, fmt = case.geom, case.fmt
    gen = _generator(case.seed)
    kv_size = 1 if fmt in SINGLE_PLANE_FORMATS or case.fused else 2
    cache = make_paged(fmt, g, case.dtype, gen)
    n_objects = -(-len(blocks) // (chunk // g.block_size))
    objects = [random_tensor(object_shape(fmt, g, chunk, case.fused), case.dtype, gen) for _ in range(n_objects)]
    want_cache, want_objects = cache.clone(), [o.clone() for o in objects]
    ref_block_transfer(want_cache, want_objects, blocks, case.direction, chunk, case.skip, case.fused)
    ops.multi_layer_block_kv_transfer(
        cache.pointers(), [o.data_ptr() for o in objects], torch.tensor(blocks), "cpu", case.direction,
        shape_desc(fmt, kv_size, g, case.dtype, case.dtype.itemsize), chunk, fmt, case.skip,
    )
    assert_cache_equal(cache, want_cache)
    for o, w in zip(objects, want_objects):
        assert_tensor_equal(o, w)
