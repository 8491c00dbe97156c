"""Per-token views of vLLM CPU's packed KV against vLLM's own writer.

The reference is ``vllm._custom_ops.cpu_attn_reshape_and_cache`` (what vLLM CPU's
attention writes every forward): rows gathered through our views equal what it
wrote, and a layer written through our views is byte-identical to one it wrote,
for every dtype and block size vLLM CPU takes on this machine, slot -1 included.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from vllm import _custom_ops as vllm_ops  # noqa: E402

from lmcache_ascend.integrations.lmcache import cpu_kv_layout  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
GEOMS = ((16, 64), (32, 64), (64, 32), (16, 128))  # (block_size, head_size)
NUM_BLOCKS, NUM_HEADS = 6, 2


def vllm_write(layer: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor) -> None:
    num_blocks, heads, block_size, two_head = layer.shape
    packed = layer.view(num_blocks, heads, 2 * block_size, two_head // 2)
    key_cache, value_cache = packed.chunk(2, dim=2)
    isa = cpu_kv_layout.attention_isa(layer.dtype, block_size, two_head // 2)
    vllm_ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa)


def random_layer(dtype: torch.dtype, block_size: int, head_size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(NUM_BLOCKS, NUM_HEADS, block_size, 2 * head_size, generator=gen).to(dtype)


def random_kv(n: int, head_size: int, dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    key = torch.randn(n, NUM_HEADS, head_size, generator=gen).to(dtype)
    return key, torch.randn(n, NUM_HEADS, head_size, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("block_size", "head_size"), GEOMS)
def test_gather_reads_what_vllm_wrote(dtype: torch.dtype, block_size: int, head_size: int) -> None:
    gen = torch.Generator().manual_seed(block_size + head_size)
    layer = random_layer(dtype, block_size, head_size, gen)
    n = NUM_BLOCKS * block_size - 3  # a partial last block
    slots = torch.randperm(NUM_BLOCKS * block_size, generator=gen)[:n]
    key, value = random_kv(n, head_size, dtype, gen)
    vllm_write(layer, key, value, slots)
    with_hole = slots.clone()
    with_hole[5] = -1
    out = torch.full((2, n, NUM_HEADS * head_size), 7.0, dtype=dtype)
    cpu_kv_layout.gather_rows(layer, with_hole, out)
    keep = torch.arange(n) != 5
    assert torch.equal(out[0, keep], key.flatten(1)[keep])
    assert torch.equal(out[1, keep], value.flatten(1)[keep])
    assert torch.all(out[:, 5] == 7.0), "the row of slot -1 must stay as it was"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("block_size", "head_size"), GEOMS)
def test_scatter_is_byte_identical_to_vllm(dtype: torch.dtype, block_size: int, head_size: int) -> None:
    gen = torch.Generator().manual_seed(3 * block_size + head_size)
    start = random_layer(dtype, block_size, head_size, gen)
    n = 2 * block_size + 5
    slots = torch.randperm(NUM_BLOCKS * block_size, generator=gen)[:n]
    key, value = random_kv(n, head_size, dtype, gen)
    slots_ours = slots.clone()
    slots_ours[[0, n - 1]] = -1
    expected = start.clone()
    vllm_write(expected, key[1:-1], value[1:-1], slots[1:-1])
    ours = start.clone()
    cpu_kv_layout.scatter_rows(torch.stack([key.flatten(1), value.flatten(1)]), ours, slots_ours)
    assert torch.equal(ours.view(torch.uint8), expected.view(torch.uint8))


def test_empty_slots_touch_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    layer = random_layer(torch.bfloat16, 16, 64, gen)
    before = layer.clone()
    cpu_kv_layout.scatter_rows(torch.empty(2, 0, NUM_HEADS * 64, dtype=torch.bfloat16), layer, torch.empty(0, dtype=torch.int64))
    out = torch.empty(2, 0, NUM_HEADS * 64, dtype=torch.bfloat16)
    cpu_kv_layout.gather_rows(layer, torch.empty(0, dtype=torch.int64), out)
    assert torch.equal(layer, before)


def test_unknown_isa_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kv_layout, "attention_isa", lambda *a: "amx")
    with pytest.raises(ValueError, match="^kvcaches: vLLM CPU attention ISA 'amx'"):
        cpu_kv_layout.token_views(torch.zeros(2, 2, 32, 128, dtype=torch.bfloat16))


def test_a_changed_vllm_packing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """If vLLM's writer stops matching our views, blending refuses instead of corrupting KV."""

    def token_major_writer(key, value, key_cache, value_cache, slots, isa, *args):  # a different packing
        bs = key_cache.shape[2]
        key_cache[slots // bs, :, slots % bs] = key
        value_cache[slots // bs, :, slots % bs] = value

    monkeypatch.setattr(vllm_ops, "cpu_attn_reshape_and_cache", token_major_writer)
    with pytest.raises(ValueError, match="^kvcaches: vLLM CPU's KV layout for ISA 'vec16'"):
        cpu_kv_layout.verify_layout.__wrapped__(torch.float32, 16, 64, "vec16")


@pytest.mark.parametrize(
    "layer",
    [torch.zeros(2, 2, 16), torch.zeros(2, 2, 16, 127), torch.zeros(2, 2, 16, 128).transpose(0, 1)],
    ids=["3-d", "odd-last-dim", "non-contiguous"],
)
def test_bad_layers_are_refused(layer: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="^kvcaches: a vLLM CPU layer must be"):
        cpu_kv_layout.token_views(layer)
