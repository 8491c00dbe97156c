"""plugin.py, and the LMCache 0.5.6 behaviours it relies on instead of patching LMCache.

Each "pins upstream" test says in its docstring what breaks if it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lmcache.v1.config import LMCacheEngineConfig

from lmcache_ascend.integrations.lmcache import plugin
from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
from tests.integrations.lmcache.conftest import EngineFactory, make_metadata


class CreateGPUConnectorCalled(Exception):
    pass


def _refuse_create_gpu_connector(*args: Any, **kwargs: Any) -> None:
    raise CreateGPUConnectorCalled()


def fake_vllm_config(*, device: str = "cpu", block_size: int = 16, extra: dict[str, Any] | None = None, num_layers: int = 2) -> Any:
    kv_transfer = SimpleNamespace(
        kv_connector_extra_config=extra or {},
        kv_role="kv_both",
        get_from_extra_config=lambda key, default: (extra or {}).get(key, default),
    )
    return SimpleNamespace(
        device_config=SimpleNamespace(device=torch.device(device)),
        cache_config=SimpleNamespace(block_size=block_size),
        kv_transfer_config=kv_transfer,
        parallel_config=SimpleNamespace(tensor_parallel_size=1, rank=0, world_size=1),
        model_config=SimpleNamespace(get_num_layers=lambda parallel_config: num_layers),
    )


@pytest.fixture
def meta() -> Any:
    return make_metadata(num_layers=2, num_heads=2, head_size=8)


@pytest.fixture
def vllm_worker_stubs(monkeypatch: pytest.MonkeyPatch, meta: Any) -> None:
    """What a vLLM worker process provides: a TP group, layout hints, model metadata."""
    import vllm.distributed.parallel_state as ps
    from lmcache.integration.vllm import utils as lmc_utils
    from lmcache.integration.vllm.vllm_service_factory import VllmServiceFactory

    group = SimpleNamespace(broadcast=lambda t, src=0: t, broadcast_object=lambda o, src=0: o)
    monkeypatch.setattr(ps, "get_tp_group", lambda: group)
    monkeypatch.setattr(lmc_utils, "vllm_layout_hints", lambda vllm_config=None: {"kv_layout": "HND"})

    def metadata(self: Any) -> Any:
        self.metadata = meta
        return meta

    monkeypatch.setattr(VllmServiceFactory, "get_or_create_metadata", metadata)
    monkeypatch.setattr("lmcache.v1.gpu_connector.CreateGPUConnector", _refuse_create_gpu_connector)


# ------------------------------------------------------------ pinned upstream


def test_engine_name_matches_upstream() -> None:
    """If this fails, the engine register_engine pre-registers is not the one LMCache's
    vLLM factory looks up, and LMCache falls back to CreateGPUConnector (no CPU/NPU branch)."""
    from lmcache.integration.vllm.utils import ENGINE_NAME

    assert plugin.ENGINE_NAME == ENGINE_NAME == "vllm-instance"


def test_service_factory_returns_a_pre_registered_engine(engines: EngineFactory, meta: Any, vllm_worker_stubs: None) -> None:
    """If this fails, LMCache's worker builds its own engine through CreateGPUConnector
    (RuntimeError on cpu/npu) instead of using the one with our device connector."""
    from lmcache.integration.vllm.vllm_service_factory import VllmServiceFactory

    ours = engines.build(PagedKVConnector.from_metadata(meta, "cpu"), meta, instance_id=plugin.ENGINE_NAME, post_init=False)
    cfg = LMCacheEngineConfig.from_defaults(chunk_size=256)
    factory = VllmServiceFactory(cfg, fake_vllm_config(), "worker")
    assert factory.get_or_create_lmcache_engine() is ours


def test_service_factory_without_a_registered_engine_calls_create_gpu_connector(isolated_builder: None, vllm_worker_stubs: None) -> None:
    """Control for the test above: the registry lookup is what keeps CreateGPUConnector
    (resolved at call time from lmcache.v1.gpu_connector) from running."""
    from lmcache.integration.vllm.vllm_service_factory import VllmServiceFactory

    factory = VllmServiceFactory(LMCacheEngineConfig.from_defaults(chunk_size=256), fake_vllm_config(), "worker")
    with pytest.raises(CreateGPUConnectorCalled):
        factory.get_or_create_lmcache_engine()


def test_lmcache_config_is_a_process_singleton() -> None:
    """If this fails, defaults set by apply_defaults are not what LMCache's connector reads."""
    from lmcache.integration.vllm.utils import lmcache_get_or_create_config

    first = lmcache_get_or_create_config()
    assert lmcache_get_or_create_config() is first
    assert isinstance(first, LMCacheEngineConfig)


