"""Which vLLM connector class the installed flavour serves.

``lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1`` (the module path
configurations name) exposes ``connector_class(build_info().flavour)``:

- ``"pytorch"`` (default build): ``integrations.vllm.connector_v1`` (vLLM CPU,
  vllm-ascend);
- ``"mindspore"`` (``USE_MINDSPORE=1``): ``integrations.mindspore.vllm_connector``
  (vLLM-MindSpore).

Both classes are named ``LMCacheAscendConnectorV1Dynamic``. This module imports
neither until asked, and never imports MindSpore.
"""

from __future__ import annotations

import importlib

CONNECTOR_CLASS = "LMCacheAscendConnectorV1Dynamic"
CONNECTOR_MODULES: dict[str, str] = {
    "pytorch": "lmcache_ascend.integrations.vllm.connector_v1",
    "mindspore": "lmcache_ascend.integrations.mindspore.vllm_connector",
}


def connector_module(flavour: str) -> str:
    """Module holding the vLLM connector of ``flavour``."""
    if flavour not in CONNECTOR_MODULES:
        raise ValueError(f"flavour must be one of {sorted(CONNECTOR_MODULES)}, got {flavour!r}")
    return CONNECTOR_MODULES[flavour]


def connector_class(flavour: str) -> type:
    """The ``LMCacheAscendConnectorV1Dynamic`` class of ``flavour`` (imports vLLM and LMCache)."""
    cls: type = getattr(importlib.import_module(connector_module(flavour)), CONNECTOR_CLASS)
    return cls
