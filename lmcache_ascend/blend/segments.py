"""Segment-aware lookup: every segment of a prompt, its position, and where it is cached.

Segments come from the engine's own ``SegmentTokenDatabase`` (LMCache cuts the
prompt at ``blend_special_str``; a segment's key does not depend on its
position). A segment counts as cached when all its per-layer keys are in one
storage location, the rule LMCache's layerwise ``lookup`` applies.

Every segment is probed in both modes; the mode only decides which cached
segments the blend uses (:attr:`SegmentLookup.usable`):

- standard: the cached segments before the first miss, exactly what
  ``LMCacheEngine.lookup`` / ``retrieve_layer`` serve;
- hole mode: every cached segment, wherever it sits.

:func:`hole_mode_lookup` makes an engine's ``lookup`` (what vLLM's scheduler
asks through LMCache's lookup server) count the cached segments after a missing
one; pinned by ``tests/integrations/vllm/test_blend_wiring.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmcache_ascend.upstream.patching import wrap_instance_method


@dataclass(frozen=True)
class Segment:
    start: int  # token range [start, end) of the prompt, separators excluded
    end: int
    key: Any  # CacheEngineKey of the whole segment (split per layer when loading)
    location: str | None  # storage backend holding all its layers; None: not cached

    @property
    def cached(self) -> bool:
        return self.location is not None

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentLookup:
    segments: tuple[Segment, ...]
    hole_mode: bool

    @property
    def first_miss(self) -> int:
        """Index of the first segment that is not cached (``len(segments)`` if none)."""
        return next((i for i, s in enumerate(self.segments) if not s.cached), len(self.segments))

    @property
    def usable(self) -> tuple[Segment, ...]:
        """The cached segments the blend loads, in prompt order."""
        if self.hole_mode:
            return tuple(s for s in self.segments if s.cached)
        return self.segments[: self.first_miss]

    @property
    def prefix_end(self) -> int:
        """End of the contiguous cached prefix: what ``LMCacheEngine.lookup`` returns."""
        prefix = self.segments[: self.first_miss]
        return prefix[-1].end if prefix else 0

    @property
    def hit_end(self) -> int:
        """End of the last usable segment (the scheduler-side hit length in this mode)."""
        usable = self.usable
        return usable[-1].end if usable else 0

    @property
    def cached_after_first_miss(self) -> int:
        """Cached segments that follow the first miss (reusable only in hole mode)."""
        return sum(1 for s in self.segments[self.first_miss :] if s.cached)

    @property
    def used_after_first_miss(self) -> int:
        """Cached segments after the first miss that this lookup's blend loads."""
        miss = self.first_miss
        if miss == len(self.segments):
            return 0
        return sum(1 for s in self.usable if s.start > self.segments[miss].start)


def lookup_segments(
    engine: Any,
    tokens: torch.Tensor | Sequence[int],
    mask: torch.Tensor | None = None,
    *,
    hole_mode: bool,
    request_configs: dict[str, Any] | None = None,
) -> SegmentLookup:
    """All non-empty segments of ``tokens`` (those LMCache's ``mask`` leaves), cached or not."""
    if not isinstance(hole_mode, bool):
        raise TypeError(f"hole_mode must be a bool, got {type(hole_mode).__name__}")
    if not getattr(engine.config, "enable_blending", False):
        raise ValueError("engine: its LMCache config must have enable_blending on (segment token database)")
    num_layers = engine.num_layers
    manager = engine.storage_manager
    found: list[Segment] = []
    for start, end, key in engine.token_database.process_tokens(tokens=tokens, mask=mask, request_configs=request_configs):
        if end <= start:
            continue
        hits, mapping = manager.batched_contains(key.split_layers(num_layers), engine.retrieve_locations)
        location = next(iter(mapping)) if hits == num_layers and len(mapping) == 1 else None
        found.append(Segment(int(start), int(end), key, location))
    return SegmentLookup(tuple(found), hole_mode)


def hole_mode_lookup(engine: Any) -> None:
    """Make ``engine.lookup`` report CacheBlend hole-mode hits: the end of the last cached segment.

    LMCache's lookup (and so vLLM's scheduler) stops at the first segment that
    is not cached. In hole mode the blender computes the holes itself, so the
    hit runs to the end of the last cached segment. The prefix lookup still runs
    first, unchanged, so its pins and statistics stay LMCache's; segments past
    the prefix are not pinned (one evicted before the load is a hole the blender
    computes).
    """
    wrap_instance_method(engine, "lookup", lambda prefix_lookup: _hole_mode(engine, prefix_lookup), "hole_mode")


def _hole_mode(engine: Any, prefix_lookup: Any) -> Any:
    def lookup(tokens: Any = None, *args: Any, request_configs: Any = None, **kwargs: Any) -> int:
        hit = int(prefix_lookup(tokens, *args, request_configs=request_configs, **kwargs))
        if tokens is None or not engine.is_healthy():  # LMCache answered 0 without probing storage
            return hit
        segments = lookup_segments(engine, tokens, hole_mode=True, request_configs=request_configs)
        return max(hit, segments.hit_end)

    return lookup
