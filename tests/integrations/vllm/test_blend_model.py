"""VLLMLlamaLayers: the blender's layer steps over a model loaded by vLLM itself.

Reference: transformers' eager forward of the same checkpoint (float32). A
blended forward with every token computed must give the same final hidden
states and the same per-layer K/V to float precision (vLLM's fused kernels
round differently, so not bit for bit), and the re-rotation table must be the
RoPE table of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lmcache_ascend.blend.forward import BlendForward
from testkit.blend_stack import full_recompute, load_model
from lmcache_ascend.blend.model import HFLlamaLayers, LayerModel
from lmcache_ascend.blend.plan import make_plan
from lmcache_ascend.blend.segments import SegmentLookup
from lmcache_ascend.blend.settings import BlendSettings
from lmcache_ascend.blend.vllm_model import VLLMLlamaLayers
from testkit.tiny_model import prompt_token_ids

NUM_TOKENS = 150


@pytest.fixture(scope="module")
def hf_llama(tiny_model_dir: Path) -> Any:
    return load_model(tiny_model_dir, dtype=torch.float32)


def test_full_blend_matches_transformers(vllm_llama: Any, hf_llama: Any) -> None:
    layers = VLLMLlamaLayers(vllm_llama)
    assert isinstance(layers, LayerModel)
    tokens = prompt_token_ids(NUM_TOKENS, offset=11)
    ids = torch.tensor(tokens)
    plan = make_plan(SegmentLookup((), hole_mode=False), NUM_TOKENS, BlendSettings(recompute_ratio=1.0))
    forward = BlendForward(layers, plan, ids)
    hidden_ref, cache = full_recompute(hf_llama, tokens)
    with torch.inference_mode():
        for layer in range(layers.num_layers):
            k = torch.zeros(NUM_TOKENS, layers.kv_row)
            v = torch.zeros_like(k)
            forward.run_layer(layer, k, v)
            entry = cache.layers[layer]
            k_ref, v_ref = (t[0].transpose(0, 1).reshape(NUM_TOKENS, -1) for t in (entry.keys, entry.values))
            torch.testing.assert_close(k, k_ref, rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(v, v_ref, rtol=1e-3, atol=1e-3)
        hidden, rows = forward.output()
    assert torch.equal(rows, torch.arange(NUM_TOKENS))
    torch.testing.assert_close(hidden, hidden_ref, rtol=1e-3, atol=1e-3)


def test_rotation_table_is_the_models_rope(vllm_llama: Any, hf_llama: Any) -> None:
    ours = VLLMLlamaLayers(vllm_llama).rotator(512)
    reference = HFLlamaLayers(hf_llama).rotator(512)
    assert ours.is_neox and ours.head_size == reference.head_size
    torch.testing.assert_close(ours.table, reference.table, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="^max_positions"):
        VLLMLlamaLayers(vllm_llama).rotator(10**7)


def test_other_models_are_refused(hf_llama: Any) -> None:
    with pytest.raises(TypeError, match="^model: expected a vLLM causal LM"):
        VLLMLlamaLayers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="^model: LlamaForCausalLM attention is not Llama-style"):
        VLLMLlamaLayers(hf_llama)  # transformers' Llama: separate q/k/v projections
