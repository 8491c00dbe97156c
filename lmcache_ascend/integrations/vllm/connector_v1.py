"""``LMCacheAscendConnectorV1Dynamic``: vLLM's v1 KV connector running LMCache on host or NPU KV.

Turn it on with::

    KVTransferConfig(
        kv_connector="LMCacheAscendConnectorV1Dynamic",
        kv_role="kv_both",
        kv_connector_module_path="lmcache_ascend.integration.vllm.lmcache_ascend_connector_v1",
    )

It is LMCache 0.5.6's own vLLM connector (``LMCacheConnectorV1Dynamic``: lookup
on the scheduler, store after each forward, load before it, CPU / disk /
remote tiers from the LMCache config) with these differences:

- the worker's LMCache engine moves KV with lmcache_ascend's device connectors
  (host C++ kernels for vLLM CPU, device-generic torch ops for NPU), not the
  CUDA-only upstream ones (see ``integrations/lmcache/plugin.py``);
- chunk keys are hashed with ``sha256_cbor`` unless configured otherwise, so a
  second process finds what the first stored;
- chunks a previous process left in the local disk tier are re-indexed at
  start-up, so a restarted engine finds them;
- on vLLM CPU, the worker asks Linux for AMX tile state up front, without
  which vLLM's first short forward (a full cache hit) dies with SIGILL;
- shutdown stops LMCache's offload-server thread before LMCache closes its
  socket (otherwise libzmq may abort the worker);
- per-step layerwise state is reset when a step's metadata is bound (vLLM may
  call ``start_load_kv`` after the forward), and a dropped save is treated as a
  future cache miss rather than a delivery failure (``requires_kv_delivery``);
- a failed load is a cache miss too: the scheduler-side connector sets vLLM's
  ``kv_load_failure_policy`` to ``"recompute"`` (vLLM's default ``"fail"``
  ends a request with an error when a chunk LMCache's lookup promised cannot
  be loaded, e.g. a remote server that went away or evicted it in between).
  vLLM's scheduler reads the policy right after constructing this connector.
  ``kv_connector_extra_config={"lmcache_ascend.kv_load_failure_policy": "fail"}``
  keeps ``"fail"``;
- after each step the worker drops an ``lm://`` remote connection that failed
  and re-creates it in the background until the server is back (LMCache's
  ``lm://`` connector never reconnects; see ``remote_tier.RemoteConnectionWatch``),
  and at shutdown remote connectors are closed with a bound first
  (``remote_tier.close_remote_backends``: LMCache 0.5.6 hangs closing ``redis://``);
- the worker installs ``plugin.guard_disk_writes`` (a failed disk-tier write
  frees its buffer instead of leaking it) and ``remote_get_guard.guard_remote_gets``
  (a Redis server dying during loads neither leaks buffers nor stops the
  connector's job queue), ``redis_sentinel_fix.fix_sentinel_connector`` (LMCache
  0.5.6's ``redis-sentinel://`` connector never awaits its clients: it stored
  nothing and reported every chunk as stored) and ``lm_bounds.bound_lm_connections`` (a hung
  ``lm://`` server costs ``blocking_timeout_secs``, then a miss);
- on host KV a prompt's last partial chunk is stored and looked up up to its
  last whole vLLM block (``block_tail.py``; ``lmcache_ascend.block_tails``);
- models with several KV-cache groups (vLLM's hybrid KV manager: sliding-window
  and full-attention layers) are served group by group: this class declares
  vLLM's ``SupportsHMA``, each request's slot mapping covers every group, and a
  chunk stores full-attention layers' tokens and sliding-window layers' last
  ``window`` tokens (``hybrid_groups.py``, ``integrations/lmcache/hybrid_connector.py``);
  one full-attention group (every model with the hybrid manager off) takes
  the single-group path unchanged;
- with ``enable_blending`` the worker runs lmcache_ascend's CacheBlend blender
  (hole mode with ``extra_config: {blend_hole_mode: true}``) on the model vLLM
  loaded, instead of upstream's CUDA-only one (see ``integrations/vllm/blend.py``);
  a failed blend is reported as a load error, so vLLM recomputes those blocks.

The scheduler side and the worker side are both this class, in vLLM's
scheduler and worker processes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lmcache.integration.vllm.lmcache_connector_v1 import LMCacheConnectorV1Dynamic
from lmcache.logging import init_logger
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)

from lmcache_ascend.integrations.lmcache import lm_bounds, plugin, redis_sentinel_fix, remote_get_guard, remote_tier
from lmcache_ascend.integrations.vllm import blend, block_tail, hybrid_groups
from lmcache_ascend.core.cpu_amx import request_amx_permission

logger = init_logger(__name__)


FAILURE_POLICY_KEY = "lmcache_ascend.kv_load_failure_policy"


def recompute_failed_loads(vllm_config: Any) -> str:
    """Set vLLM's ``kv_load_failure_policy`` to "recompute" unless the extra config keeps "fail"; returns it."""
    ktc = vllm_config.kv_transfer_config
    wanted = (ktc.kv_connector_extra_config or {}).get(FAILURE_POLICY_KEY, "recompute")
    if wanted not in ("recompute", "fail"):
        raise ValueError(f"kv_connector_extra_config[{FAILURE_POLICY_KEY!r}] must be 'recompute' or 'fail', got {wanted!r}")
    if ktc.kv_load_failure_policy != wanted:
        logger.info("lmcache_ascend: kv_load_failure_policy=%s (a failed LMCache load is a cache miss)", wanted)
        ktc.kv_load_failure_policy = wanted
    return wanted


