"""BlendBufferConnector on vLLM CPU's packed KV (format 12), with vLLM's writer as the reference.

- store: each segment's ``KV_2TD`` object holds exactly the K/V vLLM's
  ``cpu_attn_reshape_and_cache`` wrote for those tokens;
- load: segments loaded back at the positions they were stored at (no rotation)
  plus what the blender writes into the holes give a layer byte-identical to one
  vLLM wrote with the same rows; the ``vllm_cached_tokens`` rows stay the engine's;
- an ISA whose packing is unknown is refused before any copy.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from lmcache.v1.memory_management import MemoryFormat  # noqa: E402

from lmcache_ascend.blend.rope import KeyRotator, cos_sin_table  # noqa: E402
from lmcache_ascend.integrations.lmcache.blend_connector import BlendBufferConnector  # noqa: E402
from lmcache_ascend.integrations.lmcache import cpu_kv_layout  # noqa: E402
from tests.integrations.lmcache.conftest import ObjectPool  # noqa: E402
from tests.integrations.lmcache.test_cpu_kv_layout import vllm_write  # noqa: E402

LAYERS, BLOCKS, HEADS, BLOCK, HEAD = 2, 10, 2, 16, 64
HIDDEN = HEADS * HEAD
NUM_TOKENS = 70
SEGMENTS = [(0, 20), (30, 50), (55, 66)]
DTYPE = torch.bfloat16


def make_connector() -> BlendBufferConnector:
    conn = BlendBufferConnector(
        num_layers=LAYERS, hidden_dim=HIDDEN, use_mla=False, device="cpu", layout_hints={"kv_layout": "HND"}, kv_dtype=DTYPE
    )
    inv = 1.0 / (10000.0 ** (torch.arange(0, HEAD, 2).float() / HEAD))
    conn.rotator = KeyRotator(cos_sin_table(inv, 256), HEAD)
    return conn


def filled_cache(rows: list[torch.Tensor], slots: torch.Tensor, base: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """vLLM-written layers: ``rows[layer]`` ``[2, n, H]`` at ``slots`` (over ``base`` or zeros)."""
    out = []
    for layer, kv in enumerate(rows):
        t = base[layer].clone() if base is not None else torch.zeros(BLOCKS, HEADS, BLOCK, 2 * HEAD, dtype=DTYPE)
        vllm_write(t, kv[0].view(-1, HEADS, HEAD), kv[1].view(-1, HEADS, HEAD), slots)
        out.append(t)
    return out


@pytest.fixture
def setting() -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    slots = torch.randperm(BLOCKS * BLOCK, generator=gen)[:NUM_TOKENS]
    rows = [torch.randn(2, NUM_TOKENS, HIDDEN, generator=gen).to(DTYPE) for _ in range(LAYERS)]
    return slots, rows


def store(conn: BlendBufferConnector, pool: ObjectPool, cache: list[torch.Tensor], slots: torch.Tensor) -> list[list]:
    objs = [[pool.new((2, e - s, HIDDEN), MemoryFormat.KV_2TD) for s, e in SEGMENTS] for _ in range(LAYERS)]
    gen = conn.batched_from_gpu(objs, [s for s, _ in SEGMENTS], [e for _, e in SEGMENTS], kvcaches=cache, slot_mapping=slots)
    for _ in range(LAYERS + 1):
        next(gen)
    return objs


def test_store_reads_what_vllm_wrote(setting: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    slots, rows = setting
    pool = ObjectPool()
    objs = store(make_connector(), pool, filled_cache(rows, slots), slots)
    for layer in range(LAYERS):
        for obj, (s, e) in zip(objs[layer], SEGMENTS):
            assert torch.equal(obj.tensor, rows[layer][:, s:e])
            assert torch.equal(obj.metadata.cached_positions, torch.arange(s, e))
    pool.release()


def test_load_and_blender_writes_match_vllm_bytes(setting: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    slots, rows = setting
    pool = ObjectPool()
    conn = make_connector()
    objs = store(conn, pool, filled_cache(rows, slots), slots)
    fixed = 4  # the engine's own rows: never rewritten
    engine_rows = [torch.randn(2, NUM_TOKENS, HIDDEN).to(DTYPE) for _ in range(LAYERS)]
    target = filled_cache(engine_rows, slots)
    load = conn.batched_to_gpu(
        [s for s, _ in SEGMENTS], [e for _, e in SEGMENTS], kvcaches=target, slot_mapping=slots, vllm_cached_tokens=fixed
    )
    next(load)
    expected_rows = []
    for layer in range(LAYERS):
        load.send(objs[layer])
        k, v = conn.get_kv(layer)
        assert torch.equal(k[:fixed], engine_rows[layer][0, :fixed]), "engine rows must be loaded as they are"
        for s, e in SEGMENTS:  # same positions: K comes back unrotated
            assert torch.equal(k[max(s, fixed) : e], rows[layer][0, max(s, fixed) : e])
            assert torch.equal(v[max(s, fixed) : e], rows[layer][1, max(s, fixed) : e])
        k[20:30] = float(layer + 1)  # what the blender computes for the hole
        expected_rows.append(torch.stack([k.clone(), v.clone()]))
    next(load)
    with pytest.raises(StopIteration):
        next(load)
    engine_written = filled_cache(engine_rows, slots)
    expected = filled_cache([r[:, fixed:] for r in expected_rows], slots[fixed:], base=engine_written)
    for layer in range(LAYERS):
        assert torch.equal(target[layer].view(torch.uint8), expected[layer].view(torch.uint8))
    pool.release()


def test_unknown_isa_is_refused_before_any_copy(
    setting: tuple[torch.Tensor, list[torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    slots, rows = setting
    cache = filled_cache(rows, slots)
    before = [t.clone() for t in cache]
    monkeypatch.setattr(cpu_kv_layout, "attention_isa", lambda *a: "amx")
    conn = make_connector()
    with pytest.raises(ValueError, match="^kvcaches: vLLM CPU attention ISA 'amx'"):
        next(conn.batched_to_gpu([0], [10], kvcaches=cache, slot_mapping=slots))
    pool = ObjectPool()
    with pytest.raises(ValueError, match="^kvcaches: vLLM CPU attention ISA 'amx'"):
        store(conn, pool, cache, slots)
    assert all(torch.equal(a, b) for a, b in zip(cache, before))
    pool.release()
