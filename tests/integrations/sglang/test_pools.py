"""Reading SGLang's KV pool classes (built for real, on CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("sglang")

from sglang.srt.mem_cache import memory_pool as mp  # noqa: E402

from lmcache_ascend.core.detection import detect_kv_layout  # noqa: E402
from lmcache_ascend.core.kv_format import KVFormat  # noqa: E402
from lmcache_ascend.integrations.sglang.pools import describe_pool  # noqa: E402

COMMON = dict(size=64, dtype=torch.bfloat16, layer_num=3, device="cpu", enable_memory_saver=False)


def test_mha_pool_is_k_layers_then_v_layers() -> None:
    pool = mp.MHATokenToKVPool(page_size=1, head_num=2, head_dim=16, **COMMON)
    kv = describe_pool(pool)
    assert (kv.num_layers, kv.num_heads, kv.head_dim, kv.use_mla, kv.dtype) == (3, 2, 16, False, torch.bfloat16)
    assert kv.kvcaches[0] == pool.k_buffer and kv.kvcaches[1] == pool.v_buffer
    k, v = kv.layer(2)
    assert k is pool.k_buffer[2] and v is pool.v_buffer[2]
    layout = detect_kv_layout(kv.kvcaches, "sglang")
    assert layout.fmt == KVFormat.TWO_X_NL_X_NBBS_NH_HS
    assert layout.buffer_ptrs == [t.data_ptr() for t in pool.k_buffer + pool.v_buffer]


def test_ascend_pool_is_k_all_v_all() -> None:
    pool = mp.AscendTokenToKVPool(page_size=4, head_num=2, head_dim=16, **COMMON)
    kv = describe_pool(pool)
    assert (kv.num_layers, kv.num_heads, kv.head_dim, kv.use_mla) == (3, 2, 16, False)
    assert kv.kvcaches[0] is pool.k_buffer and kv.kvcaches[1] is pool.v_buffer
    assert kv.layer(1)[1].data_ptr() == pool.v_buffer[1].data_ptr()
    layout = detect_kv_layout(kv.kvcaches, "sglang")
    assert layout.fmt == KVFormat.TWO_X_NL_X_NB_BS_NH_HS
    assert (layout.geometry.num_blocks, layout.geometry.block_size) == (64 // 4 + 1, 4)
    assert layout.buffer_ptrs == [pool.kv_buffer[i, layer].data_ptr() for i in range(2) for layer in range(3)]


def test_mla_pool_is_one_latent_buffer_per_layer() -> None:
    pool = mp.MLATokenToKVPool(page_size=1, kv_lora_rank=32, qk_rope_head_dim=8, **COMMON)
    kv = describe_pool(pool)
    assert (kv.num_layers, kv.num_heads, kv.head_dim, kv.use_mla, kv.hidden_dim) == (3, 1, 40, True, 40)
    assert kv.kvcaches == pool.kv_buffer and kv.layer(0) is pool.kv_buffer[0]
    assert detect_kv_layout(kv.kvcaches, "sglang").fmt == KVFormat.NL_X_NBBS_ONE_HS


def test_pools_with_state_the_formats_do_not_carry_are_refused() -> None:
    nsa = mp.NSATokenToKVPool(
        size=64, page_size=64, kv_lora_rank=32, dtype=torch.bfloat16, qk_rope_head_dim=8, layer_num=2,
        device="cpu", index_head_dim=128, enable_memory_saver=False,
    )
    with pytest.raises(ValueError, match="kvcache: NSATokenToKVPool keeps extra state in 'index_k_with_scale_buffer'"):
        describe_pool(nsa)
    ascend_mla = mp.AscendMLAPagedTokenToKVPool(
        size=64, page_size=4, dtype=torch.bfloat16, kv_lora_rank=32, qk_rope_head_dim=8, index_head_dim=None,
        layer_num=2, device="cpu", enable_memory_saver=False,
    )
    with pytest.raises(ValueError, match=r"kvcache: AscendMLAPagedTokenToKVPool\.k_buffer .* differ"):
        describe_pool(ascend_mla)
    sparse = mp.DoubleSparseTokenToKVPool(page_size=1, head_num=2, head_dim=16, heavy_channel_num=4, **COMMON)
    with pytest.raises(ValueError, match="'label_buffer'"):
        describe_pool(sparse)


def test_malformed_pools_name_the_argument() -> None:
    with pytest.raises(ValueError, match="kvcache: SimpleNamespace has neither"):
        describe_pool(SimpleNamespace(full_kv_pool=None))
    layer = torch.zeros(8, 2, 4)
    with pytest.raises(ValueError, match=r"k_buffer\[1\] differs from layer 0"):
        describe_pool(SimpleNamespace(k_buffer=[layer, torch.zeros(8, 2, 4, dtype=torch.float16)], v_buffer=[layer, layer]))
    with pytest.raises(ValueError, match="v_buffer must be a non-empty list"):
        describe_pool(SimpleNamespace(k_buffer=[layer], v_buffer=[]))
    with pytest.raises(ValueError, match="differ"):
        describe_pool(SimpleNamespace(k_buffer=[layer], v_buffer=[layer, layer]))
    with pytest.raises(ValueError, match=r"kv_buffer layers must be \[slots, 1, dim\]"):
        describe_pool(SimpleNamespace(kv_buffer=[torch.zeros(8, 2, 4)]))
    with pytest.raises(ValueError, match=r"kv_buffer\[0\] must be a 3-D tensor"):
        describe_pool(SimpleNamespace(kv_buffer=[torch.zeros(8, 4)]))
    with pytest.raises(TypeError, match=r"k_buffer\[0\] must be a tensor, got str"):
        describe_pool(SimpleNamespace(k_buffer=["not a tensor"], v_buffer=[layer]))
    with pytest.raises(ValueError, match=r"layer 3 is outside the pool's 1 layers"):
        describe_pool(SimpleNamespace(k_buffer=[layer], v_buffer=[layer])).layer(3)
