"""Fuzz ``multi_layer_kv_transfer`` and ``multi_layer_kv_transfer_unilateral``.

Every example is a valid call (random upstream format, geometry, dtype, slot
mapping, skip, direction and way of passing the paged buffers) with up to two
random faults from the catalogues in ``tests/fuzz/*_faults.py``. It must either
succeed and equal the plain-indexing reference (``tests/kernels/reference.py``)
byte for byte, or raise ``ValueError``/``TypeError`` naming a faulty argument
with the paged KV and the memory object unchanged (``tests/fuzz/oracle.py``).
Both kernel backends run every example.

Limitation, by design: when the paged side is an int64 table of raw addresses
(``key_value_ptrs`` as upstream passes it), nothing can tell how large the
buffers behind the addresses are. The op checks the table's count, nulls and
signs and trusts the scalars (``page_buffer_size``, ``block_size``,
``head_size``, the object's row width and dtype) for the rest; a table that
points at smaller buffers than the scalars describe is memory corruption no
check can see. So geometry-changing faults are fuzzed only when the paged
buffers are passed as tensors, and no wild (non-null, positive, invalid)
address is ever fuzzed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmcache_ascend import ops
from tests.fuzz.faults import SlotInfo, apply_faults, padded_copy, reference_slots, slot_faults
from tests.fuzz.oracle import FUZZ, Call, check_call
from tests.fuzz.paged_faults import object_faults, paged_faults
from tests.fuzz.scalar_faults import (
    block_size_faults,
    block_stride_faults,
    device_faults,
    direction_faults,
    format_faults,
    page_buffer_size_faults,
    skip_faults,
)
from tests.kernels.helpers import forms_for, paged_arg
from tests.kernels.reference import (
    PACKED_FORMATS,
    SINGLE_PLANE_FORMATS,
    SLOT_FORMATS,
    Geom,
    PagedCache,
    assert_cache_equal,
    assert_tensor_equal,
    buffer_shape,
    make_paged,
    object_shape,
    random_tensor,
    ref_transfer,
)

LAYOUTS = [(f, False) for f in SLOT_FORMATS] + [(f, True) for f in sorted(PACKED_FORMATS)]
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.int8)
# Formats whose block size changes addresses (blocks are not laid end to end).
BLOCK_MATTERS = frozenset({0, 2, 6, 7, 8, 12})
# Formats whose paged buffers have the block axis outermost (block_stride_elems applies).
NB_FIRST = frozenset({0, 2, 3, 7, 8, 9, 12, 13, 16, 18})


def _skip(call: Call) -> int:
    value = call.kwargs.get("skip_prefix_n_tokens", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


SLOTS = SlotInfo("slot_mapping", _skip, lambda call: call.ctx["num_slots"])
MULTI_LAYER_FAULTS = [
    *skip_faults(),
    *slot_faults(SLOTS),
    *object_faults(),
    *paged_faults(),
    *device_faults("paged_memory_device"),
    *page_buffer_size_faults(),
    *direction_faults(),
    *format_faults(),
    *block_size_faults(),
    *block_stride_faults(),
]
# multi_layer_kv_transfer_unilateral takes neither block/head sizes nor a skip.
UNILATERAL_FAULTS = [
    *slot_faults(SLOTS),
    *object_faults(),
    *paged_faults(),
    *device_faults("paged_memory_device"),
    *page_buffer_size_faults(),
    *direction_faults(),
    *format_faults(),
]
UNILATERAL_ONLY = ("key_value", "key_value_ptrs", "slot_mapping", "paged_memory_device", "page_buffer_size", "direction", "engine_kv_format")


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@st.composite
def geometries(draw: st.DrawFn, max_layers: int = 3) -> Geom:
    return Geom(
        num_layers=draw(st.integers(1, max_layers)),
        num_blocks=draw(st.integers(1, 5)),
        block_size=draw(st.integers(1, 8)),
        num_heads=draw(st.integers(1, 3)),
        head_size=draw(st.integers(1, 8)),
    )


@st.composite
def slot_mappings(draw: st.DrawFn, num_slots: int, max_tokens: int = 16) -> torch.Tensor:
    """Distinct live slots (a load writes each slot at most once), some -1."""
    n = draw(st.integers(0, min(num_slots, max_tokens)))
    live = draw(st.permutations(range(num_slots)))[:n]
    dropped = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return torch.tensor([-1 if d else s for s, d in zip(live, dropped)], dtype=torch.int64)


def _pad_buffers(cache: PagedCache, call: Call, draw: st.DrawFn) -> None:
    """Give every paged buffer a storage offset inside a guarded larger buffer."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        return padded_copy(t, call, draw)

    d = cache.data
    if isinstance(d, torch.Tensor):
        cache.data = pad(d)
    elif cache.fmt in (4, 9):
        cache.data = [[pad(t) for t in d[0]], [pad(t) for t in d[1]]]  # type: ignore[index]
    elif cache.fmt == 16:
        cache.data = [(pad(k), pad(v)) for k, v in d]  # type: ignore[union-attr]
    else:
        cache.data = [pad(t) for t in d]  # type: ignore[union-attr]


