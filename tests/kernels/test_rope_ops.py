"""``rotary_embedding_k_fused(_strided)``: bit parity with LMCache's torch baseline on
both backends, accuracy against an independent float64 RoPE, and bad input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from lmcache.v1.platform.torch_ops import pos_kernels as baseline

from lmcache_ascend import _kvcore
from lmcache_ascend.kernels import rope_ops
from lmcache_ascend.kernels.rope_ops import (
    rotary_embedding_k_fused,
    rotary_embedding_k_fused_strided,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MAX_POS = 4096
BASE = 10000.0


def _refuse(name: str):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} ran although the other backend was forced")

    return refuse


@pytest.fixture(params=["host", "torch"])
def rope_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("LMCACHE_ASCEND_KERNEL_BACKEND", request.param)
    other = "_torch" if request.param == "host" else "_host"
    monkeypatch.setattr(rope_ops, other, _refuse(other))
    yield request.param


def table(rot_dim: int, dtype: torch.dtype, max_pos: int = MAX_POS) -> torch.Tensor:
    """vLLM's layout: per position rot_dim/2 cosines then rot_dim/2 sines."""
    inv = 1.0 / (BASE ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([ang.cos(), ang.sin()], dim=-1).to(dtype)


def positions(n: int, gen: torch.Generator, dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.randint(0, MAX_POS, (n,), generator=gen).to(dtype)
    new = torch.randint(0, MAX_POS, (n,), generator=gen).to(dtype)
    return old, new


def rope64(k: torch.Tensor, pos: torch.Tensor, rot_dim: int, is_neox: bool) -> torch.Tensor:
    """Independent RoPE in float64: rotate each pair of k [T, NH, HS] by pos * inv_freq."""
    half = rot_dim // 2
    inv = 1.0 / (BASE ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    ang = pos.to(torch.float64)[:, None, None] * inv  # [T, 1, half]
    out = k.to(torch.float64).clone()
    xi = torch.arange(half) if is_neox else torch.arange(half) * 2
    yi = xi + half if is_neox else xi + 1
    x, y = out[..., xi], out[..., yi]
    out[..., xi] = x * ang.cos() - y * ang.sin()
    out[..., yi] = y * ang.cos() + x * ang.sin()
    return out


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), (a - b).abs().max()


@pytest.mark.parametrize("key_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("table_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("rot_dim", [64, 32], ids=["full", "partial"])
def test_bits_equal_lmcache_baseline(
    rope_backend: str, key_dtype: torch.dtype, table_dtype: torch.dtype, is_neox: bool, rot_dim: int, gen: torch.Generator
) -> None:
    key = torch.randn(77, 3, 64, generator=gen).to(key_dtype)
    old, new = positions(77, gen)
    cache = table(rot_dim, table_dtype)
    want = key.clone()
    baseline.rotary_embedding_k_fused(old, new, want, 64, cache, is_neox)
    rotary_embedding_k_fused(old, new, key, 64, cache, is_neox)
    assert_bits_equal(key, want)


@pytest.mark.parametrize("key_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_rotates_only_the_k_half(rope_backend: str, key_dtype: torch.dtype, gen: torch.Generator) -> None:
    fused = torch.randn(50, 2, 128, generator=gen).to(key_dtype)  # per head [K(64) | V(64)]
    old, new = positions(50, gen, torch.int32)
    cache = table(64, torch.float32)
    want = fused.clone()
    baseline.rotary_embedding_k_fused_strided(old, new, want, 64, 128, cache, True)
    before = fused.clone()
    rotary_embedding_k_fused_strided(old, new, fused, 64, 128, cache, True)
    assert_bits_equal(fused, want)
    assert_bits_equal(fused[..., 64:], before[..., 64:])
    assert not torch.equal(fused[..., :64], before[..., :64])


@pytest.mark.parametrize(("key_dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_matches_reference_rope_at_new_positions(
    rope_backend: str, key_dtype: torch.dtype, tol: float, is_neox: bool, gen: torch.Generator
) -> None:
    """K rotated at old positions, re-rotated by the op, equals K rotated directly at the
    new positions (float64 reference) to the key dtype's precision."""
    raw = torch.randn(200, 4, 64, generator=gen, dtype=torch.float64)
    old, new = positions(200, gen)
    key = rope64(raw, old, 64, is_neox).to(key_dtype)
    rotary_embedding_k_fused(old, new, key, 64, table(64, torch.float32), is_neox)
    want = rope64(raw, new, 64, is_neox)
    err = (key.to(torch.float64) - want).abs().max().item()
    print(f"max |error| {key_dtype} {'neox' if is_neox else 'gptj'}: {err:.3g}")
    assert err < tol * want.abs().max().item()


def test_round_trip_returns_to_the_original(rope_backend: str, gen: torch.Generator) -> None:
    key = torch.randn(64, 2, 32, generator=gen, dtype=torch.float32)
    old, new = positions(64, gen)
    cache = table(32, torch.float32)
    moved = key.clone()
    rotary_embedding_k_fused(old, new, moved, 32, cache, True)
    assert not torch.allclose(moved, key)
    rotary_embedding_k_fused(new, old, moved, 32, cache, True)
    assert torch.allclose(moved, key, atol=1e-5)


def test_leading_dims_and_threads_agree(monkeypatch: pytest.MonkeyPatch, gen: torch.Generator) -> None:
    key = torch.randn(3, 400, 2, 64, generator=gen).to(torch.bfloat16)
    old, new = positions(1200, gen)
    cache = table(64, torch.bfloat16)
    want = key.clone().view(1200, 2, 64)
    baseline.rotary_embedding_k_fused(old, new, want, 64, cache, False)
    for threads in ("1", "2"):
        monkeypatch.setenv("LMCACHE_ASCEND_NUM_THREADS", threads)
        got = key.clone()
        rotary_embedding_k_fused(old, new, got, 64, cache, False)
        assert_bits_equal(got.view(1200, 2, 64), want)


def test_zero_tokens_is_a_no_op() -> None:
    key = torch.empty(0, 2, 8)
    empty = torch.empty(0, dtype=torch.int64)
    cache = table(8, torch.float32)
    before = cache.clone()
    assert rotary_embedding_k_fused(empty, empty, key, 8, cache, True) is None
    assert key.shape == (0, 2, 8) and torch.equal(cache, before)
    # Arguments are still checked when there is nothing to rotate.
    with pytest.raises(ValueError):
        rotary_embedding_k_fused(empty, empty, key, 6, cache, True)


def test_cpp_core_checks_positions_before_writing() -> None:
    key = torch.ones(2, 1, 4)
    cache = table(4, torch.float32, max_pos=8)
    old = torch.tensor([1, 2])
    new = torch.tensor([3, 99])
    with pytest.raises(IndexError, match="position 99"):
        _kvcore.rope_k_fused(
            key.data_ptr(), 0, 2, 1, 4, 4, cache.data_ptr(), 0, 8, 4, 4, old.data_ptr(), new.data_ptr(), 8, True, 0, 1
        )
    assert torch.equal(key, torch.ones(2, 1, 4))


def _args(**over: object) -> dict[str, object]:
    args: dict[str, object] = dict(
        old_positions=torch.tensor([0, 1]),
        new_positions=torch.tensor([2, 3]),
        key=torch.zeros(2, 2, 8),
        head_size=8,
        cos_sin_cache=table(8, torch.float32, max_pos=16),
        is_neox=True,
    )
    args.update(over)
    return args


@pytest.mark.parametrize(
    ("over", "kind", "name"),
    [
        (dict(key=[[0.0]]), TypeError, "key"),
        (dict(key=torch.zeros(2, 2, 8, dtype=torch.int32)), TypeError, "key"),
        (dict(key=torch.zeros(2, 16)), ValueError, "key"),
        (dict(key=torch.zeros(2, 2, 16)[..., ::2]), ValueError, "key"),
        (dict(head_size=4), ValueError, "head_size"),
        (dict(head_size=True), TypeError, "head_size"),
        (dict(old_positions=torch.tensor([0.0, 1.0])), TypeError, "old_positions"),
        (dict(old_positions=torch.tensor([0, 1, 2])), ValueError, "old_positions"),
        (dict(new_positions=torch.tensor([0, 16])), ValueError, "new_positions"),
        (dict(new_positions=torch.tensor([-1, 0])), ValueError, "new_positions"),
        (dict(new_positions=torch.tensor([0, 1], device="meta")), ValueError, "new_positions"),
        (dict(cos_sin_cache=table(6, torch.float32)[:, :5]), ValueError, "cos_sin_cache"),
        (dict(cos_sin_cache=table(16, torch.float32)), ValueError, "cos_sin_cache"),
        (dict(cos_sin_cache=torch.zeros(16)), ValueError, "cos_sin_cache"),
        (dict(is_neox=1), TypeError, "is_neox"),
    ],
)
def test_bad_input_names_the_argument(over: dict[str, object], kind: type[Exception], name: str) -> None:
    args = _args(**over)
    before = args["key"].clone() if isinstance(args["key"], torch.Tensor) else None
    with pytest.raises(kind, match=f"^{name}"):
        rotary_embedding_k_fused(**args)
    if before is not None:
        assert torch.equal(args["key"], before)


def test_strided_bad_geometry() -> None:
    key = torch.zeros(2, 2, 16)
    cache = table(8, torch.float32, max_pos=16)
    pos = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="^head_stride"):
        rotary_embedding_k_fused_strided(pos, pos, key, 8, 12, cache, True)
    with pytest.raises(ValueError, match="^head_size"):
        rotary_embedding_k_fused_strided(pos, pos, key, 20, 16, cache, True)


def test_host_backend_refuses_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_ASCEND_KERNEL_BACKEND", "host")
    key = torch.zeros(2, 2, 8, device="meta")
    with pytest.raises(ValueError, match="LMCACHE_ASCEND_KERNEL_BACKEND=host"):
        rope_ops._use_host(key)
