"""Re-index the chunks an earlier process left in LMCache's local disk tier.

LMCache 0.5.6 writes each chunk of its local disk tier to
``<path>/<key.to_string() with "/" -> "-">.pt`` (raw bytes of the memory
object) but keeps the index in memory only, so a restarted engine ignores
everything on disk. :func:`recover_disk_index` rebuilds the index at start-up
through the backend's public ``insert_key``:

- only files of this model, world size and worker rank are taken; the model
  name is matched in its on-disk form (``/`` written as ``-``), then restored;
- only files whose size is exactly one full chunk of this engine's KV
  (``metadata.get_shapes(chunk_size)``, kv dtype) are taken, so a file cut short
  by a crash, or written for another dtype or layout, is ignored, never loaded;
- layerwise engines store one key per layer (``...@<layer>``) with the per-layer
  object shape; both kinds are recognised.

Chunks of vLLM CPU KV are only valid on CPUs of the same instruction set (its
blocks are stored in an ISA-specific packing): keep a disk cache per host type.
"""

from __future__ import annotations

import math
import os
from typing import Any

from lmcache.logging import init_logger

logger = init_logger(__name__)


def _object_spec(metadata: Any, config: Any, connector: Any) -> tuple[tuple[int, ...], Any, int]:
    shape = tuple(connector.get_shape(config.chunk_size)) if config.use_layerwise else tuple(metadata.get_shapes(config.chunk_size)[0])
    dtype = metadata.kv_dtype
    return shape, dtype, math.prod(shape) * dtype.itemsize


def recover_disk_index(backend: Any, metadata: Any, config: Any, connector: Any) -> int:
    """Register this engine's chunk files found under ``backend.path``; returns the count."""
    from lmcache.utils import CacheEngineKey, LayerCacheEngineKey
    from lmcache.v1.memory_management import MemoryFormat

    shape, dtype, nbytes = _object_spec(metadata, config, connector)
    fmt = connector.memory_format if hasattr(connector, "memory_format") else MemoryFormat.KV_2LTD
    on_disk = metadata.model_name.replace("/", "-")
    prefix = f"{on_disk}@{metadata.world_size}@{metadata.worker_id}@"
    found = 0
    for entry in os.scandir(backend.path):
        if not (entry.is_file() and entry.name.startswith(prefix) and entry.name.endswith(".pt")):
            continue
        rest = entry.name[len(on_disk) : -len(".pt")]
        parts = rest.split("@")
        layered = len(parts) >= 6 and parts[5].isdigit()  # ["", ws, rank, hash, dtype, layer?]
        if layered != bool(config.use_layerwise) or "%" in rest:
            continue  # other storage mode, or tagged keys (tags are not mangled reversibly)
        if entry.stat().st_size != nbytes:
            logger.warning("lmcache_ascend: ignoring %s: %d bytes, a chunk is %d", entry.path, entry.stat().st_size, nbytes)
            continue
        text = metadata.model_name + rest
        key = LayerCacheEngineKey.from_string(text) if layered else CacheEngineKey.from_string(text)
        if key.dtype != dtype:
            continue
        backend.insert_key(key, nbytes, shape, dtype, fmt)
        backend.usage += nbytes
        found += 1
    if found:
        backend.stats_monitor.update_local_storage_usage(backend.usage)
        logger.info("lmcache_ascend: re-indexed %d chunk(s) from the local disk tier at %s", found, backend.path)
    return found
