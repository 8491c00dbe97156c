"""vLLM's KV-cache groups as the connector serves them (``integrations/vllm/hybrid_groups.py``).

Built from vLLM's own classes: ``KVCacheConfig`` / ``KVCacheGroupSpec`` and the
specs, ``SchedulerOutput`` / ``NewRequestData`` / ``CachedRequestData``, and
LMCache's ``ReqMeta`` / ``SaveSpec``. Slot mappings are checked against a
plain per-token loop over the block lists.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from lmcache.integration.vllm.vllm_v1_adapter import (
    LMCacheConnectorMetadata,
    ReqMeta,
    SaveSpec,
)
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from vllm.v1.kv_cache_interface import (
    ChunkedLocalAttentionSpec,
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
    MambaSpec,
    RSWASpec,
    SlidingWindowSpec,
    UniformTypeKVCacheSpecs,
)

from lmcache_ascend.integrations.vllm import hybrid_groups as hg

BF16 = torch.bfloat16
ATTN = {"num_kv_heads": 2, "head_size": 64, "dtype": BF16}


def full(block: int = 16) -> FullAttentionSpec:
    return FullAttentionSpec(block, **ATTN)


def window(w: int = 32, block: int = 16, **kw: object) -> SlidingWindowSpec:
    return SlidingWindowSpec(block, sliding_window=w, **ATTN, **kw)


def config(*specs: object) -> KVCacheConfig:
    groups = [KVCacheGroupSpec([f"layers.{i}.attn", f"layers.{i + 10}.attn"], s) for i, s in enumerate(specs)]
    return KVCacheConfig(num_blocks=64, kv_cache_tensors=[], kv_cache_groups=groups)


def lm_config(**kw: object) -> SimpleNamespace:
    base = {"chunk_size": 64, "use_layerwise": False, "enable_blending": False, "remote_url": None}
    return SimpleNamespace(**{**base, **kw})


# ---------------------------------------------------------------- groups from KVCacheConfig


def test_groups_kinds_windows_and_block_sizes() -> None:
    groups, sizes = hg.kv_groups(config(window(32, 16), full(16)), whole_blocks=True)
    assert [(g.kind, g.sliding_window, g.window_align) for g in groups] == [("sliding_window", 32, 16), ("full", None, 1)]
    assert sizes == (16, 16)
    assert groups[0].layer_names == ("layers.0.attn", "layers.10.attn")
    assert hg.is_hybrid(groups)
    device_groups, _ = hg.kv_groups(config(window(32, 16), full(16)), whole_blocks=False)
    assert device_groups[0].window_align == 1  # device KV moves single tokens


def test_one_full_attention_group_is_the_single_group_path() -> None:
    groups, _ = hg.kv_groups(config(full()))
    assert not hg.is_hybrid(groups)
    assert hg.is_hybrid(hg.kv_groups(config(window()))[0])  # one sliding-window group: null blocks too


def test_uniform_type_specs_are_unwrapped() -> None:
    uniform = UniformTypeKVCacheSpecs(16, kv_cache_specs={"a": window(32), "b": window(32)})
    groups, _ = hg.kv_groups(config(uniform, full()))
    assert groups[0].kind == "sliding_window" and groups[0].sliding_window == 32
    mixed = UniformTypeKVCacheSpecs(16, kv_cache_specs={"a": window(32), "b": window(48)})
    with pytest.raises(ValueError, match="KV-cache group 0 .*different attention kinds"):
        hg.kv_groups(config(mixed, full()))


@pytest.mark.parametrize(
    "spec,match",
    [
        (MambaSpec(16, shapes=((2, 4),), dtypes=(BF16,)), "group 1 \\(MambaSpec.*state or a layout"),
        (ChunkedLocalAttentionSpec(16, attention_chunk_size=64, **ATTN), "ChunkedLocalAttentionSpec"),
        (RSWASpec(16, **ATTN, rswa_window=32), "RSWASpec"),  # a FullAttentionSpec subclass: refused by exact class
        (FullAttentionSpec(16, **ATTN, tokens_per_state=4), "compresses 4 tokens"),
        (window(32, extra_retained_tokens=3), "retains 3 tokens"),
    ],
    ids=["mamba", "chunked-local", "rswa", "compressed", "spec-decode-retained"],
)
def test_groups_that_cannot_be_served_are_refused_by_name(spec: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hg.kv_groups(config(full(), spec))


def test_untransferable_group_and_empty_config_are_refused() -> None:
    cfg = config(full(), window())
    cfg.kv_cache_groups[1].enable_kv_transfer = False
    with pytest.raises(ValueError, match="KV-cache group 1 .*not transferable"):
        hg.kv_groups(cfg)
    with pytest.raises(ValueError, match="no KV-cache groups"):
        hg.kv_groups(KVCacheConfig(num_blocks=1, kv_cache_tensors=[], kv_cache_groups=[]))


@pytest.mark.parametrize(
    "kw,whole,match",
    [
        ({"chunk_size": 40}, True, "KV-cache group 0 .*block size 16 does not divide LMCache chunk_size 40"),
        ({"chunk_size": 16}, True, "group 0 .*sliding window 32 exceeds LMCache chunk_size 16"),
        ({"use_layerwise": True}, True, "use_layerwise"),
        ({"enable_blending": True}, True, "enable_blending"),
        ({"remote_url": "redis://127.0.0.1:6379"}, True, "remote_url"),
    ],
)
def test_start_up_refusals(kw: dict, whole: bool, match: str) -> None:
    groups, sizes = hg.kv_groups(config(window(32, 16), full(16)), whole)
    with pytest.raises(ValueError, match=match):
        hg.check_hybrid_config(groups, sizes, lm_config(**kw), whole)


def test_a_chunk_that_is_not_whole_blocks_is_fine_on_device() -> None:
    groups, sizes = hg.kv_groups(config(window(32, 16), full(16)))
    hg.check_hybrid_config(groups, sizes, lm_config(chunk_size=40), whole_blocks=False)
    assert hg.tail_block((16, 32, 48)) == 96


# ---------------------------------------------------------------- block tables and slot mappings


def new_req(req_id: str, block_ids: tuple[list[int], ...]) -> NewRequestData:
    return NewRequestData(req_id, [1] * 8, [], None, None, block_ids, 0, None)


def step(new: list[NewRequestData] = (), cached: list[tuple[str, tuple[list[int], ...] | None]] = (), resumed: set[str] = frozenset(), finished: set[str] = frozenset()) -> SchedulerOutput:  # type: ignore[assignment]
    ids = [r for r, _ in cached]
    c = CachedRequestData(ids, set(resumed), [[] for _ in ids], {}, [b for _, b in cached], [0] * len(ids), [0] * len(ids))
    return SchedulerOutput(list(new), c, {}, 0, {}, {}, set(finished), [])


def reference_slots(blocks: list[list[int]], sizes: tuple[int, ...], num_tokens: int) -> list[list[int]]:
    rows = []
    for t in range(num_tokens):
        row = []
        for ids, bs in zip(blocks, sizes):
            b = ids[t // bs] if t // bs < len(ids) else 0
            row.append(-1 if b == 0 else b * bs + t % bs)
        rows.append(row)
    return rows


def tables(chunk: int = 64, sizes: tuple[int, int] = (16, 16)) -> hg.GroupBlockTables:
    groups, _ = hg.kv_groups(config(window(32, sizes[0]), full(sizes[1])), whole_blocks=True)
    return hg.GroupBlockTables(groups, sizes, chunk)


def test_block_tables_follow_new_cached_resumed_and_finished_requests() -> None:
    t = tables()
    t.update(step(new=[new_req("a", ([1, 2], [3, 4])), new_req("b", ([5], [6]))]))
    t.update(step(cached=[("a", ([7], [8])), ("b", None)]))
    assert t.slot_mapping("a", 64).tolist() == reference_slots([[1, 2, 7], [3, 4, 8]], (16, 16), 64)
    assert t.slot_mapping("b", 16).tolist() == reference_slots([[5], [6]], (16, 16), 16)
    t.update(step(cached=[("a", ([0, 0, 9, 10], [11, 12, 13, 14]))], resumed={"a"}))  # preempted and resumed
    assert t.slot_mapping("a", 64).tolist() == reference_slots([[0, 0, 9, 10], [11, 12, 13, 14]], (16, 16), 64)
    t.update(step(finished={"b"}))
    assert len(t) == 1
    t.forget("a")
    assert len(t) == 0
    with pytest.raises(ValueError, match="request c: block_ids has 1 groups, the model 2"):
        t.update(step(new=[new_req("c", ([1],))]))


def test_slot_mapping_per_group_block_sizes_and_null_blocks() -> None:
    t = tables(chunk=96, sizes=(32, 16))
    t.update(step(new=[new_req("a", ([0, 5, 6], [1, 2, 3, 4, 7, 8]))]))
    slots = t.slot_mapping("a", 90)
    assert slots.dtype == torch.int64 and slots.shape == (90, 2)
    assert slots.tolist() == reference_slots([[0, 5, 6], [1, 2, 3, 4, 7, 8]], (32, 16), 90)
    assert (slots[:32, 0] == -1).all() and (slots[32:, 0] >= 0).all()


def test_stores_start_after_every_chunk_that_needs_a_null_block() -> None:
    t = tables(chunk=64)  # window 32, blocks of 16
    # Blocks 0..2 of the window group are null (a prefix hit): chunk [0, 64) needs tokens
    # 32..63 (blocks 2, 3): block 2 is null -> not stored; chunk [64, 128) needs 96..127: fine.
    t.update(step(new=[new_req("a", ([0, 0, 0, 4, 5, 6, 7, 8], list(range(10, 18))))]))
    slots = t.slot_mapping("a", 128)
    assert t.first_storable(slots, 0) == 64
    assert t.first_storable(slots, 64) == 64
    assert t.first_storable(slots, 100) == 64  # aligned down to its chunk, as LMCache does
    t.update(step(new=[new_req("b", ([0, 0, 3, 4, 5, 6, 7, 8], list(range(10, 18))))]))
    assert t.first_storable(t.slot_mapping("b", 128), 0) == 0  # chunk 0's window (32..63) is live


def test_apply_rewrites_slot_mappings_and_save_specs_of_lmcache_metadata() -> None:
    t = tables(chunk=64)
    t.update(step(new=[new_req("a", ([0, 0, 0, 4, 5, 6, 7, 8], list(range(10, 18)))), new_req("b", ([1, 2], [3, 4]))]))
    meta = LMCacheConnectorMetadata()
    meta.add_request(ReqMeta("a", list(range(128)), torch.arange(128), save_spec=SaveSpec(0, True)))
    meta.add_request(ReqMeta("b", list(range(20)), torch.arange(20), save_spec=SaveSpec(0, False)))
    t.apply(meta)
    a, b = meta.requests
    assert a.slot_mapping.tolist() == reference_slots([[0, 0, 0, 4, 5, 6, 7, 8], list(range(10, 18))], (16, 16), 128)
    assert a.save_spec.skip_leading_tokens == 64
    assert b.slot_mapping.shape == (20, 2) and b.save_spec.skip_leading_tokens == 0
    stray = LMCacheConnectorMetadata()
    stray.add_request(ReqMeta("zz", [1], torch.arange(1)))
    with pytest.raises(ValueError, match="request zz: no block ids"):
        t.apply(stray)
