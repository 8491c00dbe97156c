"""Fuzz the one-layer ops: ``single_layer_kv_transfer``, ``single_layer_kv_transfer_sgl``,
``load_and_reshape_flash`` and ``reshape_and_cache_back_flash``.

Same contract and oracle as ``test_fuzz_slot_ops``: a valid call (random
per-layer format, geometry, dtype, slots, direction, object layout) with up to
two faults either equals the plain-indexing reference byte for byte or is
refused with ``ValueError``/``TypeError`` naming a faulty argument, every
tensor untouched. Here the paged side is always the engine's tensors, so the
geometry is always checkable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmcache_ascend import ops
from tests.fuzz.faults import (
    Fault,
    SlotInfo,
    apply_faults,
    bad_count,
    bad_scalar,
    padded_copy,
    reference_slots,
    slot_faults,
    strided_copy,
)
from tests.fuzz.oracle import FUZZ, Call, check_call
from tests.fuzz.paged_faults import object_faults, paged_faults
from tests.fuzz.scalar_faults import direction_faults, format_faults
from tests.fuzz.test_fuzz_slot_ops import DTYPES, generator, geometries, slot_mappings
from tests.kernels.reference import (
    MLA_FORMATS,
    PER_LAYER_FORMATS,
    SINGLE_PLANE_FORMATS,
    Geom,
    PagedCache,
    assert_cache_equal,
    assert_tensor_equal,
    buffer_shape,
    layer_cache,
    random_tensor,
    ref_transfer,
    single_layer_object_view,
)

SLOTS = SlotInfo("slot_mapping", lambda call: 0, lambda call: call.ctx["num_slots"])
NOT_PER_LAYER = (0, 4, 8, 9)  # valid formats, but not one layer's tensor


@dataclass(repr=False)
class LayerCase:
    call: Call
    cache: PagedCache
    # The reference's [kv, 1, T, row] view of the object.
    object_view: Callable[[torch.Tensor], torch.Tensor]

    def __repr__(self) -> str:
        return f"LayerCase({self.call!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def _run(case: LayerCase, op: Callable[..., None], object_arg: str, direction: int | None = None) -> None:
    """Check the call; on success compare with the reference (``direction``
    defaults to the call's own argument)."""
    call, kw = case.call, case.call.kwargs
    want_cache = case.cache.clone()
    obj = kw[object_arg]
    want_obj = obj.detach().clone() if isinstance(obj, torch.Tensor) else None
    if not check_call(call, lambda: op(**kw), case.cache.storage()):
        return
    way = int(kw["direction"]) if direction is None else direction
    ref_transfer(want_cache, case.object_view(want_obj), reference_slots(kw["slot_mapping"]), way)
    assert_cache_equal(case.cache, want_cache)
    assert_tensor_equal(obj.detach(), want_obj, f"memory object (faults {call.applied})")


def _one_layer(g: Geom) -> Geom:
    return Geom(1, g.num_blocks, g.block_size, g.num_heads, g.head_size)


# ------------------------------------------------------- single_layer_kv_transfer

SINGLE_LAYER_FAULTS = [
    *slot_faults(SLOTS),
    *object_faults(),
    *paged_faults(),
    *direction_faults(),
    *format_faults(),
    bad_scalar("engine_kv_format", st.sampled_from(NOT_PER_LAYER)),
]


@st.composite
def single_layer_calls(draw: st.DrawFn) -> LayerCase:
    fmt = draw(st.sampled_from(sorted(PER_LAYER_FORMATS)))
    g = _one_layer(draw(geometries(max_layers=1)))
    dtype = draw(st.sampled_from(DTYPES))
    gen = generator(draw(st.integers(0, 2**31 - 1)))
    shape = buffer_shape(fmt, g)
    layer = (random_tensor(shape, dtype, gen), random_tensor(shape, dtype, gen)) if fmt == 16 else random_tensor(shape, dtype, gen)
    cache = layer_cache(fmt, g, layer)
    slots = draw(slot_mappings(g.num_slots))
    n, single_plane = slots.numel(), fmt in SINGLE_PLANE_FORMATS
    token_major = draw(st.booleans())
    row = g.head_size if fmt in MLA_FORMATS else g.num_heads * g.head_size
    obj_shape = (n, row) if single_plane else (n, 2, row) if token_major else (2, n, row)
    call = Call(
        dict(
            lmc_key_value_cache=random_tensor(obj_shape, dtype, gen),
            vllm_key_value_cache=layer,
            slot_mapping=slots,
            direction=draw(st.sampled_from([0, 1])),
            engine_kv_format=fmt,
            token_major=token_major,
        )
    )
    call.ctx.update(
        fmt=fmt,
        form="tensors",
        num_slots=g.num_slots,
        num_tokens=n,
        kv_planes_ok=(2,),
        kv_axis=None if single_plane else 1 if token_major else 0,
        lone_paged_tensor=fmt != 16,
        object_arg="lmc_key_value_cache",
        paged_arg="vllm_key_value_cache",
    )
    apply_faults(draw, call, SINGLE_LAYER_FAULTS)
    return LayerCase(call, cache, lambda o: single_layer_object_view(o, single_plane, token_major))


@FUZZ
@given(case=single_layer_calls())
def test_single_layer_kv_transfer(backend: str, case: LayerCase) -> None:
    _run(case, ops.single_layer_kv_transfer, "lmc_key_value_cache")


# ----------------------------------------------------- separate K and V tensors


def pair_faults(k_arg: str, v_arg: str, others: tuple[str, ...]) -> list[Fault]:
    """One of two same-shaped caches made wrong: either may be reported (the
    second is checked against the first), or the object it no longer matches."""

    def fault(kind: str) -> Fault:
        def apply(draw: st.DrawFn, call: Call) -> None:
            arg = draw(st.sampled_from([k_arg, v_arg]))
            t = call.kwargs[arg]
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                return  # already replaced by an earlier fault
            if kind == "strided":
                new = strided_copy(t)
                if new.is_contiguous():
                    return
            elif kind == "shape":
                shape = list(t.shape)
                shape[draw(st.integers(0, t.dim() - 1))] += 1
                new = torch.zeros(shape, dtype=t.dtype)
            elif kind == "rank":
                new = t.unsqueeze(0) if draw(st.booleans()) else t.flatten(0, 1)
            elif kind == "dtype":
                new = t.to(torch.float64 if t.dtype != torch.float64 else torch.float32)
            else:
                new = {"meta": lambda: t.to("meta"), "none": lambda: None, "list": t.tolist}[kind]()
            call.kwargs[arg] = new
            call.mark_bad(f"{arg} {kind}", k_arg, v_arg, *others)

        return Fault(f"pair-{kind}", apply)

    return [fault(k) for k in ("strided", "shape", "rank", "dtype", "meta", "none", "list")]


def kv_pair(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, call: Call, draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Random K and V caches, sometimes at storage offsets inside guarded buffers."""
    k, v = random_tensor(shape, dtype, gen), random_tensor(shape, dtype, gen)
    if draw(st.booleans()):
        k, v = padded_copy(k, call, draw), padded_copy(v, call, draw)
    return k, v


SGL_FAULTS = [
    *slot_faults(SLOTS),
    *object_faults(),
    *pair_faults("sgl_key_cache", "sgl_value_cache", ("lmc_key_value_cache",)),
    *direction_faults(),
]


@st.composite
def sgl_calls(draw: st.DrawFn) -> LayerCase:
    fmt = draw(st.sampled_from([4, 9]))  # [PBS, NH, HS] or [NB, BS, NH, HS]
    g = _one_layer(draw(geometries(max_layers=1)))
    dtype = draw(st.sampled_from(DTYPES))
    gen = generator(draw(st.integers(0, 2**31 - 1)))
    call = Call({})
    k, v = kv_pair(buffer_shape(fmt, g), dtype, gen, call, draw)
    if fmt == 4:
        # SGLang's flat pools have no block axis: PBS slots in one "block".
        g = Geom(1, 1, g.num_slots, g.num_heads, g.head_size)
    cache = layer_cache(fmt, g, (k, v))
    slots = draw(slot_mappings(g.num_slots))
    n, token_major = slots.numel(), draw(st.booleans())
    row = g.num_heads * g.head_size
    call.kwargs = dict(
        lmc_key_value_cache=random_tensor((n, 2, row) if token_major else (2, n, row), dtype, gen),
        sgl_key_cache=k,
        sgl_value_cache=v,
        slot_mapping=slots,
        direction=draw(st.sampled_from([0, 1])),
        token_major=token_major,
    )
    call.ctx.update(
        fmt=fmt, form="tensors", num_slots=g.num_slots, num_tokens=n, kv_planes_ok=(2,),
        kv_axis=1 if token_major else 0, object_arg="lmc_key_value_cache", paged_arg="sgl_key_cache",
    )
    apply_faults(draw, call, SGL_FAULTS)
    return LayerCase(call, cache, lambda o: single_layer_object_view(o, False, token_major))


@FUZZ
@given(case=sgl_calls())
def test_single_layer_kv_transfer_sgl(backend: str, case: LayerCase) -> None:
    _run(case, ops.single_layer_kv_transfer_sgl, "lmc_key_value_cache")


# ------------------------------------------------------------------ flash ops


def _layer_idx_out_of_range(draw: st.DrawFn, call: Call) -> None:
    value = call.ctx["object_layers"] + draw(st.integers(0, 3))
    call.set("layer_idx", value, f"layer_idx {value}", ("layer_idx",))


FLASH_FAULTS = [
    *slot_faults(SLOTS),
    *object_faults(),
    *pair_faults("key_cache", "value_cache", ("key_value",)),
    bad_scalar("layer_idx", bad_count(0)),
    Fault("layer-idx-out-of-range", _layer_idx_out_of_range),
]


@st.composite
def flash_calls(draw: st.DrawFn) -> LayerCase:
    g = _one_layer(draw(geometries(max_layers=1)))
    layers = draw(st.integers(1, 3))
    layer = draw(st.integers(0, layers - 1))
    dtype = draw(st.sampled_from(DTYPES))
    gen = generator(draw(st.integers(0, 2**31 - 1)))
    call = Call({})
    k, v = kv_pair(buffer_shape(16, g), dtype, gen, call, draw)
    cache = PagedCache(16, g, [(k, v)])
    slots = draw(slot_mappings(g.num_slots))
    n = slots.numel()
    call.kwargs = dict(
        key_value=random_tensor((2, layers, n, g.num_heads * g.head_size), dtype, gen),
        key_cache=k,
        value_cache=v,
        slot_mapping=slots,
        layer_idx=layer,
    )
    call.ctx.update(
        fmt=16, form="tensors", num_slots=g.num_slots, num_tokens=n, kv_planes_ok=(2,), kv_axis=0,
        object_layers=layers, object_arg="key_value", paged_arg="key_cache",
    )
    apply_faults(draw, call, FLASH_FAULTS)
    return LayerCase(call, cache, lambda o: o[:, layer : layer + 1])


@FUZZ
@given(case=flash_calls(), direction=st.sampled_from([0, 1]))
def test_flash_ops(backend: str, case: LayerCase, direction: int) -> None:
    """``load_and_reshape_flash`` stores (paged -> object, direction 1);
    ``reshape_and_cache_back_flash`` loads (direction 0)."""
    op = ops.load_and_reshape_flash if direction == 1 else ops.reshape_and_cache_back_flash
    _run(case, op, "key_value", direction)
