"""Layerwise load of chosen segments, with the protocol of ``LMCacheEngine.retrieve_layer``.

``retrieve_segments(engine, segments, num_tokens, **kw)`` is a generator that
yields ``engine.num_layers + 2`` times, exactly like upstream's
``retrieve_layer``: first the number of tokens it loads, then ``None`` once per
layer (after the ``(i + 2)``-th ``next()`` layer ``i`` has been handed to the
device connector), and last the bool mask of loaded tokens. Memory objects come
from ``storage_manager.layerwise_batched_get`` per storage location, in segment
order, go to ``gpu_connector.batched_to_gpu(starts, ends, **kw)`` (prime,
``send`` per layer, final ``next``), and are released as upstream releases them.

Unlike upstream, the segments need not be contiguous (hole mode), may sit in
several locations, and an empty list still drives the connector, so the
computed KV of an all-miss prompt reaches the paged cache the same way.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import torch

from lmcache_ascend.blend.segments import Segment


def retrieve_segments(
    engine: Any, segments: Sequence[Segment], num_tokens: int, **kwargs: Any
) -> Generator[int | torch.Tensor | None, None, None]:
    from lmcache.v1.gpu_connector.utils import assert_layerwise_gpu_connector

    num_layers = engine.num_layers
    for seg in segments:
        if not seg.cached:
            raise ValueError(f"segments: [{seg.start}, {seg.end}) is not cached")
        if seg.end > num_tokens:
            raise ValueError(f"segments: [{seg.start}, {seg.end}) lies beyond num_tokens {num_tokens}")
    connector = engine.gpu_connector
    assert_layerwise_gpu_connector(connector)
    starts = [s.start for s in segments]
    ends = [s.end for s in segments]
    mask = torch.zeros(num_tokens, dtype=torch.bool)
    for s in segments:
        mask[s.start : s.end] = True

    by_location: dict[str, list[int]] = {}
    for i, seg in enumerate(segments):
        by_location.setdefault(seg.location, []).append(i)  # type: ignore[arg-type]
    layer_keys = [seg.key.split_layers(num_layers) for seg in segments]
    getters = {
        loc: engine.storage_manager.layerwise_batched_get(
            [[layer_keys[i][layer] for i in idx] for layer in range(num_layers)], location=loc
        )
        for loc, idx in by_location.items()
    }

    consumer = connector.batched_to_gpu(starts, ends, **kwargs)
    next(consumer)
    held: list[Any] = []
    for layer in range(num_layers):
        tasks = {loc: next(gen) for loc, gen in getters.items()}
        yield int(mask.sum()) if layer == 0 else None
        objs: list[Any] = [None] * len(segments)
        for loc, task in tasks.items():
            for i, obj in zip(by_location[loc], task.result(), strict=True):
                objs[i] = obj
        missing = [segments[i].start for i, obj in enumerate(objs) if obj is None]
        if missing:
            raise RuntimeError(f"segments starting at {missing} vanished from storage between lookup and load")
        consumer.send(objs)
        held.extend(objs)
    for obj in held:
        obj.ref_count_down()
    yield None
    next(consumer)
    for obj in held:
        if obj.is_pinned:
            obj.unpin()
    yield mask