@pytest.mark.parametrize("name", ["pre_caching_hash_algorithm", "chunk_size", "save_unfull_chunk", "use_layerwise", "enable_blending", "local_disk"])
def test_config_has_the_keys_plugin_reads(name: str) -> None:
    """If this fails, plugin.py / disk_index.py read a config key LMCache no longer has."""
    from lmcache.integration.vllm.utils import lmcache_get_or_create_config

    assert hasattr(lmcache_get_or_create_config(), name)
    assert hasattr(LMCacheEngineConfig.from_defaults(), name)


def test_config_defaults_plugin_assumes() -> None:
    """If the hash default changes, apply_defaults' "user left the default" test is wrong;
    if save_unfull_chunk defaults on, every host-KV deployment is refused."""
    cfg = LMCacheEngineConfig.from_defaults()
    assert cfg.pre_caching_hash_algorithm == "builtin"
    assert (cfg.chunk_size, cfg.save_unfull_chunk, cfg.use_layerwise, cfg.enable_blending, cfg.local_disk) == (256, False, False, False, None)


def test_connector_impl_layerwise_state_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """If this fails, resetting ``current_layer`` / ``layerwise_retrievers`` between steps
    (what our vLLM connector does in bind_connector_metadata) no longer resets anything."""
    from lmcache.integration.vllm.vllm_v1_adapter import LMCacheConnectorV1Impl
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    impl = object.__new__(LMCacheConnectorV1Impl)
    impl._manager = SimpleNamespace(lmcache_engine=None)
    impl._parent = SimpleNamespace()
    impl._init_connector_state(KVConnectorRole.WORKER, fake_vllm_config(num_layers=2), LMCacheEngineConfig.from_defaults(use_layerwise=True))
    assert impl.current_layer == 0 and impl.layerwise_retrievers == []

    steps: list[int] = []

    def retriever() -> Iterator[torch.Tensor | None]:
        for i in range(2):
            steps.append(i)
            yield None if i == 0 else torch.ones(3, dtype=torch.bool)

    impl.layerwise_retrievers = [retriever()]
    impl.wait_for_layer_load("layer.0")
    impl.wait_for_layer_load("layer.1")
    assert steps == [0, 1] and impl.current_layer == 2


# ----------------------------------------------------------------- plugin.py


def test_apply_defaults_switches_builtin_hash_to_sha256_cbor() -> None:
    cfg = LMCacheEngineConfig.from_defaults()
    assert plugin.apply_defaults(cfg) is cfg
    assert cfg.pre_caching_hash_algorithm == plugin.DETERMINISTIC_HASH == "sha256_cbor"


@pytest.mark.parametrize("user_value", ["xxhash", "sha256"])
def test_apply_defaults_keeps_a_user_hash(user_value: str) -> None:
    cfg = LMCacheEngineConfig.from_defaults(pre_caching_hash_algorithm=user_value)
    plugin.apply_defaults(cfg)
    assert cfg.pre_caching_hash_algorithm == user_value


@pytest.mark.parametrize("block_size", [16, 32, 128, 256])
def test_host_block_alignment_accepts_divisors(block_size: int) -> None:
    plugin.check_host_block_alignment(LMCacheEngineConfig.from_defaults(chunk_size=256), block_size)


