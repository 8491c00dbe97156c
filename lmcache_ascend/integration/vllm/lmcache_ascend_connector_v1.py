"""Compatibility path: ``kv_connector_module_path`` values in existing vllm-ascend and
vLLM-MindSpore configurations name this module. The connector lives in
:mod:`lmcache_ascend.integrations.vllm.connector_v1`.
"""

from lmcache_ascend.integrations.vllm.connector_v1 import LMCacheAscendConnectorV1Dynamic

__all__ = ["LMCacheAscendConnectorV1Dynamic"]
