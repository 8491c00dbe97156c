"""The blender end to end on a tiny random-weight Llama (transformers, bf16) over a
real LMCache engine and paged KV:

- recompute ratio 1.0: output and every layer's paged KV equal the model's own
  full forward bit for bit, in both modes, with and without a hole;
- a hole in document 1, 2, 3 or 4 of 4: hole mode loads and reuses every cached
  document after it, standard blending none (counts printed);
- reused rows really are the cached KV: V bit-equal to the document prefilled
  alone, K equal to it re-rotated to the new positions (float64 reference RoPE).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmcache_ascend.blend.blender import SegmentBlender
from testkit.blend_stack import LocalBlendStack, full_recompute
from testkit.blend_workload import MultiDocWorkload
from tests.blend.conftest import DOC_LEN, NUM_DOCS, StackFactory


def kv_rows(cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer`` of a transformers KV cache as ``KV_2TD`` rows ``[T, Hkv * d]``."""
    entry = cache.layers[layer]
    return tuple(t[0].transpose(0, 1).reshape(t.shape[2], -1) for t in (entry.keys, entry.values))  # type: ignore[return-value]


@pytest.mark.parametrize("layout", ["flash", "ascend"])
@pytest.mark.parametrize("hole_mode", [False, True], ids=["standard", "hole_mode"])
@pytest.mark.parametrize("holes", [(), (1,)], ids=["no_hole", "hole1"])
def test_ratio_one_equals_full_recompute_exactly(
    stacks: StackFactory, blend_model: Any, workload: MultiDocWorkload, layout: str, hole_mode: bool, holes: tuple[int, ...]
) -> None:
    stack = stacks(layout)
    tokens = workload.prompt(holes)
    result = stack.blend(tokens, hole_mode=hole_mode, recompute_ratio=1.0)
    hidden, cache = full_recompute(blend_model, tokens)
    assert result.loaded_tokens > 0  # cached KV was loaded, then recomputed
    assert result.computed.tolist() == list(range(len(tokens)))
    assert torch.equal(result.hidden, hidden)
    for layer in range(stack.layers.num_layers):
        k, v = kv_rows(cache, layer)
        paged = stack.layer_kv(layer, len(tokens))
        assert torch.equal(paged[0], k) and torch.equal(paged[1], v), f"layer {layer}"


@pytest.mark.parametrize("hole", [0, 1, 2, 3], ids=lambda h: f"hole_in_doc{h + 1}_of_{NUM_DOCS}")
def test_hole_mode_reuses_every_cached_segment_after_the_hole(
    flash_stack: LocalBlendStack, workload: MultiDocWorkload, hole: int
) -> None:
    tokens = workload.prompt((hole,))
    standard = flash_stack.blend(tokens, hole_mode=False)
    holed = flash_stack.blend(tokens, hole_mode=True)
    after = NUM_DOCS - 1 - hole
    print(
        f"hole in doc {hole + 1}/{NUM_DOCS}: segments reused after the hole: hole mode "
        f"{holed.segments_reused_after_hole}, standard {standard.segments_reused_after_hole}; "
        f"tokens reused {holed.reused_tokens} vs {standard.reused_tokens} of {len(tokens)}"
    )
    assert holed.segments_reused_after_hole == after
    assert standard.segments_reused_after_hole == 0
    assert holed.loaded_tokens == (NUM_DOCS - 1) * DOC_LEN
    assert standard.loaded_tokens == hole * DOC_LEN
    hole_rows = range(*workload.document_span(hole))
    assert set(hole_rows) <= set(holed.computed.tolist())  # the hole is computed
    if after:
        assert holed.reused_tokens > standard.reused_tokens


def test_reused_rows_hold_the_cached_kv(
    flash_stack: LocalBlendStack, blend_model: Any, workload: MultiDocWorkload
) -> None:
    from tests.kernels.test_rope_ops import rope64

    tokens = workload.prompt((1,))
    result = flash_stack.blend(tokens, hole_mode=True)
    layers = flash_stack.layers
    check = result.plan.check_layer
    selected = set(result.computed.tolist())
    start = workload.document_span(3)[0]  # the last document: cached, after the hole
    kept = [t for t in range(start, start + DOC_LEN) if t not in selected]
    assert kept, "every token of the document was recomputed"
    _, alone = full_recompute(blend_model, workload.document(3))
    rows = torch.tensor(kept)
    for layer in range(check, layers.num_layers):
        k_alone, v_alone = kv_rows(alone, layer)
        paged = flash_stack.layer_kv(layer, len(tokens))
        assert torch.equal(paged[1, rows], v_alone[rows - start]), f"layer {layer}: V"
        # K: stored at positions 0.., re-rotated to start..; rope64 undoes and redoes it exactly.
        heads = k_alone.view(DOC_LEN, -1, layers.head_dim).double()
        unrotated = rope64(heads, -torch.arange(DOC_LEN), layers.head_dim, True)
        want = rope64(unrotated, torch.arange(start, start + DOC_LEN), layers.head_dim, True).view(DOC_LEN, -1)
        err = (paged[0, rows].double() - want[rows - start]).abs().max().item()
        assert err <= 0.02 * want.abs().max().item(), f"layer {layer}: K off by {err}"
    computed = paged[1, torch.tensor(sorted(selected))]
    assert computed.abs().sum() > 0


def test_layers_before_the_check_layer_are_fresh(
    flash_stack: LocalBlendStack, blend_model: Any, workload: MultiDocWorkload
) -> None:
    tokens = workload.prompt((2,))
    result = flash_stack.blend(tokens, hole_mode=True)
    _, cache = full_recompute(blend_model, tokens)
    for layer in range(result.plan.check_layer):
        k, v = kv_rows(cache, layer)
        paged = flash_stack.layer_kv(layer, len(tokens))
        assert torch.equal(paged[0], k) and torch.equal(paged[1], v)


def test_no_hole_both_modes_agree(flash_stack: LocalBlendStack, workload: MultiDocWorkload) -> None:
    tokens = workload.prompt()
    a = flash_stack.blend(tokens, hole_mode=False)
    b = flash_stack.blend(tokens, hole_mode=True)
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.computed, b.computed)
    assert a.reused_tokens == b.reused_tokens


def test_blender_refuses_bad_input(flash_stack: LocalBlendStack, workload: MultiDocWorkload) -> None:
    tokens = workload.prompt()
    with pytest.raises(ValueError, match="^slot_mapping"):
        flash_stack.blender.blend(tokens, kvcaches=flash_stack.kvcaches, slot_mapping=flash_stack.slots[:3])
    with pytest.raises(ValueError, match="^tokens"):
        flash_stack.blend([])
    with pytest.raises(TypeError, match="^tokens"):
        flash_stack.blender.blend(torch.zeros(4), slot_mapping=flash_stack.slots[:4])
    with pytest.raises(TypeError, match="^model"):
        SegmentBlender(flash_stack.engine, object())
