"""Valid calls of the LMCache device connectors, and how to run and check them.

A :class:`ConnectorCase` is one request (engine KV of a random layout and
geometry, a slot mapping, chunk bounds, memory objects) for one entry point:

- ``paged-load`` / ``paged-store``: ``PagedKVConnector.batched_to_gpu`` /
  ``batched_from_gpu``; ``paged-to`` / ``paged-from``: ``to_gpu`` / ``from_gpu``
  (one chunk);
- ``layerwise-load`` / ``layerwise-store``: ``LayerwiseKVConnector``'s
  generators, driven as LMCache's engine drives them.

Memory objects are stand-ins with the two attributes the connectors read
(``tensor``, ``metadata.fmt``), so a fault can hand in anything. Each case
gets a fresh connector: connectors remember ``kvcaches`` across calls, so a
missing one is an error only on a first call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st
from lmcache.v1.memory_management import MemoryFormat

from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
from tests.fuzz.oracle import Call
from tests.integrations.lmcache.conftest import LAYOUTS, EngineLayout
from tests.kernels.reference import (
    D2H,
    H2D,
    Geom,
    PagedCache,
    make_paged,
    random_tensor,
    ref_transfer,
    single_layer_object_view,
)

KINDS = ("paged-load", "paged-store", "paged-to", "paged-from", "layerwise-load", "layerwise-store")
DTYPE = torch.bfloat16


@dataclass
class Metadata:
    fmt: MemoryFormat


@dataclass
class FakeObj:
    """What a connector reads of an LMCache ``MemoryObj``."""

    tensor: Any
    metadata: Metadata

    def __repr__(self) -> str:
        t = self.tensor
        shape = f"{t.dtype}{list(t.shape)}" if isinstance(t, torch.Tensor) else repr(t)
        return f"Obj({shape}, {self.metadata.fmt.name})"


@dataclass(repr=False)
class ConnectorCase:
    kind: str
    layout: EngineLayout
    geom: Geom
    cache: PagedCache
    call: Call
    # objects as generated: [chunk] (paged) or [layer][chunk] (layerwise)
    objects: list[Any] = field(default_factory=list)

    @property
    def load(self) -> bool:
        return self.kind in ("paged-load", "paged-to", "layerwise-load")

    @property
    def layerwise(self) -> bool:
        return self.kind.startswith("layerwise")

    def __repr__(self) -> str:
        return f"ConnectorCase({self.kind}, {self.layout.name}, {self.geom}, {self.call!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def object_shape(case_layout: EngineLayout, g: Geom, tokens: int, layerwise: bool) -> tuple[int, ...]:
    row = g.head_size if case_layout.mla else g.num_heads * g.head_size
    if layerwise:
        return (tokens, row) if case_layout.mla else (tokens, 2, row)
    return (1 if case_layout.mla else 2, g.num_layers, tokens, row)


def object_format(layout: EngineLayout, layerwise: bool) -> MemoryFormat:
    if layout.mla:
        return MemoryFormat.KV_MLA_FMT
    return MemoryFormat.KV_T2D if layerwise else MemoryFormat.KV_2LTD


@st.composite
def connector_cases(draw: st.DrawFn) -> ConnectorCase:
    kind = draw(st.sampled_from(KINDS))
    layout = draw(st.sampled_from(LAYOUTS))
    g = Geom(draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    cache = make_paged(layout.fmt, g, DTYPE, gen)
    n = draw(st.integers(1, g.num_slots))
    perm = draw(st.permutations(range(g.num_slots)))[:n]
    slots = torch.tensor([-1 if draw(st.integers(0, 5)) == 0 else s for s in perm], dtype=torch.int64)
    single = kind in ("paged-to", "paged-from")
    step = n if single else draw(st.integers(1, n))
    first = draw(st.integers(0, n - 1)) if single else 0  # to_gpu/from_gpu: any sub-range
    starts = list(range(first, n, step))[: 1 if single else None]
    ends = [min(s + step, n) for s in starts]
    layerwise = kind.startswith("layerwise")
    fmt = object_format(layout, layerwise)

    def obj(tokens: int) -> FakeObj:
        return FakeObj(random_tensor(object_shape(layout, g, tokens, layerwise), DTYPE, gen), Metadata(fmt))

    per_chunk = [e - s for s, e in zip(starts, ends)]
    objects: list[Any] = [[obj(t) for t in per_chunk] for _ in range(g.num_layers)] if layerwise else [obj(t) for t in per_chunk]
    kwargs: dict[str, Any] = dict(kvcaches=cache.data, slot_mapping=slots)
    if layerwise:
        kwargs["sync"] = draw(st.booleans())
    if kind in ("paged-load", "paged-to", "layerwise-load"):
        kwargs["vllm_cached_tokens"] = draw(st.integers(0, n))
    call = Call(dict(memory_objs=objects, starts=starts, ends=ends, kwargs=kwargs))
    call.ctx.update(kind=kind, num_slots=g.num_slots, num_tokens=n, layers=g.num_layers)
    return ConnectorCase(kind, layout, g, cache, call, objects)


# ------------------------------------------------------------------ running


def connector_for(case: ConnectorCase) -> Any:
    cls = LayerwiseKVConnector if case.layerwise else PagedKVConnector
    g = case.geom
    hidden = g.head_size if case.layout.mla else g.num_heads * g.head_size
    return cls(num_layers=g.num_layers, hidden_dim=hidden, use_mla=case.layout.mla, device="cpu", layout_hints=case.layout.hints)


def run(case: ConnectorCase) -> None:
    """Call the entry point with the (possibly faulted) arguments."""
    kw = case.call.kwargs
    conn, objs, starts, ends, extra = connector_for(case), kw["memory_objs"], kw["starts"], kw["ends"], kw["kwargs"]
    if case.kind == "paged-load":
        conn.batched_to_gpu(objs, starts, ends, **extra)
    elif case.kind == "paged-store":
        conn.batched_from_gpu(objs, starts, ends, **extra)
    elif case.kind in ("paged-to", "paged-from"):
        entry = conn.to_gpu if case.kind == "paged-to" else conn.from_gpu
        entry(objs[0] if isinstance(objs, list) and objs else objs, starts[0] if isinstance(starts, list) and starts else starts,
              ends[0] if isinstance(ends, list) and ends else ends, **extra)
    elif case.kind == "layerwise-store":
        gen = conn.batched_from_gpu(objs, starts, ends, **extra)
        for _ in range(case.geom.num_layers + 1):
            next(gen)
    else:
        gen = conn.batched_to_gpu(starts, ends, **extra)
        next(gen)
        for layer in range(case.geom.num_layers):
            gen.send(objs[layer] if isinstance(objs, list) and layer < len(objs) else None)
        next(gen)


def _stacked(layer_objs: list[FakeObj], mla: bool) -> torch.Tensor:
    """Per-layer ``[T, 2, H]`` objects as one ``[kv, L, T, H]`` tensor (a copy)."""
    return torch.stack([single_layer_object_view(o.tensor, mla, True)[:, 0] for o in layer_objs], dim=1)


def expected(case: ConnectorCase, originals: list[torch.Tensor]) -> tuple[PagedCache, list[torch.Tensor]]:
    """What a valid call leaves: the engine KV and each chunk's ``[kv, L, T, H]`` object."""
    kw = case.call.kwargs
    slots = kw["kwargs"]["slot_mapping"].to(torch.int64)
    cached = int(kw["kwargs"].get("vllm_cached_tokens", 0))
    want_cache, want_objs = case.cache.clone(), [o.clone() for o in originals]
    for obj, s, e in zip(want_objs, kw["starts"], kw["ends"]):
        skip = min(e - s, max(0, cached - s)) if case.load else 0
        ref_transfer(want_cache, obj, slots[s:e], H2D if case.load else D2H, skip)
    return want_cache, want_objs


def chunk_objects(case: ConnectorCase) -> list[torch.Tensor]:
    """The case's objects now, one ``[kv, L, T, H]`` tensor per chunk."""
    objs = case.call.kwargs["memory_objs"]
    if not case.layerwise:
        return [o.tensor for o in objs]
    chunks = len(objs[0])
    return [_stacked([objs[layer][c] for layer in range(len(objs))], case.layout.mla) for c in range(chunks)]
