"""The SGLang device connectors produce and consume upstream LMCache's memory objects.

A chunk stored by CUDA LMCache must load here and the reverse, so the objects
are checked against their layout written out by plain indexing of SGLang's
pools: ``KV_2LTD`` ``obj[0, l, t] = K_l[slot_t]``, ``obj[1, l, t] = V_l[slot_t]``
(``KV_MLA_FMT`` ``obj[0, l, t] = latent_l[slot_t]``); layerwise ``KV_T2D``
``obj_l[t, 0] = K_l[slot_t]``, ``obj_l[t, 1] = V_l[slot_t]`` (``[t]`` for
MLA). Loads go back into zeroed pools: the slots get the KV, a slot ``-1`` and
every other slot stay zero. Memory objects are LMCache's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

pytest.importorskip("sglang")

from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat, MemoryObj  # noqa: E402
from sglang.srt.mem_cache import memory_pool as mp  # noqa: E402

from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector  # noqa: E402
from lmcache_ascend.integrations.sglang.device_connectors import SGLangLayerwiseKVConnector  # noqa: E402
from lmcache_ascend.integrations.sglang.pools import PoolKV, describe_pool  # noqa: E402

SIZE, LAYERS, HEADS, DIM = 96, 3, 2, 16
COMMON = dict(size=SIZE, dtype=torch.bfloat16, layer_num=LAYERS, device="cpu", enable_memory_saver=False)
KINDS = {
    "mha": lambda: mp.MHATokenToKVPool(page_size=1, head_num=HEADS, head_dim=DIM, **COMMON),
    "ascend_npu": lambda: mp.AscendTokenToKVPool(page_size=8, head_num=HEADS, head_dim=DIM, **COMMON),
    "mla": lambda: mp.MLATokenToKVPool(page_size=1, kv_lora_rank=24, qk_rope_head_dim=8, **COMMON),
}
STARTS, ENDS = [0, 16], [16, 28]


def planes(pool: PoolKV, layer: int) -> list[torch.Tensor]:
    """Token rows ``[slots, H]`` of each plane (K, V; or the latent) of ``layer``."""
    buffers = [pool.layer(layer)] if pool.use_mla else list(pool.layer(layer))
    return [b.reshape(-1, pool.hidden_dim) for b in buffers]


def filled(kind: str, gen: torch.Generator) -> PoolKV:
    pool = describe_pool(KINDS[kind]())
    for layer in range(LAYERS):
        for plane in planes(pool, layer):
            plane.copy_(torch.randn(plane.shape, generator=gen).to(plane.dtype))
    return pool


def emptied(pool: PoolKV) -> PoolKV:
    for layer in range(pool.num_layers):
        for plane in planes(pool, layer):
            plane.zero_()
    return pool


Allocate = Callable[[tuple[int, ...], MemoryFormat], MemoryObj]


@pytest.fixture
def allocate() -> Iterator[Allocate]:
    allocator = TensorMemoryAllocator(torch.zeros(4 << 20, dtype=torch.uint8))
    made: list[MemoryObj] = []

    def new(shape: tuple[int, ...], fmt: MemoryFormat) -> MemoryObj:
        obj = allocator.allocate(torch.Size(shape), torch.bfloat16, fmt)
        assert obj is not None and obj.tensor is not None
        obj.tensor.zero_()
        made.append(obj)
        return obj

    yield new
    for obj in made:
        obj.ref_count_down()


def slot_mapping(gen: torch.Generator) -> torch.Tensor:
    slots = torch.randperm(SIZE, generator=gen)[:28] + 1
    slots[18] = -1  # a token the engine holds already
    return slots


def check_pool(pool: PoolKV, source: PoolKV, slots: torch.Tensor) -> None:
    """``pool`` equals ``source`` at ``slots`` (those >= 0) and is zero elsewhere."""
    valid = slots[slots >= 0]
    for layer in range(LAYERS):
        for got, want in zip(planes(pool, layer), planes(source, layer)):
            assert torch.equal(got[valid], want[valid])
            untouched = torch.ones(got.shape[0], dtype=torch.bool)
            untouched[valid] = False
            assert not got[untouched].any()


@pytest.mark.parametrize("kind", KINDS)
def test_paged_objects_are_upstream_kv_2ltd(kind: str, gen: torch.Generator, allocate: Allocate, backend: str) -> None:
    source, slots = filled(kind, gen), slot_mapping(gen)
    conn = PagedKVConnector(num_layers=LAYERS, hidden_dim=source.hidden_dim, use_mla=source.use_mla, device="cpu", engine="sglang")
    fmt = MemoryFormat.KV_MLA_FMT if source.use_mla else MemoryFormat.KV_2LTD
    objs = [allocate(tuple(conn.get_shape(e - s)), fmt) for s, e in zip(STARTS, ENDS)]
    conn.batched_from_gpu(objs, STARTS, ENDS, kvcaches=source.kvcaches, slot_mapping=slots)
    for obj, s, e in zip(objs, STARTS, ENDS):
        chunk = slots[s:e]
        for layer in range(LAYERS):
            for plane, rows in enumerate(planes(source, layer)):
                want = torch.where((chunk >= 0)[:, None], rows[chunk.clamp(min=0)], torch.zeros((), dtype=rows.dtype))
                assert torch.equal(obj.tensor[plane, layer], want)
    target = emptied(filled(kind, gen))
    conn.batched_to_gpu(objs, STARTS, ENDS, kvcaches=target.kvcaches, slot_mapping=slots)
    check_pool(target, source, slots)


@pytest.mark.parametrize("kind", KINDS)
def test_layerwise_objects_are_upstream_kv_t2d(kind: str, gen: torch.Generator, allocate: Allocate, backend: str) -> None:
    source, slots = filled(kind, gen), slot_mapping(gen)
    conn = SGLangLayerwiseKVConnector(num_layers=LAYERS, hidden_dim=source.hidden_dim, use_mla=source.use_mla, device="cpu")
    fmt = MemoryFormat.KV_MLA_FMT if source.use_mla else MemoryFormat.KV_T2D
    objs = [[allocate(tuple(conn.get_shape(e - s)), fmt) for s, e in zip(STARTS, ENDS)] for _ in range(LAYERS)]
    store = conn.batched_from_gpu(objs, STARTS, ENDS, kvcaches=source.kvcaches, slot_mapping=slots, sync=True)
    assert sum(1 for _ in store) == LAYERS + 1  # LMCache's store_layer protocol
    for layer in range(LAYERS):
        for obj, s, e in zip(objs[layer], STARTS, ENDS):
            chunk = slots[s:e]
            for plane, rows in enumerate(planes(source, layer)):
                want = torch.where((chunk >= 0)[:, None], rows[chunk.clamp(min=0)], torch.zeros((), dtype=rows.dtype))
                got = obj.tensor if source.use_mla else obj.tensor[:, plane]
                assert torch.equal(got, want)

    target = emptied(filled(kind, gen))
    load = conn.batched_to_gpu(STARTS, ENDS, kvcaches=target.kvcaches, slot_mapping=slots, sync=False)
    next(load)
    for layer in range(LAYERS):
        load.send(objs[layer])
    next(load)
    check_pool(target, source, slots)