@st.composite
def multi_layer_calls(draw: st.DrawFn, layouts: list[tuple[int, bool]], unilateral: bool = False) -> SlotCase:
    fmt, fused = draw(st.sampled_from(layouts))
    g = draw(geometries())
    dtype = draw(st.sampled_from(DTYPES))
    gen = generator(draw(st.integers(0, 2**31 - 1)))
    cache = make_paged(fmt, g, dtype, gen)
    slots = draw(slot_mappings(g.num_slots))
    form = draw(st.sampled_from(forms_for(fmt)))
    call = Call({})
    if form != "ptr" and draw(st.booleans()):
        _pad_buffers(cache, call, draw)
    call.kwargs = dict(
        key_value=random_tensor(object_shape(fmt, g, slots.numel(), fused), dtype, gen),
        key_value_ptrs=paged_arg(cache, form),
        slot_mapping=slots,
        paged_memory_device=torch.device("cpu"),
        page_buffer_size=g.num_slots,
        direction=draw(st.sampled_from([0, 1])),
        engine_kv_format=fmt,
        block_size=g.block_size,
        head_size=g.head_size,
        skip_prefix_n_tokens=draw(st.integers(0, slots.numel())),
        block_stride_elems=0,
    )
    call.ctx.update(
        fmt=fmt,
        form=form,
        num_slots=g.num_slots,
        num_blocks=g.num_blocks,
        num_tokens=slots.numel(),
        block_matters=fmt in BLOCK_MATTERS,
        nb_first=fmt in NB_FIRST,
        tight_block_stride=math.prod(buffer_shape(fmt, g)[1:]),
        kv_planes_ok=(1, 2) if fmt in PACKED_FORMATS else (1,) if fmt in SINGLE_PLANE_FORMATS else (2,),
        object_arg="key_value",
        paged_arg="key_value_ptrs",
    )
    if unilateral:
        call.kwargs = {k: call.kwargs[k] for k in UNILATERAL_ONLY}
    apply_faults(draw, call, UNILATERAL_FAULTS if unilateral else MULTI_LAYER_FAULTS)
    return SlotCase(call, cache, fused)


@dataclass(repr=False)
class SlotCase:
    call: Call
    cache: PagedCache
    fused: bool

    def __repr__(self) -> str:
        return f"SlotCase(fused={self.fused}, {self.call!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def _run_and_compare(case: SlotCase, op: object) -> None:
    call, cache, fused = case.call, case.cache, case.fused
    kw = call.kwargs
    want_cache = cache.clone()
    want_obj = kw["key_value"].detach().clone() if isinstance(kw["key_value"], torch.Tensor) else None
    if not check_call(call, lambda: op(**kw), cache.storage()):  # type: ignore[operator]
        return
    skip = kw.get("skip_prefix_n_tokens", 0)
    ref_transfer(want_cache, want_obj, reference_slots(kw["slot_mapping"]), int(kw["direction"]), skip, fused)
    assert_cache_equal(cache, want_cache)
    assert_tensor_equal(kw["key_value"].detach(), want_obj, f"memory object (faults {call.applied})")


@FUZZ
@given(case=multi_layer_calls(LAYOUTS))
def test_multi_layer_kv_transfer(backend: str, case: SlotCase) -> None:
    _run_and_compare(case, ops.multi_layer_kv_transfer)


@FUZZ
@given(case=multi_layer_calls([(4, False), (5, False), (18, False)], unilateral=True))
def test_multi_layer_kv_transfer_unilateral(backend: str, case: SlotCase) -> None:
    """SGLang's op: format 4 (MHA, ``[K layers, V layers]``), 5 (MLA) or 18 (one
    tensor per K or V component), the last two as ``multi_layer_kv_transfer``."""
    _run_and_compare(case, ops.multi_layer_kv_transfer_unilateral)
