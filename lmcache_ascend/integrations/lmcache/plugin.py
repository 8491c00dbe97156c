"""The one place lmcache_ascend plugs into LMCache's vLLM integration.

No function of LMCache is replaced. Two documented behaviours of LMCache 0.5.6
are relied on instead, each pinned by a test in
``tests/integrations/lmcache/test_plugin.py`` that fails loudly if it changes:

1. ``VllmServiceFactory.get_or_create_lmcache_engine`` returns an engine already
   registered under ``ENGINE_NAME`` ("vllm-instance") instead of building one
   with ``CreateGPUConnector`` (which has no CPU or NPU branch). So the worker
   registers an engine with our device connector first (:func:`register_engine`).
2. ``lmcache_get_or_create_config()`` is a per-process singleton that the
   connector implementation reads after us, so defaults set on it here
   (:func:`apply_defaults`) are what LMCache uses.

Defaults applied when the user left LMCache's own default in place:

- ``pre_caching_hash_algorithm``: ``sha256_cbor`` instead of Python's ``hash``,
  so chunk keys agree between vLLM's scheduler and worker processes and across
  restarts without ``PYTHONHASHSEED``.

After the engine's storage is set up, :func:`recover_disk_tier` re-indexes
chunk files an earlier process left in the local disk tier (LMCache keeps that
index in memory only; see ``disk_index.py``).

Checks: vLLM CPU packs K (and V on AMX CPUs) inside each block, so only whole
blocks survive a store/load byte for byte. For host KV the LMCache chunk size
must be a multiple of the block size and ``save_unfull_chunk`` must be off;
:func:`check_host_block_alignment` refuses anything else with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmcache.logging import init_logger

logger = init_logger(__name__)

DETERMINISTIC_HASH = "sha256_cbor"
ENGINE_NAME = "vllm-instance"  # lmcache.integration.vllm.utils.ENGINE_NAME, pinned by a test


def lmcache_config(vllm_config: Any) -> Any:
    """LMCache's per-process config with vLLM's ``lmcache.*`` extra config applied."""
    from lmcache.integration.vllm.utils import lmcache_get_or_create_config
    from lmcache.v1.config_base import validate_and_set_config_value

    config = lmcache_get_or_create_config()
    extra = vllm_config.kv_transfer_config.kv_connector_extra_config or {}
    for key, value in extra.items():
        if key.startswith("lmcache."):
            validate_and_set_config_value(config, key.removeprefix("lmcache."), value)
    return config


def apply_defaults(config: Any) -> Any:
    if config.pre_caching_hash_algorithm in (None, "", "builtin"):
        config.pre_caching_hash_algorithm = DETERMINISTIC_HASH
        logger.info("lmcache_ascend: pre_caching_hash_algorithm=%s (deterministic chunk keys)", DETERMINISTIC_HASH)
    return config


def check_host_block_alignment(config: Any, block_size: int) -> None:
    if config.chunk_size % block_size:
        raise ValueError(
            f"LMCache chunk_size {config.chunk_size} must be a multiple of the vLLM block size "
            f"{block_size} for host (vLLM CPU) KV: its blocks are stored packed and only whole "
            "blocks can be copied exactly. Set LMCACHE_CHUNK_SIZE or --block-size accordingly."
        )
    if config.save_unfull_chunk:
        raise ValueError(
            "save_unfull_chunk must be off for host (vLLM CPU) KV: a partial chunk ends inside a "
            "packed block, which cannot be copied exactly."
        )


def create_device_connector(config: Any, metadata: Any, device: Any, layout_hints: Any) -> Any:
    """Our paged or layerwise device connector for this engine's KV (PyTorch tensors)."""
    from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
    from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector

    if config.enable_blending:
        raise ValueError("CacheBlend (enable_blending) is not supported by lmcache_ascend yet")
    cls = LayerwiseKVConnector if config.use_layerwise else PagedKVConnector
    return cls.from_metadata(metadata, device=device, layout_hints=layout_hints)


ConnectorFactory = Callable[[Any, Any, Any, Any], Any]  # (config, metadata, device, layout_hints)


def register_engine(vllm_config: Any, config: Any, make_connector: ConnectorFactory = create_device_connector) -> Any:
    """Create (once per process) the LMCache engine with ``make_connector``'s device connector."""
    from lmcache.integration.vllm.utils import vllm_layout_hints
    from lmcache.integration.vllm.vllm_service_factory import VllmServiceFactory
    from lmcache.v1.cache_engine import LMCacheEngineBuilder
    from vllm.distributed.parallel_state import get_tp_group

    existing = LMCacheEngineBuilder.get(ENGINE_NAME)
    if existing is not None:
        return existing
    device = vllm_config.device_config.device
    if str(device).startswith("cpu"):
        check_host_block_alignment(config, vllm_config.cache_config.block_size)
    metadata = VllmServiceFactory(config, vllm_config, "worker").get_or_create_metadata()
    connector = make_connector(config, metadata, device, vllm_layout_hints(vllm_config))
    tp_group = get_tp_group()
    engine = LMCacheEngineBuilder.get_or_create(
        ENGINE_NAME, config, metadata, connector, tp_group.broadcast, tp_group.broadcast_object
    )
    logger.info("lmcache_ascend: LMCache engine registered with %s on %s", type(connector).__name__, device)
    return engine


def destroy_engine() -> None:
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    LMCacheEngineBuilder.destroy(ENGINE_NAME)


def recover_disk_tier(engine: Any) -> int:
    """Re-index the local disk tier of ``engine`` (0 when it has none)."""
    from lmcache_ascend.integrations.lmcache.disk_index import recover_disk_index

    manager = getattr(engine, "storage_manager", None)
    backend = None if manager is None else manager.storage_backends.get("LocalDiskBackend")
    if backend is None:
        return 0
    return recover_disk_index(backend, engine.metadata, engine.config, engine.gpu_connector)


def quiesce_offload_server(impl: Any) -> None:
    """Let LMCache's offload-server thread exit before LMCache closes its socket.

    LMCache 0.5.6's ``ZMQOffloadServer.close`` closes the socket while the
    server thread is blocked in ``recv()``; libzmq then aborts the process
    ("Assertion failed: pfd.revents & POLLIN"), at random, during shutdown.
    Clearing ``running`` and sending the thread one message lets it leave its
    loop first, so the later close is harmless. Attributes used (``_manager``,
    ``_offload_server``, ``running``, ``thread``, ``socket``) are pinned by a test.
    """
    import zmq

    manager = getattr(impl, "_manager", None)
    server = getattr(manager, "_offload_server", None)
    thread = getattr(server, "thread", None)
    if thread is None or not thread.is_alive():
        return
    endpoint = server.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    server.running = False
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    try:
        sock.connect(endpoint)
        sock.send(b"")
        thread.join(timeout=10)
    except zmq.ZMQError as exc:
        logger.warning("lmcache_ascend: could not wake LMCache's offload server: %s", exc)
    finally:
        sock.close()
        ctx.term()
