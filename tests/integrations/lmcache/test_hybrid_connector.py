"""The hybrid device connector (several KV groups per chunk) on real LMCache memory objects.

Two groups of two layers each, registered interleaved as vLLM does (sliding
window 16 tokens, aligned to 8-token blocks; full attention), a request of 72
tokens in chunks of 32 (the last one 8 tokens), some of the window group's
blocks null (slot -1). Objects are checked byte for byte against segments
written out here with the reference transfer (plain indexing).
"""

from __future__ import annotations

import math

import pytest
import torch
from lmcache.v1.memory_management import MemoryFormat
from lmcache.v1.metadata import LMCacheMetadata

from lmcache_ascend.integrations.lmcache.hybrid_connector import (
    HybridGroup,
    HybridKVConnector,
    HybridMetadata,
)
from tests.integrations.lmcache.conftest import KV_DTYPE, ObjectPool
from tests.kernels.reference import (
    D2H,
    H2D,
    Geom,
    PagedCache,
    assert_tensor_equal,
    make_paged,
    ref_transfer,
)

GEOM = Geom(2, 24, 8, 2, 16)  # layers, blocks, block size, heads, head size
ROW = GEOM.num_heads * GEOM.head_size
WINDOW, ALIGN, CHUNK, TOKENS = 12, 8, 32, 72  # a window that is not whole blocks
GROUPS = (
    HybridGroup("group 0 (window)", "sliding_window", ("l0", "l2"), WINDOW, ALIGN),
    HybridGroup("group 1 (full)", "full", ("l1", "l3")),
)
STARTS, ENDS = [0, 32, 64], [32, 64, 72]


@pytest.fixture
def caches(gen: torch.Generator) -> list[PagedCache]:
    return [make_paged(1, GEOM, KV_DTYPE, gen) for _ in GROUPS]


def registered(caches: list[PagedCache]) -> dict[str, torch.Tensor]:
    """vLLM's registration order: layers by index, groups interleaved."""
    g0, g1 = caches[0].data, caches[1].data
    return {"l0": g0[0], "l1": g1[0], "l2": g0[1], "l3": g1[1]}  # type: ignore[index]


def slot_mapping(gen: torch.Generator) -> torch.Tensor:
    cols = [torch.randperm(GEOM.num_slots, generator=gen)[:TOKENS] for _ in GROUPS]
    cols[0][:24] = -1  # the window group's first three blocks are vLLM's null block
    return torch.stack(cols, dim=1)


def connector(kv: dict[str, torch.Tensor]) -> HybridKVConnector:
    c = HybridKVConnector(GROUPS, CHUNK, "cpu", {"kv_layout": "NHD"})
    c.bind_layers(kv)
    return c


