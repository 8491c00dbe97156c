"""Compatibility path: newer LMCache-Ascend configurations name this module with
``"kv_connector": "LMCacheAscendConnector"``.

It exposes the same connector as ``lmcache_ascend_connector_v1`` (the class of
the flavour this package was built as), under the name those configurations
use. Upstream LMCache-Ascend's class of this name also declares vLLM's
``SupportsHMA``; this one does not yet, so vLLM turns its hybrid KV manager off
for mixed-attention models and every layer keeps full KV, as with
``LMCacheAscendConnectorV1Dynamic``.
"""

from lmcache_ascend.build_info import build_info
from lmcache_ascend.integrations.flavour import connector_class

LMCacheAscendConnector = connector_class(build_info().flavour)

__all__ = ["LMCacheAscendConnector"]
