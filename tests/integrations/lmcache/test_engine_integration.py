"""A real LMCache 0.5.6 engine, in process, with lmcache_ascend's device connectors.

Store a request's KV at one set of slots, wipe the KV, retrieve the same tokens
into other slots: LMCache hands back the full chunks, and the KV at the new
slots equals the original KV at the old ones, whole blocks for vLLM CPU's
packed format 12. Layerwise engines are driven the way LMCache's vLLM adapter
drives ``store_layer`` / ``retrieve_layer``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
from tests.integrations.lmcache.conftest import (
    CacheMaker,
    Mappings,
    ASCEND_KV_TUPLES,
    CPU_HND,
    FLASH_NHD,
    MLA,
    EngineFactory,
    EngineLayout,
    make_metadata,
    reference_objects,
    zero_cache,
    zeros_like_cache,
)
from tests.kernels.reference import H2D, Geom, PagedCache, assert_cache_equal, ref_transfer

GEOM = Geom(num_layers=2, num_blocks=80, block_size=16, num_heads=2, head_size=8)
CHUNK = 256
NUM_TOKENS = 600  # two full chunks + 88 tokens LMCache does not save (save_unfull_chunk off)
FULL = 512


def block_slots(block_ids: torch.Tensor, num_tokens: int, block_size: int = GEOM.block_size) -> torch.Tensor:
    """vLLM's slot mapping: slot = block_id * block_size + offset, whole blocks per request."""
    per_token = block_ids.repeat_interleave(block_size)[:num_tokens]
    return per_token * block_size + torch.arange(num_tokens) % block_size


