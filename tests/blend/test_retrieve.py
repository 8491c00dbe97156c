"""retrieve_segments keeps ``retrieve_layer``'s protocol (L + 2 yields: count,
one None per layer, mask) for non-contiguous segments, and refuses segments it
cannot load."""

from __future__ import annotations

import pytest
import torch

from testkit.blend_stack import LocalBlendStack
from lmcache_ascend.blend.retrieve import retrieve_segments
from lmcache_ascend.blend.segments import Segment, lookup_segments
from testkit.blend_workload import MultiDocWorkload


def test_protocol_and_mask_for_segments_around_a_hole(flash_stack: LocalBlendStack, workload: MultiDocWorkload) -> None:
    tokens = workload.prompt((1,))
    usable = lookup_segments(flash_stack.engine, tokens, hole_mode=True).usable
    gen = retrieve_segments(flash_stack.engine, usable, len(tokens), **flash_stack.request_kwargs(len(tokens)))
    steps = list(gen)
    num_layers = flash_stack.engine.num_layers
    assert len(steps) == num_layers + 2
    assert steps[0] == sum(s.length for s in usable)
    assert steps[1:-1] == [None] * num_layers
    want = torch.zeros(len(tokens), dtype=torch.bool)
    for s in usable:
        want[s.start : s.end] = True
    assert torch.equal(steps[-1], want)


def test_refuses_uncached_and_out_of_range_segments(flash_stack: LocalBlendStack, workload: MultiDocWorkload) -> None:
    tokens = workload.prompt((1,))
    found = lookup_segments(flash_stack.engine, tokens, hole_mode=True)
    kwargs = flash_stack.request_kwargs(len(tokens))
    with pytest.raises(ValueError, match="not cached"):
        next(retrieve_segments(flash_stack.engine, found.segments, len(tokens), **kwargs))
    first = found.usable[0]
    with pytest.raises(ValueError, match="beyond"):
        next(retrieve_segments(flash_stack.engine, [first], first.end - 1, **kwargs))
    missing = Segment(0, 4, first.key, None)
    with pytest.raises(ValueError, match="not cached"):
        next(retrieve_segments(flash_stack.engine, [missing], len(tokens), **kwargs))