def ref_segments(caches: list[PagedCache], slots: torch.Tensor, start: int, end: int, direction: int, obj: torch.Tensor, skip: int = 0) -> None:
    """The chunk's bytes as the module docstrings define them, in place on ``obj`` (uint8)."""
    offset = 0
    for g, (group, cache) in enumerate(zip(GROUPS, caches)):
        first = start
        rows = end - start
        if group.kind == "sliding_window":
            w = end - WINDOW
            first = max(start, w - w % ALIGN)
            rows = min(rows, math.ceil(WINDOW / ALIGN) * ALIGN)
        nbytes = 2 * GEOM.num_layers * rows * ROW * 2
        view = obj[offset : offset + nbytes].view(KV_DTYPE).view(2, GEOM.num_layers, rows, ROW)
        seg_slots = torch.full((rows,), -1, dtype=torch.int64)
        seg_slots[: end - first] = slots[first:end, g]
        seg_slots[: max(0, skip - first)] = -1
        ref_transfer(cache, view, seg_slots, direction)
        offset = -(-(offset + nbytes) // 64) * 64


def objects(pool: ObjectPool, c: HybridKVConnector) -> list:
    return [pool.new(tuple(c.get_shape(e - s)), MemoryFormat.KV_2LTD, torch.uint8) for s, e in zip(STARTS, ENDS)]


def test_store_writes_each_groups_segment(caches: list[PagedCache], pool: ObjectPool, gen: torch.Generator) -> None:
    kv = registered(caches)
    c = connector(kv)
    slots = slot_mapping(gen)
    objs = objects(pool, c)
    c.batched_from_gpu(objs, STARTS, ENDS, kvcaches=list(kv.values()), slot_mapping=slots)
    for obj, s, e in zip(objs, STARTS, ENDS):
        want = torch.zeros_like(obj.tensor.flatten())
        ref_segments(caches, slots, s, e, D2H, want)
        assert_tensor_equal(obj.tensor.flatten(), want, f"chunk [{s}, {e})")
        assert obj.metadata.fmt == MemoryFormat.KV_2LTD
        assert obj.get_num_tokens() == e - s
    # A full chunk: 32 tokens of full attention, the 12-token window grown to two whole 8-token blocks.
    assert c.layout(32).nbytes == 2 * 2 * (32 + 16) * ROW * 2
    assert c.layout(8).nbytes == 2 * 2 * (8 + 8) * ROW * 2


@pytest.mark.parametrize("cached", [0, 40], ids=["nothing-cached", "engine-holds-40"])
def test_load_restores_what_was_stored_and_leaves_engine_tokens(
    caches: list[PagedCache], pool: ObjectPool, gen: torch.Generator, cached: int
) -> None:
    kv = registered(caches)
    c = connector(kv)
    slots = slot_mapping(gen)
    objs = objects(pool, c)
    c.batched_from_gpu(objs, STARTS, ENDS, kvcaches=list(kv.values()), slot_mapping=slots)

    dst = [make_paged(1, GEOM, KV_DTYPE, gen) for _ in GROUPS]
    want = [d.clone() for d in dst]
    dkv = registered(dst)
    c.batched_to_gpu(objs, STARTS, ENDS, kvcaches=list(dkv.values()), slot_mapping=slots, vllm_cached_tokens=cached)
    for obj, s, e in zip(objs, STARTS, ENDS):
        ref_segments(want, slots, s, e, H2D, obj.tensor.flatten().clone(), skip=cached)
    for g, (got, exp) in enumerate(zip(dst, want)):
        for i, (a, b) in enumerate(zip(got.storage(), exp.storage())):
            assert_tensor_equal(a, b, f"group {g} buffer {i}")
    # The source's KV arrived: the window group's last window (tokens 56..71) and every full-group token past the cache.
    for g, tokens in ((0, range(56, TOKENS)), (1, range(max(cached, 0), TOKENS))):
        for t in tokens:
            b, o = divmod(int(slots[t, g]), GEOM.block_size)
            for src_layer, dst_layer in zip(caches[g].data, dst[g].data):  # type: ignore[call-overload]
                assert torch.equal(dst_layer[:, b, o], src_layer[:, b, o]), f"group {g} token {t}"


def test_metadata_allocates_the_connectors_objects(caches: list[PagedCache], pool: ObjectPool) -> None:
    c = connector(registered(caches))
    base = LMCacheMetadata("m", 1, 1, 0, 0, KV_DTYPE, (4, 2, CHUNK, 2, 16), chunk_size=CHUNK)
    meta = HybridMetadata.wrap(base, c.get_shape)
    assert (meta.model_name, meta.kv_shape, meta.kv_dtype, meta.chunk_size) == ("m", base.kv_shape, KV_DTYPE, CHUNK)
    assert meta.get_shapes() == [c.get_shape(CHUNK)] and meta.get_shapes(8) == [c.get_shape(8)]
    assert meta.get_dtypes() == [torch.uint8]
    obj = pool.new(tuple(meta.get_shapes(8)[0]), MemoryFormat.KV_2LTD, torch.uint8)
    assert obj.get_num_tokens() == 8 and obj.tensor.numel() >= c.layout(8).nbytes


def test_bad_arguments_name_themselves_and_move_nothing(caches: list[PagedCache], pool: ObjectPool, gen: torch.Generator) -> None:
    kv = registered(caches)
    c = connector(kv)
    slots = slot_mapping(gen)
    objs = objects(pool, c)
    layers = list(kv.values())
    before = [t.clone() for cache in caches for t in cache.storage()]
    with pytest.raises(ValueError, match="slot_mapping must be int64 \\[tokens, 2 groups\\]"):
        c.batched_to_gpu(objs, STARTS, ENDS, kvcaches=layers, slot_mapping=slots[:, :1])
    with pytest.raises(ValueError, match="slot_mapping"):
        c.batched_to_gpu(objs, STARTS, ENDS, kvcaches=layers, slot_mapping=slots[:, 0])
    with pytest.raises(ValueError, match="'slot_mapping' should be provided"):
        c.batched_to_gpu(objs, STARTS, ENDS, kvcaches=layers)
    bad = slots.clone()
    bad[70, 1] = GEOM.num_slots  # in the last chunk: the first two must not have moved either
    with pytest.raises(ValueError, match="slot_mapping"):
        c.batched_to_gpu(objs, STARTS, ENDS, kvcaches=layers, slot_mapping=bad)
    wrong = pool.new((1, 1, 32, 7), MemoryFormat.KV_2LTD, torch.uint8)
    with pytest.raises(ValueError, match="memory_objs\\[1\\]"):
        c.batched_to_gpu([objs[0], wrong, objs[2]], STARTS, ENDS, kvcaches=layers, slot_mapping=slots)
    with pytest.raises(ValueError, match="kvcaches has 3 layers, 4 were registered"):
        c.batched_to_gpu(objs, STARTS, ENDS, kvcaches=layers[:3], slot_mapping=slots)
    with pytest.raises(ValueError, match="starts"):
        c.batched_to_gpu(objs, STARTS[:2], ENDS, kvcaches=layers, slot_mapping=slots)
    after = [t for cache in caches for t in cache.storage()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_groups_and_binding_are_checked(caches: list[PagedCache]) -> None:
    with pytest.raises(ValueError, match="kind 'state' cannot be stored"):
        HybridGroup("group 2 (mamba)", "state", ("l9",))
    with pytest.raises(ValueError, match="has no layers"):
        HybridGroup("group 3", "full", ())
    with pytest.raises(ValueError, match="at least one"):
        HybridKVConnector((), CHUNK, "cpu")
    c = HybridKVConnector(GROUPS, CHUNK, "cpu", {"kv_layout": "NHD"})
    with pytest.raises(ValueError, match="not registered yet"):
        c.get_shape(CHUNK)
    kv = registered(caches)
    del kv["l3"]
    with pytest.raises(ValueError, match="group 1 \\(full\\): layers \\['l3'\\] are not among"):
        c.bind_layers(kv)