class LMCacheAscendConnectorBase(LMCacheConnectorV1Dynamic):
    """Everything but ``SupportsHMA`` (a flavour whose engine keeps one KV group subclasses this)."""

    # The device connector the worker's LMCache engine gets; a flavour with
    # other tensors (MindSpore) overrides it.
    make_device_connector: ClassVar[plugin.ConnectorFactory] = staticmethod(plugin.create_device_connector)

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any | None = None) -> None:
        config = plugin.apply_defaults(plugin.lmcache_config(vllm_config))
        self._hybrid = self._hybrid_groups(kv_cache_config, config, plugin.whole_blocks_only(vllm_config, config))
        # Before LMCache's adapter reads save_unfull_chunk (both roles): see block_tail.py.
        self._tail_block = block_tail.configure(vllm_config, config)
        if self._tail_block is not None and self._hybrid is not None:
            self._tail_block = hybrid_groups.tail_block(self._hybrid.block_sizes)
        registered = None
        self._blender: blend.VLLMBlender | None = None
        self._remote_watch = remote_tier.RemoteConnectionWatch()
        if role == KVConnectorRole.SCHEDULER:
            recompute_failed_loads(vllm_config)
        if role == KVConnectorRole.WORKER:
            plugin.guard_disk_writes()  # a full disk must not leak LMCache's buffers (see plugin)
            redis_sentinel_fix.fix_sentinel_connector()  # LMCache 0.5.6's redis-sentinel:// never awaits redis-py
            remote_get_guard.guard_remote_gets()  # nor a Redis server dying during loads
            lm_bounds.bound_lm_connections()  # and a hung lm:// server costs a timeout, then a miss
            if plugin.on_host(vllm_config):
                request_amx_permission()  # see cpu_amx.py: vLLM CPU's first short forward needs it
        try:
            if role == KVConnectorRole.WORKER:
                groups = self._hybrid.groups if self._hybrid is not None else None
                registered = plugin.register_engine(
                    vllm_config, config, self.make_device_connector, self._tail_block is not None, groups
                )
                if config.enable_blending:  # before LMCache's adapter asks LMCBlenderBuilder for a blender
                    self._blender = blend.install(registered, vllm_config.cache_config.block_size)
            super().__init__(vllm_config, role, kv_cache_config)
        except BaseException:
            if registered is not None:  # do not leave a half-built engine for the next connector
                blend.uninstall()
                plugin.destroy_engine()
            raise
        if role == KVConnectorRole.WORKER and self.lmcache_engine is None:
            logger.error(
                "lmcache_ascend: LMCache failed to start on this worker (see the error above); "
                "serving continues without KV offloading"
            )

    @staticmethod
    def _hybrid_groups(kv_cache_config: Any | None, config: Any, whole_blocks: bool) -> hybrid_groups.GroupBlockTables | None:
        """The block tables of a model with several KV groups (checked), or None for one full-attention group."""
        if kv_cache_config is None:
            return None
        groups, block_sizes = hybrid_groups.kv_groups(kv_cache_config, whole_blocks)
        if not hybrid_groups.is_hybrid(groups):
            return None
        hybrid_groups.check_hybrid_config(groups, block_sizes, config, whole_blocks)
        logger.info("lmcache_ascend: serving %d KV-cache groups: %s", len(groups), [g.name for g in groups])
        return hybrid_groups.GroupBlockTables(groups, block_sizes, config.chunk_size)

    @property
    def lmcache_engine(self) -> Any:
        """The worker's LMCache engine, or None (scheduler side, or LMCache failed to start)."""
        return self._lmcache_engine.lmcache_engine

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        super().register_kv_caches(kv_caches)
        if self.lmcache_engine is not None:
            if self._hybrid is not None:
                self.lmcache_engine.gpu_connector.bind_layers(kv_caches)
            plugin.recover_disk_tier(self.lmcache_engine)

    def wait_for_save(self) -> None:
        super().wait_for_save()
        if self.lmcache_engine is not None:
            self._remote_watch.check(self.lmcache_engine)

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed = super().get_block_ids_with_load_errors()
        failed = failed | self._blender.take_failed_blocks() if self._blender is not None else failed
        if failed and self._hybrid is not None:
            # vLLM maps failed blocks back to requests only for one KV group and
            # stops the engine otherwise; say why, rather than serve wrong KV.
            raise RuntimeError(
                f"lmcache_ascend: {len(failed)} blocks of a model with several KV-cache groups failed to load "
                "from LMCache; vLLM cannot recompute them for such models (see the error above)"
            )
        return failed

    def shutdown(self) -> None:
        if self._blender is not None:
            blend.uninstall()
        plugin.quiesce_offload_server(self._lmcache_engine)
        if self.lmcache_engine is not None:
            remote_tier.close_remote_backends(self.lmcache_engine)  # LMCache's own close hangs on redis://
        super().shutdown()

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        if self._tail_block is not None:
            request = block_tail.BlockAlignedRequest(request, self._tail_block)
        return super().get_num_new_matched_tokens(request, num_computed_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        if self._hybrid is not None:
            self._hybrid.update(scheduler_output)
        metadata = super().build_connector_meta(scheduler_output)
        if self._tail_block is not None:
            block_tail.trim_stores(metadata, self._lmcache_engine._request_trackers, self._tail_block)
        if self._hybrid is not None:
            self._hybrid.apply(metadata)  # after the trim: slot mappings of the stored tokens
        return metadata

    @property
    def requires_kv_delivery(self) -> bool:
        return False

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        impl = self._lmcache_engine
        impl.current_layer = 0
        impl.layerwise_retrievers = []


class LMCacheAscendConnectorV1Dynamic(LMCacheAscendConnectorBase, SupportsHMA):
    """The connector, declaring ``SupportsHMA`` so vLLM keeps its hybrid KV manager on."""

    def request_finished_all_groups(self, request: Any, block_ids: tuple[list[int], ...]) -> tuple[bool, dict[str, Any] | None]:
        if self._hybrid is not None:
            self._hybrid.forget(request.request_id)
        # LMCache's adapter uses the block ids only to delay freeing them, which it never asks for here.
        return self.request_finished(request, block_ids[0] if block_ids else [])
