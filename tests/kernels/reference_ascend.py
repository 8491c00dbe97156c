"""Independent plain-indexing reference for the Ascend layouts (no ``lmcache_ascend`` imports).

Plane tuples (EngineKVFormat 17): per layer a tuple of planes ``[NB, BS, 1, W_p]``,
dtypes may differ per plane. The memory object (``KV_MLA_FMT`` ``[1, L, T, H]``,
or upstream's ``[L, T, H]``) holds for each layer and token the bytes of the
token's planes one after the other, in tuple order; ``H`` counts plane 0's
elements.

310P NZ (Ascend-only 100 / 101): per layer ``(K, V)`` each ``[NB, C, BS, 16]``
(100) or one ``[2, NB, C, BS, 16]`` (101); element ``[b, c, o, i]`` is element
``16 * c + i`` of the token's flattened ``NH * HS = 16 * C`` row. Object
``KV_2LTD`` ``[2, L, T, 16 * C]``.

Slot semantics as in ``reference.py``: slot ``s`` is block ``s // BS``, offset
``s % BS``; ``s < 0`` and tokens before ``skip`` are untouched; store = 1
(paged -> object), load = 0 (object -> paged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tests.kernels.reference import D2H, random_tensor

Plane = tuple[int, torch.dtype]  # (width in elements, dtype)

BF16, FP16, FP32, INT8 = torch.bfloat16, torch.float16, torch.float32, torch.int8

# Per-layer plane tuples as vllm-ascend registers them, plus byte-packing edge cases.
PLANE_LAYOUTS: dict[str, tuple[Plane, ...]] = {
    "MLA-bf16": ((512, BF16), (64, BF16)),
    "MLA-fp16": ((512, FP16), (64, FP16)),
    "DSA-bf16": ((512, BF16), (64, BF16), (128, BF16)),
    "DSA-C8-bf16": ((512, BF16), (64, BF16), (128, INT8), (1, FP16)),
    "DSA-C8-fp16": ((512, FP16), (64, FP16), (128, INT8), (1, FP16)),
    "latent-only": ((576, BF16),),
    "int8-first": ((128, INT8), (1, FP16)),
    # an fp16 plane starting at an odd byte offset of the row (14 + 3 = 17)
    "odd-bytes": ((7, FP16), (3, INT8), (2, FP16), (1, INT8)),
}


def row_bytes(planes: Sequence[Plane]) -> int:
    return sum(w * d.itemsize for w, d in planes)


def row_elems(planes: Sequence[Plane]) -> int:
    """``H``: the packed row in plane 0's elements."""
    total, first = row_bytes(planes), planes[0][1].itemsize
    assert total % first == 0
    return total // first


def _u8(t: torch.Tensor) -> torch.Tensor:
    """uint8 view of a contiguous tensor (last dim scaled by the itemsize); writes go through."""
    assert t.is_contiguous()
    return t.view(torch.uint8)


