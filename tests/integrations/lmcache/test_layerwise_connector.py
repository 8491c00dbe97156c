"""LayerwiseKVConnector driven exactly as LMCacheEngine.store_layer / retrieve_layer drive it.

Store: ``batched_from_gpu(objs[L][chunks], starts, ends, **kw)``, ``next()`` L+1 times.
Load: ``batched_to_gpu(starts, ends, **kw)``: prime ``next()``, ``send(objs_of_layer)``
per layer, final ``next()``. Objects are ``KV_T2D`` ``[T, 2, H]`` (``[T, H]`` MLA).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import torch
from lmcache.v1.gpu_connector.gpu_connectors import VLLMPagedMemLayerwiseGPUConnector
from lmcache.v1.gpu_connector.utils import assert_layerwise_gpu_connector
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from tests.integrations.lmcache.conftest import (
    CacheMaker,
    ASCEND_KV_TUPLES,
    CPU_HND,
    FLASH_NHD,
    MLA,
    EngineLayout,
    ObjectPool,
    chunk_bounds,
    hidden_dim,
    reference_objects,
    zero_cache,
    zeros_like_cache,
)
from tests.kernels.reference import H2D, Geom, PagedCache, assert_cache_equal, assert_tensor_equal, random_slots, ref_transfer

GEOM = Geom(num_layers=3, num_blocks=40, block_size=16, num_heads=2, head_size=8)
NUM_TOKENS = 600
CHUNK = 256
ROUND_TRIP_LAYOUTS = (CPU_HND, ASCEND_KV_TUPLES, FLASH_NHD, MLA)


def connector_for(layout: EngineLayout) -> LayerwiseKVConnector:
    return LayerwiseKVConnector(
        num_layers=GEOM.num_layers, hidden_dim=hidden_dim(layout, GEOM), use_mla=layout.mla, device="cpu", layout_hints=layout.hints
    )


def layer_objects(pool: ObjectPool, conn: LayerwiseKVConnector, starts: list[int], ends: list[int], fmt: MemoryFormat) -> list[list[MemoryObj]]:
    """[layer][chunk], as store_layer allocates them (get_shape per chunk)."""
    return [[pool.new(tuple(conn.get_shape(e - s)), fmt) for s, e in zip(starts, ends)] for _ in range(GEOM.num_layers)]


def as_layer_object(ref: torch.Tensor, layer: int, mla: bool) -> torch.Tensor:
    """Layer ``layer`` of a reference ``[kv, L, T, H]`` object as ``[T, 2, H]`` (``[T, H]`` MLA)."""
    return ref[0, layer] if mla else ref[:, layer].permute(1, 0, 2)


def drive_store(gen: Generator[None, None, None], layers: int) -> None:
    for _ in range(layers + 1):
        next(gen)
    with pytest.raises(StopIteration):
        next(gen)


def drive_load(gen: Generator[None, Any, None], objs: list[list[MemoryObj]]) -> None:
    next(gen)
    for layer_objs in objs:
        gen.send(layer_objs)
    next(gen)
    with pytest.raises(StopIteration):
        next(gen)


@pytest.fixture
def request_slots(gen: torch.Generator) -> torch.Tensor:
    return random_slots(NUM_TOKENS, GEOM.num_slots, gen)


def kwargs_for(cache: PagedCache, slots: torch.Tensor, **extra: Any) -> dict[str, Any]:
    return dict(kvcaches=cache.data, slot_mapping=slots, sync=True, **extra)


@pytest.mark.parametrize("layout", ROUND_TRIP_LAYOUTS, ids=lambda x: x.name)
def test_layerwise_round_trip(backend: str, layout: EngineLayout, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    cache = make_cache(layout, GEOM)
    original = cache.clone()
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(layout)
    objs = layer_objects(pool, conn, starts, ends, MemoryFormat.UNDEFINED)

    drive_store(conn.batched_from_gpu(objs, starts, ends, **kwargs_for(cache, request_slots, offset=0, req_id="r")), GEOM.num_layers)

    refs = reference_objects(original, layout, request_slots, starts, ends)
    want_fmt = MemoryFormat.KV_MLA_FMT if layout.mla else MemoryFormat.KV_T2D
    for layer in range(GEOM.num_layers):
        for c, ref in enumerate(refs):
            assert objs[layer][c].metadata.fmt == want_fmt
            assert_tensor_equal(objs[layer][c].tensor, as_layer_object(ref, layer, layout.mla), f"layer {layer} chunk {c}")
    assert_cache_equal(cache, original)

    zero_cache(cache)
    drive_load(conn.batched_to_gpu(starts, ends, **kwargs_for(cache, request_slots, vllm_cached_tokens=0)), objs)

    want = zeros_like_cache(original)
    for ref, s, e in zip(refs, starts, ends):
        ref_transfer(want, ref, request_slots[s:e], H2D)
    assert_cache_equal(cache, want)


def test_interleaved_loads_into_different_buffers_each_write_their_own(make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    """Two load generators of one connector, started on different KV buffers and stepped in
    turn: each writes only its own buffers. Starting the second rebinds the connector's
    ``kvcaches`` (LMCache's ``initialize_kvcaches_ptr``); read back from there at each layer,
    the first load wrote its chunks into the second's buffers."""
    layout = FLASH_NHD
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(layout)
    sources = [make_cache(layout, GEOM) for _ in range(2)]
    objs = []
    for source in sources:
        layer_objs = layer_objects(pool, conn, starts, ends, MemoryFormat.UNDEFINED)
        drive_store(conn.batched_from_gpu(layer_objs, starts, ends, **kwargs_for(source, request_slots)), GEOM.num_layers)
        objs.append(layer_objs)
    targets = [zeros_like_cache(source) for source in sources]
    loads = [conn.batched_to_gpu(starts, ends, **kwargs_for(t, request_slots, vllm_cached_tokens=0)) for t in targets]
    for load in loads:
        next(load)  # both started: the second call bound its own buffers last
    for layer in range(GEOM.num_layers):
        for load, layer_objs in zip(loads, objs):
            load.send(layer_objs[layer])
    for load in loads:
        next(load)
    for source, target in zip(sources, targets):
        want = zeros_like_cache(source)
        for ref, s, e in zip(reference_objects(source, layout, request_slots, starts, ends), starts, ends):
            ref_transfer(want, ref, request_slots[s:e], H2D)
        assert_cache_equal(target, want)


def test_store_moves_one_layer_per_step_in_order(make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    """After step k (k <= L) layers < k are stored and layers >= k untouched."""
    cache = make_cache(FLASH_NHD, GEOM)
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(FLASH_NHD)
    objs = layer_objects(pool, conn, starts, ends, MemoryFormat.KV_T2D)
    refs = reference_objects(cache, FLASH_NHD, request_slots, starts, ends)
    gen = conn.batched_from_gpu(objs, starts, ends, **kwargs_for(cache, request_slots))
    for step in range(1, GEOM.num_layers + 1):
        next(gen)
        for layer in range(GEOM.num_layers):
            stored = all(torch.equal(objs[layer][c].tensor, as_layer_object(ref, layer, False)) for c, ref in enumerate(refs))
            untouched = all(not objs[layer][c].tensor.any() for c in range(len(refs)))
            assert (stored, untouched) == ((True, False) if layer < step else (False, True)), (step, layer)
    next(gen)
    with pytest.raises(StopIteration):
        next(gen)


def test_load_writes_layer_i_on_the_send_of_layer_i(make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    source = make_cache(CPU_HND, GEOM)
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(CPU_HND)
    objs = layer_objects(pool, conn, starts, ends, MemoryFormat.KV_T2D)
    drive_store(conn.batched_from_gpu(objs, starts, ends, **kwargs_for(source, request_slots)), GEOM.num_layers)

    target = zeros_like_cache(source)
    gen = conn.batched_to_gpu(starts, ends, **kwargs_for(target, request_slots, vllm_cached_tokens=0))
    next(gen)
    assert not any(t.any() for t in target.data)  # priming loads nothing
    for layer in range(GEOM.num_layers):
        gen.send(objs[layer])
        for other in range(GEOM.num_layers):
            assert bool(target.data[other].any()) == (other <= layer), (layer, other)
    next(gen)


@pytest.mark.parametrize("cached", [0, 300, 600])
def test_vllm_cached_tokens_are_skipped_on_load(backend: str, cached: int, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    source = make_cache(ASCEND_KV_TUPLES, GEOM)
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(ASCEND_KV_TUPLES)
    objs = layer_objects(pool, conn, starts, ends, MemoryFormat.KV_T2D)
    drive_store(conn.batched_from_gpu(objs, starts, ends, **kwargs_for(source, request_slots)), GEOM.num_layers)

    engine_kv = make_cache(ASCEND_KV_TUPLES, GEOM)
    want = engine_kv.clone()
    drive_load(conn.batched_to_gpu(starts, ends, **kwargs_for(engine_kv, request_slots, vllm_cached_tokens=cached)), objs)

    for ref, s, e in zip(reference_objects(source, ASCEND_KV_TUPLES, request_slots, starts, ends), starts, ends):
        ref_transfer(want, ref, request_slots[s:e], H2D, min(e - s, max(0, cached - s)))
    assert_cache_equal(engine_kv, want)


def test_the_slot_mapping_is_not_modified_by_the_cached_skip(make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    cache = make_cache(FLASH_NHD, GEOM)
    before = request_slots.clone()
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(FLASH_NHD)
    objs = layer_objects(pool, conn, starts, ends, MemoryFormat.KV_T2D)
    drive_load(conn.batched_to_gpu(starts, ends, **kwargs_for(cache, request_slots, vllm_cached_tokens=300)), objs)
    assert torch.equal(request_slots, before)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("count", [0, 2, 4])
def test_wrong_number_of_objects_sent_is_a_value_error(count: int, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    cache = make_cache(FLASH_NHD, GEOM)
    before = cache.clone()
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)  # three chunks
    conn = connector_for(FLASH_NHD)
    objs = layer_objects(pool, conn, starts, ends, MemoryFormat.KV_T2D)
    gen = conn.batched_to_gpu(starts, ends, **kwargs_for(cache, request_slots))
    next(gen)
    with pytest.raises(ValueError, match="memory objects"):
        gen.send((objs[0] + objs[1])[:count])
    assert_cache_equal(cache, before)


def test_sending_none_is_a_value_error(make_cache: CacheMaker, request_slots: torch.Tensor) -> None:
    cache = make_cache(FLASH_NHD, GEOM)
    gen = connector_for(FLASH_NHD).batched_to_gpu([0], [CHUNK], **kwargs_for(cache, request_slots))
    next(gen)
    with pytest.raises(ValueError):
        next(gen)  # send(None)


def test_wrong_object_format_on_load_is_a_value_error(make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    cache = make_cache(FLASH_NHD, GEOM)
    before = cache.clone()
    conn = connector_for(FLASH_NHD)
    obj = pool.new(tuple(conn.get_shape(CHUNK)), MemoryFormat.KV_2LTD)
    gen = conn.batched_to_gpu([0], [CHUNK], **kwargs_for(cache, request_slots))
    next(gen)
    with pytest.raises(ValueError, match="KV_"):
        gen.send([obj])
    assert_cache_equal(cache, before)


@pytest.mark.parametrize("missing", ["kvcaches", "slot_mapping", "sync"])
def test_missing_kwarg_is_a_value_error(missing: str, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    cache = make_cache(FLASH_NHD, GEOM)
    kw = kwargs_for(cache, request_slots)
    del kw[missing]
    conn = connector_for(FLASH_NHD)
    objs = layer_objects(pool, conn, [0], [CHUNK], MemoryFormat.KV_T2D)
    with pytest.raises(ValueError, match=missing):
        next(conn.batched_from_gpu(objs, [0], [CHUNK], **kw))
    with pytest.raises(ValueError, match=missing):
        next(connector_for(FLASH_NHD).batched_to_gpu([0], [CHUNK], **kw))


def test_layer_count_mismatch_is_a_value_error(make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    cache = make_cache(CPU_HND, Geom(2, GEOM.num_blocks, GEOM.block_size, GEOM.num_heads, GEOM.head_size))
    conn = connector_for(CPU_HND)
    with pytest.raises(ValueError, match="layers"):
        next(conn.batched_to_gpu([0], [CHUNK], **kwargs_for(cache, request_slots)))


# ------------------------------------------------------------ the engine's view


def test_engine_accepts_it_as_a_layerwise_connector() -> None:
    conn = connector_for(CPU_HND)
    assert isinstance(conn, VLLMPagedMemLayerwiseGPUConnector)
    assert_layerwise_gpu_connector(conn)  # the check LMCacheEngine.store_layer/retrieve_layer make


@pytest.mark.parametrize(("layout", "shape"), [(CPU_HND, [5, 2, 16]), (MLA, [5, 8])], ids=["mha", "mla"])
def test_get_shape(layout: EngineLayout, shape: list[int]) -> None:
    assert connector_for(layout).get_shape(5) == torch.Size(shape)


def test_from_metadata() -> None:
    from types import SimpleNamespace

    conn = LayerwiseKVConnector.from_metadata(SimpleNamespace(kv_shape=(4, 2, 256, 8, 64), use_mla=False), device="cpu")
    assert (conn.num_layers, conn.hidden_dim_size, conn.use_mla, conn.memory_format) == (4, 512, False, MemoryFormat.KV_T2D)
    mla = LayerwiseKVConnector.from_metadata(SimpleNamespace(kv_shape=(2, 1, 256, 1, 576), use_mla=True), device="cpu")
    assert (mla.hidden_dim_size, mla.memory_format, mla.get_shape(3)) == (576, MemoryFormat.KV_MLA_FMT, torch.Size([3, 576]))
