"""One chunk of a hybrid model (several KV groups) <-> its single memory object.

``transfer_chunk(layout, caches, chunk_object, slot_mappings, start, end, direction, skip_tokens=0)``:

- ``layout``: :class:`~lmcache_ascend.core.kv_groups.ChunkLayout` (segments per group);
- ``caches[g]``: group ``g``'s paged KV, as its layout was detected from
  (per-layer tensors, ``(K, V)`` or plane tuples);
- ``chunk_object``: a contiguous tensor of at least ``layout.nbytes`` bytes;
- ``slot_mappings[g]``: group ``g``'s slot mapping for the whole request (one
  entry per cache position, i.e. per ``compress_ratio`` tokens; ``-1`` skips);
- ``[start, end)``: the chunk's tokens in the request (at most ``layout.tokens``);
- ``skip_tokens``: the request's first tokens whose positions are left alone
  (on load: KV the engine computed itself, possibly shared with other requests).

Each reusable group's positions (see ``ChunkLayout.positions``) are copied with
``multi_layer_kv_transfer`` into rows ``0..n-1`` of its segment; the remaining
rows of a partial chunk are left as they are. State groups are not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lmcache_ascend.core.kv_groups import ChunkLayout
from lmcache_ascend.kernels.slot_ops import multi_layer_kv_transfer
from lmcache_ascend.kernels.torch_path import byte_view
from lmcache_ascend.kernels.torch_edge import check_tensor
from lmcache_ascend.kernels.validate import check_direction, fail


def transfer_chunk(
    layout: ChunkLayout,
    caches: Sequence[Any],
    chunk_object: torch.Tensor,
    slot_mappings: Sequence[torch.Tensor],
    start: int,
    end: int,
    direction: int,
    skip_tokens: int = 0,
) -> None:
    direction = check_direction(direction)
    if isinstance(skip_tokens, bool) or not isinstance(skip_tokens, int):
        fail(TypeError, "skip_tokens", f"must be an int, got {type(skip_tokens).__name__}")
    if skip_tokens < 0:
        fail(ValueError, "skip_tokens", f"must be >= 0, got {skip_tokens}")
    check_tensor(chunk_object, "chunk_object")
    raw = byte_view(chunk_object)[: chunk_object.numel() * chunk_object.element_size()]
    if raw.numel() < layout.nbytes:
        fail(ValueError, "chunk_object", f"holds {raw.numel()} bytes, the chunk layout needs {layout.nbytes}")
    for name, seq in (("caches", caches), ("slot_mappings", slot_mappings)):
        if len(seq) != len(layout.groups):
            fail(ValueError, name, f"has {len(seq)} entries for {len(layout.groups)} groups")
    for seg in layout.segments:
        group = layout.groups[seg.group]
        pos = layout.positions(seg.group, start, end)
        mapping = slot_mappings[seg.group]
        if pos.end > mapping.numel():
            fail(ValueError, f"slot_mappings[{seg.group}]", f"has {mapping.numel()} positions, the chunk needs {pos.end}")
        # Always move a full segment; rows this chunk does not fill get slot -1.
        slots = torch.full((seg.rows,), -1, dtype=torch.int64, device=mapping.device)
        slots[: pos.end - pos.begin] = mapping[pos.begin : pos.end]
        # A position is left alone only when all of its tokens are skipped.
        slots[: max(0, min(skip_tokens // group.compress_ratio, pos.end) - pos.begin)] = -1
        lay = group.layout
        dtype = getattr(torch, lay.dtype)
        view = raw[seg.offset : seg.offset + seg.nbytes].view(dtype).view(lay.kv_size, lay.geometry.num_layers, seg.rows, lay.hidden_dim)
        g = lay.geometry
        multi_layer_kv_transfer(
            view, caches[seg.group], slots, lay.device, g.num_slots, direction, lay.fmt, g.block_size, g.head_size
        )
