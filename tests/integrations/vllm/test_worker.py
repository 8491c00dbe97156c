"""Worker-side construction, KV registration and per-step state of the connector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lmcache.integration.vllm.lmcache_connector_v1 import LMCacheConnectorV1Dynamic
from lmcache.integration.vllm.vllm_v1_adapter import LMCacheConnectorMetadata
from lmcache.v1.cache_engine import LMCacheEngineBuilder
from vllm.distributed.kv_transfer import kv_transfer_state
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.utils.hashing import sha256, sha256_cbor

from lmcache_ascend.integrations.lmcache import plugin
from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
from lmcache_ascend.integrations.vllm.connector_v1 import LMCacheAscendConnectorV1Dynamic
from lmcache_ascend.integrations.vllm.block_tail import TAILS_KEY
from tests.integrations.vllm import helpers
from tests.integrations.vllm.conftest import ENGINE_NAME, MakeConnectors

# tiny model: 4 layers, 2 KV heads of 64; LMCache kv_shape = (L, K/V, chunk, heads, head)
KV_SHAPE = (4, 2, helpers.CHUNK, 2, 64)


def test_worker_init_registers_engine_with_paged_connector(make_connectors: MakeConnectors) -> None:
    c = make_connectors(register=False)
    engine = LMCacheEngineBuilder.get(ENGINE_NAME)

    assert type(c.worker) is LMCacheAscendConnectorV1Dynamic
    assert c.worker.role == KVConnectorRole.WORKER
    assert engine is not None and c.worker.lmcache_engine is engine
    assert type(engine.gpu_connector) is PagedKVConnector
    assert engine.metadata.kv_shape == KV_SHAPE
    assert engine.metadata.kv_dtype == torch.bfloat16
    assert engine.metadata.engine_id == c.config.kv_transfer_config.engine_id


def test_worker_init_makes_chunk_hashes_deterministic(make_connectors: MakeConnectors) -> None:
    c = make_connectors(register=False)
    engine = c.worker.lmcache_engine

    assert engine.config.pre_caching_hash_algorithm == "sha256_cbor"
    assert engine.token_database.hash_func is sha256_cbor
    # the scheduler side (its own process in vLLM) hashes lookups the same way
    assert c.scheduler._lmcache_engine.lookup_client.token_database.hash_func is sha256_cbor


def test_explicit_hash_algorithm_is_kept(make_connectors: MakeConnectors, lmcache_env: pytest.MonkeyPatch) -> None:
    lmcache_env.setenv("LMCACHE_PRE_CACHING_HASH_ALGORITHM", "sha256")
    c = make_connectors(register=False)

    assert c.worker.lmcache_engine.config.pre_caching_hash_algorithm == "sha256"
    assert c.worker.lmcache_engine.token_database.hash_func is sha256


def test_layerwise_setting_selects_layerwise_connector(
    make_connectors: MakeConnectors, lmcache_env: pytest.MonkeyPatch
) -> None:
    lmcache_env.setenv("LMCACHE_USE_LAYERWISE", "True")
    c = make_connectors(register=False)
    engine = c.worker.lmcache_engine

    assert type(engine.gpu_connector) is LayerwiseKVConnector
    assert engine.gpu_connector.num_layers == KV_SHAPE[0]
    assert c.worker._lmcache_engine.use_layerwise is True


def test_lmcache_extra_config_reaches_the_registered_engine(make_connectors: MakeConnectors) -> None:
    c = make_connectors(register=False, extra={"lmcache.chunk_size": 512})
    engine = c.worker.lmcache_engine

    assert engine.config.chunk_size == 512
    assert engine.metadata.chunk_size == 512
    assert engine.metadata.kv_shape == (4, 2, 512, 2, 64)
    assert c.worker._lmcache_engine._lmcache_chunk_size == 512
    assert c.scheduler._lmcache_engine._lmcache_chunk_size == 512


def test_register_kv_caches_sets_up_storage(make_connectors: MakeConnectors, monkeypatch: pytest.MonkeyPatch) -> None:
    c = make_connectors(register=False)
    engine = c.worker.lmcache_engine
    names = helpers.layer_names(c.config)
    assert engine.storage_manager is None  # nothing allocated before vLLM hands over its KV
    recovered: list[tuple[object, object]] = []
    original = plugin.recover_disk_tier

    def spy(engine_arg: object) -> int:
        recovered.append((engine_arg, engine_arg.storage_manager))  # type: ignore[attr-defined]
        return original(engine_arg)

    monkeypatch.setattr(plugin, "recover_disk_tier", spy)

    for tensor in c.caches.values():  # what vLLM CPU allocates per layer
        assert tensor.shape == (helpers.NUM_BLOCKS, 2, helpers.BLOCK, 2 * 64)
        assert tensor.dtype == torch.bfloat16 and tensor.is_contiguous()
    c.worker.register_kv_caches(c.caches)

    assert engine.storage_manager is not None
    assert list(engine.storage_manager.storage_backends) == ["LocalCPUBackend"]
    assert c.worker._lmcache_engine.kv_caches is c.caches
    assert list(c.worker._lmcache_engine.kv_caches) == names
    # the disk tier is re-indexed once, after the storage exists
    assert recovered == [(engine, engine.storage_manager)]


def test_chunk_size_not_a_multiple_of_block_size_is_refused(make_connectors: MakeConnectors) -> None:
    with pytest.raises(ValueError, match="chunk_size 256 must be a multiple of the vLLM block size 96"):
        make_connectors(block_size=96)

    assert LMCacheEngineBuilder.get(ENGINE_NAME) is None
    assert kv_transfer_state.has_kv_transfer_group() is False


def test_save_unfull_chunk_without_block_tails_is_refused(make_connectors: MakeConnectors, lmcache_env: pytest.MonkeyPatch) -> None:
    lmcache_env.setenv("LMCACHE_SAVE_UNFULL_CHUNK", "True")
    with pytest.raises(ValueError, match="save_unfull_chunk must be off .* without block tails"):
        make_connectors(extra={TAILS_KEY: False})

    assert LMCacheEngineBuilder.get(ENGINE_NAME) is None


def test_block_size_dividing_chunk_size_is_accepted(make_connectors: MakeConnectors) -> None:
    c = make_connectors(register=False, block_size=64)

    assert c.config.cache_config.block_size == 64
    assert c.worker.lmcache_engine is not None


def test_bind_connector_metadata_resets_layerwise_state(make_connectors: MakeConnectors) -> None:
    c = make_connectors()
    impl = c.worker._lmcache_engine
    impl.current_layer = 3
    impl.layerwise_retrievers = [iter(())]  # a previous step's exhausted retriever
    metadata = LMCacheConnectorMetadata()

    c.worker.bind_connector_metadata(metadata)

    assert impl.current_layer == 0
    assert impl.layerwise_retrievers == []
    assert c.worker.has_connector_metadata() is True
    assert c.worker._get_connector_metadata() is metadata


def test_requires_kv_delivery_is_false_although_role_produces(make_connectors: MakeConnectors) -> None:
    c = make_connectors(register=False)

    assert c.config.kv_transfer_config.is_kv_producer is True  # vLLM's default would say True
    assert LMCacheConnectorV1Dynamic.requires_kv_delivery.fget(c.worker) is True
    assert c.worker.requires_kv_delivery is False
    assert c.scheduler.requires_kv_delivery is False


def test_scheduler_side_has_no_engine(make_connectors: MakeConnectors) -> None:
    c = make_connectors(register=False)

    assert type(c.scheduler) is LMCacheAscendConnectorV1Dynamic
    assert c.scheduler.role == KVConnectorRole.SCHEDULER
    assert c.scheduler.lmcache_engine is None
    assert c.scheduler._lmcache_engine.lookup_client is not None
    assert c.scheduler._kv_cache_config is c.kv_config and c.worker._kv_cache_config is c.kv_config


def test_failed_worker_init_leaves_no_engine_registered(
    lmcache_env: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    """The signature makes ``kv_cache_config`` optional; without it vLLM 0.32's base
    ``__init__`` raises. Whatever happens, the process must not keep an engine
    that no connector owns (the next worker would silently reuse it)."""
    config = helpers.vllm_config(tiny_model_dir)
    try:
        connector = LMCacheAscendConnectorV1Dynamic(config, KVConnectorRole.WORKER)
    except TypeError:
        leaked = LMCacheEngineBuilder.get(ENGINE_NAME)
        LMCacheEngineBuilder.destroy(ENGINE_NAME)
        assert leaked is None
    else:
        assert connector.lmcache_engine is LMCacheEngineBuilder.get(ENGINE_NAME)
        connector.shutdown()


def test_shutdown_stops_the_offload_server_thread_first(make_connectors: MakeConnectors) -> None:
    """Pins what ``plugin.quiesce_offload_server`` relies on in LMCache 0.5.6
    (``_manager._offload_server`` with ``running``, ``thread``, ``socket``): without
    it, closing the server socket under a blocked ``recv()`` aborts the process."""
    from lmcache_ascend.integrations.lmcache import plugin

    conns = make_connectors()
    server = conns.worker._lmcache_engine._manager._offload_server
    assert server.thread.is_alive() and server.running
    plugin.quiesce_offload_server(conns.worker._lmcache_engine)
    assert not server.thread.is_alive() and not server.running
