"""What an SGLang KV pool holds, in the structure the device connectors take.

SGLang's radix cache owns a KV pool object (``token_to_kv_pool_allocator.
get_kvcache()``). :func:`describe_pool` reads it by its attributes, without
importing SGLang, and returns a :class:`PoolKV`:

- MHA (``MHATokenToKVPool``): ``k_buffer`` and ``v_buffer``, one tensor per
  layer, each ``[slots, kv_heads, head_dim]``. ``kvcaches`` is
  ``[k_layers, v_layers]`` (LMCache format 4, ``TWO_X_NL_X_NBBS_NH_HS``).
- SGLang NPU MHA (``AscendTokenToKVPool``): ``k_buffer`` / ``v_buffer`` are
  the two halves of one allocation, each ``[layers, blocks, block_size,
  kv_heads, head_dim]``. ``kvcaches`` is ``[K_all, V_all]`` (format 9).
- MLA (``MLATokenToKVPool``): ``kv_buffer``, one ``[slots, 1, kv_lora_rank +
  qk_rope_head_dim]`` tensor per layer. ``kvcaches`` is that list (format 5).

Slot ``s`` of every layout is the token slot SGLang's allocator hands out
(``block = s // block_size``, ``offset = s % block_size`` for the NPU pool).

Pools whose KV is not one of these (NSA/DSA index buffers, Ascend MLA with
separate latent and rope planes, double-sparse label buffers, hybrid or
sliding-window pools) raise ``ValueError`` naming the pool class: storing only
part of their state would load back a cache the model cannot use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Buffers that carry state the formats above do not describe.
_UNSUPPORTED_BUFFERS = ("index_k_with_scale_buffer", "index_k_buffer", "label_buffer")


@dataclass(frozen=True)
class PoolKV:
    kvcaches: list[Any]  # what LMCache passes to the device connector as ``kvcaches``
    num_layers: int
    num_heads: int  # 1 for MLA
    head_dim: int  # width of one head's row; the whole latent row for MLA
    use_mla: bool
    dtype: torch.dtype
    device: torch.device

    @property
    def hidden_dim(self) -> int:
        return self.num_heads * self.head_dim

    def layer(self, index: int) -> Any:
        """Layer ``index``: the ``(K, V)`` pair for MHA, the latent buffer for MLA."""
        if not 0 <= index < self.num_layers:
            raise ValueError(f"layer {index} is outside the pool's {self.num_layers} layers")
        if self.use_mla:
            return self.kvcaches[index]
        return self.kvcaches[0][index], self.kvcaches[1][index]


def describe_pool(kvcache: Any) -> PoolKV:
    """Describe SGLang KV pool ``kvcache`` (see the module docstring)."""
    name = type(kvcache).__name__
    for attr in _UNSUPPORTED_BUFFERS:
        if getattr(kvcache, attr, None) is not None:
            raise ValueError(f"kvcache: {name} keeps extra state in '{attr}', which lmcache_ascend does not store")
    k, v = getattr(kvcache, "k_buffer", None), getattr(kvcache, "v_buffer", None)
    if k is not None and v is not None:
        if isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor):
            return _npu_mha(name, k, v)
        return _mha(name, k, v)
    latent = getattr(kvcache, "kv_buffer", None)
    if isinstance(latent, (list, tuple)):
        return _mla(name, latent)
    raise ValueError(f"kvcache: {name} has neither per-layer k_buffer/v_buffer nor an MLA kv_buffer list")


def _tensors(name: str, attr: str, layers: Any, ndim: int) -> list[torch.Tensor]:
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"kvcache: {name}.{attr} must be a non-empty list of per-layer tensors")
    for i, t in enumerate(layers):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"kvcache: {name}.{attr}[{i}] must be a tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise ValueError(f"kvcache: {name}.{attr}[{i}] must be a {ndim}-D tensor, got {list(t.shape)}")
    shape, dtype, device = layers[0].shape, layers[0].dtype, layers[0].device
    for i, t in enumerate(layers):
        if (t.shape, t.dtype, t.device) != (shape, dtype, device):
            raise ValueError(f"kvcache: {name}.{attr}[{i}] differs from layer 0 in shape, dtype or device")
    return list(layers)


def _check_pair(name: str, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> None:
    k0, v0 = k[0], v[0]
    if len(k) != len(v) or (k0.shape, k0.dtype, k0.device) != (v0.shape, v0.dtype, v0.device):
        raise ValueError(
            f"kvcache: {name}.k_buffer ({len(k)} x {k0.dtype}{list(k0.shape)} on {k0.device}) and v_buffer "
            f"({len(v)} x {v0.dtype}{list(v0.shape)} on {v0.device}) differ; K and V planes of different "
            "shapes (e.g. SGLang's Ascend MLA pool) are not supported"
        )


def _mha(name: str, k: Any, v: Any) -> PoolKV:
    keys = _tensors(name, "k_buffer", k, 3)
    values = _tensors(name, "v_buffer", v, 3)
    _check_pair(name, keys, values)
    _, heads, head_dim = keys[0].shape
    return PoolKV([keys, values], len(keys), heads, head_dim, False, keys[0].dtype, keys[0].device)


def _npu_mha(name: str, k: torch.Tensor, v: torch.Tensor) -> PoolKV:
    if k.dim() != 5:
        raise ValueError(f"kvcache: {name}.k_buffer must be [layers, blocks, block_size, heads, head_dim], got {list(k.shape)}")
    _check_pair(name, [k], [v])
    layers, _, _, heads, head_dim = k.shape
    return PoolKV([k, v], layers, heads, head_dim, False, k.dtype, k.device)


def _mla(name: str, latent: Sequence[Any]) -> PoolKV:
    layers = _tensors(name, "kv_buffer", latent, 3)
    if layers[0].shape[1] != 1:
        raise ValueError(f"kvcache: {name}.kv_buffer layers must be [slots, 1, dim], got {list(layers[0].shape)}")
    return PoolKV(layers, len(layers), 1, layers[0].shape[2], True, layers[0].dtype, layers[0].device)
