"""K re-rotation for CacheBlend: ``rotary_embedding_k_fused`` (and ``_strided``).

Same names, arguments and semantics as ``lmcache.cuda_ops`` and LMCache's torch
baseline (see /work/notes/lmcache_kernel_semantics.md §6):

``rotary_embedding_k_fused(old_positions, new_positions, key, head_size, cos_sin_cache, is_neox)``
    ``key`` ``[..., T, num_heads, head_size]`` is rotated in place: for token
    ``t`` the rotary embedding of position ``old_positions[t]`` is undone and
    that of ``new_positions[t]`` applied. ``cos_sin_cache`` ``[max_pos,
    rot_dim]`` holds ``rot_dim / 2`` cosines then ``rot_dim / 2`` sines per
    position; only the first ``rot_dim`` elements of a head change. NeoX style
    pairs element ``i`` with ``i + rot_dim / 2``, GPT-J style ``2i`` with ``2i + 1``.
``rotary_embedding_k_fused_strided(..., key, head_size, head_stride, cos_sin_cache, is_neox)``
    ``key``'s last dim is ``head_stride`` per head; only the leading
    ``head_size`` elements (K of fused ``[K | V]`` rows) are rotated.

Arithmetic follows the torch baseline exactly: it runs in the dtype torch
promotes the key and table dtypes to (an fp32 table gives fp32 math and one
rounding per stored element). Host tensors go to the C++ core
(``csrc/rope.cpp``), others to a device-generic torch path; both give the same
bits as LMCache's baseline. ``LMCACHE_ASCEND_KERNEL_BACKEND`` applies as for
the transfer ops. Bad arguments raise ``TypeError`` / ``ValueError`` naming the
argument before anything is written: tensors are judged by their descriptions
(``torch_edge.describe_tensor``, ``core.TensorDesc``), as the transfer ops' are.
"""

from __future__ import annotations

from typing import cast

import torch

from lmcache_ascend.core.tensor_desc import TensorDesc
from lmcache_ascend.kernels.dispatch import use_host
from lmcache_ascend.kernels.torch_edge import describe_tensor
from lmcache_ascend.kernels.validate import SLOT_DTYPES, check_int, fail

_FLOAT_KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_FLOAT_NAMES = ("float32", "float16", "bfloat16")


def rotary_embedding_k_fused(old_positions: object, new_positions: object, key: object, head_size: object, cos_sin_cache: object, is_neox: object) -> None:
    _rotate(old_positions, new_positions, key, head_size, None, cos_sin_cache, is_neox)


def rotary_embedding_k_fused_strided(old_positions: object, new_positions: object, key: object, head_size: object, head_stride: object, cos_sin_cache: object, is_neox: object) -> None:
    _rotate(old_positions, new_positions, key, head_size, head_stride, cos_sin_cache, is_neox)


def _rotate(old: object, new: object, key: object, head_size: object, head_stride: object, table: object, is_neox: object) -> None:
    keys = _check_key(key)
    head = check_int(head_size, "head_size", 1)
    width = keys.shape[-1]
    if head_stride is None:
        if head != width:
            fail(ValueError, "head_size", f"must equal key's last dim {width}, got {head}")
    else:
        stride = check_int(head_stride, "head_stride", 1)
        if stride != width:
            fail(ValueError, "head_stride", f"must equal key's last dim {width}, got {stride}")
        if head > stride:
            fail(ValueError, "head_size", f"must be <= head_stride {stride}, got {head}")
    cache = _check_table(table, keys.device, head)
    if not isinstance(is_neox, bool):
        fail(TypeError, "is_neox", f"must be a bool, got {type(is_neox).__name__}")
    num_tokens = keys.shape[0]
    old = _check_positions(old, "old_positions", num_tokens, keys.device, cache.shape[0])
    new = _check_positions(new, "new_positions", num_tokens, keys.device, cache.shape[0])
    if num_tokens == 0:
        return
    if _use_host(keys, cache, old, new):
        _host(keys, cache, old, new, is_neox)
    else:
        _torch(keys, cache, old, new, is_neox)


def _described(value: object, name: str) -> tuple[torch.Tensor, TensorDesc]:
    """``value`` (a torch tensor with storage, else the edge's error) and its description."""
    return cast(torch.Tensor, value), describe_tensor(value, name)


