"""CacheBlend inside vLLM: lmcache_ascend's blender where LMCache's vLLM adapter expects its own.

With ``enable_blending`` (and ``use_layerwise``), LMCache 0.5.6's vLLM adapter
takes its blender from ``LMCBlenderBuilder.get_or_create("vllm-instance", ...)``
when the worker-side connector is built, and in ``start_load_kv`` (before
vLLM's forward) calls, for each request with an LMCache hit of ``hit`` tokens::

    blender.blend(tokens[:hit], mask[:hit], kvcaches=..., slot_mapping=slot_mapping[:hit],
                  vllm_cached_tokens=...)

The blender must leave the KV of every one of those ``hit`` tokens in vLLM's
paged cache; vLLM then computes the tokens after ``hit`` over it. Upstream's
``LMCBlender`` needs CUDA flash attention and a model some patched vLLM put in
``VLLMModelTracker``; :func:`install` registers a :class:`VLLMBlender` first
(the builder returns an instance already registered; pinned by a test), built
on :class:`~lmcache_ascend.blend.blender.SegmentBlender` over
:class:`~lmcache_ascend.blend.vllm_model.VLLMLlamaLayers`.

The model is the one vLLM loaded in this worker (:func:`find_vllm_model`):
vLLM 0.32 builds the worker-side connector in ``Worker.initialize_from_config``,
after ``load_model``, so the worker constructing the connector is on the call
stack with its ``model_runner.model``; where it is not, a model registered in
LMCache's ``VLLMModelTracker`` under ``"vllm-instance"`` is used.

Hole mode also needs vLLM's scheduler to count the cached segments after a hole
as hits: :func:`~lmcache_ascend.blend.segments.hole_mode_lookup`.

A blend that fails (a segment evicted between lookup and load, a tier that lost
position metadata) never reaches vLLM as an exception: the request's blocks are
reported as load errors (``take_failed_blocks``, merged into the connector's
``get_block_ids_with_load_errors``) and vLLM recomputes them
(``kv_load_failure_policy="recompute"``, set by the connector).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lmcache.logging import init_logger

from lmcache_ascend.blend.blender import BlendResult, SegmentBlender
from lmcache_ascend.blend.segments import hole_mode_lookup
from lmcache_ascend.blend.vllm_model import VLLMLlamaLayers
from lmcache_ascend.integrations.lmcache import plugin
from lmcache_ascend.upstream.patching import register_entry

logger = init_logger(__name__)

_MAX_STACK_DEPTH = 32


@dataclass
class BlendStats:
    """Counters over the blends of this worker (read by tests, benchmarks and logs)."""

    requests: int = 0
    failures: int = 0
    prompt_tokens: int = 0  # tokens handed to the blender (the hit)
    loaded_tokens: int = 0  # of those, tokens whose KV came from LMCache
    reused_tokens: int = 0  # of those, tokens that kept the cached KV (not recomputed)
    segments_after_hole: int = 0  # cached segments used after the first missing one
    last: dict[str, Any] = field(default_factory=dict)

    def record(self, result: BlendResult) -> None:
        self.requests += 1
        self.prompt_tokens += result.num_tokens
        self.loaded_tokens += result.loaded_tokens
        self.reused_tokens += result.reused_tokens
        self.segments_after_hole += result.segments_reused_after_hole
        segments = result.lookup.segments
        self.last = {
            "tokens": result.num_tokens,
            "loaded_tokens": result.loaded_tokens,
            "reused_tokens": result.reused_tokens,
            "computed_tokens": int(result.computed.numel()),
            "segments": len(segments),
            "cached_segments": sum(s.cached for s in segments),
            "used_segments": len(result.lookup.usable),
            "segments_after_hole": result.segments_reused_after_hole,
            "hole_mode": result.lookup.hole_mode,
        }


class VLLMBlender:
    """The object LMCache's vLLM adapter calls ``blend`` on."""

    def __init__(self, blender: SegmentBlender, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.blender = blender
        self.block_size = block_size
        self.stats = BlendStats()
        self._failed_blocks: set[int] = set()

    @property
    def hole_mode(self) -> bool:
        return self.blender.settings.hole_mode

    def blend(self, tokens: Any, mask: torch.Tensor | None = None, **kwargs: Any) -> BlendResult | None:
        try:
            result = self.blender.blend(tokens, mask, **kwargs)
        except Exception as exc:  # one request's failed blend must not end the engine: vLLM recomputes it
            self.stats.failures += 1
            slots = kwargs.get("slot_mapping")
            blocks = _blocks_of(slots, self.block_size) if isinstance(slots, torch.Tensor) else set()
            self._failed_blocks.update(blocks)
            logger.error("lmcache_ascend: CacheBlend failed (%s: %s); %d blocks recomputed", type(exc).__name__, exc, len(blocks))
            return None
        self.stats.record(result)
        return result

    def take_failed_blocks(self) -> set[int]:
        """Blocks of failed blends since the last call (vLLM recomputes them)."""
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed


def _blocks_of(slots: torch.Tensor, block_size: int) -> set[int]:
    valid = slots[slots >= 0].to("cpu", torch.int64)
    return {int(b) for b in torch.unique(valid // block_size)}


def find_vllm_model() -> Any:
    """The model of the vLLM worker that is building this connector (see the module docstring)."""
    frame = sys._getframe(1)
    for _ in range(_MAX_STACK_DEPTH):
        if frame is None:
            break
        runner = getattr(frame.f_locals.get("self"), "model_runner", None)
        model = getattr(runner, "model", None)
        if isinstance(model, torch.nn.Module):
            return model
        frame = frame.f_back
    from lmcache.v1.compute.models.utils import VLLMModelTracker

    try:
        return VLLMModelTracker.get_model(plugin.ENGINE_NAME)
    except ValueError:
        raise RuntimeError(
            "CacheBlend: no vLLM model found for this worker. Build the connector from vLLM's worker, or "
            f"register the model first: VLLMModelTracker.register_model({plugin.ENGINE_NAME!r}, model)"
        ) from None


def install(engine: Any, block_size: int) -> VLLMBlender:
    """Register a :class:`VLLMBlender` for ``engine`` where LMCache's vLLM adapter looks for its blender."""
    from lmcache.v1.compute.blend.utils import LMCBlenderBuilder

    layers = VLLMLlamaLayers(find_vllm_model())
    blender = VLLMBlender(SegmentBlender(engine, layers), block_size)
    register_entry(LMCBlenderBuilder._blenders, plugin.ENGINE_NAME, blender)
    if blender.hole_mode:
        hole_mode_lookup(engine)
    settings = blender.blender.settings
    logger.info(
        "lmcache_ascend: CacheBlend on (%s mode, recompute ratio %.2f, check layer %d)",
        "hole" if settings.hole_mode else "standard",
        settings.recompute_ratio,
        settings.check_layer,
    )
    return blender


def uninstall() -> None:
    from lmcache.v1.compute.blend.utils import LMCBlenderBuilder

    LMCBlenderBuilder._blenders.pop(plugin.ENGINE_NAME, None)


def installed() -> VLLMBlender | None:
    """This process's installed blender, if any."""
    from lmcache.v1.compute.blend.utils import LMCBlenderBuilder

    blender = LMCBlenderBuilder._blenders.get(plugin.ENGINE_NAME)
    return blender if isinstance(blender, VLLMBlender) else None


def worker_stats(worker: Any = None) -> dict[str, Any]:
    """The worker's CacheBlend counters, for ``LLM.collective_rpc(worker_stats)``."""
    blender = installed()
    if blender is None:
        return {"installed": False}
    return {"installed": True, "hole_mode": blender.hole_mode, **asdict(blender.stats)}
