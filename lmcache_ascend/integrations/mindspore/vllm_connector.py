"""``LMCacheAscendConnectorV1Dynamic`` for vLLM-MindSpore (the ``USE_MINDSPORE=1`` flavour).

Turned on exactly like the PyTorch flavour's connector, on the ``vllm_mindspore``
API server or in an offline script::

    python -m vllm_mindspore.entrypoints vllm.entrypoints.openai.api_server --model ... \\
      --kv-transfer-config '{"kv_connector":"LMCacheAscendConnectorV1Dynamic","kv_role":"kv_both",
                             "kv_connector_module_path":"lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1"}'

vLLM's connector factory imports ``kv_connector_module_path`` and takes the
class by name; in a MindSpore build that module exposes this class
(``flavour.connector_class``). It is the PyTorch flavour's connector (LMCache's
own vLLM connector: scheduler-side lookup, store after the forward, load before
it, every LMCache tier, deterministic chunk keys, disk-tier recovery) with one
difference: the worker's LMCache engine is registered with the MindSpore device
connectors (``connectors``), which take vllm-mindspore's per-layer KV, a
``(K, V)`` tuple of ``[num_blocks, block_size, num_kv_heads, head_size]``
MindSpore tensors (``(latent,)`` for MLA).

Not verified with ``vllm_mindspore`` itself (it needs ``msadapter``, a torch
shim that cannot share an environment with the real torch LMCache runs on
here); the device connectors are tested with real MindSpore and LMCache.
"""

from __future__ import annotations

from typing import Any

from lmcache_ascend.integrations.mindspore.connectors import create_device_connector
from lmcache_ascend.integrations.vllm import connector_v1


def _make_device_connector(config: Any, metadata: Any, device: Any, layout_hints: Any) -> Any:
    # MindSpore KV is described from its own tensors; vLLM's layout hints do not apply.
    return create_device_connector(config, metadata, device)


class LMCacheAscendConnectorV1Dynamic(connector_v1.LMCacheAscendConnectorV1Dynamic):
    make_device_connector = staticmethod(_make_device_connector)
