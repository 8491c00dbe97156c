"""Re-indexing LMCache's local disk tier after a restart (plugin.recover_disk_tier).

A real engine writes its chunks to ``local_disk`` (asynchronously: tests poll with
a bounded timeout); it is destroyed, a new engine of the same model opens the same
directory, ``recover_disk_tier`` re-registers the files, and a retrieve must hit
from disk with the exact bytes. Files of other models, ranks, world sizes,
dtypes, truncated files and the other storage mode are never taken.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lmcache.utils import CacheEngineKey, LayerCacheEngineKey

from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
from lmcache_ascend.integrations.lmcache.plugin import recover_disk_tier
from tests.integrations.lmcache.conftest import CacheMaker, SlotPair, CPU_HND, KV_DTYPE, EngineFactory, make_metadata, zero_cache
from tests.integrations.lmcache.test_engine_integration import (
    CHUNK,
    FULL,
    GEOM,
    NUM_TOKENS,
    adapter_retrieve,
    adapter_store,
    moved,
    tokens_of,
)
from tests.kernels.reference import PagedCache, assert_cache_equal

MODEL = "org/tiny-model"
CHUNK_BYTES = 2 * GEOM.num_layers * CHUNK * GEOM.num_heads * GEOM.head_size * KV_DTYPE.itemsize
WAIT_S = 30.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def disk_backend(engine: Any) -> Any:
    backend = engine.storage_manager.storage_backends.get("LocalDiskBackend")
    assert backend is not None, "engine has no local disk tier"
    return backend


def disk_engine(engines: EngineFactory, path: Path, *, layerwise: bool = False, max_disk_gib: float = 0.001, **meta_kw: Any) -> Any:
    meta = make_metadata(num_layers=GEOM.num_layers, num_heads=GEOM.num_heads, head_size=GEOM.head_size, chunk_size=CHUNK, model_name=MODEL, **meta_kw)
    cls = LayerwiseKVConnector if layerwise else PagedKVConnector
    conn = cls.from_metadata(meta, device="cpu", layout_hints=CPU_HND.hints)
    return engines.build(conn, meta, local_disk=f"file://{path}", max_local_disk_size=max_disk_gib, use_layerwise=layerwise)


def chunk_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".pt")


def store_and_flush(engine: Any, tokens: torch.Tensor, cache: PagedCache, slots: torch.Tensor, expected_keys: int) -> None:
    engine.store(tokens, kvcaches=cache.data, slot_mapping=slots)
    backend = disk_backend(engine)
    wait_for(lambda: len(backend.dict) >= expected_keys, f"{expected_keys} chunks on disk")


def restart(engines: EngineFactory, engine: Any, path: Path, **kw: Any) -> Any:
    engines.destroy(engines.name_of(engine))
    return disk_engine(engines, path, **kw)


@pytest.fixture
def slots_pair(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from tests.integrations.lmcache.test_engine_integration import block_slots

    need = -(-NUM_TOKENS // GEOM.block_size)
    perm = torch.randperm(GEOM.num_blocks, generator=gen)
    return block_slots(perm[:need], NUM_TOKENS), block_slots(perm[need : 2 * need], NUM_TOKENS)


def test_restarted_engine_retrieves_from_disk_after_recovery(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    old, new = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    original = cache.clone()
    tokens = tokens_of(NUM_TOKENS)
    first = disk_engine(engines, tmp_path)
    store_and_flush(first, tokens, cache, old, expected_keys=2)
    files = chunk_files(tmp_path)
    assert len(files) == 2 and all(f.stat().st_size == CHUNK_BYTES for f in files)

    second = restart(engines, first, tmp_path)
    assert second.lookup(tokens) == 0  # LMCache alone forgets its disk tier
    assert recover_disk_tier(second) == 2
    assert second.lookup(tokens) == FULL

    zero_cache(cache)
    mask = second.retrieve(tokens, kvcaches=cache.data, slot_mapping=new)
    assert torch.equal(mask, torch.arange(NUM_TOKENS) < FULL)
    assert_cache_equal(cache, moved(original, CPU_HND, old, new, FULL))


def test_recovery_is_idempotent(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    old, _ = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    first = disk_engine(engines, tmp_path)
    store_and_flush(first, tokens_of(NUM_TOKENS), cache, old, expected_keys=2)
    second = restart(engines, first, tmp_path)
    recover_disk_tier(second)
    recover_disk_tier(second)
    assert len(disk_backend(second).dict) == 2
    assert second.lookup(tokens_of(NUM_TOKENS)) == FULL


def _renamed(src: Path, old: str, new: str) -> Path:
    assert old in src.name, (old, src.name)
    dst = src.with_name(src.name.replace(old, new, 1))
    shutil.copyfile(src, dst)
    return dst


def test_foreign_and_damaged_files_are_ignored(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    old, _ = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    first = disk_engine(engines, tmp_path)
    store_and_flush(first, tokens_of(NUM_TOKENS), cache, old, expected_keys=2)
    real = chunk_files(tmp_path)
    src = real[0]
    key = CacheEngineKey.from_string(MODEL + src.name[len(MODEL) : -len(".pt")])
    hash_hex = f"{key.chunk_hash:x}"
    fake_hash = f"{(key.chunk_hash ^ 0x5A5A5A5A) & 0x7FFFFFFFFFFFFFFF:x}"
    _renamed(src, "org-tiny-model@", "org-other-model@")  # another model
    _renamed(src, "@1@0@", "@1@1@")  # another rank
    _renamed(src, "@1@0@", "@2@0@")  # another world size
    _renamed(src, "@bfloat16", "@half")  # same size, other dtype
    _renamed(src, ".pt", ".tmp")  # not a chunk file
    _renamed(src, "@bfloat16", "@bfloat16@0")  # a layerwise key in a non-layerwise tier
    _renamed(src, "@bfloat16", "@bfloat16@lang%en")  # a tagged key
    truncated = _renamed(src, hash_hex, fake_hash)
    with open(truncated, "r+b") as f:
        f.truncate(CHUNK_BYTES - 2)
    (tmp_path / f"org-tiny-model@1@0@{fake_hash}0@bfloat16.pt").mkdir()  # a directory

    second = restart(engines, first, tmp_path)
    assert recover_disk_tier(second) == 2
    backend = disk_backend(second)
    assert {k.to_string() for k in backend.dict} == {MODEL + p.name[len(MODEL) : -len(".pt")] for p in real}
    assert not backend.contains(CacheEngineKey(MODEL, 1, 0, key.chunk_hash, torch.half))
    assert not backend.contains(CacheEngineKey(MODEL, 1, 0, int(fake_hash, 16), KV_DTYPE))


def test_a_truncated_chunk_of_the_request_cuts_the_hit_there(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    old, new = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    original = cache.clone()
    tokens = tokens_of(NUM_TOKENS)
    first = disk_engine(engines, tmp_path)
    store_and_flush(first, tokens, cache, old, expected_keys=2)
    # Request order, not the disk index's order (writes finish in any order).
    second_chunk_key = [key for _, _, key in first.token_database.process_tokens(tokens)][1]
    path = Path(disk_backend(first)._key_to_path(second_chunk_key))
    second = restart(engines, first, tmp_path)
    with open(path, "r+b") as f:
        f.truncate(CHUNK_BYTES // 2)  # a crash mid-write

    assert recover_disk_tier(second) == 1
    assert second.lookup(tokens) == CHUNK
    zero_cache(cache)
    mask = second.retrieve(tokens, kvcaches=cache.data, slot_mapping=new)
    assert int(mask.sum()) == CHUNK
    assert_cache_equal(cache, moved(original, CPU_HND, old, new, CHUNK))


def test_layerwise_keys_are_recovered(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    old, new = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    original = cache.clone()
    tokens = tokens_of(NUM_TOKENS)
    first = disk_engine(engines, tmp_path, layerwise=True)
    adapter_store(first, tokens, cache, old)
    per_layer = 2 * GEOM.num_layers
    wait_for(lambda: len(disk_backend(first).dict) >= per_layer, "layer chunks on disk")
    assert all(isinstance(k, LayerCacheEngineKey) for k in disk_backend(first).dict)

    second = restart(engines, first, tmp_path, layerwise=True)
    assert recover_disk_tier(second) == per_layer
    zero_cache(cache)
    mask = adapter_retrieve(second, tokens, cache, new)
    assert torch.equal(mask, torch.arange(NUM_TOKENS) < FULL)
    assert_cache_equal(cache, moved(original, CPU_HND, old, new, FULL))


def test_non_layerwise_engine_ignores_layerwise_files(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    old, _ = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    first = disk_engine(engines, tmp_path, layerwise=True)
    adapter_store(first, tokens_of(NUM_TOKENS), cache, old)
    wait_for(lambda: len(disk_backend(first).dict) >= 2 * GEOM.num_layers, "layer chunks on disk")
    second = restart(engines, first, tmp_path, layerwise=False)
    assert recover_disk_tier(second) == 0


def test_control_without_restart_the_tier_keeps_its_limit(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    """Control for the test below: LMCache alone evicts to stay within max_local_disk_size."""
    old, _ = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    engine = disk_engine(engines, tmp_path, max_disk_gib=2 * CHUNK_BYTES / 1024**3)
    store_and_flush(engine, tokens_of(NUM_TOKENS), cache, old, expected_keys=2)
    fresh = tokens_of(NUM_TOKENS, seed=5)
    engine.store(fresh, kvcaches=cache.data, slot_mapping=old)
    backend = disk_backend(engine)
    wait_for(lambda: not backend.disk_worker.put_tasks and engine.lookup(fresh, search_range=["LocalDiskBackend"]) == FULL, "new chunks on disk")
    assert sum(p.stat().st_size for p in chunk_files(tmp_path)) <= 2 * CHUNK_BYTES


def test_recovered_chunks_count_against_the_disk_size_limit(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    """max_local_disk_size holds two chunks. After recovering two and storing two new
    ones, LMCache must have evicted the old ones: the tier never exceeds its limit."""
    old, _ = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    limit_gib = 2 * CHUNK_BYTES / 1024**3
    first = disk_engine(engines, tmp_path, max_disk_gib=limit_gib)
    store_and_flush(first, tokens_of(NUM_TOKENS), cache, old, expected_keys=2)
    second = restart(engines, first, tmp_path, max_disk_gib=limit_gib)
    assert recover_disk_tier(second) == 2

    fresh = tokens_of(NUM_TOKENS, seed=5)
    second.store(fresh, kvcaches=cache.data, slot_mapping=old)
    backend = disk_backend(second)
    wait_for(lambda: not backend.disk_worker.put_tasks and second.lookup(fresh, search_range=["LocalDiskBackend"]) == FULL, "new chunks on disk")
    on_disk = sum(p.stat().st_size for p in chunk_files(tmp_path))
    assert on_disk <= 2 * CHUNK_BYTES, f"{len(chunk_files(tmp_path))} chunk files ({on_disk} bytes) in a {2 * CHUNK_BYTES}-byte tier"


# ------------------------------------------------------- upstream naming pinned


def test_upstream_disk_file_naming(engines: EngineFactory, tmp_path: Path) -> None:
    """disk_index.py parses file names back into keys: if LMCache changes its naming,
    recovery silently finds nothing. Pins _key_to_path and the key string formats."""
    backend = disk_backend(disk_engine(engines, tmp_path))
    key = CacheEngineKey("org/tiny-model", 1, 0, 0xABC123, torch.bfloat16)
    assert key.to_string() == "org/tiny-model@1@0@abc123@bfloat16"
    assert backend._key_to_path(key) == os.path.join(backend.path, key.to_string().replace("/", "-") + ".pt")
    assert backend._key_to_path(key) == os.path.join(str(tmp_path), "org-tiny-model@1@0@abc123@bfloat16.pt")
    layer_key = key.split_layers(2)[1]
    assert layer_key.to_string() == "org/tiny-model@1@0@abc123@bfloat16@1"
    assert LayerCacheEngineKey.from_string(layer_key.to_string()) == layer_key
    assert CacheEngineKey.from_string(key.to_string()) == key
    assert CacheEngineKey("m", 2, 1, 5, torch.float16).to_string() == "m@2@1@5@half"
