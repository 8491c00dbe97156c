"""BlendBufferConnector (``KV_2TD``) driven as LMCacheEngine.store_layer and the
blender drive it, on vLLM flash (format 1) and vllm-ascend (K, V) tuples (16):

- store: each segment's object holds its paged rows, ``cached_positions`` = its positions;
- load: after ``send`` of layer i, ``get_kv(i)`` holds the segments with K re-rotated
  (bit-equal to LMCache's torch baseline), V as stored, gaps zero, the engine's own
  rows for ``vllm_cached_tokens``; what the blender writes there reaches the paged
  cache, except the engine's rows;
- refused: MLA, loads without a rotator or positions (vLLM CPU's packed format 12:
  tests/integrations/lmcache/test_blend_cpu_kv.py).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import torch
from lmcache.v1.memory_management import MemoryFormat, MemoryObj
from lmcache.v1.platform.torch_ops import pos_kernels as baseline

from lmcache_ascend.blend.rope import KeyRotator, cos_sin_table
from lmcache_ascend.integrations.lmcache.blend_connector import BlendBufferConnector
from tests.integrations.lmcache.conftest import (
    ASCEND_KV_TUPLES,
    FLASH_NHD,
    CacheMaker,
    EngineLayout,
    ObjectPool,
    reference_objects,
)
from tests.kernels.reference import Geom, PagedCache, random_slots

GEOM = Geom(num_layers=3, num_blocks=12, block_size=16, num_heads=2, head_size=8)
HIDDEN = GEOM.num_heads * GEOM.head_size
NUM_TOKENS = 90
SEGMENTS = [(0, 20), (30, 50), (60, 75)]  # gaps: 20-30, 50-60, 75-90
MAX_POS = 512
LAYOUTS = (FLASH_NHD, ASCEND_KV_TUPLES)


def rotator() -> KeyRotator:
    inv = 1.0 / (10000.0 ** (torch.arange(0, GEOM.head_size, 2).float() / GEOM.head_size))
    return KeyRotator(cos_sin_table(inv, MAX_POS), GEOM.head_size)


def connector(layout: EngineLayout, with_rotator: bool = True) -> BlendBufferConnector:
    conn = BlendBufferConnector(
        num_layers=GEOM.num_layers, hidden_dim=HIDDEN, use_mla=False, device="cpu", layout_hints=layout.hints
    )
    conn.rotator = rotator() if with_rotator else None
    return conn


def kwargs_for(cache: PagedCache, slots: torch.Tensor, **extra: Any) -> dict[str, Any]:
    return dict(kvcaches=cache.data, slot_mapping=slots, sync=True, **extra)


def new_objects(pool: ObjectPool, conn: BlendBufferConnector) -> list[list[MemoryObj]]:
    return [[pool.new(tuple(conn.get_shape(e - s)), MemoryFormat.KV_2TD) for s, e in SEGMENTS] for _ in range(GEOM.num_layers)]


def drive_store(gen: Generator[None, None, None]) -> None:
    for _ in range(GEOM.num_layers + 1):
        next(gen)
    with pytest.raises(StopIteration):
        next(gen)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: x.name)
def test_store_copies_segments_and_their_positions(
    layout: EngineLayout, make_cache: CacheMaker, pool: ObjectPool, gen: torch.Generator
) -> None:
    cache = make_cache(layout, GEOM)
    slots = random_slots(NUM_TOKENS, GEOM.num_slots, gen)
    conn = connector(layout)
    objs = new_objects(pool, conn)
    starts, ends = [s for s, _ in SEGMENTS], [e for _, e in SEGMENTS]
    drive_store(conn.batched_from_gpu(objs, starts, ends, **kwargs_for(cache, slots)))
    want = reference_objects(cache, layout, slots, starts, ends)  # [2, L, T, H] per segment
    for layer in range(GEOM.num_layers):
        for i, (s, e) in enumerate(SEGMENTS):
            obj = objs[layer][i]
            assert torch.equal(obj.tensor, want[i][:, layer]), f"layer {layer} segment {i}"
            assert obj.metadata.fmt == MemoryFormat.KV_2TD
            assert torch.equal(obj.metadata.cached_positions, torch.arange(s, e))


def stored_objects(pool: ObjectPool, conn: BlendBufferConnector, gen: torch.Generator) -> list[list[MemoryObj]]:
    """Random segment KV as if stored at positions 100.. (other than where it loads)."""
    objs = new_objects(pool, conn)
    for layer_objs in objs:
        for obj, (s, e) in zip(layer_objs, SEGMENTS):
            obj.tensor.copy_(torch.randn(obj.tensor.shape, generator=gen).to(obj.tensor.dtype))
            obj.metadata.cached_positions = torch.arange(100 + 3 * s, 100 + 3 * s + e - s)
    return objs


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: x.name)
def test_load_rerotates_zeroes_gaps_and_writes_back(
    layout: EngineLayout, make_cache: CacheMaker, pool: ObjectPool, gen: torch.Generator
) -> None:
    cache = make_cache(layout, GEOM)
    original = cache.clone()
    slots = random_slots(NUM_TOKENS, GEOM.num_slots, gen)
    conn = connector(layout)
    objs = stored_objects(pool, conn, gen)
    fixed = 5
    engine_rows = reference_objects(original, layout, slots, [0], [fixed])[0]
    load = conn.batched_to_gpu([s for s, _ in SEGMENTS], [e for _, e in SEGMENTS], **kwargs_for(cache, slots, vllm_cached_tokens=fixed))
    next(load)
    for layer in range(GEOM.num_layers):
        load.send(objs[layer])
        k, v = conn.get_kv(layer)
        for obj, (s, e) in zip(objs[layer], SEGMENTS):
            want_k = obj.tensor[0].clone().view(e - s, GEOM.num_heads, GEOM.head_size)
            baseline.rotary_embedding_k_fused(
                obj.metadata.cached_positions, torch.arange(s, e), want_k, GEOM.head_size, conn.rotator.table, True
            )
            lo = max(s, fixed)  # rows under vllm_cached_tokens hold the engine's own KV
            assert torch.equal(k[lo:e], want_k.view(e - s, -1)[lo - s :]), f"layer {layer} K [{s}, {e})"
            assert torch.equal(v[lo:e], obj.tensor[1][lo - s :])
        assert torch.equal(k[:fixed], engine_rows[0, layer]) and torch.equal(v[:fixed], engine_rows[1, layer])
        for a, b in ((20, 30), (50, 60), (75, NUM_TOKENS)):
            assert not k[a:b].any() and not v[a:b].any(), f"layer {layer}: gap [{a}, {b}) not zero"
        k[20:30] = float(layer + 1)  # what the blender computes for the hole
    next(load)
    with pytest.raises(StopIteration):
        next(load)
    got = reference_objects(cache, layout, slots, [0], [NUM_TOKENS])[0]
    for layer in range(GEOM.num_layers):
        assert torch.all(got[0, layer, 20:30] == layer + 1)
        assert not got[:, layer, 50:60].any()
        assert torch.equal(got[:, layer, :fixed], engine_rows[:, layer])


def test_mla_is_refused() -> None:
    with pytest.raises(ValueError, match="^use_mla"):
        BlendBufferConnector(num_layers=2, hidden_dim=8, use_mla=True, device="cpu")


def test_bad_loads_are_refused(make_cache: CacheMaker, pool: ObjectPool, gen: torch.Generator) -> None:
    cache = make_cache(FLASH_NHD, GEOM)
    slots = random_slots(NUM_TOKENS, GEOM.num_slots, gen)
    kw = kwargs_for(cache, slots)
    with pytest.raises(ValueError, match="^rotator"):
        next(connector(FLASH_NHD, with_rotator=False).batched_to_gpu([0], [10], **kw))
    with pytest.raises(ValueError, match="^starts/ends"):
        next(connector(FLASH_NHD).batched_to_gpu([80], [NUM_TOKENS + 1], **kw))
    conn = connector(FLASH_NHD)
    objs = stored_objects(pool, conn, gen)
    load = conn.batched_to_gpu([s for s, _ in SEGMENTS], [e for _, e in SEGMENTS], **kw)
    next(load)
    with pytest.raises(ValueError, match="expected 3 memory objects"):
        load.send(objs[0][:2])
    objs[0][1].metadata.cached_positions = None
    load = conn.batched_to_gpu([s for s, _ in SEGMENTS], [e for _, e in SEGMENTS], **kw)
    next(load)
    with pytest.raises(ValueError, match="cached_positions"):
        load.send(objs[0])
    with pytest.raises(ValueError, match="^layer_id"):
        connector(FLASH_NHD).get_kv(0)


def test_shape_and_format() -> None:
    conn = connector(FLASH_NHD)
    assert conn.get_shape(7) == torch.Size([2, 7, HIDDEN])
    assert conn.memory_format == MemoryFormat.KV_2TD


def test_lmcache_config_selects_the_blend_connector() -> None:
    from lmcache.v1.config import LMCacheEngineConfig

    from lmcache_ascend.integrations.lmcache import plugin
    from tests.integrations.lmcache.conftest import make_metadata

    meta = make_metadata(num_layers=2, num_heads=2, head_size=8)
    cfg = LMCacheEngineConfig.from_defaults(use_layerwise=True, enable_blending=True)
    conn = plugin.create_device_connector(cfg, meta, torch.device("cpu"), {"kv_layout": "NHD"})
    assert type(conn) is BlendBufferConnector
    assert (conn.num_layers, conn.hidden_dim_size, conn.memory_format) == (2, 16, MemoryFormat.KV_2TD)
    cfg = LMCacheEngineConfig.from_defaults(use_layerwise=False, enable_blending=True)
    with pytest.raises(ValueError, match="^enable_blending needs use_layerwise"):
        plugin.create_device_connector(cfg, meta, torch.device("cpu"), None)
