"""A chunk stored by one flavour loads in the other.

The same KV bytes are held twice: as torch ``(K, V)`` tuples (MLA: one
``[blocks, block_size, head_size]`` tensor per layer), which the PyTorch
flavour's connectors move, and as MindSpore tensors in vllm-mindspore's
layouts. Memory objects from either side must be byte-identical, objects
stored from torch must load into MindSpore and back, and chunks one flavour's
engine left in LMCache's disk tier must be served to the other's engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
torch = pytest.importorskip("torch")

from lmcache.v1.memory_management import MemoryFormat  # noqa: E402

from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector  # noqa: E402
from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector  # noqa: E402
from lmcache_ascend.integrations.lmcache.plugin import recover_disk_tier  # noqa: E402
from lmcache_ascend.integrations.mindspore.connectors import MindSporeLayerwiseConnector, MindSporePagedConnector  # noqa: E402
from tests.integrations.lmcache.conftest import EngineFactory, ObjectPool  # noqa: E402
from tests.integrations.lmcache.test_disk_index import disk_backend, wait_for  # noqa: E402
from tests.integrations.mindspore.helpers import (  # noqa: E402
    DTYPES,
    Geom,
    filled_kv,
    kv_bits,
    object_bits,
    random_kv,
    torch_kv,
    torch_kv_bits,
)
from tests.integrations.mindspore.test_connectors import (  # noqa: E402
    CHUNK,
    FULL,
    GEOMS,
    NUM_TOKENS,
    assert_kv,
    metadata,
    moved,
    tokens_of,
    two_mappings,
)

STARTS = [0, 256, 512]
ENDS = [256, 512, NUM_TOKENS]  # the last chunk is partial


def torch_side(bits: np.ndarray, geom: Geom, dtype: str) -> list[Any]:
    layers = torch_kv(bits, geom, dtype)
    if geom.mla:  # the PyTorch flavour's MLA layout: [blocks, block_size, head_size] per layer
        return [layer[0].reshape(geom.num_blocks, geom.block_size, geom.head_size) for layer in layers]
    return layers


def torch_side_bits(layers: list[Any], geom: Geom) -> np.ndarray:
    return torch_kv_bits([layer if isinstance(layer, tuple) else (layer,) for layer in layers])


def chunk_objects(pool: ObjectPool, geom: Geom, dtype: str) -> list[Any]:
    fmt = MemoryFormat.KV_MLA_FMT if geom.mla else MemoryFormat.KV_2LTD
    return [pool.new((geom.planes, geom.num_layers, e - s, geom.row), fmt, DTYPES[dtype][1]) for s, e in zip(STARTS, ENDS)]


def connectors(geom: Geom, dtype: str) -> tuple[PagedKVConnector, MindSporePagedConnector]:
    meta = metadata(geom, dtype)
    return PagedKVConnector.from_metadata(meta, device="cpu"), MindSporePagedConnector.from_metadata(meta, device="cpu")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["kv", "mla"])
def test_both_flavours_store_identical_memory_objects(pool: ObjectPool, dtype: str, layout: str) -> None:
    geom = GEOMS[layout]
    ms_kv = random_kv(geom, dtype, np.random.default_rng(11))
    bits = kv_bits(ms_kv)
    torch_conn, ms_conn = connectors(geom, dtype)
    old, _ = two_mappings(geom)
    from_torch, from_ms = chunk_objects(pool, geom, dtype), chunk_objects(pool, geom, dtype)

    torch_conn.batched_from_gpu(from_torch, STARTS, ENDS, kvcaches=torch_side(bits, geom, dtype), slot_mapping=torch.from_numpy(old))
    ms_conn.batched_from_gpu(from_ms, STARTS, ENDS, kvcaches=ms_kv, slot_mapping=torch.from_numpy(old))

    for a, b, s, e in zip(from_torch, from_ms, STARTS, ENDS):
        assert a.metadata.fmt == b.metadata.fmt == (MemoryFormat.KV_MLA_FMT if geom.mla else MemoryFormat.KV_2LTD)
        want = bits[:, :, old[s:e]].transpose(1, 0, 2, 3)  # [planes, L, T, row]
        assert np.array_equal(object_bits(a.tensor), want)
        assert np.array_equal(object_bits(b.tensor), want)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["kv", "mla"])
def test_torch_stored_chunks_load_into_mindspore_and_back(pool: ObjectPool, dtype: str, layout: str) -> None:
    geom = GEOMS[layout]
    bits = kv_bits(random_kv(geom, dtype, np.random.default_rng(12)))
    torch_conn, ms_conn = connectors(geom, dtype)
    old, new = two_mappings(geom, seed=1)
    stored = chunk_objects(pool, geom, dtype)
    torch_conn.batched_from_gpu(stored, STARTS, ENDS, kvcaches=torch_side(bits, geom, dtype), slot_mapping=torch.from_numpy(old))

    ms_dst = filled_kv(geom, dtype)
    ms_before = kv_bits(ms_dst)
    ms_conn.batched_to_gpu(stored, STARTS, ENDS, kvcaches=ms_dst, slot_mapping=torch.from_numpy(new))
    assert_kv(ms_dst, moved(bits, ms_before, old, new, range(NUM_TOKENS)), dtype)

    back = chunk_objects(pool, geom, dtype)
    ms_conn.batched_from_gpu(back, STARTS, ENDS, kvcaches=ms_dst, slot_mapping=torch.from_numpy(new))
    torch_dst = torch_side(np.zeros_like(bits), geom, dtype)
    torch_conn.batched_to_gpu(back, STARTS, ENDS, kvcaches=torch_dst, slot_mapping=torch.from_numpy(old))
    want = np.zeros_like(bits)
    want[:, :, old] = bits[:, :, old]
    assert np.array_equal(torch_side_bits(torch_dst, geom), want)


def store_layers(conn: Any, objs: list[list[Any]], kv: Any, slots: np.ndarray, num_layers: int) -> None:
    gen = conn.batched_from_gpu(objs, STARTS, ENDS, kvcaches=kv, slot_mapping=torch.from_numpy(slots), sync=True)
    for _ in range(num_layers + 1):
        next(gen)


@pytest.mark.parametrize("layout", ["kv", "mla"])
def test_layerwise_objects_are_identical_and_load_across(pool: ObjectPool, layout: str) -> None:
    geom = GEOMS[layout]
    dtype = "bfloat16"
    ms_src = random_kv(geom, dtype, np.random.default_rng(13))
    bits = kv_bits(ms_src)
    meta = metadata(geom, dtype)
    torch_conn = LayerwiseKVConnector.from_metadata(meta, device="cpu")
    ms_conn = MindSporeLayerwiseConnector.from_metadata(meta, device="cpu")
    old, new = two_mappings(geom, seed=2)
    fmt = MemoryFormat.KV_MLA_FMT if geom.mla else MemoryFormat.KV_T2D

    def objects() -> list[list[Any]]:
        return [[pool.new(tuple(torch_conn.get_shape(e - s)), fmt, DTYPES[dtype][1]) for s, e in zip(STARTS, ENDS)] for _ in range(geom.num_layers)]

    from_torch, from_ms = objects(), objects()
    store_layers(torch_conn, from_torch, torch_side(bits, geom, dtype), old, geom.num_layers)
    store_layers(ms_conn, from_ms, ms_src, old, geom.num_layers)
    for layer in range(geom.num_layers):
        for a, b in zip(from_torch[layer], from_ms[layer]):
            assert np.array_equal(object_bits(a.tensor), object_bits(b.tensor))

    ms_dst = filled_kv(geom, dtype)
    before = kv_bits(ms_dst)
    gen = ms_conn.batched_to_gpu(STARTS, ENDS, kvcaches=ms_dst, slot_mapping=torch.from_numpy(new), sync=True)
    next(gen)
    for layer in range(geom.num_layers):
        gen.send(from_torch[layer])
    next(gen)
    assert_kv(ms_dst, moved(bits, before, old, new, range(NUM_TOKENS)), dtype)


# ------------------------------------------------------------- across engines (disk tier)


def disk_engine(engines: EngineFactory, path: Path, conn_cls: type, geom: Geom, dtype: str) -> Any:
    meta = metadata(geom, dtype)
    return engines.build(conn_cls.from_metadata(meta, device="cpu"), meta, local_disk=f"file://{path}", max_local_disk_size=0.01)


@pytest.mark.parametrize("direction", ["torch_to_mindspore", "mindspore_to_torch"])
@pytest.mark.parametrize("layout", ["kv", "mla"])
def test_disk_tier_chunks_cross_flavours(engines: EngineFactory, tmp_path: Path, direction: str, layout: str) -> None:
    geom, dtype = GEOMS[layout], "bfloat16"
    ms_src = random_kv(geom, dtype, np.random.default_rng(14))
    bits = kv_bits(ms_src)
    old, new = two_mappings(geom, seed=3)
    tokens = tokens_of(NUM_TOKENS)
    to_ms = direction == "torch_to_mindspore"

    writer = disk_engine(engines, tmp_path, PagedKVConnector if to_ms else MindSporePagedConnector, geom, dtype)
    writer.store(tokens, kvcaches=torch_side(bits, geom, dtype) if to_ms else ms_src, slot_mapping=torch.from_numpy(old))
    backend = disk_backend(writer)
    wait_for(lambda: len(backend.dict) >= FULL // CHUNK, "both full chunks on disk")
    engines.destroy(engines.name_of(writer))

    reader = disk_engine(engines, tmp_path, MindSporePagedConnector if to_ms else PagedKVConnector, geom, dtype)
    assert recover_disk_tier(reader) == FULL // CHUNK
    if to_ms:
        dst = filled_kv(geom, dtype)
        before = kv_bits(dst)
        mask = reader.retrieve(tokens, kvcaches=dst, slot_mapping=torch.from_numpy(new))
        assert_kv(dst, moved(bits, before, old, new, range(FULL)), dtype)
    else:
        dst_t = torch_side(np.zeros_like(bits), geom, dtype)
        mask = reader.retrieve(tokens, kvcaches=dst_t, slot_mapping=torch.from_numpy(new))
        assert np.array_equal(torch_side_bits(dst_t, geom), moved(bits, np.zeros_like(bits), old, new, range(FULL)))
    assert torch.equal(mask, torch.arange(NUM_TOKENS) < FULL)
