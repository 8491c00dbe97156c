"""PagedKVConnector against real LMCache memory objects and a plain-indexing reference.

Each test runs on the host C++ core and on the device-generic torch path
(``backend`` fixture from tests/conftest.py).
"""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.memory_management import MemoryFormat, MemoryObj

from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
from tests.integrations.lmcache.conftest import (
    CacheMaker,
    CPU_HND,
    FLASH_NHD,
    LAYOUT_IDS,
    LAYOUTS,
    MLA,
    EngineLayout,
    ObjectPool,
    chunk_bounds,
    hidden_dim,
    object_shape,
    reference_objects,
    zero_cache,
    zeros_like_cache,
)
from tests.kernels.reference import H2D, Geom, PagedCache, assert_cache_equal, assert_tensor_equal, random_slots, ref_transfer

GEOM = Geom(num_layers=2, num_blocks=40, block_size=16, num_heads=2, head_size=8)
NUM_TOKENS = 600  # three LMCache chunks: 256, 256, 88
CHUNK = 256


def connector_for(layout: EngineLayout, geom: Geom = GEOM, device: str = "cpu") -> PagedKVConnector:
    return PagedKVConnector(
        num_layers=geom.num_layers,
        hidden_dim=hidden_dim(layout, geom),
        use_mla=layout.mla,
        device=device,
        layout_hints=layout.hints,
    )


def new_objects(pool: ObjectPool, layout: EngineLayout, starts: list[int], ends: list[int], fmt: MemoryFormat) -> list[MemoryObj]:
    return [pool.new(object_shape(layout, GEOM, e - s), fmt) for s, e in zip(starts, ends)]


def store_kwargs(cache: PagedCache, slots: torch.Tensor) -> dict[str, Any]:
    """The kwargs LMCacheEngine.store forwards to batched_from_gpu."""
    return dict(kvcaches=cache.data, slot_mapping=slots, offset=0, transfer_spec=None, request_configs=None, req_id="req-0")


def load_kwargs(cache: PagedCache, slots: torch.Tensor, cached: int = 0) -> dict[str, Any]:
    """The kwargs LMCacheEngine.retrieve forwards to batched_to_gpu."""
    return dict(kvcaches=cache.data, slot_mapping=slots, vllm_cached_tokens=cached, request_configs=None, req_id="req-0")


def expected_load(target: PagedCache, refs: list[torch.Tensor], slots: torch.Tensor, starts: list[int], ends: list[int], cached: int = 0) -> PagedCache:
    want = target.clone()
    for ref, s, e in zip(refs, starts, ends):
        skip = min(e - s, max(0, cached - s))
        ref_transfer(want, ref, slots[s:e], H2D, skip)
    return want


