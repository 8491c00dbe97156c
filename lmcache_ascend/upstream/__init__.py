"""The seam to other projects: every place this package changes or reaches into their objects.

The writes themselves (a method wrapped or replaced, a module attribute
replaced, an entry in a private registry, an import-time patch) go through
:mod:`lmcache_ascend.upstream.patching` and nowhere else: ``tests/upstream/test_seam.py``
fails when a module outside this package calls ``setattr``, touches
``sys.meta_path`` or assigns to an attribute of an imported upstream name. Each
touch-point is one named function, listed below with the upstream version it
was written against and the test that fails when upstream changes under it
(``docs/architecture.md`` carries the same table; a test keeps the two equal
and checks that every function named here exists).

Touch-points:

| function | upstream target | what and why | upstream version | pinned by |
|---|---|---|---|---|
| `integrations.lmcache.plugin.register_engine` | LMCache `VllmServiceFactory.get_or_create_lmcache_engine` | registers our engine under `ENGINE_NAME` first, so LMCache's factory (which has no CPU/NPU device connector) reuses it; no code replaced | LMCache 0.5.6 | `tests/integrations/lmcache/test_plugin.py` |
| `integrations.lmcache.plugin.apply_defaults` | LMCache's config singleton (state) | deterministic chunk hash (`sha256_cbor`) when the user left the default | LMCache 0.5.6 | `test_plugin.py` |
| `integrations.lmcache.plugin.guard_disk_writes` | `LocalDiskBackend.async_save_bytes_to_disk` (wrapped) | a failed disk write released nothing: buffers leaked | LMCache 0.5.6 | `test_disk_write_guard.py` |
| `integrations.lmcache.disk_index.recover_disk_index` | `LocalDiskBackend.insert_key` (public, called) | re-index chunk files after a restart | LMCache 0.5.6 | `test_disk_index.py`, `test_disk_index_tails.py` |
| `integrations.lmcache.remote_tier.RemoteConnectionWatch` | `RemoteBackend.connection` (state) | reconnect a broken `lm://` connection | LMCache 0.5.6 | `test_remote_servers.py`, `test_lm_bounds.py` |
| `integrations.lmcache.remote_tier.close_remote_backends` | `RemoteBackend.connection` (state), the Redis connectors' executors | close `redis://` / `redis-cluster://` without deadlocking their loop | LMCache 0.5.6 | `test_remote_servers.py` |
| `integrations.lmcache.remote_get_guard.guard_remote_gets` | Redis connectors' `_get`, batched gets (wrapped) | a failed get leaked its buffer or dropped finished gets | LMCache 0.5.6 | `test_remote_get_guard.py` |
| `integrations.lmcache.lm_bounds.bound_lm_connections` | `lm://` client socket (wrapped) | a hung server blocked lookups forever | LMCache 0.5.6 | `test_lm_bounds.py` |
| `integrations.lmcache.redis_sentinel_fix.fix_sentinel_connector` | `RedisSentinelConnector` methods (replaced) | never awaited its clients: stored nothing, claimed every chunk | LMCache 0.5.6 | `test_redis_sentinel_fix.py` |
| `integrations.lmcache.sglang_mp_guard.install` | LMCache's `UnifiedLMCacheMPConnector` methods (wrapped on import) | SGLang kept waiting when its `lmcache server` was gone or restarted; failed transfers are counted | LMCache 0.5.6 with SGLang 0.5.23 | `test_sglang_mp_guard.py`, `tests/e2e/sglang/` |
| `integrations.lmcache.device_plugin.AscendCpuDeviceSpec` | LMCache's device-plugin registry (entry point), a `torch.lmcache_ascend_cpu` stub module | `LMCACHE_DEVICE_BACKEND=ascend_cpu` for `lmcache server` and its engines | LMCache 0.5.6 | `test_device_plugin.py`, `test_mp_ops_parity.py` |
| `integrations.lmcache.kv_mover.TorchMover` | `GPUConnectorInterface.initialize_kvcaches_ptr` (called, not changed) | LMCache's contiguity fix-up of the KV list; the call's own KV is used afterwards (thread safety) | LMCache 0.5.6 | `test_paged_connector.py` |
| `blend.segments.hole_mode_lookup` | the engine's `lookup` (this instance's method wrapped) | hole mode: the scheduler sees the cached segments after a missing one; the prefix lookup still runs first | LMCache 0.5.6 | `tests/blend/test_vllm_blender.py`, `tests/integrations/vllm/test_blend_wiring.py` |
| `integrations.vllm.blend.install` | LMCache's `LMCBlenderBuilder._blenders` (private registry) | CacheBlend with our blender inside vLLM | LMCache 0.5.6 | `tests/blend/test_vllm_blender.py`, `tests/e2e/test_vllm_blend.py` |
| `integrations.vllm.vllm_ascend_hook.install` | vllm-ascend's registered `LMCacheConnectorV1` attribute (replaced on import) | its `LMCacheAscendConnector` name builds this package's connector | vllm-ascend 0.23.0.post1 | `tests/integrations/vllm/test_vllm_ascend_hook.py` (real vllm-ascend source) |
| `integrations.sglang.hook.install` | SGLang's `LMCRadixCache` module attribute (replaced) | SGLang has no plug-in point for its prefix cache | SGLang 0.5.3 | `tests/integrations/sglang/` |

Connectors that subclass an upstream class without running its constructor
(it creates CUDA streams) say so where they do it: ``paged_connector``,
``layerwise_connector``, ``blend_connector`` and the SGLang radix cache; their
pins are the tests of those classes.
"""