def _check_key(key: object) -> torch.Tensor:
    t, d = _described(key, "key")
    if d.dtype not in _FLOAT_NAMES:
        fail(TypeError, "key", f"dtype must be float32, float16 or bfloat16, got {t.dtype}")
    if d.ndim < 3:
        fail(ValueError, "key", f"must be [..., tokens, heads, head] (3+ dims), got shape {d.shape}")
    if d.shape[-1] > 1 and d.strides[-1] != 1:
        fail(ValueError, "key", "last dim must be contiguous (it is rotated in place)")
    try:
        return t.view(-1, d.shape[-2], d.shape[-1])
    except RuntimeError:
        fail(ValueError, "key", "leading dims must be viewable as one token dim (it is rotated in place)")


def _check_table(table: object, device: torch.device, head_size: int) -> torch.Tensor:
    t, d = _described(table, "cos_sin_cache")
    if d.dtype not in _FLOAT_NAMES:
        fail(TypeError, "cos_sin_cache", f"dtype must be float32, float16 or bfloat16, got {t.dtype}")
    if d.ndim != 2 or d.shape[0] < 1:
        fail(ValueError, "cos_sin_cache", f"must be [max_position, rot_dim], got shape {d.shape}")
    rot_dim = d.shape[1]
    if rot_dim < 2 or rot_dim % 2 or rot_dim > head_size:
        fail(ValueError, "cos_sin_cache", f"rot_dim {rot_dim} must be even, >= 2 and <= head_size {head_size}")
    if t.device != device:
        fail(ValueError, "cos_sin_cache", f"is on {t.device}, key on {device}")
    return t


def _check_positions(pos: object, name: str, num_tokens: int, device: torch.device, rows: int) -> torch.Tensor:
    t, d = _described(pos, name)
    if d.dtype not in SLOT_DTYPES:
        fail(TypeError, name, f"dtype must be int32 or int64, got {t.dtype}")
    if d.ndim != 1 or d.numel != num_tokens:
        fail(ValueError, name, f"must be 1-D with one entry per key token ({num_tokens}), got shape {d.shape}")
    if t.device != device:
        fail(ValueError, name, f"is on {t.device}, key on {device}")
    if num_tokens:
        values = t.numpy() if t.is_cpu else t  # numpy reads a host tensor in place
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= rows:
            fail(ValueError, name, f"values must lie in [0, {rows}) (cos_sin_cache rows), got [{low}, {high}]")
    return t


def _use_host(*tensors: torch.Tensor) -> bool:
    on_host = all(t.device.type == "cpu" for t in tensors)
    return use_host(on_host, lambda: f"the key is in device memory ({tensors[0].device})")


def _compute_kind(key: torch.Tensor, table: torch.Tensor) -> int:
    return _FLOAT_KINDS[torch.promote_types(key.dtype, table.dtype)]


def _host(keys: torch.Tensor, table: torch.Tensor, old: torch.Tensor, new: torch.Tensor, is_neox: bool) -> None:
    from lmcache_ascend import _kvcore
    from lmcache_ascend.kernels.host import num_threads

    table = table if table.stride(-1) == 1 else table.contiguous()
    itemsize = 8 if torch.int64 in (old.dtype, new.dtype) else 4
    dtype = torch.int64 if itemsize == 8 else torch.int32
    old = old.to(dtype).contiguous()
    new = new.to(dtype).contiguous()
    _kvcore.rope_k_fused(
        keys.data_ptr(), _FLOAT_KINDS[keys.dtype], keys.shape[0], keys.shape[1], keys.stride(0), keys.stride(1),
        table.data_ptr(), _FLOAT_KINDS[table.dtype], table.shape[0], table.shape[1], table.stride(0),
        old.data_ptr(), new.data_ptr(), itemsize, is_neox, _compute_kind(keys, table), num_threads(),
    )


def _torch(keys: torch.Tensor, table: torch.Tensor, old: torch.Tensor, new: torch.Tensor, is_neox: bool) -> None:
    """Device-generic path: the same formula in torch ops, so torch's promotion
    and per-op rounding apply exactly as in the baseline."""
    half = table.shape[1] // 2
    rows_old, rows_new = table[old.long()], table[new.long()]
    cos_o, sin_o = rows_old[:, None, :half], rows_old[:, None, half : 2 * half]
    cos_n, sin_n = rows_new[:, None, :half], rows_new[:, None, half : 2 * half]
    if is_neox:
        x, y = keys[..., :half], keys[..., half : 2 * half]
    else:
        x, y = keys[..., 0 : 2 * half : 2], keys[..., 1 : 2 * half : 2]
    x_back = x * cos_o + y * sin_o
    y_back = y * cos_o - x * sin_o
    x_out = x_back * cos_n - y_back * sin_n
    y_out = y_back * cos_n + x_back * sin_n
    x.copy_(x_out)
    y.copy_(y_out)
