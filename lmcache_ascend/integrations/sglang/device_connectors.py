"""LMCache device connectors for SGLang KV pools (host and NPU).

The LMCache engine SGLang drives gets one of these instead of upstream's
CUDA-only ``SGLangGPUConnector`` / ``SGLangLayerwiseGPUConnector``:

- non-layerwise (``use_layerwise: false``): :class:`PagedKVConnector` from
  ``integrations/lmcache`` with SGLang format detection. Memory objects are
  ``KV_2LTD`` ``[2, L, T, H]`` (``KV_MLA_FMT`` ``[1, L, T, H]`` for MLA).
- layerwise (``use_layerwise: true``): :class:`SGLangLayerwiseKVConnector`,
  the layerwise generators of ``integrations/lmcache`` moving one SGLang layer
  at a time. Objects are ``KV_T2D`` ``[T, 2, H]`` per layer (``[T, H]`` for MLA).

Both take ``kvcaches`` as :mod:`.pools` builds it and a full-length
``slot_mapping`` (token ``t`` of the request at ``slot_mapping[t]``; a slot
``< 0`` is left untouched in both directions), and return only when the copies
are complete (the layerwise ones: when the generator has passed the last
layer). Copies run on the connector's own streams from
``lmcache_ascend.core.devices``; nothing here calls ``torch.cuda``.
"""

from __future__ import annotations

from typing import Any

import torch
from lmcache.v1.memory_management import MemoryObj

from lmcache_ascend.integrations.lmcache.engine_kv import EngineKV
from lmcache_ascend.integrations.lmcache.kv_mover import TorchMover
from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector
from lmcache_ascend.integrations.sglang.pools import PoolKV
from lmcache_ascend.kernels.slot_ops import single_layer_kv_transfer, single_layer_kv_transfer_sgl

ENGINE = "sglang"


class SGLangLayerMover(TorchMover):
    """Torch moves, one SGLang layer at a time: ``(K_l, V_l)`` of the pool's
    ``[K layers, V layers]``, or layer ``l`` of the MLA latent buffers."""

    def __init__(self, device: torch.device | str, use_mla: bool) -> None:
        super().__init__(device, None, ENGINE)
        self.use_mla = use_mla

    def move_layer(self, kv: EngineKV, layer: int, obj: MemoryObj, slots: torch.Tensor, direction: int) -> None:
        if obj.tensor is None:
            raise ValueError("memory object has no tensor")
        kvcaches: Any = kv.layers  # this call's buffers, not the connector's kvcaches (another call may rebind it)
        if self.use_mla:
            single_layer_kv_transfer(obj.tensor, kvcaches[layer], slots, direction, kv.fmt)
        else:
            single_layer_kv_transfer_sgl(obj.tensor, kvcaches[0][layer], kvcaches[1][layer], slots, direction, token_major=True)


class SGLangLayerwiseKVConnector(LayerwiseKVConnector):
    """The layerwise connector with :class:`SGLangLayerMover`."""

    def __init__(self, *, num_layers: int, hidden_dim: int, use_mla: bool, device: torch.device | str) -> None:
        mover = SGLangLayerMover(device, use_mla)
        super().__init__(num_layers=num_layers, hidden_dim=hidden_dim, use_mla=use_mla, device=device, engine=ENGINE, mover=mover)


def create_device_connector(config: Any, pool: PoolKV) -> PagedKVConnector | SGLangLayerwiseKVConnector:
    """The device connector LMCache config ``config`` asks for, for ``pool``."""
    if config.enable_blending:
        raise ValueError("CacheBlend (enable_blending) is not supported by lmcache_ascend's SGLang connectors")
    settings = dict(num_layers=pool.num_layers, hidden_dim=pool.hidden_dim, use_mla=pool.use_mla, device=pool.device)
    if config.use_layerwise:
        return SGLangLayerwiseKVConnector(**settings)
    return PagedKVConnector(**settings, engine=ENGINE)
