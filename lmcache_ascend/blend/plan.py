"""The blend plan: which tokens load cached KV, which must be recomputed, and the selection.

Token classes, over positions ``[0, num_tokens)`` of one prompt:

- *fixed*: the first ``fixed`` tokens the engine already holds (vLLM's own
  prefix cache); never recomputed after the check layer, never rewritten.
- *cached*: tokens of the segments the blend loads (``SegmentLookup.usable``).
- *must*: every other token (separators, holes, an uncached tail) and always the
  last token, whose output the engine samples from.

At the check layer :meth:`BlendPlan.select` keeps the must tokens plus the
``int(ratio * candidates)`` cached tokens whose fresh K deviates most from the
cached K (ties: lower position first); later layers compute only those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmcache_ascend.blend.segments import SegmentLookup
from lmcache_ascend.blend.settings import BlendSettings


@dataclass(frozen=True)
class BlendPlan:
    num_tokens: int
    cached: torch.Tensor  # bool [num_tokens] on the host
    fixed: int
    recompute_ratio: float
    check_layer: int

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")
        if self.cached.dtype != torch.bool or tuple(self.cached.shape) != (self.num_tokens,):
            raise ValueError(f"cached must be a bool tensor of shape ({self.num_tokens},)")
        if not 0 <= self.fixed <= self.num_tokens:
            raise ValueError(f"fixed must lie in [0, {self.num_tokens}], got {self.fixed}")

    @property
    def _free(self) -> torch.Tensor:
        free = torch.ones(self.num_tokens, dtype=torch.bool)
        free[: self.fixed] = False
        return free

    @property
    def must(self) -> torch.Tensor:
        must = ~self.cached & self._free
        must[-1] = True
        return must

    @property
    def candidates(self) -> torch.Tensor:
        return self.cached & self._free & ~self.must

    @property
    def budget(self) -> int:
        return int(int(self.candidates.sum()) * self.recompute_ratio)

    @property
    def num_cached(self) -> int:
        return int(self.cached.sum())

    def select(self, deviation: torch.Tensor) -> torch.Tensor:
        """Sorted int64 positions to recompute from the check layer on (on ``deviation``'s device)."""
        if deviation.dim() != 1 or deviation.numel() != self.num_tokens:
            raise ValueError(f"deviation must have shape ({self.num_tokens},), got {tuple(deviation.shape)}")
        device = deviation.device
        must = self.must.nonzero().squeeze(1).to(device)
        candidates = self.candidates.nonzero().squeeze(1).to(device)
        order = torch.sort(deviation[candidates], descending=True, stable=True).indices[: self.budget]
        return torch.cat([must, candidates[order]]).sort().values

    def reused(self, selected: torch.Tensor) -> int:
        """Cached tokens whose KV stays the cached one, given the selection."""
        recomputed = self.cached.to(selected.device)[selected].sum()
        return self.num_cached - int(recomputed)


def make_plan(lookup: SegmentLookup, num_tokens: int, settings: BlendSettings, fixed: int = 0) -> BlendPlan:
    cached = torch.zeros(num_tokens, dtype=torch.bool)
    for seg in lookup.usable:
        if seg.end > num_tokens:
            raise ValueError(f"segment [{seg.start}, {seg.end}) lies beyond the {num_tokens} prompt tokens")
        cached[seg.start : seg.end] = True
    return BlendPlan(num_tokens, cached, fixed, float(settings.recompute_ratio), settings.check_layer)