def _live(slots: torch.Tensor, skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = slots.to(torch.int64)
    tokens = torch.arange(s.numel())
    keep = (tokens >= skip) & (s >= 0)
    return tokens[keep], s[keep]


@dataclass
class PlaneCache:
    """Plane-tuple paged cache: ``layers[l][p]`` is ``[NB, BS, 1, W_p]``."""

    planes: tuple[Plane, ...]
    block_size: int
    layers: list[tuple[torch.Tensor, ...]]

    @property
    def num_slots(self) -> int:
        return self.layers[0][0].shape[0] * self.block_size

    def arg(self) -> list[tuple[torch.Tensor, ...]]:
        return list(self.layers)

    def storage(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in layer]

    def clone(self) -> PlaneCache:
        return PlaneCache(self.planes, self.block_size, [tuple(t.clone() for t in layer) for layer in self.layers])


def make_plane_cache(
    planes: Sequence[Plane], num_layers: int, num_blocks: int, block_size: int, gen: torch.Generator
) -> PlaneCache:
    layers = [
        tuple(random_tensor((num_blocks, block_size, 1, w), d, gen) for w, d in planes) for _ in range(num_layers)
    ]
    return PlaneCache(tuple(planes), block_size, layers)


def ref_plane_transfer(cache: PlaneCache, obj: torch.Tensor, slots: torch.Tensor, direction: int, skip: int = 0) -> None:
    """Reference transfer, in place, for ``obj`` ``[1, L, T, H]`` or ``[L, T, H]``."""
    tokens, live = _live(slots, skip)
    if tokens.numel() == 0:
        return
    nbytes = row_bytes(cache.planes)
    rows = _u8(obj).reshape(len(cache.layers), -1, nbytes)
    blocks, offsets = live // cache.block_size, live % cache.block_size
    for layer, tensors in enumerate(cache.layers):
        col = 0
        for plane in tensors:
            width = plane.shape[-1] * plane.element_size()
            paged = _u8(plane)[:, :, 0, :]  # [NB, BS, width bytes]
            if direction == D2H:
                rows[layer, tokens, col : col + width] = paged[blocks, offsets]
            else:
                paged[blocks, offsets] = rows[layer, tokens, col : col + width]
            col += width
        assert col == nbytes


@dataclass
class NZCache:
    """310P NZ cache: ``merged`` -> ``layers[l]`` is ``[2, NB, C, BS, 16]``, else a ``(K, V)`` tuple."""

    merged: bool
    block_size: int
    layers: list

    def plane(self, layer: int, kv: int) -> torch.Tensor:
        """``[NB, C, BS, 16]`` of K (0) or V (1) of ``layer`` (a view)."""
        return self.layers[layer][kv]

    @property
    def pieces(self) -> int:
        return self.plane(0, 0).shape[1]

    @property
    def num_slots(self) -> int:
        return self.plane(0, 0).shape[0] * self.block_size

    def storage(self) -> list[torch.Tensor]:
        return list(self.layers) if self.merged else [t for pair in self.layers for t in pair]

    def clone(self) -> NZCache:
        if self.merged:
            return NZCache(True, self.block_size, [t.clone() for t in self.layers])
        return NZCache(False, self.block_size, [(k.clone(), v.clone()) for k, v in self.layers])

    def arg(self, form: str) -> object:
        """``key_value_ptrs`` as tuples, a flat tensor list, or an int64 pointer table."""
        flat = self.storage()
        if form == "tuples":
            assert not self.merged
            return [tuple(pair) for pair in self.layers]
        if form == "list":
            return flat
        if form == "ptr":
            return torch.tensor([t.data_ptr() for t in flat], dtype=torch.int64)
        raise ValueError(form)


def make_nz_cache(
    merged: bool, num_layers: int, num_blocks: int, pieces: int, block_size: int, dtype: torch.dtype, gen: torch.Generator
) -> NZCache:
    shape = (num_blocks, pieces, block_size, 16)
    if merged:
        return NZCache(True, block_size, [random_tensor((2, *shape), dtype, gen) for _ in range(num_layers)])
    return NZCache(False, block_size, [(random_tensor(shape, dtype, gen), random_tensor(shape, dtype, gen)) for _ in range(num_layers)])


def ref_nz_transfer(cache: NZCache, obj: torch.Tensor, slots: torch.Tensor, direction: int, skip: int = 0) -> None:
    """Reference transfer, in place, for ``obj`` ``[2, L, T, 16 * C]``."""
    tokens, live = _live(slots, skip)
    if tokens.numel() == 0:
        return
    blocks, offsets = live // cache.block_size, live % cache.block_size
    n, c = tokens.numel(), cache.pieces
    for layer in range(obj.shape[1]):
        for kv in range(2):
            plane = cache.plane(layer, kv)
            for piece in range(c):
                cols = slice(16 * piece, 16 * (piece + 1))
                if direction == D2H:
                    obj[kv, layer, tokens, cols] = plane[blocks, piece, offsets]
                else:
                    plane[blocks, piece, offsets] = obj[kv, layer, tokens, cols].reshape(n, 16)


def block_slot_list(block_ids: Sequence[int], obj_index: int, per_object: int, block_size: int, skip_blocks: int) -> torch.Tensor:
    """Slots of object ``obj_index`` in a block transfer; -1 where nothing moves."""
    slots = torch.full((per_object * block_size,), -1, dtype=torch.int64)
    for j in range(per_object):
        flat = obj_index * per_object + j
        if flat < skip_blocks or flat >= len(block_ids):
            continue
        first = int(block_ids[flat]) * block_size
        slots[j * block_size : (j + 1) * block_size] = torch.arange(first, first + block_size)
    return slots
