"""The LMCache connector SGLang's ``LMCRadixCache`` drives, on host and NPU KV pools.

It stands in for LMCache 0.5.6's ``LMCacheLayerwiseConnector``
(``lmcache.integration.sglang.sglang_adapter``), whose engine set-up only
knows CUDA, and has the methods SGLang calls:

``chunk_size() -> int``
    LMCache's chunk size.
``start_load_kv(load) -> int``
    ``load.token_ids``: the request's page-aligned prompt; ``load.slot_mapping``:
    one slot per token, ``-1`` for tokens SGLang already holds;
    ``load.offset``: chunk-aligned count of leading tokens not to load.
    Looks the prompt up and loads what LMCache holds beyond ``offset``;
    returns how many tokens from ``offset`` on were (or, layerwise, are being)
    loaded, a contiguous run.
``load_kv_layerwise(layer_id)``
    Layerwise mode: called by the KV pool (through :class:`.LayerLoadHook`)
    when the model reaches layer ``layer_id``; loads layer ``layer_id + 1`` of
    each pending load, and finishes a load when its last layer is reached.
    Non-layerwise mode: nothing to do, ``start_load_kv`` loaded every layer.
``store_kv(store)``
    ``store.token_ids`` and ``store.kv_indices`` (one slot per token); stores
    every complete chunk LMCache does not hold yet. Complete on return.

Which mode runs follows the LMCache config's ``use_layerwise``. The config is
LMCache's own: the YAML file named by ``config_file`` or
``LMCACHE_CONFIG_FILE``, ``LMCACHE_*`` variables overriding it. Chunk keys are
hashed with ``sha256_cbor`` unless the config names another algorithm. The
engine is LMCache's, registered under SGLang's instance name
(``sglang-instance``), with a device connector from :mod:`.device_connectors`.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from lmcache.logging import init_logger

from lmcache_ascend.integrations.lmcache.plugin import apply_defaults
from lmcache_ascend.integrations.sglang.device_connectors import create_device_connector
from lmcache_ascend.integrations.sglang.pools import PoolKV

logger = init_logger(__name__)


@dataclass
class _PendingLoad:
    layers: Generator[Any, None, None]  # LMCacheEngine.retrieve_layer
    lookup_id: str
    next_layer: int


def load_config(config_file: str | None) -> Any:
    from lmcache.v1.config import load_engine_config_with_overrides

    return apply_defaults(load_engine_config_with_overrides(config_file_path=config_file or None))


def build_metadata(pool: PoolKV, config: Any, model_name: str, tp_size: int, rank: int) -> Any:
    from lmcache.v1.metadata import LMCacheMetadata

    device = pool.device
    local_rank = device.index if device.type != "cpu" and device.index is not None else rank
    return LMCacheMetadata(
        model_name=model_name,
        world_size=tp_size,
        local_world_size=tp_size,
        worker_id=rank,
        local_worker_id=local_rank,
        kv_dtype=pool.dtype,
        kv_shape=(pool.num_layers, 1 if pool.use_mla else 2, config.chunk_size, pool.num_heads, pool.head_dim),
        use_mla=pool.use_mla,
        role="worker",
        chunk_size=config.chunk_size,
    )


class SGLangLMCacheConnector:
    def __init__(
        self,
        *,
        pool: PoolKV,
        model_name: str,
        tp_size: int = 1,
        rank: int = 0,
        tp_group: Any = None,
        config_file: str | None = None,
    ) -> None:
        if tp_size < 1 or not 0 <= rank < tp_size:
            raise ValueError(f"rank {rank} / tp_size {tp_size} is not a valid tensor-parallel position")
        if tp_size > 1 and not all(hasattr(tp_group, a) for a in ("broadcast", "broadcast_object", "cpu_group")):
            raise ValueError("tp_group must be SGLang's TP GroupCoordinator (broadcast, broadcast_object, cpu_group) when tp_size > 1")
        self.pool = pool
        self.tp_size = tp_size
        self._tp_group = tp_group
        self.engine = self._engine(load_config(config_file), model_name, rank)
        self.layerwise = bool(self.engine.config.use_layerwise)
        self.num_layers = pool.num_layers
        self._pending: list[_PendingLoad] = []
        self.engine.post_init(kvcaches=pool.kvcaches)

    def _engine(self, config: Any, model_name: str, rank: int) -> Any:
        from lmcache.integration.sglang.utils import ENGINE_NAME
        from lmcache.v1.cache_engine import LMCacheEngineBuilder

        metadata = build_metadata(self.pool, config, model_name, self.tp_size, rank)
        engine = LMCacheEngineBuilder.get(ENGINE_NAME)
        if engine is not None:
            if (engine.metadata.kv_shape, engine.metadata.kv_dtype) != (metadata.kv_shape, metadata.kv_dtype):
                raise ValueError(
                    f"the LMCache engine '{ENGINE_NAME}' of this process holds KV of shape "
                    f"{engine.metadata.kv_shape} {engine.metadata.kv_dtype}, this pool {metadata.kv_shape} {metadata.kv_dtype}"
                )
            return engine
        connector = create_device_connector(config, self.pool)
        # LMCache broadcasts MLA chunks from the first rank (save_only_first_rank).
        if self.tp_size == 1:
            broadcast, broadcast_object = _unchanged, _unchanged
        else:
            broadcast, broadcast_object = self._tp_group.broadcast, self._tp_group.broadcast_object
        engine = LMCacheEngineBuilder.get_or_create(ENGINE_NAME, config, metadata, connector, broadcast, broadcast_object)
        logger.info("lmcache_ascend: SGLang LMCache engine with %s on %s", type(connector).__name__, self.pool.device)
        return engine

    # ------------------------------------------------------------ streams

    @property
    def load_stream(self) -> Any:
        return self.engine.gpu_connector.load_stream

    @property
    def store_stream(self) -> Any:
        return self.engine.gpu_connector.store_stream

    # ------------------------------------------------------------ SGLang API

    def chunk_size(self) -> int:
        return int(self.engine.config.chunk_size)

    def start_load_kv(self, load: Any) -> int:
        tokens = _tokens(load.token_ids, "load.token_ids")
        slots = _slots(load.slot_mapping, len(tokens), self.pool.device, "load.slot_mapping")
        offset = int(load.offset)
        if not 0 <= offset <= len(tokens):
            raise ValueError(f"load.offset {offset} is outside the {len(tokens)} tokens")
        lookup_id = str(uuid.uuid4())
        hit = self._agreed(int(self.engine.lookup(tokens, lookup_id=lookup_id, pin=True)))
        if hit <= offset:
            self.engine.lookup_unpin(lookup_id)
            return 0
        mask = torch.ones(hit, dtype=torch.bool)
        mask[:offset] = False
        kwargs = dict(mask=mask, kvcaches=self.pool.kvcaches, slot_mapping=slots[:hit])
        if not self.layerwise:
            try:
                retrieved = self.engine.retrieve(tokens[:hit], **kwargs)
            finally:
                self.engine.lookup_unpin(lookup_id)
            return _leading_run(retrieved[offset:hit])
        layers = self.engine.retrieve_layer(tokens[:hit], sync=False, **kwargs)
        try:
            found = next(layers)
            if found is not None and int(found) > 0:
                next(layers)  # loads layer 0; the KV pool's layer hook asks for the rest
        except BaseException:
            layers.close()
            self.engine.lookup_unpin(lookup_id)
            raise
        if found is None or int(found) == 0:
            layers.close()
            self.engine.lookup_unpin(lookup_id)
            return 0
        self._pending.append(_PendingLoad(layers, lookup_id, next_layer=1))
        return int(found)

    def load_kv_layerwise(self, layer_id: int) -> None:
        for load in list(self._pending):
            if load.next_layer == layer_id + 1 and load.next_layer < self.num_layers:
                next(load.layers)
                load.next_layer += 1
            elif load.next_layer == self.num_layers and layer_id == self.num_layers - 1:
                self._finish(load)

    def _finish(self, load: _PendingLoad) -> None:
        for _ in load.layers:  # waits for the last layer, releases LMCache's staging objects
            pass
        self.engine.lookup_unpin(load.lookup_id)
        self._pending.remove(load)

    def store_kv(self, store: Any) -> None:
        tokens = _tokens(store.token_ids, "store.token_ids")
        slots = _slots(store.kv_indices, len(tokens), self.pool.device, "store.kv_indices")
        mask = torch.ones(len(tokens), dtype=torch.bool)
        mask[: int(store.offset)] = False
        kwargs = dict(mask=mask, kvcaches=self.pool.kvcaches, slot_mapping=slots)
        if not self.layerwise:
            self.engine.store(tokens, **kwargs)
            return
        # sync=True: each layer's objects are complete before LMCache puts them.
        for _ in self.engine.store_layer(tokens, sync=True, **kwargs):
            pass

    @property
    def pending_loads(self) -> int:
        return len(self._pending)

    def get_kv_events(self) -> Iterable[Any]:
        return self.engine.get_kv_events()

    def reset(self) -> None:
        self.engine.clear()

    def close(self) -> None:
        from lmcache.integration.sglang.utils import ENGINE_NAME
        from lmcache.v1.cache_engine import LMCacheEngineBuilder

        for load in list(self._pending):
            load.layers.close()
            self.engine.lookup_unpin(load.lookup_id)
        self._pending.clear()
        LMCacheEngineBuilder.destroy(ENGINE_NAME)

    def _agreed(self, hit: int) -> int:
        """The smallest hit over the tensor-parallel ranks (each loads its own shard)."""
        if self.tp_size == 1:
            return hit
        import torch.distributed as dist

        value = torch.tensor([hit], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self._tp_group.cpu_group)
        return int(value.item())


def _unchanged(value: Any, src: int) -> Any:
    """A broadcast within one rank: every rank already holds ``value``."""
    return value


def _tokens(token_ids: Any, name: str) -> torch.Tensor:
    tokens = torch.as_tensor(list(token_ids) if not isinstance(token_ids, torch.Tensor) else token_ids, dtype=torch.int64)
    if tokens.dim() != 1:
        raise ValueError(f"{name} must be one sequence of token ids")
    return tokens.cpu()


def _slots(slot_mapping: Any, num_tokens: int, device: torch.device, name: str) -> torch.Tensor:
    if not isinstance(slot_mapping, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(slot_mapping).__name__}")
    if slot_mapping.dim() != 1 or slot_mapping.numel() != num_tokens:
        raise ValueError(f"{name} must hold one slot per token ({num_tokens}), got shape {list(slot_mapping.shape)}")
    return slot_mapping.to(device=device, dtype=torch.int64)


def _leading_run(mask: torch.Tensor) -> int:
    """Length of the leading run of True in ``mask``."""
    return int(mask.to(torch.int64).cumprod(0).sum())
