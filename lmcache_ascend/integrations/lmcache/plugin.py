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

Remote tier: reconnecting a broken ``lm://`` connection and closing Redis tiers
without LMCache 0.5.6's deadlock live in ``remote_tier.py``.
:func:`guard_disk_writes` patches LMCache's disk-tier write so a full or
unwritable disk drops the chunk instead of leaking its buffer (0.5.6 bug);
``remote_get_guard.py`` does the same for Redis gets when the server dies.

Checks: vLLM CPU packs K (and V on AMX CPUs) inside each block, so only whole
blocks survive a store/load byte for byte. For host KV the LMCache chunk size
must be a multiple of the block size, and ``save_unfull_chunk`` must be off
unless the vLLM connector cuts stores and lookups to whole blocks (block tails,
its default); :func:`check_host_block_alignment` refuses anything else.
CacheBlend is exempt: its connector moves single tokens through views that
know the packing (``integrations/lmcache/cpu_kv_layout.py``).

CacheBlend hole mode's lookup lives with CacheBlend
(:func:`lmcache_ascend.blend.segments.hole_mode_lookup`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from lmcache.logging import init_logger

from lmcache_ascend.integrations.lmcache.disk_index import note_partial_chunk, recover_disk_index
from lmcache_ascend.integrations.lmcache.hybrid_connector import HybridGroup, HybridKVConnector, HybridMetadata
from lmcache_ascend.upstream.patching import wrap_method

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


def on_host(vllm_config: Any) -> bool:
    """vLLM runs on the CPU (its KV is host memory)."""
    return str(vllm_config.device_config.device).startswith("cpu")


def whole_blocks_only(vllm_config: Any, config: Any) -> bool:
    """Only whole vLLM blocks can be moved exactly: host KV (packed blocks), except
    under CacheBlend, whose connector moves single tokens through packing-aware views."""
    return on_host(vllm_config) and not config.enable_blending


def check_host_block_alignment(config: Any, block_size: int, block_tails: bool = False) -> None:
    """Refuse what host (vLLM CPU) KV cannot store exactly.

    ``block_tails``: the vLLM connector cuts every store and lookup to whole
    blocks (``integrations/vllm/block_tail.py``), so partial chunks are allowed.
    """
    if config.chunk_size % block_size:
        raise ValueError(
            f"LMCache chunk_size {config.chunk_size} must be a multiple of the vLLM block size "
            f"{block_size} for host (vLLM CPU) KV: its blocks are stored packed and only whole "
            "blocks can be copied exactly. Set LMCACHE_CHUNK_SIZE or --block-size accordingly."
        )
    if config.save_unfull_chunk and not block_tails:
        raise ValueError(
            "save_unfull_chunk must be off for host (vLLM CPU) KV without block tails: a partial "
            "chunk ends inside a packed block, which cannot be copied exactly. Leave "
            "kv_connector_extra_config['lmcache_ascend.block_tails'] on (the default) to store "
            "partial chunks up to their last whole block."
        )


def create_device_connector(config: Any, metadata: Any, device: Any, layout_hints: Any) -> Any:
    """Our paged or layerwise device connector for this engine's KV (PyTorch tensors)."""
    from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
    from lmcache_ascend.integrations.lmcache.paged_connector import PagedKVConnector

    if config.enable_blending:
        # CacheBlend: per-layer KV_2TD segments, re-rotated on load (docs/blend.md).
        if not config.use_layerwise:
            raise ValueError("enable_blending needs use_layerwise: CacheBlend loads KV layer by layer (KV_2TD)")
        from lmcache_ascend.integrations.lmcache.blend_connector import BlendBufferConnector

        return BlendBufferConnector.from_metadata(metadata, device=device, layout_hints=layout_hints)
    cls = LayerwiseKVConnector if config.use_layerwise else PagedKVConnector
    return cls.from_metadata(metadata, device=device, layout_hints=layout_hints)


ConnectorFactory = Callable[[Any, Any, Any, Any], Any]  # (config, metadata, device, layout_hints)


def register_engine(
    vllm_config: Any,
    config: Any,
    make_connector: ConnectorFactory = create_device_connector,
    block_tails: bool = False,
    hybrid: Sequence[HybridGroup] | None = None,
) -> Any:
    """Create (once per process) the LMCache engine with ``make_connector``'s device connector.

    ``block_tails``: stores and lookups are cut to whole vLLM blocks by the caller.
    ``hybrid``: the model's KV-cache groups when it has several (or a sliding
    window): the engine then gets a :class:`HybridKVConnector` and allocates
    chunk objects of its layout.
    """
    from lmcache.integration.vllm.utils import vllm_layout_hints
    from lmcache.integration.vllm.vllm_service_factory import VllmServiceFactory
    from lmcache.v1.cache_engine import LMCacheEngineBuilder
    from vllm.distributed.parallel_state import get_tp_group

    existing = LMCacheEngineBuilder.get(ENGINE_NAME)
    if existing is not None:
        return existing
    device = vllm_config.device_config.device
    if whole_blocks_only(vllm_config, config):
        check_host_block_alignment(config, vllm_config.cache_config.block_size, block_tails)
    metadata = VllmServiceFactory(config, vllm_config, "worker").get_or_create_metadata()
    if hybrid:
        connector = HybridKVConnector(hybrid, config.chunk_size, device, vllm_layout_hints(vllm_config))
        metadata = HybridMetadata.wrap(metadata, connector.get_shape)
    else:
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
    manager = getattr(engine, "storage_manager", None)
    backend = None if manager is None else manager.storage_backends.get("LocalDiskBackend")
    if backend is None:
        return 0
    return recover_disk_index(backend, engine.metadata, engine.config, engine.gpu_connector)


_DISK_GUARD = "_lmcache_ascend_guarded"


def guard_disk_writes() -> bool:
    """Make a failed disk-tier write a dropped chunk instead of a leak; True if patched now.

    LMCache 0.5.6's ``LocalDiskBackend.async_save_bytes_to_disk`` raises out of
    its ``write_file`` (disk full, unwritable) after the put was admitted and
    before it releases anything: the chunk's CPU buffer is never freed, its
    bytes stay counted as used, and the key stays "in progress" forever (it is
    never stored again). The wrapper undoes those three on ``OSError``. After a
    write that worked, a chunk shorter than ``chunk_size`` gets its shape
    sidecar (``disk_index.note_partial_chunk``) so a restarted engine finds it.
    Idempotent; pinned by ``tests/integrations/lmcache/test_disk_write_guard.py``.
    """
    from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend

    return wrap_method(LocalDiskBackend, "async_save_bytes_to_disk", _guarded_disk_save, _DISK_GUARD)


def _guarded_disk_save(original: Any) -> Any:
    def async_save_bytes_to_disk(self: Any, key: Any, memory_obj: Any, on_complete_callback: Any = None) -> None:
        shape_of = (memory_obj.metadata.shape, memory_obj.metadata.fmt)  # the buffer is released inside
        try:
            original(self, key, memory_obj, on_complete_callback)
        except OSError as exc:
            _undo_disk_write(self, key, memory_obj, exc)
            return
        note_partial_chunk(self, key, *shape_of)

    return async_save_bytes_to_disk


def _undo_disk_write(backend: Any, key: Any, memory_obj: Any, exc: OSError) -> None:
    """What an admitted, never-written put holds: the buffer, the space, the in-flight mark."""
    admitted = memory_obj.get_physical_size()
    written = len(memory_obj.byte_array)
    memory_obj.ref_count_down()  # the reference submit_put_task took
    with backend.disk_lock:
        backend.current_cache_size -= admitted
        backend.usage -= written
        backend.cache_policy.update_on_force_evict(key)
    backend.disk_worker.remove_put_task(key)
    with contextlib.suppress(OSError):
        os.remove(backend._key_to_path(key))  # a partial file must not be re-indexed at restart
    logger.warning("lmcache_ascend: disk tier write failed (%s); chunk not stored", exc)


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
