"""The op surface LMCache binds: same names and signatures as ``lmcache.cuda_ops``.

LMCache's device layer calls ``DeviceOps.bind_native(lmcache_ascend.ops)``
(the built-in Ascend device does so by module name), which walks ``dir()`` of
this module and installs every public callable and type on
``lmcache.device_ops``. So this module defines nothing but ops and the enums
they take; everything else lives in :mod:`lmcache_ascend.kernels`.

Ops not listed here (cachegen codec, event recorders) keep LMCache's own
implementation. ``rotary_embedding_k_fused`` / ``_strided`` re-rotate cached K
to new positions for CacheBlend (see :mod:`lmcache_ascend.kernels.rope_ops`).

Backends: host-resident tensors go to the C++ core, device-resident ones to the
device-generic torch path; ``LMCACHE_ASCEND_KERNEL_BACKEND=torch`` forces the
latter (see :mod:`lmcache_ascend.kernels.dispatch`). Every op validates its
arguments first and raises ``TypeError`` / ``ValueError`` naming the argument.
"""

from lmcache.lmcache_native import EngineKVFormat, TransferDirection

from lmcache_ascend.kernels.block_ops import multi_layer_block_kv_transfer
from lmcache_ascend.kernels.memory_ops import (
    alloc_hugepage_pinned_numa_ptr,
    alloc_hugepage_pinned_ptr,
    alloc_numa_ptr,
    alloc_pinned_numa_ptr,
    alloc_pinned_ptr,
    batched_memcpy,
    free_hugepage_pinned_numa_ptr,
    free_hugepage_pinned_ptr,
    free_numa_ptr,
    free_pinned_numa_ptr,
    free_pinned_ptr,
    lmcache_memcpy_async,
)
from lmcache_ascend.kernels.rope_ops import rotary_embedding_k_fused, rotary_embedding_k_fused_strided
from lmcache_ascend.kernels.slot_ops import (
    load_and_reshape_flash,
    multi_layer_kv_transfer,
    multi_layer_kv_transfer_unilateral,
    reshape_and_cache_back_flash,
    single_layer_kv_transfer,
    single_layer_kv_transfer_sgl,
)

__all__ = [
    "EngineKVFormat",
    "TransferDirection",
    "alloc_hugepage_pinned_numa_ptr",
    "alloc_hugepage_pinned_ptr",
    "alloc_numa_ptr",
    "alloc_pinned_numa_ptr",
    "alloc_pinned_ptr",
    "batched_memcpy",
    "free_hugepage_pinned_numa_ptr",
    "free_hugepage_pinned_ptr",
    "free_numa_ptr",
    "free_pinned_numa_ptr",
    "free_pinned_ptr",
    "lmcache_memcpy_async",
    "load_and_reshape_flash",
    "multi_layer_block_kv_transfer",
    "multi_layer_kv_transfer",
    "multi_layer_kv_transfer_unilateral",
    "reshape_and_cache_back_flash",
    "rotary_embedding_k_fused",
    "rotary_embedding_k_fused_strided",
    "single_layer_kv_transfer",
    "single_layer_kv_transfer_sgl",
]
