"""Fuzz the LMCache device connectors' entry points.

``PagedKVConnector.batched_to_gpu`` / ``batched_from_gpu`` / ``to_gpu`` /
``from_gpu`` and ``LayerwiseKVConnector.batched_to_gpu`` / ``batched_from_gpu``
get a valid request (``tests/fuzz/connector_cases.py``) with up to two faults
on the memory objects, the chunk bounds, the slot mapping, the engine KV and
the other kwargs. Contract (``tests/fuzz/oracle.py``, names *contained* in the
message): a valid call equals the plain-indexing reference for every chunk; a
bad one raises ``ValueError``/``TypeError`` naming a faulty argument, with the
engine KV and every memory object unchanged.

The layerwise load receives each layer's objects only when that layer runs, so
object faults hit layer 0 there (a refused later layer leaves the earlier
layers loaded, as documented in ``layerwise_connector``).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from lmcache.v1.memory_management import MemoryFormat

from tests.fuzz.connector_cases import ConnectorCase, FakeObj, Metadata, chunk_objects, connector_cases, expected, run
from tests.fuzz.faults import Fault, apply_faults
from tests.fuzz.oracle import FUZZ, Call, check_call
from tests.kernels.reference import assert_cache_equal, assert_tensor_equal

SINGLE = ("paged-to", "paged-from")


def _kw(call: Call) -> dict:
    return call.kwargs["kwargs"]


def _batched(call: Call) -> bool:
    return call.ctx["kind"] not in SINGLE


# ------------------------------------------------------------------ kwargs


def _missing(draw: st.DrawFn, call: Call) -> None:
    names = ["kvcaches", "slot_mapping", "vllm_cached_tokens"] + (["sync"] if "sync" in _kw(call) else [])
    name = draw(st.sampled_from(names))
    if _kw(call).pop(name, None) is None or name == "vllm_cached_tokens":
        call.mark_benign(f"{name} left out (default)")
        return
    call.mark_bad(f"{name} missing", name)


def _kvcaches(draw: st.DrawFn, call: Call) -> None:
    kv = _kw(call).get("kvcaches")
    if not isinstance(kv, list):
        return
    kind = draw(st.sampled_from(["none", "empty", "drop-layer", "dtype", "meta", "int"]))
    layer = draw(st.integers(0, len(kv) - 1))
    entry = kv[layer]

    def redo(fn) -> object:  # one buffer of one layer, keeping the layer's structure
        if isinstance(entry, (list, tuple)):
            return type(entry)([fn(entry[0]), *entry[1:]])
        return fn(entry)

    new = {
        "none": lambda: None,
        "empty": lambda: [],
        "drop-layer": lambda: kv[:-1],
        "dtype": lambda: [*kv[:layer], redo(lambda t: t.to(torch.float16)), *kv[layer + 1 :]],
        "meta": lambda: [*kv[:layer], redo(lambda t: t.to("meta")), *kv[layer + 1 :]],
        "int": lambda: [*kv[:layer], redo(lambda t: 7), *kv[layer + 1 :]],
    }[kind]()
    _kw(call)["kvcaches"] = new
    # A whole cache of another dtype is consistent: then the objects no longer match it.
    call.mark_bad(f"kvcaches {kind}", "kvcaches", "memory_objs")


def _cached(draw: st.DrawFn, call: Call) -> None:
    if "vllm_cached_tokens" not in _kw(call):
        return
    value = draw(st.sampled_from([-1, -(2**40), "3", None, 1.5, True, "many"]) | st.integers(call.ctx["num_tokens"], 2**40))
    _kw(call)["vllm_cached_tokens"] = value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        call.mark_benign("every token already cached")
    else:
        call.mark_bad(f"vllm_cached_tokens={value!r}", "vllm_cached_tokens")


# ------------------------------------------------------------------- slots


def _chunk_token(draw: st.DrawFn, call: Call) -> int | None:
    starts, ends = call.kwargs["starts"], call.kwargs["ends"]
    live = [t for s, e in zip(starts, ends) for t in range(s, e)]
    return draw(st.sampled_from(live)) if live else None


def _slots(kind: str) -> Fault:
    def apply(draw: st.DrawFn, call: Call) -> None:
        s = _kw(call).get("slot_mapping")
        if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.dtype != torch.int64:
            return
        if kind in ("out-of-range", "negative"):
            t = _chunk_token(draw, call)
            if t is None:
                return
            s = s.clone()
            s[t] = call.ctx["num_slots"] + draw(st.integers(0, 3)) if kind == "out-of-range" else -draw(st.integers(1, 9))
            _kw(call)["slot_mapping"] = s
            if kind == "negative":
                call.mark_benign(f"slot_mapping[{t}] negative")
            else:
                call.mark_bad(f"slot_mapping[{t}] out of range", "slot_mapping")
            return
        if kind == "short":
            end = max(call.kwargs["ends"], default=0)
            if end == 0:
                return
            _kw(call)["slot_mapping"] = s[: draw(st.integers(0, end - 1))]
            call.mark_bad("slot_mapping shorter than the chunks", "slot_mapping", "starts", "ends")
            return
        new = {"float": s.float, "int16": lambda: s.to(torch.int16), "list": s.tolist, "2d": lambda: s.reshape(1, -1),
               "int32": lambda: s.to(torch.int32), "strided": lambda: torch.stack([s, s], 1)[:, 0]}[kind]()
        _kw(call)["slot_mapping"] = new
        if kind in ("int32", "strided"):
            call.mark_benign(f"slot_mapping {kind}")
        else:
            call.mark_bad(f"slot_mapping {kind}", "slot_mapping")

    return Fault(f"slots-{kind}", apply)


# ------------------------------------------------------------------ bounds


def _bounds_length(draw: st.DrawFn, call: Call) -> None:
    arg = draw(st.sampled_from(["starts", "ends"]))
    v = list(call.kwargs[arg])
    call.kwargs[arg] = v[:-1] if v and draw(st.booleans()) else [*v, call.ctx["num_tokens"]]
    call.mark_bad(f"{arg} length", "starts", "ends", "memory_objs")


def _bound_value(draw: st.DrawFn, call: Call) -> None:
    starts, ends = list(call.kwargs["starts"]), list(call.kwargs["ends"])
    if not starts or not ends:
        return
    i = draw(st.integers(0, min(len(starts), len(ends)) - 1))  # lengths may differ after a fault
    kind = draw(st.sampled_from(["reversed", "negative", "past-end", "float", "none", "bool"]))
    if kind == "reversed":
        if starts[i] == ends[i]:
            return
        starts[i], ends[i] = ends[i], starts[i]
    elif kind == "negative":
        starts[i] = -draw(st.integers(1, 5))
    elif kind == "past-end":
        ends[i] = call.ctx["num_tokens"] + draw(st.integers(1, 3))
    else:
        starts[i] = {"float": float(starts[i]), "none": None, "bool": bool(starts[i])}[kind]  # type: ignore[assignment]
    call.kwargs.update(starts=starts, ends=ends)
    call.mark_bad(f"chunk {i} {kind}", "starts", "ends", "memory_objs", "slot_mapping")


def _bounds_spelling(draw: st.DrawFn, call: Call) -> None:
    arg = draw(st.sampled_from(["starts", "ends"]))
    v = call.kwargs[arg]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return
    call.kwargs[arg] = tuple(v) if draw(st.booleans()) else [np.int64(x) for x in v]
    call.mark_benign(f"{arg} respelled")


# ----------------------------------------------------------------- objects


def _target(draw: st.DrawFn, call: Call) -> tuple[list, int] | None:
    """The list holding the object to fault, and its index."""
    objs = call.kwargs["memory_objs"]
    if not isinstance(objs, list) or not objs:
        return None
    if call.ctx["kind"].startswith("layerwise"):
        layer = 0 if call.ctx["kind"] == "layerwise-load" else draw(st.integers(0, len(objs) - 1))
        objs[layer] = list(objs[layer])
        objs = objs[layer]
    return (objs, draw(st.integers(0, len(objs) - 1))) if objs else None


def _object(kind: str) -> Fault:
    def apply(draw: st.DrawFn, call: Call) -> None:
        found = _target(draw, call)
        if found is None or not isinstance(found[0][found[1]], FakeObj) or not isinstance(found[0][found[1]].tensor, torch.Tensor):
            return  # already replaced by an earlier fault
        objs, i = found
        o = objs[i]
        t = o.tensor
        if kind == "fmt":
            wrong = draw(st.sampled_from([f for f in (MemoryFormat.KV_2LTD, MemoryFormat.KV_T2D, MemoryFormat.KV_MLA_FMT) if f != o.metadata.fmt]))
            objs[i] = FakeObj(t, Metadata(wrong))
            if call.ctx["kind"] in ("paged-store", "paged-from", "layerwise-store"):
                call.mark_benign("store object of another format (the store sets it)")
                return
        elif kind == "none":
            objs[i] = draw(st.sampled_from([None, FakeObj(None, o.metadata), 5]))
        else:
            objs[i] = FakeObj(_reshaped(draw, t, kind), o.metadata)
        call.mark_bad(f"object {i} {kind}", "memory_objs")

    return Fault(f"object-{kind}", apply)


def _reshaped(draw: st.DrawFn, t: torch.Tensor, kind: str) -> object:
    if kind == "dtype":
        return t.to(draw(st.sampled_from([torch.float16, torch.float32, torch.int8])))
    if kind == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        return wide[..., ::2]
    if kind == "meta":
        return t.to("meta")
    shape = list(t.shape)
    axis = draw(st.integers(0, t.dim() - 1))
    shape[axis] += 1 if shape[axis] == 0 or draw(st.booleans()) else -1
    return torch.zeros(shape, dtype=t.dtype)


def _object_count(draw: st.DrawFn, call: Call) -> None:
    objs = call.kwargs["memory_objs"]
    if call.ctx["kind"] == "layerwise-store" and draw(st.booleans()):
        call.kwargs["memory_objs"] = objs[:-1] if draw(st.booleans()) else [*objs, objs[0]]
    else:
        found = _target(draw, call)
        if found is None:
            return
        lst, i = found
        del lst[i]
    call.mark_bad("one object too few or too many", "memory_objs", "starts")


def _objects_container(draw: st.DrawFn, call: Call) -> None:
    if call.ctx["kind"] == "layerwise-load":
        return  # its objects arrive by send(); counted there
    call.set("memory_objs", draw(st.sampled_from([None, 3, "objs"])), "memory_objs of the wrong kind", ("memory_objs",))


CONNECTOR_FAULTS = [
    Fault("missing", _missing),
    Fault("kvcaches", _kvcaches),
    Fault("cached", _cached),
    *(_slots(k) for k in ("negative", "out-of-range", "short", "float", "int16", "list", "2d", "int32", "strided")),
    Fault("bounds-spelling", _bounds_spelling, _batched),
    Fault("bounds-length", _bounds_length, _batched),
    Fault("bound-value", _bound_value),
    *(_object(k) for k in ("fmt", "none", "dtype", "strided", "meta", "shape")),
    Fault("object-count", _object_count, _batched),
    Fault("objects-container", _objects_container, _batched),
]


@st.composite
def faulted_cases(draw: st.DrawFn) -> ConnectorCase:
    case = draw(connector_cases())
    apply_faults(draw, case.call, CONNECTOR_FAULTS)
    return case


def _object_tensors(case: ConnectorCase) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []

    def walk(x: object) -> None:
        if isinstance(x, FakeObj):
            walk(x.tensor)
        elif isinstance(x, torch.Tensor):
            found.append(x)
        elif isinstance(x, (list, tuple)):
            for item in x:
                walk(item)

    walk([case.objects, case.call.kwargs["memory_objs"]])
    return found


@FUZZ
@given(case=faulted_cases())
def test_connector_entry_points(backend: str, case: ConnectorCase) -> None:
    originals = [t.clone() for t in chunk_objects(case)] if not case.call.bad else []
    protect = [*case.cache.storage(), *_object_tensors(case)]
    if not check_call(case.call, lambda: run(case), protect, prefix=False):
        return
    want_cache, want_objs = expected(case, originals)
    assert_cache_equal(case.cache, want_cache)
    for i, (got, want) in enumerate(zip(chunk_objects(case), want_objs)):
        assert_tensor_equal(got, want, f"chunk {i} object (faults {case.call.applied})")
