"""Re-index the chunks an earlier process left in LMCache's local disk tier.

LMCache 0.5.6 writes each chunk of its local disk tier to
``<path>/<key.to_string() with "/" -> "-">.pt`` (raw bytes of the memory
object) but keeps the index in memory only, so a restarted engine ignores
everything on disk. :func:`recover_disk_index` rebuilds the index at start-up
through the backend's public ``insert_key``:

- only files of this model, world size and worker rank are taken; the model
  name is matched in its on-disk form (``/`` written as ``-``), then restored;
- only files whose size is exactly one full chunk of this engine's KV
  (``metadata.get_shapes(chunk_size)``, ``metadata.get_dtypes()``) are taken,
  so a file cut short by a crash, or written for another dtype or layout, is
  ignored, never loaded;
- a chunk shorter than ``chunk_size`` (a prompt's tail, stored with
  ``save_unfull_chunk``) is taken only with its ``.pt.shape`` sidecar, which
  :func:`note_partial_chunk` writes (atomically) once the chunk file is
  complete, and only if the sidecar's shape is this engine's object shape for
  that many tokens and matches the file's size; sidecars whose chunk file is
  gone are removed;
- recovered chunks count against ``max_local_disk_size`` like newly written
  ones; once the tier is full, further files are left on disk but not indexed;
- layerwise engines store one key per layer (``...@<layer>``) with the per-layer
  object shape; both kinds are recognised.

Chunks of vLLM CPU KV are only valid on CPUs of the same instruction set (its
blocks are stored in an ISA-specific packing): keep a disk cache per host type.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmcache.logging import init_logger

logger = init_logger(__name__)


def _shape_for(metadata: Any, config: Any, connector: Any) -> Callable[[int], Any]:
    """The engine's object shape for a chunk of ``n`` tokens."""
    import torch

    # LMCache tells one shape from a list of shapes by type: it must be torch.Size.
    if config.use_layerwise:
        return lambda n: torch.Size(connector.get_shape(n))
    return lambda n: torch.Size(metadata.get_shapes(n)[0])


SHAPE_SUFFIX = ".shape"


@dataclass(frozen=True)
class ChunkFile:
    mtime: float
    key_text: str
    layered: bool
    shape: Any  # torch.Size
    nbytes: int


def note_partial_chunk(backend: Any, key: Any, shape: Any, fmt: Any) -> bool:
    """After a chunk file was written: record the ``shape`` of a chunk shorter than
    ``chunk_size`` next to it (its size alone cannot tell a tail from a file cut
    short); True if a sidecar was written. Called by ``plugin.guard_disk_writes``."""
    if shape[fmt.token_dim()] >= backend.local_cpu_backend.config.chunk_size:
        return False
    path = backend._key_to_path(key) + SHAPE_SUFFIX
    try:
        with open(path + ".tmp", "w") as f:
            json.dump({"shape": list(shape)}, f)
        os.replace(path + ".tmp", path)
    except OSError as exc:  # the chunk stays usable in this process; a restart will not find it
        logger.warning("lmcache_ascend: could not record the shape of %s (%s)", path, exc)
        _remove(path + ".tmp")
        return False
    return True


def _partial_shape(path: str, size: int, shape_for: Callable[[int], Any], token_dim: int, chunk_size: int, itemsize: int) -> Any | None:
    """The sidecar's shape if it is this engine's shape for a shorter chunk of this file's size, else None."""
    import torch

    try:
        with open(path + SHAPE_SUFFIX) as f:
            shape = torch.Size(json.load(f)["shape"])
        tokens = int(shape[token_dim])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    if not 0 < tokens < chunk_size or shape != shape_for(tokens) or math.prod(shape) * itemsize != size:
        return None
    return shape


def _chunk_files(backend: Any, metadata: Any, config: Any, shape_for: Callable[[int], Any], token_dim: int) -> list[ChunkFile]:
    """This engine's complete chunk files (full ones, and shorter ones with a valid sidecar)."""
    from lmcache.utils import TORCH_DTYPE_TO_STR_DTYPE

    full = shape_for(config.chunk_size)
    itemsize = metadata.get_dtypes()[0].itemsize
    nbytes = math.prod(full) * itemsize
    dtype_name = TORCH_DTYPE_TO_STR_DTYPE[metadata.kv_dtype]
    on_disk = metadata.model_name.replace("/", "-")
    prefix = f"{on_disk}@{metadata.world_size}@{metadata.worker_id}@"
    files = []
    for entry in os.scandir(backend.path):
        if entry.name.endswith(".pt" + SHAPE_SUFFIX) and not os.path.exists(entry.path[: -len(SHAPE_SUFFIX)]):
            _remove(entry.path)  # its chunk was evicted
        if not (entry.is_file() and entry.name.startswith(prefix) and entry.name.endswith(".pt")):
            continue
        rest = entry.name[len(on_disk) : -len(".pt")]
        parts = rest.split("@")
        layered = len(parts) >= 6 and parts[5].isdigit()  # ["", ws, rank, hash, dtype, layer?]
        if layered != bool(config.use_layerwise) or "%" in rest or parts[4] != dtype_name:
            continue  # other storage mode or dtype, or tagged keys (tags are not mangled reversibly)
        stat = entry.stat()
        shape = full if stat.st_size == nbytes else _partial_shape(entry.path, stat.st_size, shape_for, token_dim, config.chunk_size, itemsize)
        if shape is None:
            logger.warning("lmcache_ascend: ignoring %s: %d bytes, a chunk is %d (and no valid shape sidecar)", entry.path, stat.st_size, nbytes)
            continue
        files.append(ChunkFile(stat.st_mtime, metadata.model_name + rest, layered, shape, stat.st_size))
    return files


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def recover_disk_index(backend: Any, metadata: Any, config: Any, connector: Any) -> int:
    """Register this engine's chunk files found under ``backend.path``; returns the count.

    When they do not all fit in the tier, the newest are kept; they are
    inserted oldest first so the eviction order continues the old one.
    """
    from lmcache.utils import CacheEngineKey, LayerCacheEngineKey
    from lmcache.v1.memory_management import MemoryFormat

    fmt = connector.memory_format if hasattr(connector, "memory_format") else MemoryFormat.KV_2LTD
    dtype = metadata.get_dtypes()[0]
    shapes = _chunk_files(backend, metadata, config, _shape_for(metadata, config, connector), fmt.token_dim())
    files = sorted(shapes, key=lambda f: f.mtime, reverse=True)
    room = max(0, backend.max_cache_size - backend.current_cache_size)
    keep: list[ChunkFile] = []
    for chunk in files:
        if chunk.nbytes > room:
            break
        keep.append(chunk)
        room -= chunk.nbytes
    skipped = len(files) - len(keep)
    found = 0
    for chunk in reversed(keep):
        key = LayerCacheEngineKey.from_string(chunk.key_text) if chunk.layered else CacheEngineKey.from_string(chunk.key_text)
        backend.insert_key(key, chunk.nbytes, chunk.shape, dtype, fmt)
        # The two counters LMCache keeps: eviction reads current_cache_size,
        # usage feeds its metrics.
        backend.current_cache_size += chunk.nbytes
        backend.usage += chunk.nbytes
        found += 1
    if skipped:
        logger.warning("lmcache_ascend: disk tier full; %d older chunk file(s) left on disk unindexed", skipped)
    if found:
        backend.stats_monitor.update_local_storage_usage(backend.usage)
        logger.info("lmcache_ascend: re-indexed %d chunk(s) from the local disk tier at %s", found, backend.path)
    return found
