"""K re-rotation as the blender uses it: the cos/sin table built from the model's
inverse frequencies matches transformers' rotary embedding, and a key rotated by
transformers at old positions, re-rotated by KeyRotator (our
``rotary_embedding_k_fused``), equals transformers' (and a float64 RoPE's) key at
the new positions to float precision."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from lmcache_ascend.blend.model import HFLlamaLayers
from lmcache_ascend.blend.rope import KeyRotator, cos_sin_table
from tests.kernels.test_rope_ops import rope64


@pytest.fixture(scope="module")
def layers(blend_model: Any) -> HFLlamaLayers:
    return HFLlamaLayers(blend_model)


def hf_cos_sin(layers: HFLlamaLayers, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probe = torch.zeros(1, dtype=torch.float32)
    return layers.model.model.rotary_emb(probe, positions[None, :])


def hf_rotate(k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' RoPE on ``k`` ``[T, H, d]`` (its layout is ``[1, H, T, d]``)."""
    heads = k.transpose(0, 1)[None]
    _, out = apply_rotary_pos_emb(heads, heads, cos, sin)
    return out[0].transpose(0, 1)


def test_table_matches_transformers(layers: HFLlamaLayers) -> None:
    positions = torch.arange(0, 8192, 37)
    cos, sin = hf_cos_sin(layers, positions)
    table = layers.rotator(8192).table[positions]
    half = layers.head_dim // 2
    assert torch.equal(table[:, :half], cos[0, :, :half]) and torch.equal(table[:, half:], sin[0, :, :half])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rerotated_key_matches_reference_rope(layers: HFLlamaLayers, gen: torch.Generator, dtype: torch.dtype) -> None:
    num, heads, d = 300, layers.num_kv_heads, layers.head_dim
    raw = torch.randn(num, heads, d, generator=gen)
    old = torch.randint(0, 8192, (num,), generator=gen)
    new = torch.randint(0, 8192, (num,), generator=gen)
    rows = hf_rotate(raw, *hf_cos_sin(layers, old)).to(dtype).reshape(num, -1)
    layers.rotator(8192)(old, new, rows)
    got = rows.view(num, heads, d).double()
    want_hf = hf_rotate(raw, *hf_cos_sin(layers, new)).double()
    want_64 = rope64(raw, new, d, True)
    scale = want_64.abs().max().item()
    # Like transformers, the table holds float32 angles: at positions up to 8192 they
    # are off by up to ~8192 * 2^-24 rad from float64's, hence the looser float64 bound.
    tol_hf, tol_64 = (1e-5, 4e-4) if dtype == torch.float32 else (2e-2, 2e-2)
    err_hf = (got - want_hf).abs().max().item()
    err_64 = (got - want_64).abs().max().item()
    print(f"{dtype}: max |error| vs transformers {err_hf:.3g}, vs float64 RoPE {err_64:.3g} (scale {scale:.3g})")
    assert err_hf <= tol_hf * scale and err_64 <= tol_64 * scale


def test_rotator_leaves_v_and_other_rows_alone(layers: HFLlamaLayers, gen: torch.Generator) -> None:
    buf = torch.randn(2, 10, layers.kv_row, generator=gen)
    before = buf.clone()
    layers.rotator(64)(torch.arange(3), torch.arange(5, 8), buf[0, 2:5])
    assert torch.equal(buf[1], before[1])
    assert torch.equal(buf[0, :2], before[0, :2]) and torch.equal(buf[0, 5:], before[0, 5:])
    assert not torch.equal(buf[0, 2:5], before[0, 2:5])


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="^inv_freq"):
        cos_sin_table(torch.zeros(2, 2), 8)
    with pytest.raises(ValueError, match="^max_positions"):
        cos_sin_table(torch.ones(4), 0)
    with pytest.raises(ValueError, match="^table"):
        KeyRotator(torch.zeros(8, 16), head_size=8)
    rotator = KeyRotator(cos_sin_table(torch.ones(4), 8), head_size=8)
    with pytest.raises(ValueError, match="^rows"):
        rotator(torch.arange(2), torch.arange(2), torch.zeros(2, 12))
