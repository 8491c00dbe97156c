"""Layer-by-layer access to a Llama-style causal LM, for the blender.

:class:`LayerModel` is what the blended forward needs of a model: the steps of
one decoder layer separately, on transformers' tensor layout (hidden
``[1, n, D]``, Q ``[1, Hq, n, d]``, K/V ``[1, Hkv, n, d]``), positions given
per call. Two implementations: :class:`HFLlamaLayers` (transformers, here) and
``blend.vllm_model.VLLMLlamaLayers`` (a model loaded by vLLM).

:class:`HFLlamaLayers` exposes the steps of one decoder layer separately
(attention input norm, Q/K/V projection with RoPE, attention of some query rows
over all keys, output projection + MLP) using the model's own modules and
transformers' own ``apply_rotary_pos_emb`` and eager attention, in the order
transformers runs them. So a blended forward in which every token is
recomputed performs the same operations on the same shapes as the model's own
eager forward, and gives the same bits.

Tensors follow transformers' layout: hidden ``[1, n, D]``, Q ``[1, Hq, n, d]``,
K/V ``[1, Hkv, n, d]``. Supported: Llama-style layers (``q_proj``, ``k_proj``,
``v_proj``, ``o_proj``; no Q/K norms) with default RoPE, as upstream CacheBlend
(no RoPE scaling, rotary dim = head size).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from lmcache_ascend.blend.rope import KeyRotator, cos_sin_table


@runtime_checkable
class LayerModel(Protocol):
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def kv_row(self) -> int: ...

    @property
    def max_positions(self) -> int: ...

    def rotator(self, max_positions: int) -> KeyRotator: ...

    def embed(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def attention_input(self, layer: int, hidden: torch.Tensor) -> torch.Tensor: ...

    def project(
        self, layer: int, normed: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def attend(
        self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor: ...

    def finish(self, layer: int, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor: ...

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor: ...


class HFLlamaLayers:
    def __init__(self, model: Any) -> None:
        from transformers.models.llama import modeling_llama

        inner = getattr(model, "model", None)
        for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(inner, name):
                raise TypeError(f"model: expected a transformers causal LM with model.{name}")
        attn = inner.layers[0].self_attn
        if hasattr(attn, "q_norm") or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise ValueError(f"model: {type(model).__name__} attention is not Llama-style (q/k/v/o projections, no Q/K norm)")
        rope_type = (getattr(model.config, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"model: CacheBlend supports default RoPE only, got rope_type={rope_type!r}")
        self._rope_fn = modeling_llama.apply_rotary_pos_emb
        self._attention_fn = modeling_llama.eager_attention_forward
        self.model = model
        self._inner = inner
        self.num_layers = len(inner.layers)
        self.head_dim = int(attn.head_dim)
        self.num_heads = int(model.config.num_attention_heads)
        self.num_kv_heads = int(model.config.num_key_value_heads)
        self.dtype = inner.embed_tokens.weight.dtype
        self.device = inner.embed_tokens.weight.device

    @property
    def kv_row(self) -> int:
        """Values per token in one layer's K (or V): ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim

    @property
    def max_positions(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def rotator(self, max_positions: int) -> KeyRotator:
        emb = self._inner.rotary_emb
        table = cos_sin_table(emb.inv_freq, max_positions, float(emb.attention_scaling))
        return KeyRotator(table.to(self.device), self.head_dim, is_neox=True)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._inner.embed_tokens(tokens.to(self.device)[None, :])

    def attention_input(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self._inner.layers[layer].input_layernorm(hidden)

    def project(
        self, layer: int, normed: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # cos/sin of a position do not depend on the other positions (one product per
        # element), so computing them per layer gives the bits of transformers' once-per-forward.
        cos, sin = self._inner.rotary_emb(normed, positions[None, :])
        attn = self._inner.layers[layer].self_attn
        shape = (*normed.shape[:-1], -1, self.head_dim)
        q = attn.q_proj(normed).view(shape).transpose(1, 2)
        k = attn.k_proj(normed).view(shape).transpose(1, 2)
        v = attn.v_proj(normed).view(shape).transpose(1, 2)
        q, k = self._rope_fn(q, k, cos, sin)
        return q, k, v

    def attend(
        self, layer: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Attention of the query rows over all keys (``mask`` additive, ``[1, 1, n, T]``), then ``o_proj``."""
        attn = self._inner.layers[layer].self_attn
        out, _ = self._attention_fn(attn, q, keys, values, mask, dropout=0.0, scaling=attn.scaling)
        out = out.reshape(*out.shape[:2], -1).contiguous()
        return attn.o_proj(out)

    def finish(self, layer: int, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        block = self._inner.layers[layer]
        hidden = residual + attn_out
        residual = hidden
        hidden = block.post_attention_layernorm(hidden)
        hidden = block.mlp(hidden)
        return residual + hidden

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._inner.norm(hidden)
