"""Per-token views of vLLM CPU's packed paged KV (format 12), for CacheBlend.

vLLM CPU 0.32 allocates one tensor per layer, ``[num_blocks, num_kv_heads,
block_size, 2 * head_size]``, and its attention backend reads it as
``[num_blocks, num_kv_heads, 2 * block_size, head_size]``: per (block, head)
first the K region, then the V region, ``block_size * head_size`` values each.
How a token sits inside a region depends on the attention ISA vLLM picks
(``cpu_attn._get_attn_isa``):

- ``vec`` / ``vec16`` (x86 without AMX, and block sizes AMX does not take):
  V is token-major ``[block_size, head_size]``, K is transposed
  ``[head_size, block_size]`` (one head dimension of every token is contiguous,
  which the kernel's dot products vectorise over);
- ``amx`` and the other ISAs pack K and V in tiles this module does not know.

:func:`token_views` returns ``(K, V)``, each a strided view
``[num_blocks, block_size, num_kv_heads, head_size]`` of the same memory, so
``K[block, offset]`` is the token at that slot: exact per-token reads and writes
with plain indexing. Each (dtype, block size, head size, ISA) is checked once
against vLLM's own writer, ``cpu_attn_reshape_and_cache``, on a scratch tensor
(:func:`verify_layout`); a vLLM that packs differently is refused with a
``ValueError`` instead of corrupting KV.
"""

from __future__ import annotations

import functools

import torch

KNOWN_ISAS = frozenset({"vec", "vec16"})


def attention_isa(dtype: torch.dtype, block_size: int, head_size: int) -> str:
    """The ISA vLLM CPU's attention uses for this KV (vLLM's own choice)."""
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    return str(_get_attn_isa(dtype, block_size, head_size))


def _split(layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    num_blocks, num_heads, block_size, two_head = layer.shape
    head_size = two_head // 2
    regions = layer.view(num_blocks, num_heads, 2, block_size * head_size)
    k = regions[:, :, 0].unflatten(-1, (head_size, block_size)).permute(0, 3, 1, 2)
    v = regions[:, :, 1].unflatten(-1, (block_size, head_size)).permute(0, 2, 1, 3)
    return k, v


@functools.lru_cache(maxsize=None)
def verify_layout(dtype: torch.dtype, block_size: int, head_size: int, isa: str) -> None:
    """Write random K/V with vLLM's ``cpu_attn_reshape_and_cache``; our views must read them back."""
    from vllm import _custom_ops as ops

    num_blocks, num_heads = 2, 2
    layer = torch.zeros(num_blocks, num_heads, block_size, 2 * head_size, dtype=dtype)
    packed = layer.view(num_blocks, num_heads, 2 * block_size, head_size)
    key_cache, value_cache = packed.chunk(2, dim=2)
    gen = torch.Generator().manual_seed(0)
    tokens = num_blocks * block_size
    key = torch.randn(tokens, num_heads, head_size, generator=gen).to(dtype)
    value = torch.randn(tokens, num_heads, head_size, generator=gen).to(dtype)
    slots = torch.randperm(tokens, generator=gen)
    ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa)
    k, v = _split(layer)
    blocks, offsets = slots // block_size, slots % block_size
    if not (torch.equal(k[blocks, offsets], key) and torch.equal(v[blocks, offsets], value)):
        raise ValueError(
            f"kvcaches: vLLM CPU's KV layout for ISA {isa!r} ({dtype}, block {block_size}, head {head_size}) "
            "is not the one CacheBlend knows; this vLLM version is not supported for blending"
        )


def token_views(layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, V)`` views ``[num_blocks, block_size, num_kv_heads, head_size]`` of one format-12 layer."""
    if not isinstance(layer, torch.Tensor) or layer.dim() != 4 or layer.shape[-1] % 2:
        raise ValueError("kvcaches: a vLLM CPU layer must be one [num_blocks, num_kv_heads, block_size, 2 * head_size] tensor")
    if not layer.is_contiguous():
        raise ValueError("kvcaches: a vLLM CPU layer must be contiguous")
    block_size, head_size = int(layer.shape[2]), int(layer.shape[3]) // 2
    isa = attention_isa(layer.dtype, block_size, head_size)
    if isa not in KNOWN_ISAS:
        raise ValueError(
            f"kvcaches: vLLM CPU attention ISA {isa!r} packs KV in tiles CacheBlend cannot address per token; "
            f"supported: {sorted(KNOWN_ISAS)} (for bf16 on AMX CPUs, use a block size that is not a multiple of 32)"
        )
    verify_layout(layer.dtype, block_size, head_size, isa)
    return _split(layer)


def _valid_slots(slots: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices of the slots >= 0, and those slots' block ids and offsets in their blocks."""
    valid = (slots >= 0).nonzero().squeeze(1)
    picked = slots[valid].to(torch.int64)
    return valid, picked // block_size, picked % block_size


def gather_rows(layer: torch.Tensor, slots: torch.Tensor, out: torch.Tensor) -> None:
    """``out[2, n, H]`` = K/V rows of the tokens at ``slots`` (rows of slots < 0 left as they are)."""
    k, v = token_views(layer)
    valid, blocks, offsets = _valid_slots(slots, k.shape[1])
    out[0, valid.to(out.device)] = k[blocks, offsets].flatten(1)
    out[1, valid.to(out.device)] = v[blocks, offsets].flatten(1)


def scatter_rows(rows: torch.Tensor, layer: torch.Tensor, slots: torch.Tensor) -> None:
    """Write ``rows[2, n, H]`` to the tokens at ``slots`` (slots < 0 skipped)."""
    k, v = token_views(layer)
    valid, blocks, offsets = _valid_slots(slots, k.shape[1])
    rows = rows[:, valid.to(rows.device)]
    k[blocks, offsets] = rows[0].view(-1, *k.shape[2:])
    v[blocks, offsets] = rows[1].view(-1, *v.shape[2:])
