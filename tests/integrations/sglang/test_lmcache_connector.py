"""The SGLang-side LMCache connector and the layer hook: set-up, bad input, ordering."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

pytest.importorskip("sglang")

from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool  # noqa: E402

from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector  # noqa: E402
from lmcache_ascend.integrations.sglang.device_connectors import SGLangLayerwiseKVConnector, create_device_connector  # noqa: E402
from lmcache_ascend.integrations.sglang.lmcache_connector import SGLangLMCacheConnector, _leading_run  # noqa: E402
from lmcache_ascend.integrations.sglang.pools import PoolKV, describe_pool  # noqa: E402
from lmcache_ascend.integrations.sglang.radix_cache import LayerLoadHook  # noqa: E402

POOL = dict(size=64, page_size=1, dtype=torch.bfloat16, layer_num=2, device="cpu", enable_memory_saver=False)


def mha_pool() -> PoolKV:
    return describe_pool(MHATokenToKVPool(head_num=2, head_dim=16, **POOL))


@pytest.fixture
def connector(lmcache_config: Callable[..., Any]) -> SGLangLMCacheConnector:
    lmcache_config(chunk_size=16)
    return SGLangLMCacheConnector(pool=mha_pool(), model_name="org/model")


def test_engine_follows_the_lmcache_config(lmcache_config: Callable[..., Any]) -> None:
    lmcache_config(chunk_size=32, use_layerwise=True)
    conn = SGLangLMCacheConnector(pool=mha_pool(), model_name="org/model")
    assert conn.chunk_size() == 32 and conn.layerwise
    assert isinstance(conn.engine.gpu_connector, SGLangLayerwiseKVConnector)
    meta = conn.engine.metadata
    assert (meta.model_name, meta.kv_shape, meta.kv_dtype, meta.use_mla) == ("org/model", (2, 2, 32, 2, 16), torch.bfloat16, False)
    assert conn.engine.config.pre_caching_hash_algorithm == "sha256_cbor"  # keys survive a restart
    conn.close()
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    assert LMCacheEngineBuilder.get("sglang-instance") is None


def test_mla_metadata(lmcache_config: Callable[..., Any]) -> None:
    lmcache_config(chunk_size=16)
    pool = describe_pool(MLATokenToKVPool(kv_lora_rank=32, qk_rope_head_dim=8, **POOL))
    conn = SGLangLMCacheConnector(pool=pool, model_name="org/mla")
    assert isinstance(conn.engine.gpu_connector, PagedKVConnector)
    assert (conn.engine.metadata.kv_shape, conn.engine.metadata.use_mla) == ((2, 1, 16, 1, 40), True)


def test_a_second_pool_reuses_the_engine_only_when_it_matches(connector: SGLangLMCacheConnector) -> None:
    again = SGLangLMCacheConnector(pool=mha_pool(), model_name="org/model")
    assert again.engine is connector.engine
    other = describe_pool(MHATokenToKVPool(head_num=4, head_dim=16, **POOL))
    with pytest.raises(ValueError, match=r"holds KV of shape \(2, 2, 16, 2, 16\).*this pool \(2, 2, 16, 4, 16\)"):
        SGLangLMCacheConnector(pool=other, model_name="org/model")


def test_bad_requests_name_the_argument(connector: SGLangLMCacheConnector) -> None:
    tokens = list(range(20))
    with pytest.raises(ValueError, match=r"load\.slot_mapping must hold one slot per token \(20\)"):
        connector.start_load_kv(SimpleNamespace(token_ids=tokens, slot_mapping=torch.arange(19), offset=0))
    with pytest.raises(TypeError, match=r"load\.slot_mapping must be a tensor, got list"):
        connector.start_load_kv(SimpleNamespace(token_ids=tokens, slot_mapping=list(range(20)), offset=0))
    with pytest.raises(ValueError, match=r"load\.offset 21 is outside the 20 tokens"):
        connector.start_load_kv(SimpleNamespace(token_ids=tokens, slot_mapping=torch.arange(20), offset=21))
    with pytest.raises(ValueError, match=r"store\.kv_indices must hold one slot per token"):
        connector.store_kv(SimpleNamespace(token_ids=tokens, kv_indices=torch.arange(2), offset=0))
    with pytest.raises(ValueError, match=r"load\.token_ids must be one sequence"):
        connector.start_load_kv(SimpleNamespace(token_ids=torch.zeros(2, 10), slot_mapping=torch.arange(20), offset=0))
    assert dict(connector.engine.lookup_pins) == {}


def test_slots_outside_the_pool_are_refused_before_any_copy(connector: SGLangLMCacheConnector) -> None:
    slots = torch.arange(16)
    slots[3] = 10_000
    with pytest.raises(ValueError, match="slot_mapping"):
        connector.store_kv(SimpleNamespace(token_ids=list(range(16)), kv_indices=slots, offset=0))


def test_tensor_parallel_needs_sglang_group(lmcache_config: Callable[..., Any]) -> None:
    lmcache_config()
    with pytest.raises(ValueError, match="tp_group must be SGLang's TP GroupCoordinator"):
        SGLangLMCacheConnector(pool=mha_pool(), model_name="m", tp_size=2, rank=0, tp_group=None)
    with pytest.raises(ValueError, match="rank 2 / tp_size 2"):
        SGLangLMCacheConnector(pool=mha_pool(), model_name="m", tp_size=2, rank=2)


def test_blending_is_refused() -> None:
    with pytest.raises(ValueError, match="enable_blending"):
        create_device_connector(SimpleNamespace(enable_blending=True, use_layerwise=False), mha_pool())


def test_radix_cache_needs_the_model_config(lmcache_config: Callable[..., Any], hooked: type) -> None:
    lmcache_config()
    pool = MHATokenToKVPool(head_num=2, head_dim=16, **POOL)
    allocator = SimpleNamespace(get_kvcache=lambda: pool, device="cpu")
    with pytest.raises(ValueError, match="model_config is required"):
        hooked(req_to_token_pool=None, token_to_kv_pool_allocator=allocator, page_size=1, model_config=None)


def test_layer_hook_waits_for_earlier_loads_before_issuing_the_next() -> None:
    log: list[tuple[str, int]] = []

    class Stream:
        def synchronize(self) -> None:
            log.append(("synchronize", -1))

    fake = SimpleNamespace(load_stream=Stream(), load_kv_layerwise=lambda layer: log.append(("load after", layer)))
    hook = LayerLoadHook(fake)  # type: ignore[arg-type]
    hook.wait_until(0)
    hook.wait_until(1)
    assert log == [("synchronize", -1), ("load after", 0), ("synchronize", -1), ("load after", 1)]


def test_leading_run() -> None:
    assert _leading_run(torch.tensor([True, True, False, True])) == 2
    assert _leading_run(torch.tensor([False, True])) == 0
    assert _leading_run(torch.tensor([True] * 5)) == 5
    assert _leading_run(torch.tensor([], dtype=torch.bool)) == 0
