"""Hybrid models: several KV groups per model, one memory object per chunk.

Models such as DeepSeek-V4 give the scheduler several KV-cache groups. Each has
its own block table, block size and layers, and may compress the sequence
(one cache position per ``compress_ratio`` tokens: a slot mapping of
``ceil(T / ratio)`` entries) or keep only a sliding window of recent tokens.

A :class:`ChunkLayout` lays one LMCache chunk of all groups out in one memory
object: group ``g``'s segment is its own ``[kv, L_g, rows_g, H_g]`` block (the
``KV_2LTD`` / ``KV_MLA_FMT`` layout of that group), segments follow each other
in group order, byte-aligned to 64. Which positions a chunk ``[start, end)``
stores for a group:

- ``full`` groups: positions ``floor(start / r) .. ceil(end / r)``;
- ``sliding_window`` groups: only the positions covering the chunk's last
  ``window`` tokens. Prefix reuse restores a chunk-aligned prefix, and the
  window never looks further back than that (``window <= chunk_size`` is
  required), so the rest is never read;
- ``state`` groups (recurrent / SSM / score state) are **skipped**: they hold a
  request's running state rather than per-token KV, which a prefix cannot be
  rebuilt from chunk by chunk; the engine recomputes them.

:func:`transfer_chunk` moves one chunk between the paged caches and its memory
object with the same kernels as single-group caches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lmcache_ascend.core.detection import KVCacheLayout

GroupKind = Literal["full", "sliding_window", "state"]
SEGMENT_ALIGN = 64


@dataclass(frozen=True)
class KVGroupSpec:
    layout: KVCacheLayout
    kind: GroupKind = "full"
    compress_ratio: int = 1
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("full", "sliding_window", "state"):
            raise ValueError(f"kind must be full, sliding_window or state, got {self.kind!r}")
        if self.compress_ratio < 1:
            raise ValueError(f"compress_ratio must be >= 1, got {self.compress_ratio}")
        if self.kind == "sliding_window" and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError("a sliding_window group needs sliding_window >= 1")

    @property
    def reusable(self) -> bool:
        return self.kind != "state"

    @property
    def row_bytes(self) -> int:
        return self.layout.hidden_dim * self.layout.geometry.itemsize


@dataclass(frozen=True)
class Segment:
    group: int
    offset: int  # bytes from the start of the chunk object
    rows: int  # positions stored for a full chunk
    nbytes: int


@dataclass(frozen=True)
class PositionRange:
    begin: int  # first cache position (index into the group's slot mapping)
    end: int


class ChunkLayout:
    """Where each group's part of one chunk lives in the chunk's memory object."""

    def __init__(self, groups: Sequence[KVGroupSpec], chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.groups = tuple(groups)
        self.chunk_size = chunk_size
        segments, offset = [], 0
        for i, g in enumerate(self.groups):
            if not g.reusable:
                continue
            rows = self._full_rows(g)
            nbytes = g.layout.kv_size * g.layout.geometry.num_layers * rows * g.row_bytes
            segments.append(Segment(i, offset, rows, nbytes))
            offset = _align(offset + nbytes)
        self.segments = tuple(segments)
        self.nbytes = offset

    def _full_rows(self, g: KVGroupSpec) -> int:
        if g.kind == "sliding_window":
            if g.sliding_window > self.chunk_size:  # type: ignore[operator]
                raise ValueError(
                    f"sliding_window {g.sliding_window} exceeds chunk_size {self.chunk_size}: a chunk-aligned "
                    "prefix could need tokens of an earlier chunk"
                )
            # The window's first token may sit mid-position: one position more at most.
            return math.ceil(g.sliding_window / g.compress_ratio) + 1  # type: ignore[operator]
        # A chunk that does not start on a position boundary spans one more position.
        straddle = 1 if self.chunk_size % g.compress_ratio else 0
        return math.ceil(self.chunk_size / g.compress_ratio) + straddle

    def positions(self, group: int, start: int, end: int) -> PositionRange:
        """Cache positions of ``group`` that chunk ``[start, end)`` stores."""
        g = self.groups[group]
        if not (0 <= start < end <= start + self.chunk_size):
            raise ValueError(f"chunk [{start}, {end}) is not within one chunk of {self.chunk_size} tokens")
        first_token = start if g.kind == "full" else max(start, end - g.sliding_window)  # type: ignore[operator]
        return PositionRange(first_token // g.compress_ratio, math.ceil(end / g.compress_ratio))


def _align(n: int) -> int:
    return -(-n // SEGMENT_ALIGN) * SEGMENT_ALIGN
