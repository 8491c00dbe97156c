"""Plane tuples: one layer's KV as several paged tensors of different widths.

vllm-ascend keeps MLA and DSA caches per layer as a tuple of planes, each
``[num_blocks, block_size, 1, width_p]`` with its own width and possibly its own
dtype: MLA ``(latent, rope)``, DSA ``(latent, rope, indexer)``, DSA-C8
``(latent, rope, indexer int8 [.., 128], scale fp16 [.., 1])``. Upstream LMCache
calls this ``EngineKVFormat.NL_X_NP_X_NB_BS_ONE_HS`` (17).

A memory object holds, for every layer and token, the token's planes packed
byte-wise in tuple order (``KV_MLA_FMT`` ``[1, L, T, H]`` with ``H`` counted in
plane 0's elements), exactly as upstream's torch path packs them, so chunks are
interchangeable. :func:`plane_tuple_geometry` reads that geometry off one
layer's planes.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmcache_ascend.core.planes import KVGeometry
from lmcache_ascend.core.tensor_desc import TensorDesc


def plane_tuple_geometry(planes: Sequence[TensorDesc], num_layers: int) -> KVGeometry:
    """Geometry of ``num_layers`` layers shaped like ``planes``.

    Raises:
        ValueError: if a plane is not ``[NB, BS, 1, W]``, the planes disagree on
            blocks, or their packed row is not a whole number of plane-0 elements.
    """
    if not planes:
        raise ValueError("a plane tuple needs at least one plane")
    first = planes[0]
    for i, p in enumerate(planes):
        if p.ndim != 4 or p.shape[2] != 1:
            raise ValueError(f"plane {i} has shape {list(p.shape)}, expected [num_blocks, block_size, 1, width]")
        if p.shape[:2] != first.shape[:2]:
            raise ValueError(f"plane {i} has blocks {list(p.shape[:2])}, plane 0 {list(first.shape[:2])}")
    widths = tuple((p.shape[3], p.itemsize) for p in planes)
    total = sum(w * size for w, size in widths)
    if total % first.itemsize:
        raise ValueError(f"packed row of {total} bytes is not a whole number of {first.dtype} elements")
    return KVGeometry(
        num_layers=num_layers,
        num_blocks=first.shape[0],
        block_size=first.shape[1],
        num_heads=1,
        head_size=total // first.itemsize,
        itemsize=first.itemsize,
        planes=widths,
    )
