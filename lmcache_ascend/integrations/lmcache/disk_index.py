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
- recovered chunks count against ``max_local_disk_size`` like newly written
  ones; once the tier is full, further files are left on disk but not indexed;
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


def _object_spec(metadata: Any, config: Any, connector: Any) -> tuple[Any, Any, int]:
    import torch

    # LMCache tells one shape from a list of shapes by type: it must be torch.Size.
    shape = torch.Size(connector.get_shape(config.chunk_size) if config.use_layerwise else metadata.get_shapes(config.chunk_size)[0])
    dtype = metadata.kv_dtype
    return shape, dtype, math.prod(shape) * dtype.itemsize


def _chunk_files(backend: Any, metadata: Any, config: Any, nbytes: int) -> list[tuple[float, str, bool]]:
    """(mtime, key text, layered) of this engine's complete chunk files."""
    from lmcache.utils import TORCH_DTYPE_TO_STR_DTYPE

    dtype_name = TORCH_DTYPE_TO_STR_DTYPE[metadata.kv_dtype]
    on_disk = metadata.model_name.replace("/", "-")
    prefix = f"{on_disk}@{metadata.world_size}@{metadata.worker_id}@"
    files = []
    for entry in os.scandir(backend.path):
        if not (entry.is_file() and entry.name.startswith(prefix) and entry.name.endswith(".pt")):
            continue
        rest = entry.name[len(on_disk) : -len(".pt")]
        parts = rest.split("@")
        layered = len(parts) >= 6 and parts[5].isdigit()  # ["", ws, rank, hash, dtype, layer?]
        if layered != bool(config.use_layerwise) or "%" in rest or parts[4] != dtype_name:
            continue  # other storage mode or dtype, or tagged keys (tags are not mangled reversibly)
        stat = entry.stat()
        if stat.st_size != nbytes:
            logger.warning("lmcache_ascend: ignoring %s: %d bytes, a chunk is %d", entry.path, stat.st_size, nbytes)
            continue
        files.append((stat.st_mtime, metadata.model_name + rest, layered))
    return files


def recover_disk_index(backend: Any, metadata: Any, config: Any, connector: Any) -> int:
    """Register this engine's chunk files found under ``backend.path``; returns the count.

    When they do not all fit in the tier, the newest are kept; they are
    inserted oldest first so the eviction order continues the old one.
    """
    from lmcache.utils import CacheEngineKey, LayerCacheEngineKey
    from lmcache.v1.memory_management import MemoryFormat

    shape, dtype, nbytes = _object_spec(metadata, config, connector)
    fmt = connector.memory_format if hasattr(connector, "memory_format") else MemoryFormat.KV_2LTD
    files = sorted(_chunk_files(backend, metadata, config, nbytes), reverse=True)
    room = max(0, int((backend.max_cache_size - backend.current_cache_size) // nbytes))
    keep, skipped = files[:room], len(files) - min(room, len(files))
    found = 0
    for _, text, layered in reversed(keep):
        key = LayerCacheEngineKey.from_string(text) if layered else CacheEngineKey.from_string(text)
        backend.insert_key(key, nbytes, shape, dtype, fmt)
        # The two counters LMCache keeps: eviction reads current_cache_size,
        # usage feeds its metrics.
        backend.current_cache_size += nbytes
        backend.usage += nbytes
        found += 1
    if skipped:
        logger.warning("lmcache_ascend: disk tier full; %d older chunk file(s) left on disk unindexed", skipped)
    if found:
        backend.stats_monitor.update_local_storage_usage(backend.usage)
        logger.info("lmcache_ascend: re-indexed %d chunk(s) from the local disk tier at %s", found, backend.path)
    return found
