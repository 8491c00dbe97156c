"""Re-indexing chunks shorter than ``chunk_size`` (prompt tails, ``save_unfull_chunk``).

A tail's file size alone cannot tell it from a chunk cut short by a crash, so
``plugin.guard_disk_writes`` writes a ``.pt.shape`` sidecar once the tail's file
is complete, and recovery takes a shorter file only with a sidecar that agrees
with it. 592 tokens, chunk 256, block 16: two full chunks and an 80-token tail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lmcache_ascend.integrations.lmcache import plugin
from lmcache_ascend.integrations.lmcache.disk_index import SHAPE_SUFFIX
from tests.integrations.lmcache.conftest import CPU_HND, CacheMaker, EngineFactory, SlotPair, paged_engine, zero_cache
from tests.integrations.lmcache.test_disk_index import MODEL, chunk_files, disk_backend, slots_pair, store_and_flush, wait_for  # noqa: F401
from tests.integrations.lmcache.test_engine_integration import CHUNK, GEOM, moved, tokens_of
from tests.kernels.reference import assert_cache_equal

TOKENS = 592
TAIL = TOKENS - 2 * CHUNK


def tail_engine(engines: EngineFactory, path: Path) -> Any:
    return paged_engine(engines, GEOM, CHUNK, CPU_HND, model_name=MODEL, local_disk=f"file://{path}", max_local_disk_size=0.001, save_unfull_chunk=True)


def stored_with_tail(engines: EngineFactory, path: Path, cache: Any, slots: torch.Tensor) -> tuple[Any, Path]:
    """Store TOKENS; the engine (to restart) and the tail's chunk file."""
    engine = tail_engine(engines, path)
    tokens = tokens_of(TOKENS)
    store_and_flush(engine, tokens, cache, slots, expected_keys=3)
    tail_key = [key for _, _, key in engine.token_database.process_tokens(tokens)][-1]
    tail = Path(disk_backend(engine)._key_to_path(tail_key))
    # The sidecar is written right after the chunk file, which LMCache indexes first.
    sidecar = Path(str(tail) + SHAPE_SUFFIX)
    wait_for(sidecar.exists, f"the tail's sidecar {sidecar.name}")
    return engine, tail


def restarted(engines: EngineFactory, engine: Any, path: Path) -> Any:
    engines.destroy(engines.name_of(engine))
    return tail_engine(engines, path)


@pytest.mark.usefixtures("disk_writes_guarded")
def test_a_tail_is_found_again_with_the_exact_bytes(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    old, new = slots_pair
    cache = make_cache(CPU_HND, GEOM)
    original = cache.clone()
    first, tail = stored_with_tail(engines, tmp_path, cache, old[:TOKENS])
    sidecars = sorted(tmp_path.glob("*" + SHAPE_SUFFIX))
    assert sidecars == [Path(str(tail) + SHAPE_SUFFIX)]  # full chunks need none
    assert json.loads(sidecars[0].read_text())["shape"][2] == TAIL

    second = restarted(engines, first, tmp_path)
    assert plugin.recover_disk_tier(second) == 3
    tokens = tokens_of(TOKENS)
    assert second.lookup(tokens) == TOKENS
    zero_cache(cache)
    mask = second.retrieve(tokens, kvcaches=cache.data, slot_mapping=new[:TOKENS])
    assert int(mask.sum()) == TOKENS
    assert_cache_equal(cache, moved(original, CPU_HND, old[:TOKENS], new[:TOKENS], TOKENS))


@pytest.mark.usefixtures("disk_writes_guarded")
@pytest.mark.parametrize("damage", ["no sidecar", "other length", "not json", "longer than a chunk"])
def test_a_tail_without_a_sidecar_that_agrees_is_ignored(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair, damage: str) -> None:
    first, tail = stored_with_tail(engines, tmp_path, make_cache(CPU_HND, GEOM), slots_pair[0][:TOKENS])
    sidecar = Path(str(tail) + SHAPE_SUFFIX)
    shape = json.loads(sidecar.read_text())["shape"]
    if damage == "no sidecar":
        sidecar.unlink()  # a crash between the two writes, or a file from before sidecars
    elif damage == "other length":
        sidecar.write_text(json.dumps({"shape": shape[:2] + [TAIL // 2] + shape[3:]}))
    elif damage == "not json":
        sidecar.write_text("{")
    else:
        sidecar.write_text(json.dumps({"shape": shape[:2] + [2 * CHUNK] + shape[3:]}))

    second = restarted(engines, first, tmp_path)
    assert plugin.recover_disk_tier(second) == 2
    assert second.lookup(tokens_of(TOKENS)) == 2 * CHUNK


@pytest.mark.usefixtures("disk_writes_guarded")
def test_a_sidecar_whose_chunk_was_evicted_is_removed(engines: EngineFactory, tmp_path: Path, make_cache: CacheMaker, slots_pair: SlotPair) -> None:
    first, tail = stored_with_tail(engines, tmp_path, make_cache(CPU_HND, GEOM), slots_pair[0][:TOKENS])
    second = restarted(engines, first, tmp_path)
    tail.unlink()
    assert plugin.recover_disk_tier(second) == 2
    assert not list(tmp_path.glob("*" + SHAPE_SUFFIX))
    assert len(chunk_files(tmp_path)) == 2