@pytest.fixture
def two_mappings(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint block tables of one 600-token request: (old blocks, old slots, new blocks, new slots)."""
    need = -(-NUM_TOKENS // GEOM.block_size)
    perm = torch.randperm(GEOM.num_blocks, generator=gen)
    old, new = perm[:need], perm[need : 2 * need]
    return old, block_slots(old, NUM_TOKENS), new, block_slots(new, NUM_TOKENS)


def tokens_of(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.long) * 7 + 11 + seed) % 32000


def metadata_for(layout: EngineLayout, **kw: Any) -> Any:
    heads = 1 if layout.mla else GEOM.num_heads
    return make_metadata(num_layers=GEOM.num_layers, num_heads=heads, head_size=GEOM.head_size, chunk_size=CHUNK, use_mla=layout.mla, **kw)


def paged_engine(engines: EngineFactory, layout: EngineLayout, **config: Any) -> Any:
    meta = metadata_for(layout)
    return engines.build(PagedKVConnector.from_metadata(meta, device="cpu", layout_hints=layout.hints), meta, **config)


def moved(original: PagedCache, layout: EngineLayout, old: torch.Tensor, new: torch.Tensor, upto: int, skip_before: int = 0) -> PagedCache:
    """Expected KV: zeros, plus tokens [skip_before, upto) copied from old to new slots (reference)."""
    want = zeros_like_cache(original)
    starts = list(range(0, upto, CHUNK))
    ends = [s + CHUNK for s in starts]
    for ref, s, e in zip(reference_objects(original, layout, old, starts, ends), starts, ends):
        ref_transfer(want, ref, new[s:e], H2D, min(e - s, max(0, skip_before - s)))
    return want


@pytest.mark.parametrize("layout", [CPU_HND, ASCEND_KV_TUPLES, FLASH_NHD, MLA], ids=lambda x: x.name)
def test_store_then_retrieve_into_other_slots(engines: EngineFactory, layout: EngineLayout, make_cache: CacheMaker, two_mappings: Mappings) -> None:
    old_blocks, old, new_blocks, new = two_mappings
    engine = paged_engine(engines, layout)
    cache = make_cache(layout, GEOM)
    original = cache.clone()
    tokens = tokens_of(NUM_TOKENS)

    engine.store(tokens, kvcaches=cache.data, slot_mapping=old, req_id="store")
    assert engine.lookup(tokens) == FULL
    zero_cache(cache)
    mask = engine.retrieve(tokens, torch.ones(NUM_TOKENS, dtype=torch.bool), kvcaches=cache.data, slot_mapping=new, vllm_cached_tokens=0, req_id="load")

    assert mask.dtype == torch.bool and mask.device.type == "cpu"
    assert torch.equal(mask, torch.arange(NUM_TOKENS) < FULL)
    assert_cache_equal(cache, moved(original, layout, old, new, FULL))


def test_cpu_hnd_blocks_move_whole(engines: EngineFactory, make_cache: CacheMaker, two_mappings: Mappings) -> None:
    """vLLM CPU packs each (block, head) page: LMCache must move every full block byte for byte."""
    old_blocks, old, new_blocks, new = two_mappings
    engine = paged_engine(engines, CPU_HND)
    cache = make_cache(CPU_HND, GEOM)
    original = cache.clone()
    tokens = tokens_of(NUM_TOKENS)
    engine.store(tokens, kvcaches=cache.data, slot_mapping=old)
    zero_cache(cache)
    engine.retrieve(tokens, kvcaches=cache.data, slot_mapping=new)
    full_blocks = FULL // GEOM.block_size
    for layer in range(GEOM.num_layers):
        got, want = cache.data[layer], original.data[layer]  # type: ignore[index]
        assert torch.equal(got[new_blocks[:full_blocks]], want[old_blocks[:full_blocks]])
        untouched = torch.ones(GEOM.num_blocks, dtype=torch.bool)
        untouched[new_blocks[:full_blocks]] = False
        assert not got[untouched].any()


def test_retrieve_leaves_vllm_cached_prefix_alone(engines: EngineFactory, make_cache: CacheMaker, two_mappings: Mappings) -> None:
    """As the vLLM adapter calls it: the first chunk masked off, vllm_cached_tokens=288 (18 blocks)."""
    _, old, _, new = two_mappings
    engine = paged_engine(engines, CPU_HND)
    cache = make_cache(CPU_HND, GEOM)
    original = cache.clone()
    tokens = tokens_of(NUM_TOKENS)
    engine.store(tokens, kvcaches=cache.data, slot_mapping=old)
    zero_cache(cache)
    cached = 288
    mask = torch.ones(NUM_TOKENS, dtype=torch.bool)
    mask[: cached // CHUNK * CHUNK] = False
    got = engine.retrieve(tokens, mask, kvcaches=cache.data, slot_mapping=new, vllm_cached_tokens=cached)
    assert torch.equal(got, (torch.arange(NUM_TOKENS) >= CHUNK) & (torch.arange(NUM_TOKENS) < FULL))
    assert_cache_equal(cache, moved(original, CPU_HND, old, new, FULL, skip_before=cached))


def test_second_request_sharing_a_prefix_hits_only_the_prefix(engines: EngineFactory, make_cache: CacheMaker, two_mappings: Mappings) -> None:
    _, old, _, new = two_mappings
    engine = paged_engine(engines, ASCEND_KV_TUPLES)
    cache = make_cache(ASCEND_KV_TUPLES, GEOM)
    first = tokens_of(NUM_TOKENS)
    engine.store(first, kvcaches=cache.data, slot_mapping=old)
    second = first.clone()
    second[300] += 1  # diverges inside chunk 1
    assert engine.lookup(second) == CHUNK
    zero_cache(cache)
    mask = engine.retrieve(second, kvcaches=cache.data, slot_mapping=new)
    assert int(mask.sum()) == CHUNK and bool(mask[:CHUNK].all())


def test_unknown_tokens_retrieve_nothing_and_write_nothing(engines: EngineFactory, make_cache: CacheMaker, two_mappings: Mappings) -> None:
    _, old, _, new = two_mappings
    engine = paged_engine(engines, FLASH_NHD)
    cache = make_cache(FLASH_NHD, GEOM)
    engine.store(tokens_of(NUM_TOKENS), kvcaches=cache.data, slot_mapping=old)
    before = cache.clone()
    mask = engine.retrieve(tokens_of(NUM_TOKENS, seed=1), kvcaches=cache.data, slot_mapping=new)
    assert not mask.any()
    assert_cache_equal(cache, before)


# ------------------------------------------------------------------ layerwise


def layerwise_engine(engines: EngineFactory, layout: EngineLayout) -> Any:
    meta = metadata_for(layout)
    conn = LayerwiseKVConnector.from_metadata(meta, device="cpu", layout_hints=layout.hints)
    return engines.build(conn, meta, use_layerwise=True)


def adapter_store(engine: Any, tokens: torch.Tensor, cache: PagedCache, slots: torch.Tensor) -> None:
    """save_kv_layer x L (the first creates store_layer and every one calls next), then wait_for_save."""
    mask = torch.ones(len(tokens), dtype=torch.bool)
    storer = engine.store_layer(tokens.tolist(), mask=mask, kvcaches=cache.data, slot_mapping=slots, offset=0, sync=True, req_id="r0")
    for _ in range(GEOM.num_layers):
        next(storer)
    next(storer)
    with pytest.raises(StopIteration):
        next(storer)


def adapter_retrieve(engine: Any, tokens: torch.Tensor, cache: PagedCache, slots: torch.Tensor, cached: int = 0) -> torch.Tensor:
    """start_load_kv (next twice), then wait_for_layer_load per layer; the last one yields the mask."""
    mask = torch.ones(len(tokens), dtype=torch.bool)
    mask[: cached // CHUNK * CHUNK] = False
    retriever = engine.retrieve_layer(tokens, mask, kvcaches=cache.data, slot_mapping=slots, vllm_cached_tokens=cached, sync=True)
    first = next(retriever)
    assert next(retriever) is None
    results = [next(retriever) for _ in range(GEOM.num_layers)]
    assert all(r is None for r in results[:-1])
    with pytest.raises(StopIteration):
        next(retriever)
    assert int(first) == int(results[-1].sum())  # layer 0 reports the retrieved count
    return results[-1]


@pytest.mark.parametrize("layout", [CPU_HND, ASCEND_KV_TUPLES], ids=lambda x: x.name)
def test_layerwise_store_then_retrieve(engines: EngineFactory, layout: EngineLayout, make_cache: CacheMaker, two_mappings: Mappings) -> None:
    _, old, _, new = two_mappings
    engine = layerwise_engine(engines, layout)
    cache = make_cache(layout, GEOM)
    original = cache.clone()
    tokens = tokens_of(NUM_TOKENS)

    adapter_store(engine, tokens, cache, old)
    zero_cache(cache)
    mask = adapter_retrieve(engine, tokens, cache, new)

    assert torch.equal(mask, torch.arange(NUM_TOKENS) < FULL)
    assert_cache_equal(cache, moved(original, layout, old, new, FULL))


def test_layerwise_retrieve_skips_vllm_cached_tokens(engines: EngineFactory, make_cache: CacheMaker, two_mappings: Mappings) -> None:
    _, old, _, new = two_mappings
    engine = layerwise_engine(engines, CPU_HND)
    cache = make_cache(CPU_HND, GEOM)
    original = cache.clone()
    tokens = tokens_of(NUM_TOKENS)
    adapter_store(engine, tokens, cache, old)
    zero_cache(cache)
    mask = adapter_retrieve(engine, tokens, cache, new, cached=288)
    assert int(mask.sum()) == FULL - CHUNK
    assert_cache_equal(cache, moved(original, CPU_HND, old, new, FULL, skip_before=288))
