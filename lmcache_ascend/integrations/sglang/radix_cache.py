"""SGLang's ``LMCRadixCache`` on host and NPU KV pools.

:class:`AscendLMCRadixCache` is SGLang's own ``LMCRadixCache`` (prefix
matching with LMCache fetches of the missing tail in ``match_prefix``, stores
in ``cache_finished_req``, the eviction barrier) with a different constructor
when the KV pool is not on a CUDA device:

- the LMCache connector is :class:`.SGLangLMCacheConnector` (lmcache_ascend
  device connectors, every SGLang pool layout of :mod:`.pools`), not LMCache's
  CUDA-only ``LMCacheLayerwiseConnector``;
- ``load_stream`` / ``store_stream`` are that connector's streams from
  ``lmcache_ascend.core.devices`` instead of ``torch.cuda.Stream()``. The
  inherited methods only ``synchronize()`` them and enter
  ``torch.cuda.stream(...)`` with them, which is a no-op on a torch build
  without CUDA; every copy is ordered on the connector's own streams;
- the KV pool's layer hook is :class:`LayerLoadHook`, registered only when
  LMCache runs layerwise (otherwise ``match_prefix`` loads every layer).

On a CUDA device (the allocator's ``device``) it is upstream's class
unchanged. The constructor takes the keyword arguments SGLang 0.5.3's
scheduler passes (pinned by a test).
"""

from __future__ import annotations

import threading
from typing import Any

from sglang.srt.mem_cache.storage.lmcache.lmc_radix_cache import LMCRadixCache

from lmcache_ascend.integrations.sglang.lmcache_connector import SGLangLMCacheConnector
from lmcache_ascend.integrations.sglang.pools import describe_pool


class LayerLoadHook:
    """The KV pool's ``layer_transfer_counter``: before the model reads layer
    ``layer_id``, wait for the loads issued so far, then issue the next layer."""

    def __init__(self, connector: SGLangLMCacheConnector) -> None:
        self.connector = connector

    def wait_until(self, layer_id: int) -> None:
        self.connector.load_stream.synchronize()
        self.connector.load_kv_layerwise(layer_id)


class AscendLMCRadixCache(LMCRadixCache):
    def __init__(
        self,
        req_to_token_pool: Any,
        token_to_kv_pool_allocator: Any,
        page_size: int,
        disable: bool = False,
        enable_kv_cache_events: bool = False,
        model_config: Any = None,
        tp_size: int = 1,
        rank: int = 0,
        tp_group: Any = None,
        eviction_policy: str = "lru",
        config_file: str | None = None,
    ) -> None:
        common = dict(
            req_to_token_pool=req_to_token_pool,
            token_to_kv_pool_allocator=token_to_kv_pool_allocator,
            page_size=page_size,
            disable=disable,
            enable_kv_cache_events=enable_kv_cache_events,
            eviction_policy=eviction_policy,
        )
        if str(token_to_kv_pool_allocator.device).partition(":")[0] == "cuda":
            super().__init__(**common, model_config=model_config, tp_size=tp_size, rank=rank, tp_group=tp_group)
            return
        kvcache = token_to_kv_pool_allocator.get_kvcache()
        pool = describe_pool(kvcache)
        if model_config is None:
            raise ValueError("model_config is required: LMCache keys chunks by the model path")
        # RadixCache's constructor (the class after LMCRadixCache in the MRO).
        super(LMCRadixCache, self).__init__(**common)
        self.lmcache_connector = SGLangLMCacheConnector(
            pool=pool,
            model_name=model_config.model_path,
            tp_size=tp_size,
            rank=rank,
            tp_group=tp_group,
            config_file=config_file,
        )
        self.load_stream = self.lmcache_connector.load_stream
        self.store_stream = self.lmcache_connector.store_stream
        self.layer_done_executor = LayerLoadHook(self.lmcache_connector)
        if self.lmcache_connector.layerwise:
            # Non-layerwise loads are complete when match_prefix returns.
            kvcache.register_layer_transfer_counter(self.layer_done_executor)
        self._in_flight_nodes: list[Any] = []
        self._node_lock = threading.Lock()
