"""Hybrid models: several KV groups per model, one memory object per chunk.

Models such as DeepSeek-V4 give the scheduler several KV-cache groups. Each has
its own block table, block size and layers, and may compress the sequence
(one cache position per ``compress_ratio`` tokens: a slot mapping of
``ceil(T / ratio)`` entries) or keep only a sliding window of recent tokens.

A :class:`ChunkLayout` lays one LMCache chunk of all groups out in one memory
object (``tokens``: how many tokens the chunk holds, ``chunk_size`` unless it
is a prompt's shorter last chunk): group ``g``'s segment is its own ``[kv, L_g, rows_g, H_g]`` block (the
``KV_2LTD`` / ``KV_MLA_FMT`` layout of that group), segments follow each other
in group order, byte-aligned to 64. Which positions a chunk ``[start, end)``
stores for a group:

- ``full`` groups: positions ``floor(start / r) .. ceil(end / r)``;
- ``sliding_window`` groups: only the positions covering the chunk's last
  ``window`` tokens. Prefix reuse restores a prefix ending where a stored chunk
  ends, and the next token's window reaches back at most ``window`` tokens:
  into this chunk, or (for a chunk shorter than the window, such as a
  prompt's tail) into the full chunk before it, which stored its own last
  ``window`` tokens (``window <= chunk_size`` is required), so the rest is
  never read. With ``window_align`` (KV whose blocks only move whole, such as
  vLLM CPU's packed blocks) the window starts at a multiple of it, and chunk
  ends must be multiples of it;
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
    # Tokens the window's first token is rounded down to (and chunk ends are
    # multiples of): whole blocks, for KV whose blocks only move whole (vLLM CPU).
    window_align: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("full", "sliding_window", "state"):
            raise ValueError(f"kind must be full, sliding_window or state, got {self.kind!r}")
        if self.compress_ratio < 1:
            raise ValueError(f"compress_ratio must be >= 1, got {self.compress_ratio}")
        if self.kind == "sliding_window" and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError("a sliding_window group needs sliding_window >= 1")
        if self.window_align < 1:
            raise ValueError(f"window_align must be >= 1, got {self.window_align}")

    def window_start(self, start: int, end: int) -> int:
        """The first token a chunk ``[start, end)`` of this group stores."""
        if self.kind != "sliding_window":
            return start
        first = end - self.sliding_window  # type: ignore[operator]
        return max(start, first - first % self.window_align)

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
    rows: int  # positions stored for a chunk of the layout's ``tokens``
    nbytes: int


@dataclass(frozen=True)
class PositionRange:
    begin: int  # first cache position (index into the group's slot mapping)
    end: int


class ChunkLayout:
    """Where each group's part of one chunk lives in the chunk's memory object."""

    def __init__(self, groups: Sequence[KVGroupSpec], chunk_size: int, tokens: int | None = None) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        tokens = chunk_size if tokens is None else tokens
        if not 1 <= tokens <= chunk_size:
            raise ValueError(f"tokens must be within 1..chunk_size ({chunk_size}), got {tokens}")
        self.groups = tuple(groups)
        self.chunk_size = chunk_size
        self.tokens = tokens
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
        # A chunk that does not start on a position boundary spans one more position.
        straddle = 1 if self.chunk_size % g.compress_ratio else 0
        rows = math.ceil(self.tokens / g.compress_ratio) + straddle
        if g.kind != "sliding_window":
            return rows
        window: int = g.sliding_window  # type: ignore[assignment]
        if window > self.chunk_size:
            raise ValueError(
                f"sliding_window {window} exceeds chunk_size {self.chunk_size}: a chunk-aligned "
                "prefix could need tokens of an earlier chunk"
            )
        # Chunk ends are multiples of window_align, so the window grows to whole
        # alignment units; its first token may sit mid-position: one position more at most.
        window = -(-window // g.window_align) * g.window_align
        return min(rows, math.ceil(window / g.compress_ratio) + (1 if g.compress_ratio > 1 else 0))

    def positions(self, group: int, start: int, end: int) -> PositionRange:
        """Cache positions of ``group`` that chunk ``[start, end)`` stores."""
        g = self.groups[group]
        if not (0 <= start < end <= start + self.tokens):
            raise ValueError(f"chunk [{start}, {end}) is not within one chunk of {self.tokens} tokens")
        if end % g.window_align:
            raise ValueError(f"chunk end {end} is not a multiple of group {group}'s window_align {g.window_align}")
        return PositionRange(g.window_start(start, end) // g.compress_ratio, math.ceil(end / g.compress_ratio))


def _align(n: int) -> int:
    return -(-n // SEGMENT_ALIGN) * SEGMENT_ALIGN
