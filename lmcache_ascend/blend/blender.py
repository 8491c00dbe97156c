"""The CacheBlend blender: one path for standard and hole mode.

:class:`SegmentBlender` has upstream ``LMCBlender``'s entry point,
``blend(tokens, mask=None, **kwargs)`` with the kwargs LMCache's vLLM adapter
passes (``kvcaches``, ``slot_mapping`` for every token, ``vllm_cached_tokens``),
so it can stand where LMCache's vLLM adapter expects its blender. One call:

1. :func:`~lmcache_ascend.blend.segments.lookup_segments` finds every segment
   and where it is cached; the mode picks the usable ones;
2. :func:`~lmcache_ascend.blend.plan.make_plan` marks cached, must-recompute
   and fixed tokens;
3. :func:`~lmcache_ascend.blend.retrieve.retrieve_segments` loads the usable
   segments layer by layer through the engine's ``BlendBufferConnector``
   (re-rotated K, holes zero), in lock step with
4. :class:`~lmcache_ascend.blend.forward.BlendForward`, which completes each
   layer's K/V in the connector's buffer before the connector writes it to the
   paged cache.

It returns a :class:`BlendResult` (upstream returns nothing; the adapter ignores it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from lmcache_ascend.blend.forward import BlendForward
from lmcache_ascend.blend.model import LayerModel
from lmcache_ascend.blend.plan import BlendPlan, make_plan
from lmcache_ascend.blend.retrieve import retrieve_segments
from lmcache_ascend.blend.segments import SegmentLookup, lookup_segments
from lmcache_ascend.blend.settings import BlendSettings
from lmcache_ascend.integrations.lmcache.blend_connector import BlendBufferConnector


@dataclass(frozen=True)
class BlendResult:
    hidden: torch.Tensor  # [n, D]: final-norm hidden states of the computed rows
    computed: torch.Tensor  # [n]: their positions, sorted (the last token is always one)
    lookup: SegmentLookup
    plan: BlendPlan
    loaded_tokens: int  # tokens whose KV came from LMCache
    reused_tokens: int  # of those, tokens that kept the cached KV (not recomputed)

    @property
    def num_tokens(self) -> int:
        return self.plan.num_tokens

    @property
    def reuse_fraction(self) -> float:
        return self.reused_tokens / self.num_tokens

    @property
    def segments_reused_after_hole(self) -> int:
        return self.lookup.used_after_first_miss

    @property
    def last_hidden(self) -> torch.Tensor:
        return self.hidden[-1]


class SegmentBlender:
    def __init__(
        self, engine: Any, model: LayerModel, settings: BlendSettings | None = None, max_positions: int | None = None
    ) -> None:
        connector = engine.gpu_connector
        if not isinstance(connector, BlendBufferConnector):
            raise TypeError(f"engine: its device connector must be a BlendBufferConnector, got {type(connector).__name__}")
        if not isinstance(model, LayerModel):
            raise TypeError(f"model must be a LayerModel (HFLlamaLayers, VLLMLlamaLayers), got {type(model).__name__}")
        settings = settings if settings is not None else BlendSettings.from_lmcache_config(engine.config)
        settings.check_model(model.num_layers)
        if engine.num_layers != model.num_layers or connector.hidden_dim_size != model.kv_row:
            raise ValueError(
                f"model: {model.num_layers} layers x {model.kv_row} KV values per token, LMCache engine "
                f"{engine.num_layers} x {connector.hidden_dim_size}"
            )
        positions = max_positions if max_positions is not None else model.max_positions
        connector.rotator = model.rotator(positions)
        self.engine = engine
        self.connector = connector
        self.model = model
        self.settings = settings
        self.num_layers = model.num_layers

    def with_mode(self, hole_mode: bool) -> SegmentBlender:
        """The same blender with hole mode on or off (shares engine, connector, model)."""
        return self.with_settings(replace(self.settings, hole_mode=hole_mode))

    def with_settings(self, settings: BlendSettings) -> SegmentBlender:
        """The same blender with other settings (shares engine, connector, model)."""
        if not isinstance(settings, BlendSettings):
            raise TypeError(f"settings must be a BlendSettings, got {type(settings).__name__}")
        settings.check_model(self.num_layers)
        other = object.__new__(SegmentBlender)
        other.__dict__.update(self.__dict__)
        other.settings = settings
        return other

    @torch.inference_mode()
    def blend(self, tokens: torch.Tensor | Sequence[int], mask: torch.Tensor | None = None, **kwargs: Any) -> BlendResult:
        ids = _as_token_ids(tokens)
        slot_mapping = kwargs.get("slot_mapping")
        if slot_mapping is None or len(slot_mapping) != ids.numel():
            raise ValueError(f"slot_mapping must hold one slot per token ({ids.numel()})")
        fixed = min(ids.numel(), max(0, int(kwargs.get("vllm_cached_tokens", 0))))
        lookup = lookup_segments(
            self.engine, ids, mask, hole_mode=self.settings.hole_mode, request_configs=kwargs.get("request_configs")
        )
        plan = make_plan(lookup, ids.numel(), self.settings, fixed)
        forward = BlendForward(self.model, plan, ids)
        retriever = retrieve_segments(self.engine, lookup.usable, ids.numel(), **kwargs)
        loaded = int(next(retriever))  # type: ignore[arg-type]
        for layer in range(self.num_layers):
            next(retriever)
            forward.run_layer(layer, *self.connector.get_kv(layer))
        next(retriever)
        hidden, rows = forward.output()
        reused = plan.reused(rows.cpu()) if forward.selected is not None else 0
        return BlendResult(hidden, rows.cpu(), lookup, plan, loaded, reused)


def _as_token_ids(tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    ids = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"tokens must be a non-empty 1-D sequence, got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"tokens must hold integer ids, got {ids.dtype}")
    return ids.to(device="cpu", dtype=torch.long)