@pytest.fixture
def request_slots(gen: torch.Generator) -> torch.Tensor:
    """A full-request slot mapping (LongTensor), scattered over the whole cache."""
    slots = random_slots(NUM_TOKENS, GEOM.num_slots, gen)
    assert slots.dtype == torch.long
    return slots


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_store_then_load_round_trip(backend: str, layout: EngineLayout, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    cache = make_cache(layout, GEOM)
    original = cache.clone()
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(layout)
    objs = new_objects(pool, layout, starts, ends, MemoryFormat.UNDEFINED)

    conn.batched_from_gpu(objs, starts, ends, **store_kwargs(cache, request_slots))

    refs = reference_objects(original, layout, request_slots, starts, ends)
    want_fmt = MemoryFormat.KV_MLA_FMT if layout.mla else MemoryFormat.KV_2LTD
    for i, (obj, ref) in enumerate(zip(objs, refs)):
        assert obj.metadata.fmt == want_fmt
        assert_tensor_equal(obj.tensor, ref, f"chunk {i}")
    assert_cache_equal(cache, original)  # a store never writes the paged KV

    zero_cache(cache)
    conn.batched_to_gpu(objs, starts, ends, **load_kwargs(cache, request_slots))

    want = expected_load(zeros_like_cache(original), refs, request_slots, starts, ends)
    assert_cache_equal(cache, want)


def test_cpu_hnd_object_splits_each_head_slice_into_k_and_v(backend: str, make_cache: CacheMaker, pool: ObjectPool) -> None:
    """Format 12 [NB, NH, BS, 2*HS]: K is the first HS of each head's slice, V the second."""
    cache = make_cache(CPU_HND, GEOM)
    slots = torch.tensor([5, 16 * 3 + 2, 16 * 39 + 15], dtype=torch.long)
    conn = connector_for(CPU_HND)
    obj = pool.new(object_shape(CPU_HND, GEOM, 3), MemoryFormat.KV_2LTD)
    conn.batched_from_gpu([obj], [0], [3], **store_kwargs(cache, slots))
    hs = GEOM.head_size
    for layer, layer_kv in enumerate(cache.data):  # type: ignore[arg-type]
        for t, slot in enumerate(slots.tolist()):
            block, off = divmod(slot, GEOM.block_size)
            heads = layer_kv[block, :, off, :]  # [NH, 2*HS]
            assert torch.equal(obj.tensor[0, layer, t], heads[:, :hs].reshape(-1))
            assert torch.equal(obj.tensor[1, layer, t], heads[:, hs:].reshape(-1))


def test_load_into_replaced_buffers(backend: str, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    """A load after the engine re-allocated its KV writes the new buffers, not the old ones."""
    cache = make_cache(FLASH_NHD, GEOM)
    original = cache.clone()
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(FLASH_NHD)
    objs = new_objects(pool, FLASH_NHD, starts, ends, MemoryFormat.KV_2LTD)
    conn.batched_from_gpu(objs, starts, ends, **store_kwargs(cache, request_slots))

    fresh = zeros_like_cache(original)
    conn.batched_to_gpu(objs, starts, ends, **load_kwargs(fresh, request_slots))

    refs = reference_objects(original, FLASH_NHD, request_slots, starts, ends)
    assert_cache_equal(fresh, expected_load(zeros_like_cache(original), refs, request_slots, starts, ends))
    assert_cache_equal(cache, original)


def test_concurrent_loads_into_different_buffers_each_write_their_own(make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    """Threads loading different chunks into different KV buffers through one connector (the
    GIL is released in the copies): each load writes its own buffers, with its own chunks.
    LMCache's ``initialize_kvcaches_ptr`` rebinds the connector's ``kvcaches`` on every call;
    read back from there, a load could copy into another thread's buffers."""
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    conn = connector_for(FLASH_NHD)
    jobs = []
    for _ in range(6):
        source = make_cache(FLASH_NHD, GEOM)  # different random KV each time
        objs = new_objects(pool, FLASH_NHD, starts, ends, MemoryFormat.KV_2LTD)
        conn.batched_from_gpu(objs, starts, ends, **store_kwargs(source, request_slots))
        refs = reference_objects(source, FLASH_NHD, request_slots, starts, ends)
        want = expected_load(zeros_like_cache(source), refs, request_slots, starts, ends)
        jobs.append((objs, zeros_like_cache(source), want))
    start = threading.Barrier(len(jobs))
    errors: list[str] = []

    def work(i: int) -> None:
        objs, target, want = jobs[i]
        start.wait()
        for n in range(200):
            conn.batched_to_gpu(objs, starts, ends, **load_kwargs(target, request_slots))
            if not all(torch.equal(a, b) for a, b in zip(target.storage(), want.storage())):
                errors.append(f"thread {i}, load {n}: its buffers hold other chunks")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between bytecodes often: races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)  # a hang guard, not a timing assertion
    finally:
        sys.setswitchinterval(switch)
    assert not any(t.is_alive() for t in threads), "a load hung"
    assert not errors, errors


@pytest.mark.parametrize("cached", [0, 256, 300, 511, 600, 10_000])
@pytest.mark.parametrize("layout", [CPU_HND, MLA], ids=lambda x: x.name)
def test_vllm_cached_tokens_are_not_overwritten(
    backend: str, layout: EngineLayout, cached: int, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor
) -> None:
    """The first min(end-start, cached-start) tokens of each chunk keep the engine's KV."""
    source = make_cache(layout, GEOM)
    starts, ends = chunk_bounds(NUM_TOKENS, CHUNK)
    refs = reference_objects(source, layout, request_slots, starts, ends)
    fmt = MemoryFormat.KV_MLA_FMT if layout.mla else MemoryFormat.KV_2LTD
    objs = new_objects(pool, layout, starts, ends, fmt)
    for obj, ref in zip(objs, refs):
        obj.tensor.copy_(ref)

    engine_kv = make_cache(layout, GEOM)  # what the engine holds (different random KV)
    before = engine_kv.clone()
    connector_for(layout).batched_to_gpu(objs, starts, ends, **load_kwargs(engine_kv, request_slots, cached))

    assert_cache_equal(engine_kv, expected_load(before, refs, request_slots, starts, ends, cached))
    if cached >= NUM_TOKENS:
        assert_cache_equal(engine_kv, before)


def test_token_range_uses_its_slice_of_the_request_slot_mapping(backend: str, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    """One chunk in the middle of a request: token start+t goes to slot_mapping[start+t]."""
    cache = make_cache(FLASH_NHD, GEOM)
    obj = pool.new(object_shape(FLASH_NHD, GEOM, CHUNK), MemoryFormat.KV_2LTD)
    connector_for(FLASH_NHD).batched_from_gpu([obj], [256], [512], **store_kwargs(cache, request_slots))
    (ref,) = reference_objects(cache, FLASH_NHD, request_slots, [256], [512])
    assert_tensor_equal(obj.tensor, ref)


# ------------------------------------------------------------------ errors


def test_missing_kvcaches_is_a_value_error(make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    conn = connector_for(FLASH_NHD)
    obj = pool.new(object_shape(FLASH_NHD, GEOM, CHUNK), MemoryFormat.KV_2LTD)
    with pytest.raises(ValueError, match="kvcaches"):
        conn.batched_from_gpu([obj], [0], [CHUNK], slot_mapping=request_slots)
    with pytest.raises(ValueError, match="kvcaches"):
        conn.batched_to_gpu([obj], [0], [CHUNK], slot_mapping=request_slots)


def test_missing_slot_mapping_is_a_value_error(make_cache: CacheMaker, pool: ObjectPool) -> None:
    cache = make_cache(FLASH_NHD, GEOM)
    before = cache.clone()
    obj = pool.new(object_shape(FLASH_NHD, GEOM, CHUNK), MemoryFormat.KV_2LTD)
    conn = connector_for(FLASH_NHD)
    with pytest.raises(ValueError, match="slot_mapping"):
        conn.batched_from_gpu([obj], [0], [CHUNK], kvcaches=cache.data)
    with pytest.raises(ValueError, match="slot_mapping"):
        conn.batched_to_gpu([obj], [0], [CHUNK], kvcaches=cache.data)
    assert_cache_equal(cache, before)


@pytest.mark.parametrize(
    ("layout", "wrong"),
    [(CPU_HND, MemoryFormat.KV_T2D), (CPU_HND, MemoryFormat.KV_MLA_FMT), (MLA, MemoryFormat.KV_2LTD)],
    ids=["2ltd-gets-t2d", "2ltd-gets-mla", "mla-gets-2ltd"],
)
def test_load_of_wrong_object_format_is_a_value_error(
    layout: EngineLayout, wrong: MemoryFormat, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor
) -> None:
    cache = make_cache(layout, GEOM)
    before = cache.clone()
    obj = pool.new(object_shape(layout, GEOM, CHUNK), wrong)
    obj.tensor.fill_(1)
    with pytest.raises(ValueError, match="format|KV_"):
        connector_for(layout).batched_to_gpu([obj], [0], [CHUNK], **load_kwargs(cache, request_slots))
    assert_cache_equal(cache, before)


@pytest.mark.parametrize("registered_layers", [1, 3])
def test_layer_count_mismatch_is_a_value_error(registered_layers: int, make_cache: CacheMaker, pool: ObjectPool, request_slots: torch.Tensor) -> None:
    cache = make_cache(CPU_HND, Geom(registered_layers, GEOM.num_blocks, GEOM.block_size, GEOM.num_heads, GEOM.head_size))
    before = cache.clone()
    conn = connector_for(CPU_HND)  # LMCache metadata says 2 layers
    obj = pool.new(object_shape(CPU_HND, GEOM, CHUNK), MemoryFormat.KV_2LTD)
    with pytest.raises(ValueError, match="layers"):
        conn.batched_from_gpu([obj], [0], [CHUNK], **store_kwargs(cache, request_slots))
    with pytest.raises(ValueError, match="layers"):
        conn.batched_to_gpu([obj], [0], [CHUNK], **load_kwargs(cache, request_slots))
    assert_cache_equal(cache, before)


# ------------------------------------------------------------ construction


def test_is_an_lmcache_gpu_connector() -> None:
    assert isinstance(connector_for(CPU_HND), GPUConnectorInterface)


@pytest.mark.parametrize("num_tokens", [1, 88, 256])
def test_get_shape(num_tokens: int) -> None:
    assert connector_for(CPU_HND).get_shape(num_tokens) == torch.Size([2, 2, num_tokens, 16])
    assert connector_for(MLA).get_shape(num_tokens) == torch.Size([1, 2, num_tokens, 8])


def test_get_shape_matches_lmcache_metadata_shapes() -> None:
    """The engine allocates store objects with metadata.get_shapes; both must agree."""
    from tests.integrations.lmcache.conftest import make_metadata

    meta = make_metadata(num_layers=3, num_heads=4, head_size=32)
    conn = PagedKVConnector.from_metadata(meta, device="cpu", layout_hints={"kv_layout": "HND"})
    assert conn.get_shape(100) == meta.get_shapes(100)[0]


@pytest.mark.parametrize(
    ("kv_shape", "use_mla", "layers", "hidden", "fmt"),
    [
        ((4, 2, 256, 8, 64), False, 4, 512, MemoryFormat.KV_2LTD),
        ((3, 1, 256, 1, 576), True, 3, 576, MemoryFormat.KV_MLA_FMT),
    ],
)
def test_from_metadata(kv_shape: tuple[int, ...], use_mla: bool, layers: int, hidden: int, fmt: MemoryFormat) -> None:
    meta = SimpleNamespace(kv_shape=kv_shape, use_mla=use_mla)
    conn = PagedKVConnector.from_metadata(meta, device="cpu")
    assert (conn.num_layers, conn.hidden_dim_size, conn.use_mla) == (layers, hidden, use_mla)
    assert conn.memory_format == fmt
    assert conn.device == torch.device("cpu")
    assert conn.get_shape(7) == torch.Size([1 if use_mla else 2, layers, 7, hidden])
