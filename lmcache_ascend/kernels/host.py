"""Host backend: runs plane tables through the C++ core (``lmcache_ascend._kvcore``).

Every address handed to it must be host memory that stays alive for the call;
callers (``lmcache_ascend.kernels.transfer``) hold the tensors. The GIL is
released inside the C++ call.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import numpy.typing as npt

from lmcache_ascend import _kvcore

NUM_THREADS_ENV = "LMCACHE_ASCEND_NUM_THREADS"
THREAD_POOL_ENV = "LMCACHE_ASCEND_THREAD_POOL"
STREAMING_ENV = "LMCACHE_ASCEND_STREAMING_STORES"
_DEFAULT_MAX_THREADS = 16
# From this size a transfer is memory-bound on every host we measured, and
# non-temporal stores beat ordinary ones (benchmarks/kernels.py, cold caches).
STREAMING_MIN_BYTES = 4 << 20


def num_threads() -> int:
    """Worker threads for host copies: ``$LMCACHE_ASCEND_NUM_THREADS`` or all cores (max 16)."""
    _pool_setting(os.environ.get(THREAD_POOL_ENV))  # every copy refuses a bad pool setting
    return _thread_count(os.environ.get(NUM_THREADS_ENV))


def thread_pool() -> str:
    """Where parallel host copies run: ``"openmp"`` (the process's OpenMP team, i.e. torch's
    libgomp threads, which CPU engines compute on: no second set of threads competing for
    their cores) or ``"own"`` (the core's own pool: no OpenMP runtime loaded, forked after
    using it, or ``$LMCACHE_ASCEND_THREAD_POOL=own``). See ``csrc/openmp_team.h``."""
    _pool_setting(os.environ.get(THREAD_POOL_ENV))
    return _kvcore.thread_pool_in_use()


# Every copy reads its settings; each is parsed once per distinct raw value
# (a few microseconds a call otherwise, on ops that move a few hundred).
@functools.lru_cache(maxsize=16)
def _pool_setting(raw: str | None) -> str:
    setting = (raw or "auto").strip().lower() or "auto"
    if setting not in ("auto", "own"):
        raise ValueError(f"{THREAD_POOL_ENV} must be auto or own, got {setting!r}")
    return setting


@functools.lru_cache(maxsize=16)
def _thread_count(raw: str | None) -> int:
    if raw is None:
        return _default_threads()
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{NUM_THREADS_ENV} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{NUM_THREADS_ENV} must be a positive integer, got {raw!r}")
    return value


@functools.cache
def _default_threads() -> int:
    return min(_kvcore.hardware_threads(), _DEFAULT_MAX_THREADS)


def use_streaming(nbytes: int) -> bool:
    """``$LMCACHE_ASCEND_STREAMING_STORES``: ``auto`` (default: transfers of at
    least 4 MiB), ``on`` or ``off``."""
    return nbytes >= _streaming_min(os.environ.get(STREAMING_ENV))


def copy_settings() -> tuple[int, int]:
    """:func:`num_threads`, and the smallest transfer written with streaming stores (what
    :func:`use_streaming` decides, as a threshold the core applies per object): one call
    for the block ops, which read them on every call."""
    return _copy_settings(os.environ.get(THREAD_POOL_ENV), os.environ.get(NUM_THREADS_ENV), os.environ.get(STREAMING_ENV))


@functools.lru_cache(maxsize=16)
def _copy_settings(pool: str | None, threads: str | None, streaming: str | None) -> tuple[int, int]:
    _pool_setting(pool)
    count = _thread_count(threads)
    return count, _streaming_min(streaming)


@functools.lru_cache(maxsize=16)
def _streaming_min(raw: str | None) -> int:
    """The smallest transfer streamed under a raw setting ("off": none below 2**63 - 1 bytes,
    the core's int64 limit, i.e. none at all)."""
    return {"on": 0, "off": 2**63 - 1}.get(_streaming_setting(raw), STREAMING_MIN_BYTES)


@functools.lru_cache(maxsize=16)
def _streaming_setting(raw: str | None) -> str:
    setting = (raw or "auto").strip().lower() or "auto"
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"{STREAMING_ENV} must be auto, on or off, got {setting!r}")
    return setting


def run_planes(
    table: npt.NDArray[np.int64],
    slots_ptr: int,
    slots_itemsize: int,
    num_tokens: int,
    skip_prefix: int,
    direction: int,
    token_bytes: int,
) -> None:
    """Execute one plane table (see ``csrc/plane_transfer.h``); ``token_bytes``
    (``PlaneSet.token_bytes``) is what one token moves over all of its planes."""
    if table.shape[0] == 0 or num_tokens == 0:
        return
    threads, streaming_min = copy_settings()
    streaming = token_bytes * (num_tokens - skip_prefix) >= streaming_min
    _kvcore.transfer_planes(table, slots_ptr, slots_itemsize, num_tokens, skip_prefix, direction, threads, streaming)


def run_blocks(
    table: npt.NDArray[np.int64],
    buffer_index: npt.NDArray[np.int64],
    buffer_ptrs: npt.NDArray[np.int64],
    objects: list[int],
    block_ids: tuple[int, int, int],
    block_size: int,
    blocks_per_object: int,
    num_blocks: int,
    skip_blocks: int,
    direction: int,
) -> None:
    """Execute a block-granular call (``transfer_blocks`` in ``csrc/plane_transfer.h``): ``table``
    relative to buffer ``buffer_index[p]`` and to each object; ``block_ids`` the (address, itemsize,
    count) of contiguous int32 / int64 host ids. A block id outside ``[0, num_blocks)`` is a
    ``ValueError`` before any byte moves."""
    threads, streaming_min = copy_settings()
    _kvcore.transfer_blocks(
        table, buffer_index, buffer_ptrs, objects, *block_ids,
        block_size, blocks_per_object, num_blocks, skip_blocks, direction, threads, streaming_min,
    )


def batched_copy(src: list[int], dst: list[int], sizes: list[int]) -> None:
    _kvcore.batched_copy(src, dst, sizes, num_threads())


def host_alloc(size: int, alignment: int = 0, huge_pages: bool = False) -> int:
    return _kvcore.host_alloc(size, alignment or _kvcore.page_size(), huge_pages)


def host_free(addr: int) -> None:
    _kvcore.host_free(addr)


def host_allocation_size(addr: int) -> int:
    return _kvcore.host_allocation_size(addr)


def host_live_allocations() -> int:
    return _kvcore.host_live_allocations()
