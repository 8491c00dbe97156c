"""plugin.guard_disk_writes: a disk-tier write that fails (disk full, unwritable) drops the chunk.

Without it LMCache 0.5.6 leaks the chunk's CPU buffer, keeps its bytes counted
as used and keeps the key "in progress" forever. The failure is injected with
``OSError(ENOSPC)`` from the backend's ``write_file`` (what a full disk raises;
a real ENOSPC/EFBIG run is ``tests/e2e/test_faults.py::test_disk_full_then_freed``).
"""

from __future__ import annotations

import errno
import inspect
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lmcache_ascend.integrations.lmcache import plugin
from tests.integrations.lmcache.conftest import (
    ASCEND_KV_TUPLES,
    KV_DTYPE,
    EngineFactory,
    active_buffers,
    paged_engine,
)
from tests.kernels.reference import Geom, make_paged

GEOM = Geom(num_layers=2, num_blocks=64, block_size=16, num_heads=2, head_size=8)
CHUNK = 64
TOKENS = torch.arange(2 * CHUNK, dtype=torch.long) * 5 + 2


def disk_engine(engines: EngineFactory, disk: Path) -> Any:
    return paged_engine(engines, GEOM, CHUNK, local_cpu=False, max_local_cpu_size=0.01, local_disk=f"file://{disk}", max_local_disk_size=0.01)


def settle(engine: Any, disk: Any) -> None:
    pause = threading.Event()
    for _ in range(200):
        if active_buffers(engine) == 0 and not disk.disk_worker.put_tasks:
            return
        pause.wait(0.05)
    raise AssertionError(f"disk writes never settled: {active_buffers(engine)} buffers held, {len(disk.disk_worker.put_tasks)} puts in flight")


def store(engine: Any) -> None:
    cache = make_paged(ASCEND_KV_TUPLES.fmt, GEOM, KV_DTYPE, torch.Generator().manual_seed(5))
    engine.store(TOKENS, kvcaches=cache.data, slot_mapping=torch.arange(len(TOKENS)))


def test_a_failed_write_frees_everything_and_the_chunk_is_stored_later(disk_writes_guarded: None, engines: EngineFactory, tmp_path: Path) -> None:
    engine = disk_engine(engines, tmp_path)
    disk = engine.storage_manager.storage_backends["LocalDiskBackend"]

    def full(buffer: Any, path: str) -> None:
        Path(path).write_bytes(b"partial")  # a full disk may leave a truncated file behind
        raise OSError(errno.ENOSPC, "No space left on device")

    # Its own MonkeyPatch: undoing the shared one would also undo the fixtures'.
    with pytest.MonkeyPatch.context() as disk_full:
        disk_full.setattr(disk, "write_file", full)
        store(engine)
        settle(engine, disk)
    assert engine.lookup(TOKENS) == 0
    assert disk.usage == 0 and disk.current_cache_size == 0
    assert not list(tmp_path.iterdir())  # no partial file left to be re-indexed

    store(engine)  # the disk has room again
    settle(engine, disk)
    assert engine.lookup(TOKENS) == len(TOKENS)  # the same chunks are stored this time


def test_guard_is_idempotent(disk_writes_guarded: None) -> None:
    assert plugin.guard_disk_writes() is False


def test_lmcache_disk_write_still_needs_the_guard() -> None:
    """Pins upstream: if this fails, LMCache now handles a failed write itself;
    drop ``plugin.guard_disk_writes`` (or re-check what it undoes)."""
    from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend

    method = LocalDiskBackend.async_save_bytes_to_disk
    assert list(inspect.signature(method).parameters) == ["self", "key", "memory_obj", "on_complete_callback"]
    released: list[bool] = []
    obj = SimpleNamespace(tensor=torch.zeros(4), byte_array=bytearray(8), ref_count_down=lambda: released.append(True))

    def full_disk(buffer: object, path: object) -> None:
        raise OSError(28, "No space left on device")

    backend = SimpleNamespace(
        _key_to_path=lambda key: "/nonexistent/chunk.pt", usage=0,
        stats_monitor=SimpleNamespace(update_local_storage_usage=lambda usage: None), write_file=full_disk,
    )
    with pytest.raises(OSError):
        method(backend, "key", obj)  # upstream's own write path, a failing write
    assert released == []  # the buffer stays referenced: what the guard releases
