"""Compatibility path: ``kv_connector_module_path`` values in existing vllm-ascend and
vLLM-MindSpore configurations name this module.

It exposes the connector of the flavour this package was built as
(``lmcache_ascend.build_info().flavour``): the PyTorch flavour's
:mod:`lmcache_ascend.integrations.vllm.connector_v1`, or, in a ``USE_MINDSPORE=1``
build, :mod:`lmcache_ascend.integrations.mindspore.vllm_connector`. Both classes
are named ``LMCacheAscendConnectorV1Dynamic``.
"""

from lmcache_ascend.build_info import build_info
from lmcache_ascend.integrations.flavour import connector_class

LMCacheAscendConnectorV1Dynamic = connector_class(build_info().flavour)

__all__ = ["LMCacheAscendConnectorV1Dynamic"]