@pytest.mark.parametrize(("chunk_size", "block_size"), [(256, 96), (100, 16), (256, 512)])
def test_host_block_alignment_refuses_misaligned_chunks(chunk_size: int, block_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        plugin.check_host_block_alignment(LMCacheEngineConfig.from_defaults(chunk_size=chunk_size), block_size)


def test_host_block_alignment_refuses_unfull_chunks_without_block_tails() -> None:
    config = LMCacheEngineConfig.from_defaults(chunk_size=256, save_unfull_chunk=True)
    with pytest.raises(ValueError, match="save_unfull_chunk"):
        plugin.check_host_block_alignment(config, 16)
    plugin.check_host_block_alignment(config, 16, block_tails=True)  # the connector cuts to whole blocks
    with pytest.raises(ValueError, match="chunk_size"):
        plugin.check_host_block_alignment(LMCacheEngineConfig.from_defaults(chunk_size=100, save_unfull_chunk=True), 16, block_tails=True)


@pytest.mark.parametrize(("layerwise", "cls"), [(False, PagedKVConnector), (True, LayerwiseKVConnector)])
def test_create_device_connector_picks_the_mode(layerwise: bool, cls: type, meta: Any) -> None:
    cfg = LMCacheEngineConfig.from_defaults(use_layerwise=layerwise)
    conn = plugin.create_device_connector(cfg, meta, torch.device("cpu"), {"kv_layout": "HND"})
    assert type(conn) is cls
    assert (conn.num_layers, conn.hidden_dim_size, conn.use_mla) == (2, 16, False)


def test_create_device_connector_refuses_blending(meta: Any) -> None:
    cfg = LMCacheEngineConfig.from_defaults()
    cfg.enable_blending = True
    with pytest.raises(ValueError, match="enable_blending"):
        plugin.create_device_connector(cfg, meta, "cpu", None)


def test_lmcache_config_applies_lmcache_prefixed_extra_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmcache.integration.vllm import utils as lmc_utils

    private = LMCacheEngineConfig.from_defaults()
    monkeypatch.setattr(lmc_utils, "lmcache_get_or_create_config", lambda: private)
    extra = {"lmcache.chunk_size": 512, "lmcache.use_layerwise": True, "chunk_size": 64, "discard_partial_chunks": True}
    assert plugin.lmcache_config(fake_vllm_config(extra=extra)) is private
    assert (private.chunk_size, private.use_layerwise) == (512, True)


def test_register_engine_registers_our_connector_once(engines: EngineFactory, vllm_worker_stubs: None) -> None:
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    cfg = LMCacheEngineConfig.from_defaults(chunk_size=256, max_local_cpu_size=0.01)
    engine = plugin.register_engine(fake_vllm_config(), cfg)
    engines.created.append(plugin.ENGINE_NAME)
    assert LMCacheEngineBuilder.get(plugin.ENGINE_NAME) is engine
    assert isinstance(engine.gpu_connector, PagedKVConnector)
    assert plugin.register_engine(fake_vllm_config(), cfg) is engine


def test_register_engine_checks_host_block_alignment(isolated_builder: None, vllm_worker_stubs: None) -> None:
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    with pytest.raises(ValueError, match="chunk_size"):
        plugin.register_engine(fake_vllm_config(block_size=96), LMCacheEngineConfig.from_defaults(chunk_size=256))
    assert LMCacheEngineBuilder.get(plugin.ENGINE_NAME) is None


def test_recover_disk_tier_without_a_disk_tier_is_zero(engines: EngineFactory, meta: Any) -> None:
    engine = engines.build(PagedKVConnector.from_metadata(meta, "cpu"), meta)
    assert plugin.recover_disk_tier(engine) == 0
    assert plugin.recover_disk_tier(SimpleNamespace()) == 0
