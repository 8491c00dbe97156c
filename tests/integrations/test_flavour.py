"""``integrations/flavour.py``: the build flavour names the vLLM connector module behind the compatibility path."""

from __future__ import annotations

import pytest

from lmcache_ascend import build_info
from lmcache_ascend.integrations import flavour


def test_each_flavour_names_its_connector_module() -> None:
    assert flavour.connector_module("mindspore") == "lmcache_ascend.integrations.mindspore.vllm_connector"
    assert flavour.connector_module("pytorch") == "lmcache_ascend.integrations.vllm.connector_v1"


def test_unknown_flavour_is_refused() -> None:
    with pytest.raises(ValueError, match=r"flavour must be one of \['mindspore', 'pytorch'\], got 'jax'"):
        flavour.connector_module("jax")


def test_the_default_build_serves_the_pytorch_connector() -> None:
    if build_info().flavour != "pytorch":
        pytest.skip("a MindSpore build: tests/integrations/mindspore/test_flavour.py covers it")
    pytest.importorskip("vllm")
    from lmcache_ascend.integrations.vllm.connector_v1 import LMCacheAscendConnectorV1Dynamic

    assert flavour.connector_class(build_info().flavour) is LMCacheAscendConnectorV1Dynamic
