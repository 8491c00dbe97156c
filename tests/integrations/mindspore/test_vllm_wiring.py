"""How vLLM reaches the MindSpore flavour's connector (runs where vLLM is installed).

vllm_mindspore itself cannot be installed next to the real torch LMCache uses
here, so the wiring is checked with vLLM CPU's real factory, config and
distributed state: the flavour selects the class behind the configured module
path, and a worker-side connector registers LMCache's engine with the
MindSpore device connectors. The data path is covered by the MindSpore tests.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from lmcache.v1.cache_engine import LMCacheEngineBuilder  # noqa: E402
from vllm.config import KVTransferConfig  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.utils.func_utils import supports_kw  # noqa: E402

from lmcache_ascend import build_info  # noqa: E402
from lmcache_ascend.integrations.lmcache.plugin import ENGINE_NAME  # noqa: E402
from lmcache_ascend.integrations import flavour
from lmcache_ascend.integrations.mindspore import vllm_connector  # noqa: E402
from lmcache_ascend.integrations.mindspore.connectors import MindSporePagedConnector  # noqa: E402
from lmcache_ascend.integrations.vllm import connector_v1  # noqa: E402
from tests.integrations.vllm import helpers  # noqa: E402
from tests.integrations.vllm.conftest import distributed, lmcache_env, tiny_model_dir, vllm_session_env  # noqa: E402, F401

MS_CLASS = vllm_connector.LMCacheAscendConnectorV1Dynamic


def test_each_flavour_has_its_connector_class() -> None:
    assert flavour.connector_class("pytorch") is connector_v1.LMCacheAscendConnectorV1Dynamic
    assert flavour.connector_class("mindspore") is MS_CLASS
    assert MS_CLASS.__name__ == connector_v1.LMCacheAscendConnectorV1Dynamic.__name__ == flavour.CONNECTOR_CLASS
    with pytest.raises(ValueError, match="flavour must be one of"):
        flavour.connector_class("tensorflow")


def test_mindspore_connector_leaves_the_hybrid_kv_manager_off() -> None:
    """Only the PyTorch flavour serves several KV groups: vllm-mindspore must keep one."""
    from vllm.distributed.kv_transfer.kv_connector.v1.base import SupportsHMA, supports_hma

    assert supports_hma(connector_v1.LMCacheAscendConnectorV1Dynamic)
    assert not issubclass(MS_CLASS, SupportsHMA) and not supports_hma(MS_CLASS)


def test_compatibility_module_serves_the_built_flavour() -> None:
    compat = importlib.import_module("lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1")
    assert compat.LMCacheAscendConnectorV1Dynamic is flavour.connector_class(build_info().flavour)


def test_vllm_factory_resolves_the_mindspore_class() -> None:
    config = KVTransferConfig(
        kv_connector=flavour.CONNECTOR_CLASS, kv_connector_module_path=flavour.connector_module("mindspore"), kv_role="kv_both"
    )
    cls = KVConnectorFactory.get_connector_class(config)
    assert cls is MS_CLASS
    assert supports_kw(cls, "kv_cache_config")
    assert cls.__abstractmethods__ == frozenset()


@pytest.mark.parametrize("role", [KVConnectorRole.SCHEDULER, KVConnectorRole.WORKER], ids=["scheduler", "worker"])
def test_layerwise_is_refused_at_start_up(lmcache_env: pytest.MonkeyPatch, tiny_model_dir: Path, role: KVConnectorRole) -> None:
    """vllm-mindspore's models never call the layerwise hooks: nothing would be stored, silently."""
    lmcache_env.setenv("LMCACHE_USE_LAYERWISE", "True")
    config = helpers.vllm_config(tiny_model_dir)
    with pytest.raises(ValueError, match="^use_layerwise: vllm-mindspore's models never call save_kv_layer"):
        MS_CLASS(config, role, helpers.kv_cache_config(config))
    assert LMCacheEngineBuilder.get(ENGINE_NAME) is None


def test_worker_registers_lmcache_with_the_mindspore_device_connector(lmcache_env: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    lmcache_env.setenv("LMCACHE_USE_LAYERWISE", "False")
    config = helpers.vllm_config(tiny_model_dir)
    kv_config = helpers.kv_cache_config(config)

    scheduler = MS_CLASS(config, KVConnectorRole.SCHEDULER, kv_config)
    assert scheduler.lmcache_engine is None and LMCacheEngineBuilder.get(ENGINE_NAME) is None
    worker = MS_CLASS(config, KVConnectorRole.WORKER, kv_config)
    try:
        engine = LMCacheEngineBuilder.get(ENGINE_NAME)
        assert worker.lmcache_engine is engine
        assert type(engine.gpu_connector) is MindSporePagedConnector
        assert engine.gpu_connector.num_layers == config.model_config.get_num_layers(config.parallel_config)
        assert engine.config.pre_caching_hash_algorithm == "sha256_cbor"
    finally:
        worker.shutdown()
        scheduler.shutdown()
        LMCacheEngineBuilder.destroy(ENGINE_NAME)


@pytest.mark.parametrize("step", ["start_load_kv", "wait_for_save"])
def test_a_failed_step_is_logged_once_with_its_requests(
    lmcache_env: pytest.MonkeyPatch, tiny_model_dir: Path, step: str, caplog: pytest.LogCaptureFixture
) -> None:
    """vllm-mindspore swallows exceptions from execute_model: the connector must have said it."""
    from lmcache.integration.vllm.vllm_v1_adapter import LMCacheConnectorMetadata, ReqMeta

    lmcache_env.setenv("LMCACHE_USE_LAYERWISE", "False")
    config = helpers.vllm_config(tiny_model_dir)
    worker = MS_CLASS(config, KVConnectorRole.WORKER, helpers.kv_cache_config(config))
    try:
        worker.bind_connector_metadata(LMCacheConnectorMetadata(requests=[ReqMeta(req_id="req-7", token_ids=[1, 2], slot_mapping=None)]))

        def boom(*args: object, **kwargs: object) -> None:
            raise RuntimeError("tier went away")

        lmcache_env.setattr(connector_v1.LMCacheAscendConnectorBase, step, boom)
        call = (lambda: worker.start_load_kv(None)) if step == "start_load_kv" else worker.wait_for_save
        caplog.set_level("ERROR")
        for _ in range(2):  # two steps fail: each is logged once
            with pytest.raises(RuntimeError, match="tier went away"):
                call()
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "lmcache_ascend" in r.getMessage()]
        assert len(errors) == 2
        assert all(f"{step} failed for requests ['req-7']" in r.getMessage() and r.exc_info for r in errors)
    finally:
        worker.shutdown()
        LMCacheEngineBuilder.destroy(ENGINE_NAME)
