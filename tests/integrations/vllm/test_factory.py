"""How vLLM finds and builds the connector: ``kv_connector_module_path`` through its factory."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorRole, SupportsHMA
from vllm.utils.func_utils import supports_kw

from testkit import vllm_settings as settings
from lmcache_ascend.integrations.vllm.connector_v1 import LMCacheAscendConnectorV1Dynamic
from tests.integrations.vllm import helpers
from tests.integrations.vllm.conftest import MakeConnectors


def test_compatibility_module_exposes_the_same_class() -> None:
    compat = importlib.import_module("lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1")

    assert compat.LMCacheAscendConnectorV1Dynamic is LMCacheAscendConnectorV1Dynamic
    assert compat.__all__ == ["LMCacheAscendConnectorV1Dynamic"]
    assert settings.CONNECTOR_MODULE == compat.__name__
    assert settings.CONNECTOR == LMCacheAscendConnectorV1Dynamic.__name__


def test_newer_lmcache_ascend_path_names_the_same_class() -> None:
    name, module_path = settings.CONNECTOR_FORMS["ascend"]
    module = importlib.import_module(module_path)

    assert name == "LMCacheAscendConnector"
    assert module.LMCacheAscendConnector is LMCacheAscendConnectorV1Dynamic
    assert module.__all__ == [name]
    config = settings.kv_transfer_config(form="ascend")
    assert (config.kv_connector, config.kv_connector_module_path) == (name, module_path)
    assert KVConnectorFactory.get_connector_class(config) is LMCacheAscendConnectorV1Dynamic


@pytest.mark.parametrize("form", ["v1_dynamic", "ascend"])
def test_both_module_path_forms_keep_vllms_hybrid_kv_manager_on(form: str) -> None:
    """SupportsHMA: vLLM's config check answers True, so it does not turn its hybrid KV manager off."""
    config = settings.kv_transfer_config(form=form)
    assert KVConnectorFactory.supports_hma_config(config) is True


def test_unknown_configuration_form_is_refused() -> None:
    with pytest.raises(ValueError, match="form must be one of"):
        settings.kv_transfer_config_dict(form="LMCacheAscendConnector")


@pytest.mark.parametrize(
    "module_path",
    [settings.CONNECTOR_MODULE, "lmcache_ascend.integrations.vllm.connector_v1"],
)
def test_factory_resolves_the_class_from_the_module_path(module_path: str) -> None:
    config = KVTransferConfig(kv_connector=settings.CONNECTOR, kv_connector_module_path=module_path, kv_role="kv_both")

    cls = KVConnectorFactory.get_connector_class(config)

    assert cls is LMCacheAscendConnectorV1Dynamic
    assert issubclass(cls, KVConnectorBase_V1)
    assert supports_kw(cls, "kv_cache_config")  # else the factory refuses it
    assert cls.__abstractmethods__ == frozenset()


def test_settings_kv_transfer_config_names_this_connector() -> None:
    config = settings.kv_transfer_config({"lmcache.chunk_size": 512})

    assert KVConnectorFactory.get_connector_class(config) is LMCacheAscendConnectorV1Dynamic
    assert (config.kv_role, config.kv_connector_extra_config) == ("kv_both", {"lmcache.chunk_size": 512})


def test_vllm_config_keeps_the_hybrid_kv_cache_manager_on(vllm_session_env: Path, tiny_model_dir: Path) -> None:
    """``SupportsHMA``: vLLM's own config resolution leaves its hybrid KV manager on."""
    config = helpers.vllm_config(tiny_model_dir)

    assert issubclass(LMCacheAscendConnectorV1Dynamic, SupportsHMA)
    assert config.scheduler_config.disable_hybrid_kv_cache_manager is False
    assert KVConnectorFactory.supports_hma_config(config.kv_transfer_config) is True


def test_create_connector_builds_both_roles_with_the_kv_cache_config(make_connectors: MakeConnectors) -> None:
    # make_connectors builds the worker through ensure_kv_transfer_initialized and the
    # scheduler through KVConnectorFactory.create_connector, as vLLM does
    c = make_connectors(register=False)

    for connector, role in ((c.worker, KVConnectorRole.WORKER), (c.scheduler, KVConnectorRole.SCHEDULER)):
        assert type(connector) is LMCacheAscendConnectorV1Dynamic
        assert connector.role == role
        assert connector._kv_cache_config is c.kv_config
        assert connector._vllm_config is c.config
    assert c.worker.lmcache_engine is not None
    assert c.scheduler.lmcache_engine is None
