"""Layer-by-layer access to a Llama-style model loaded by vLLM, for the blender.

:class:`VLLMLlamaLayers` is a :class:`~lmcache_ascend.blend.model.LayerModel`
over vLLM's own modules (``LlamaForCausalLM`` and the models that reuse its
layers, e.g. ``Qwen2ForCausalLM``): ``embed_tokens``, per layer
``input_layernorm``, ``qkv_proj`` + ``rotary_emb``, ``o_proj``,
``post_attention_layernorm``, ``mlp``, and the final ``norm``. vLLM's attention
layer is not used: it reads its paged cache and forward context, while the
blender attends selected rows over a ``[T, H]`` buffer, so attention is
``torch.nn.functional.scaled_dot_product_attention`` with the model's scaling
and grouped K/V heads. vLLM fuses each residual add into its RMSNorm; here the
add is a separate step (same values, rounding may differ in the last bit), so a
blend with every token recomputed matches vLLM's own forward to float
precision, not bit for bit.

Supported, as upstream CacheBlend: default (unscaled) RoPE over the full head,
no Q/K norm, one tensor-parallel and pipeline rank (every layer and head here).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lmcache_ascend.blend.rope import KeyRotator

_ATTN_PARTS = ("qkv_proj", "o_proj", "rotary_emb", "q_size", "kv_size", "scaling", "head_dim", "num_heads", "num_kv_heads")


class VLLMLlamaLayers:
    def __init__(self, model: Any) -> None:
        inner = getattr(model, "model", None)
        for name in ("embed_tokens", "layers", "norm"):
            if not hasattr(inner, name):
                raise TypeError(f"model: expected a vLLM causal LM with model.{name}, got {type(model).__name__}")
        layers = list(inner.layers)
        attn = getattr(layers[0], "self_attn", None) if layers else None
        missing = [n for n in _ATTN_PARTS if not hasattr(attn, n)]
        if missing or hasattr(attn, "q_norm"):
            raise ValueError(
                f"model: {type(model).__name__} attention is not Llama-style "
                f"(fused qkv_proj, rotary_emb, no Q/K norm); missing {missing}"
            )
        if getattr(attn, "total_num_heads", attn.num_heads) != attn.num_heads or getattr(inner, "start_layer", 0) != 0:
            raise ValueError("model: CacheBlend runs on one tensor- and pipeline-parallel rank only")
        rope = attn.rotary_emb
        if type(rope).__name__ != "RotaryEmbedding" or int(rope.rotary_dim) != int(attn.head_dim):
            raise ValueError(f"model: CacheBlend supports default RoPE over the full head only, got {type(rope).__name__}")
        self.model = model
        self._inner = inner
        self._layers = layers
        self.num_layers = len(layers)
        self.head_dim = int(attn.head_dim)
        self.num_heads = int(attn.num_heads)
        self.num_kv_heads = int(attn.num_kv_heads)
        weight = inner.embed_tokens.weight
        self.dtype = weight.dtype
        self.device = weight.device

    @property
    def kv_row(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def max_positions(self) -> int:
        return int(self._layers[0].self_attn.rotary_emb.cos_sin_cache.shape[0])

    def rotator(self, max_positions: int) -> KeyRotator:
        """Re-rotation with the table vLLM's own rope reads (cos | sin halves per position)."""
        rope = self._layers[0].self_attn.rotary_emb
        if max_positions > self.max_positions:
            raise ValueError(f"max_positions {max_positions} exceeds the model's {self.max_positions}")
        table = rope.cos_sin_cache[:max_positions].float().to(self.device)
        return KeyRotator(table, self.head_dim, is_neox=bool(rope.is_neox_style))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._inner.embed_tokens(tokens.to(self.device))[None]

    def attention_input(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self._layers[layer].input_layernorm(hidden[0])[None]

    def project(
        self, layer: int, normed: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = self._layers[layer].self_attn
        qkv, _ = attn.qkv_proj(normed[0])
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        q, k = attn.rotary_emb(positions.to(self.device), q.contiguous(), k.contiguous())
        return _heads(q, self.num_heads), _heads(k, self.num_kv_heads), _heads(v.contiguous(), self.num_kv_heads)

    def attend(
        self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Attention of the query rows over all keys (``mask`` additive, ``[1, 1, n, T]``), then ``o_proj``."""
        attn = self._layers[layer].self_attn
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=float(attn.scaling), enable_gqa=self.num_heads != self.num_kv_heads
        )
        rows, _ = attn.o_proj(out[0].transpose(0, 1).reshape(out.shape[2], -1))
        return rows[None]

    def finish(self, layer: int, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        block = self._layers[layer]
        hidden = residual + attn_out
        return hidden + block.mlp(block.post_attention_layernorm(hidden[0]))[None]

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._inner.norm(hidden[0])[None]


def _heads(rows: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[n, H * d]`` -> ``[1, H, n, d]``."""
    return rows.view(rows.shape[0], num_heads, -1).transpose(0, 1)[None]
