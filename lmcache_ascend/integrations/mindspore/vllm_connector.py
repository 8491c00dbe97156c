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
MindSpore tensors (``(latent,)`` for MLA, ``(latent, rope)`` for RingMLA).

It does not declare vLLM's ``SupportsHMA`` (it derives from the PyTorch
connector's ``LMCacheAscendConnectorBase``): vLLM then keeps one KV group, as
the MindSpore device connectors expect (hybrid groups are served by the PyTorch
flavour only, ``docs/hybrid_models.md``).

LMCache's layerwise mode is refused at start-up, in both roles: vllm-mindspore's
models never call ``save_kv_layer`` or ``wait_for_layer_load`` (read in
vllm-mindspore 0.5.1), so a layerwise engine would store and load nothing, and
say nothing about it. CacheBlend, which needs layerwise mode, is refused by the
device connector factory as well.

vllm-mindspore swallows every exception raised in ``execute_model`` (where vLLM
calls ``start_load_kv`` and ``wait_for_save``) and returns an empty output. So
a failure in either is logged here at error level, once per failed call, with the ids
of the step's requests and the traceback, before it propagates.

Not verified with ``vllm_mindspore`` itself (it needs ``msadapter``, a torch
shim that cannot share an environment with the real torch LMCache runs on
here); the device connectors are tested with real MindSpore and LMCache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lmcache.logging import init_logger
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

from lmcache_ascend.integrations.lmcache import plugin
from lmcache_ascend.integrations.mindspore.connectors import create_device_connector
from lmcache_ascend.integrations.vllm import connector_v1

logger = init_logger(__name__)

LAYERWISE_REFUSED = (
    "use_layerwise: vllm-mindspore's models never call save_kv_layer or wait_for_layer_load, so a "
    "layerwise LMCache engine would store and load nothing; set use_layerwise: false "
    "(LMCACHE_USE_LAYERWISE=False) for vllm-mindspore"
)


class LMCacheAscendConnectorV1Dynamic(connector_v1.LMCacheAscendConnectorBase):
    make_device_connector = staticmethod(create_device_connector)

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any | None = None) -> None:
        if plugin.apply_defaults(plugin.lmcache_config(vllm_config)).use_layerwise:
            raise ValueError(LAYERWISE_REFUSED)
        super().__init__(vllm_config, role, kv_cache_config)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        with self._failure_logged("start_load_kv"):
            super().start_load_kv(forward_context, **kwargs)

    def wait_for_save(self) -> None:
        with self._failure_logged("wait_for_save"):
            super().wait_for_save()

    @contextmanager
    def _failure_logged(self, step: str) -> Iterator[None]:
        try:
            yield
        except Exception:
            logger.error(
                "lmcache_ascend: %s failed for requests %s (vllm-mindspore drops this error and "
                "returns empty outputs)", step, self._step_request_ids(), exc_info=True,
            )
            raise

    def _step_request_ids(self) -> list[str]:
        metadata = getattr(self, "_connector_metadata", None)  # None: nothing bound this step
        return [r.req_id for r in getattr(metadata, "requests", [])]
