"""Host backend: runs plane tables through the C++ core (``lmcache_ascend._kvcore``).

Every address handed to it must be host memory that stays alive for the call;
callers (``lmcache_ascend.kernels.transfer``) hold the tensors. The GIL is
released inside the C++ call.
"""

from __future__ import annotations

import os

import numpy as np

from lmcache_ascend import _kvcore

NUM_THREADS_ENV = "LMCACHE_ASCEND_NUM_THREADS"
_DEFAULT_MAX_THREADS = 16


def num_threads() -> int:
    """Worker threads for host copies: ``$LMCACHE_ASCEND_NUM_THREADS`` or all cores (max 16)."""
    raw = os.environ.get(NUM_THREADS_ENV)
    if raw is None:
        return min(_kvcore.hardware_threads(), _DEFAULT_MAX_THREADS)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{NUM_THREADS_ENV} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{NUM_THREADS_ENV} must be a positive integer, got {raw!r}")
    return value


def run_planes(table: np.ndarray, slots_ptr: int, slots_itemsize: int, num_tokens: int, skip_prefix: int, direction: int) -> None:
    """Execute one plane table (see ``csrc/plane_transfer.h``)."""
    if table.shape[0] == 0 or num_tokens == 0:
        return
    _kvcore.transfer_planes(table, slots_ptr, slots_itemsize, num_tokens, skip_prefix, direction, num_threads())


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
