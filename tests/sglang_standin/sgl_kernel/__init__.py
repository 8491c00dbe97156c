"""STAND-IN for SGLang's ``sgl_kernel`` (CPU build): test and benchmark harness only.

sgl-kernel's CPU build is not on PyPI (the PyPI wheels are CUDA-only and it
has no sdist), yet SGLang 0.5.23 imports two of its CPU ops unconditionally
when ``is_cpu()`` is true:

- ``assign_req_to_token_pool_cpu`` (``sglang/srt/mem_cache/allocation.py``,
  every prefill): writes each request's new cache locations into its row of
  ``req_to_token``;
- ``copy_all_layer_kv_cache_cpu`` (``sglang/kernels/ops/kvcache/cache_move.py``):
  moves rows of every KV buffer from ``src_loc`` to ``tgt_loc``.

This directory is put on ``PYTHONPATH`` of the SGLang processes that the
tests, the demo and the benchmark start; lmcache_ascend never imports it. The
two ops are written in plain torch from the semantics of SGLang's own Triton
kernels for the same job (``assign_req_to_token_pool``,
``copy_all_layer_kv_cache_tiled``). SGLang also imports other CPU ops by name
at start-up without calling them for a Llama; any such name resolves to a
placeholder that raises ``NotImplementedError`` naming the op when called, so
a SGLang change that starts calling one fails loudly instead of running
something made up.
"""

from __future__ import annotations

import ctypes

import torch

STAND_IN = True
_PROVIDED = ("assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu")


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """``req_to_token[req_pool_indices[i], start[i]:end[i]]`` = the i-th run of
    ``out_cache_loc`` (runs laid end to end, in request order)."""
    if req_to_token.dim() != 2 or req_to_token.shape[1] != pool_len:
        raise ValueError(f"req_to_token must be [rows, {pool_len}], got {tuple(req_to_token.shape)}")
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    if not len(rows) == len(starts) == len(ends):
        raise ValueError("req_pool_indices, start_offset and end_offset differ in length")
    offset = 0
    for row, start, end in zip(rows, starts, ends, strict=True):
        n = end - start
        if not 0 <= row < req_to_token.shape[0]:
            raise ValueError(f"request row {row} is outside req_to_token's {req_to_token.shape[0]} rows")
        if not 0 <= start <= end <= pool_len:
            raise ValueError(f"bad token range [{start}, {end}) for a row of {pool_len}")
        if offset + n > out_cache_loc.numel():
            raise ValueError(f"out_cache_loc holds {out_cache_loc.numel()} locations, the ranges need more")
        req_to_token[row, start:end] = out_cache_loc[offset : offset + n].to(req_to_token.dtype)
        offset += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """For every buffer ``b`` (base address ``data_ptrs[b]``, ``strides[b]``
    bytes a row): row ``tgt_loc[j]`` = row ``src_loc[j]``. All sources are read
    before any target is written, so overlapping moves are safe, as in SGLang's
    tiled kernel."""
    if src_loc.numel() != tgt_loc.numel():
        raise ValueError(f"src_loc has {src_loc.numel()} locations, tgt_loc {tgt_loc.numel()}")
    if data_ptrs.numel() != strides.numel():
        raise ValueError(f"{data_ptrs.numel()} buffers but {strides.numel()} strides")
    if src_loc.numel() == 0:
        return
    src = src_loc.to(torch.int64)
    tgt = tgt_loc.to(torch.int64)
    if int(torch.minimum(src.min(), tgt.min())) < 0:
        raise ValueError("negative location")
    rows = int(torch.maximum(src.max(), tgt.max())) + 1
    for base, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        raw = (ctypes.c_uint8 * (rows * stride)).from_address(base)
        buf = torch.frombuffer(raw, dtype=torch.uint8).view(rows, stride)
        buf[tgt] = buf[src].clone()


def __getattr__(name: str) -> object:
    # SGLang's CPU modules import more ops by name than they call when serving a
    # Llama (speculative decoding, Mamba, MoE...). Importing one gives a
    # placeholder; calling it raises, naming the op.
    if name.startswith("__"):
        raise AttributeError(name)

    def not_provided(*args: object, **kwargs: object) -> None:
        raise NotImplementedError(
            f"sgl_kernel.{name} is not provided by the test stand-in "
            f"(tests/sglang_standin/sgl_kernel provides only {', '.join(_PROVIDED)})"
        )

    not_provided.__name__ = name
    return not_provided
