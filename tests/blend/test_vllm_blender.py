"""The pieces that put the blender inside vLLM, over the in-process blend stack:

- ``VLLMBlender``: a successful blend is counted; a failing one returns None,
  reports the request's blocks for recompute (once) and never raises;
- ``blend.segments.hole_mode_lookup``: the engine's lookup (what vLLM's scheduler asks)
  reports the end of the last cached segment, and stays LMCache's own prefix
  lookup where there is no hole.
"""

from __future__ import annotations

import pytest
import torch

from testkit.blend_stack import LocalBlendStack
from testkit.blend_workload import MultiDocWorkload
from lmcache_ascend.blend.segments import hole_mode_lookup
from lmcache_ascend.integrations.vllm.blend import VLLMBlender
from tests.blend.conftest import DOC_LEN, NUM_DOCS

BLOCK = 16



def test_a_blend_is_counted(flash_stack: LocalBlendStack, workload: MultiDocWorkload) -> None:
    blender = VLLMBlender(flash_stack.blender.with_mode(True), BLOCK)
    tokens = workload.prompt(holes=(1,))
    result = blender.blend(tokens, **flash_stack.request_kwargs(len(tokens)))
    assert result is not None
    stats = blender.stats
    assert (stats.requests, stats.failures, stats.prompt_tokens) == (1, 0, len(tokens))
    assert stats.loaded_tokens == (NUM_DOCS - 1) * DOC_LEN == result.loaded_tokens
    assert stats.last["segments_after_hole"] == NUM_DOCS - 2 and stats.last["hole_mode"]
    assert blender.take_failed_blocks() == set()


def test_a_failed_blend_reports_its_blocks_and_does_not_raise(
    flash_stack: LocalBlendStack, workload: MultiDocWorkload
) -> None:
    blender = VLLMBlender(flash_stack.blender, BLOCK)
    tokens = workload.prompt()
    kwargs = flash_stack.request_kwargs(len(tokens))
    slots = kwargs["slot_mapping"].clone()
    slots[3] = -1  # a skipped slot names no block
    kwargs["slot_mapping"] = slots[:-1]  # one slot short: the blend refuses it
    assert blender.blend(tokens, **kwargs) is None
    expected = {int(b) for b in torch.unique(slots[:-1][slots[:-1] >= 0] // BLOCK)}
    assert blender.take_failed_blocks() == expected
    assert blender.take_failed_blocks() == set(), "failed blocks are reported once"
    assert (blender.stats.requests, blender.stats.failures) == (0, 1)


def test_bad_block_size_is_refused(flash_stack: LocalBlendStack) -> None:
    with pytest.raises(ValueError, match="^block_size"):
        VLLMBlender(flash_stack.blender, 0)


@pytest.mark.parametrize("hole", [0, 1, 2, 3])
def test_hole_mode_lookup_counts_segments_after_the_hole(
    flash_stack: LocalBlendStack, workload: MultiDocWorkload, hole: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = flash_stack.engine
    monkeypatch.setattr(engine, "lookup", engine.lookup)  # restored after the test: the stack is shared
    tokens = workload.prompt(holes=(hole,))
    prefix = engine.lookup(tokens)
    assert prefix == (workload.document_span(hole - 1)[1] if hole else 0), "LMCache's own lookup stops at the hole"
    hole_mode_lookup(engine)
    hole_mode_lookup(engine)  # idempotent: one wrapper
    last_cached = NUM_DOCS - 1 if hole < NUM_DOCS - 1 else NUM_DOCS - 2
    assert engine.lookup(tokens) == workload.document_span(last_cached)[1]
    assert engine.lookup(workload.prompt()) == workload.document_span(NUM_DOCS - 1)[1], "no hole: the prefix lookup's answer"
    assert engine.lookup(workload.prompt(holes=tuple(range(NUM_DOCS)))) == 0
    assert engine.lookup(tokens, lookup_id="req-1", pin=True) == workload.document_span(last_cached)[1]
    engine.lookup_unpin("req-1")
