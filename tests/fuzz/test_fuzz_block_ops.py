"""Fuzz ``multi_layer_block_kv_transfer`` (LMCache's multi-process mode).

Valid calls: random format, geometry, dtype, block ids, chunk size (a multiple
of the block size), skip, direction; the paged side as a pointer table or as
tensors, the memory objects as int addresses or tensors. Up to two faults on
any argument. Contract and oracle as in ``test_fuzz_slot_ops`` (reference:
``ref_block_transfer`` in ``tests/kernels/reference.py``).

Raw addresses (int64 pointer table, int object addresses) can only be checked
for count, null and sign: a geometry (``shape_desc``, ``lmcache_chunk_size``)
larger than the memory behind them is undetectable, so geometry faults are
drawn only where tensors make them checkable.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st

from lmcache_ascend import ops
from tests.fuzz.faults import BAD_DEVICES, Fault, apply_faults, bad_count, bad_scalar, benign_value, strided_copy
from tests.fuzz.oracle import FUZZ, Call, check_call
from tests.fuzz.paged_faults import paged_faults
from tests.fuzz.scalar_faults import direction_faults, format_faults
from tests.fuzz.test_fuzz_slot_ops import DTYPES, LAYOUTS, generator, geometries
from tests.kernels.helpers import forms_for, paged_arg
from tests.kernels.reference import (
    SINGLE_PLANE_FORMATS,
    PagedCache,
    assert_cache_equal,
    assert_tensor_equal,
    make_paged,
    object_shape,
    random_tensor,
    ref_block_transfer,
)

DESC_FIELDS = ("kv_size", "nl", "nb", "bs", "nh", "hs", "element_size", "block_stride_elems")
EXTRA_BLOCK = "one block id too many"
GEOMETRY_NAMES = ("shape_desc", "paged_buffer_ptrs_tensor", "lmcache_chunk_size", "lmcache_objects_ptrs", "block_ids")


@dataclass(repr=False)
class BlockCase:
    call: Call
    cache: PagedCache
    objects: list[torch.Tensor]  # the typed objects the reference reads and writes
    fused: bool

    def __repr__(self) -> str:
        return f"BlockCase(fused={self.fused}, {self.call!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def _tensor_paged(call: Call) -> bool:
    return call.ctx["form"] != "ptr"


def _tensor_objects(call: Call) -> bool:
    return call.ctx["objects_form"] == "tensor"


# ------------------------------------------------------------------ faults


def _block_ids(kind: str) -> Fault:
    def apply(draw: st.DrawFn, call: Call) -> None:
        b = call.kwargs["block_ids"]
        if not isinstance(b, torch.Tensor) or b.dim() != 1 or b.dtype != torch.int64 or b.numel() == 0:
            return
        nb = call.ctx["num_blocks"]
        i = draw(st.integers(0, b.numel() - 1))
        bad = True
        if kind in ("out-of-range", "negative"):
            new: object = b.clone()
            new[i] = draw(st.integers(nb, nb + 3)) if kind == "out-of-range" else draw(st.sampled_from([-1, -nb, -(2**62)]))  # type: ignore[index]
        elif kind == "extra":
            # one more block than the objects hold, whenever it opens a new object
            free = sorted(set(range(nb)) - set(b.tolist()))
            objs = call.kwargs["lmcache_objects_ptrs"]
            if not free or b.numel() % call.ctx["blocks_per_object"] or len(objs) != call.ctx["num_objects"]:
                return  # (an extra object already there would hold the new block: the call stays valid)
            new = torch.cat([b, torch.tensor([free[0]])])
            call.mark_bad(EXTRA_BLOCK, "block_ids", "lmcache_objects_ptrs")
            call.kwargs["block_ids"] = new
            return
        else:
            bad = kind in ("float", "int16", "2d", "meta", "none")
            conv = {
                "float": b.float, "int16": lambda: b.to(torch.int16), "2d": lambda: b.reshape(1, -1),
                "meta": lambda: b.to("meta"), "none": lambda: None, "list": b.tolist, "int32": lambda: b.to(torch.int32),
                "strided": lambda: strided_copy(b),
            }
            new = conv[kind]()
        call.kwargs["block_ids"] = new
        if bad:
            call.mark_bad(f"block_ids {kind}", "block_ids")
        else:
            call.mark_benign(f"block_ids {kind}")

    return Fault(f"block-ids-{kind}", apply)


def _objects(kind: str) -> Fault:
    arg = "lmcache_objects_ptrs"

    def apply(draw: st.DrawFn, call: Call) -> None:
        objs = call.kwargs[arg]
        if not isinstance(objs, list) or not objs:
            return
        i = draw(st.integers(0, len(objs) - 1))
        o = objs[i]
        new = list(objs)
        if kind == "bytes-view":
            if not isinstance(o, torch.Tensor):
                return
            new[i] = o.view(torch.uint8).reshape(-1)  # same memory: objects are raw bytes
            call.set(arg, new, f"{arg}[{i}] as a flat byte view")
            return
        if kind == "extra":
            if EXTRA_BLOCK in call.applied:
                return  # the appended object would hold the extra block id: the call would be valid
            call.set(arg, [*objs, objs[0]], f"{arg} one object too many")
            return
        if kind == "short":
            if i >= call.ctx["num_objects"]:
                call.set(arg, objs[:i], f"{arg} cut to the {i} objects the call needs")
                return
            new = objs[:i]
        elif kind in ("null", "negative"):
            new[i] = 0 if kind == "null" else -(o.data_ptr() if isinstance(o, torch.Tensor) else o)
        elif kind == "too-small":
            if not isinstance(o, torch.Tensor):
                return
            new[i] = o.reshape(-1)[: max(0, o.numel() - draw(st.integers(1, 4)))].clone()
        elif kind == "strided":
            if not isinstance(o, torch.Tensor) or strided_copy(o).is_contiguous():
                return
            new[i] = strided_copy(o)
        else:
            new[i] = {"float": 1.5, "bool": True, "none": None, "str": "0x1000", "meta": torch.zeros(4, device="meta")}[kind]
        call.kwargs[arg] = new
        call.mark_bad(f"{arg}[{i}] {kind}", arg)

    return Fault(f"objects-{kind}", apply)


def _objects_container(draw: st.DrawFn, call: Call) -> None:
    value = draw(st.sampled_from([[], 12345, None, "objects", {}]))
    call.set("lmcache_objects_ptrs", value, f"lmcache_objects_ptrs={value!r}", ("lmcache_objects_ptrs",))


def _desc_fields(d: object) -> dict[str, Any]:
    """The fields of a real ``PageBufferShapeDesc`` (pybind, no ``__dict__``) or a stand-in."""
    return {f: getattr(d, f) for f in (*DESC_FIELDS, "dtype") if hasattr(d, f)}


def _desc_field(field: str) -> Fault:
    def apply(draw: st.DrawFn, call: Call) -> None:
        d = SimpleNamespace(**_desc_fields(call.kwargs["shape_desc"]))
        minimum = 0 if field == "block_stride_elems" else 1
        if draw(st.booleans()) or field in ("block_stride_elems",):
            setattr(d, field, draw(bad_count(minimum)))
            names: tuple[str, ...] = ("shape_desc",)
        elif _tensor_paged(call):
            setattr(d, field, getattr(d, field) + draw(st.sampled_from([1, 2])))
            names = GEOMETRY_NAMES
        else:
            return
        call.set("shape_desc", d, f"shape_desc.{field}={getattr(d, field)!r}", names)

    return Fault(f"shape-desc-{field}", apply)


def _desc_kind(draw: st.DrawFn, call: Call) -> None:
    fields = _desc_fields(call.kwargs["shape_desc"])
    kind = draw(st.sampled_from(["dict", "none", "missing", "dtype"]))
    if kind == "missing":
        gone = draw(st.sampled_from(DESC_FIELDS))
        value: object = SimpleNamespace(**{k: v for k, v in fields.items() if k != gone})
    elif kind == "dtype":
        value = SimpleNamespace(**{**fields, "dtype": torch.float64 if fields["element_size"] != 8 else torch.float16})
    else:
        value = fields if kind == "dict" else None
    # an earlier field fault lives on in the copied fields: keep what it may be blamed on
    call.set("shape_desc", value, f"shape_desc {kind}", ("shape_desc", *call.bad_for("shape_desc")))


def _chunk(kind: str) -> Fault:
    def apply(draw: st.DrawFn, call: Call) -> None:
        chunk, bs = call.ctx["chunk"], call.ctx["block_size"]
        if kind == "bad":
            call.set("lmcache_chunk_size", draw(bad_count(1)), "lmcache_chunk_size bad", ("lmcache_chunk_size",))
        elif kind == "not-multiple" and bs > 1:
            value = chunk + draw(st.integers(1, bs - 1))
            call.set("lmcache_chunk_size", value, f"lmcache_chunk_size {value}", ("lmcache_chunk_size",))
        elif kind == "larger" and _tensor_objects(call):
            value = chunk + bs * draw(st.integers(1, 3))
            call.set("lmcache_chunk_size", value, f"lmcache_chunk_size {value}", ("lmcache_chunk_size", "lmcache_objects_ptrs"))

    return Fault(f"chunk-{kind}", apply)


def _skip_past_end(draw: st.DrawFn, call: Call) -> None:
    call.set("skip_prefix_n_blocks", call.ctx["num_ids"] + draw(st.integers(0, 3)), "skip past the last block")


BLOCK_FAULTS = [
    Fault("skip-past-end", _skip_past_end),
    bad_scalar("skip_prefix_n_blocks", bad_count(0)),
    *(_block_ids(k) for k in ("int32", "list", "strided", "out-of-range", "negative", "extra", "float", "int16", "2d", "meta", "none")),
    *(_objects(k) for k in ("bytes-view", "extra", "short", "null", "negative", "too-small", "strided", "float", "bool", "none", "str", "meta")),
    Fault("objects-container", _objects_container),
    *paged_faults(),
    benign_value("device", lambda call: "cpu"),
    bad_scalar("device", st.sampled_from(BAD_DEVICES)),
    *direction_faults(),
    *format_faults(),
    *(_desc_field(f) for f in DESC_FIELDS),
    Fault("shape-desc-kind", _desc_kind),
    *(_chunk(k) for k in ("bad", "not-multiple", "larger")),
]


# ------------------------------------------------------------------- calls


@st.composite
def block_calls(draw: st.DrawFn) -> BlockCase:
    from tests.kernels.helpers import shape_desc

    fmt, fused = draw(st.sampled_from(LAYOUTS))
    g = draw(geometries())
    dtype = draw(st.sampled_from(DTYPES))
    gen = generator(draw(st.integers(0, 2**31 - 1)))
    cache = make_paged(fmt, g, dtype, gen)
    per_object = draw(st.integers(1, 3))
    chunk = per_object * g.block_size
    ids = draw(st.permutations(range(g.num_blocks)))[: draw(st.integers(0, g.num_blocks))]
    count = max(1, -(-len(ids) // per_object))
    objects = [random_tensor(object_shape(fmt, g, chunk, fused), dtype, gen) for _ in range(count)]
    form = draw(st.sampled_from(forms_for(fmt)))
    objects_form = draw(st.sampled_from(["ptr", "tensor"]))
    kv_size = 1 if fmt in SINGLE_PLANE_FORMATS or fused else 2
    call = Call(
        dict(
            paged_buffer_ptrs_tensor=paged_arg(cache, form),
            lmcache_objects_ptrs=[o.data_ptr() for o in objects] if objects_form == "ptr" else list(objects),
            block_ids=torch.tensor(ids, dtype=torch.int64),
            device=torch.device("cpu"),
            direction=draw(st.sampled_from([0, 1])),
            shape_desc=shape_desc(fmt, kv_size, g, dtype, dtype.itemsize),
            lmcache_chunk_size=chunk,
            engine_kv_format=fmt,
            skip_prefix_n_blocks=draw(st.integers(0, len(ids))),
        )
    )
    call.ctx.update(
        fmt=fmt, form=form, objects_form=objects_form, num_blocks=g.num_blocks, block_size=g.block_size,
        blocks_per_object=per_object, chunk=chunk, num_ids=len(ids), num_objects=count,
        object_arg="lmcache_objects_ptrs", paged_arg="paged_buffer_ptrs_tensor",
    )
    apply_faults(draw, call, BLOCK_FAULTS)
    return BlockCase(call, cache, objects, fused)


@FUZZ
@given(case=block_calls())
def test_multi_layer_block_kv_transfer(backend: str, case: BlockCase) -> None:
    call, kw = case.call, case.call.kwargs
    want_cache = case.cache.clone()
    want_objects = [o.clone() for o in case.objects]
    if not check_call(call, lambda: ops.multi_layer_block_kv_transfer(**kw), [*case.cache.storage(), *case.objects]):
        return
    ids = kw["block_ids"]
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    ref_block_transfer(want_cache, want_objects, ids, int(kw["direction"]), call.ctx["chunk"], kw["skip_prefix_n_blocks"], case.fused)
    assert_cache_equal(case.cache, want_cache)
    for i, (o, w) in enumerate(zip(case.objects, want_objects)):
        assert_tensor_equal(o, w, f"object {i} (faults {call.applied})")
