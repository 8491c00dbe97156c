"""Store through SGLang's LMCache radix cache, load back into a fresh SGLang pool.

Each test builds SGLang's real KV pool classes on CPU (MHA, MHA with pages,
SGLang NPU's ``[K_all, V_all]`` pool, MLA), serves a prompt through the radix
cache ``--enable-lmcache`` builds (the hook installed), which stores it in a
real LMCache engine; then a second, empty SGLang "process" (new pool, new radix
tree, same LMCache) serves the prompt again: its prefix must come from
LMCache, at the slots SGLang's allocator handed out, byte for byte equal to
what the model wrote, and nothing else in the pool may change.

Both LMCache modes run: non-layerwise (``use_layerwise: false``) and layerwise.
Every case runs on the host C++ core and on the device-generic torch path (the
one NPU-resident KV takes), each refusing the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("sglang")

from tests.integrations.sglang.harness import MHA, MLA, NPU, POOL_KINDS, PoolKind, World, make_world, model_config_for, prompt  # noqa: E402

CHUNK = 16
MODES = {"paged": False, "layerwise": True}

WorldMaker = Callable[[], World]


@pytest.fixture
def worlds(
    lmcache_config: Callable[..., Any], hooked: type, model_dirs: dict[str, Any], gen: torch.Generator
) -> Callable[[PoolKind, bool], WorldMaker]:
    def setup(kind: PoolKind, layerwise: bool) -> WorldMaker:
        lmcache_config(chunk_size=CHUNK, use_layerwise=layerwise)
        model_config = model_config_for(kind, model_dirs)
        return lambda: make_world(kind, model_config, gen)

    return setup


def engine_of(world: World) -> Any:
    return world.cache.lmcache_connector.engine


def assert_prefix_exact(world: World, tokens: list[int], slots: torch.Tensor, positions: range) -> None:
    for layer in range(world.num_layers):
        got = world.read(layer, slots[positions.start : positions.stop])
        want = world.expected(tokens, positions, layer)
        assert torch.equal(got, want), f"layer {layer}: KV at the loaded slots differs"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", POOL_KINDS, ids=str)
def test_store_then_load_into_fresh_pool(worlds: Callable[..., WorldMaker], kind: PoolKind, mode: str, backend: str) -> None:
    new_world = worlds(kind, MODES[mode])
    tokens = prompt(40, seed=1)

    first = new_world()
    assert type(first.cache).__name__ == "AscendLMCRadixCache"  # what --enable-lmcache built
    first.serve(tokens, "cold")
    # 40 tokens: two full 16-token chunks; LMCache does not keep the partial third.
    assert engine_of(first).lookup(tokens) == 32

    second = new_world()
    req = second.match(tokens, "warm")
    assert len(req.prefix_indices) == 32
    slots = second.forward(req)
    assert_prefix_exact(second, tokens, slots, range(32))
    # Only this request's slots hold KV: nothing was written anywhere else.
    assert second.nonzero_slots() == set(slots.tolist())
    second.finish(req)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", [MHA, NPU, MLA], ids=str)
def test_partial_prompt_prefix_hits(worlds: Callable[..., WorldMaker], kind: PoolKind, mode: str) -> None:
    new_world = worlds(kind, MODES[mode])
    base = prompt(40, seed=1)
    shared = base[:32] + prompt(18, seed=2)  # 50 tokens, the first 32 shared with base
    short = base[:20] + prompt(10, seed=3)  # 30 tokens, the first 20 shared

    new_world().serve(base, "base")
    second = new_world()
    req, slots = second.serve(shared, "shared")
    assert len(req.prefix_indices) == 32  # two chunks of base; tokens 32.. computed
    assert_prefix_exact(second, shared, slots, range(32))
    assert engine_of(second).lookup(shared) == 48  # its third chunk is stored now

    third = new_world()
    req, short_slots = third.serve(short, "short")
    assert len(req.prefix_indices) == 16  # only the first chunk is whole inside the shared 20
    assert_prefix_exact(third, short, short_slots, range(16))

    # The radix tree of `third` holds short[:20] == shared[:20]. Mark those slots:
    # LMCache's load of shared's chunk 1 (tokens 16..31) must skip positions
    # 16..19 (slot -1) and fill only what the tree lacks.
    tree_slots = short_slots[:20]
    sentinel = torch.full_like(third.read(0, tree_slots), 7.0)
    for layer in range(third.num_layers):
        third.write(layer, tree_slots, sentinel)
    req = third.match(shared, "shared-again")
    assert len(req.prefix_indices) == 48
    assert torch.equal(torch.as_tensor(req.prefix_indices[:20]), tree_slots)
    slots = third.forward(req)
    for layer in range(third.num_layers):
        assert torch.equal(third.read(layer, tree_slots), sentinel), f"layer {layer}: a slot the tree owns was overwritten"
    assert_prefix_exact(third, shared, slots, range(20, 48))
    # Positions 16..19 were skipped, not sent to some other slot (such as SGLang's dummy slot 0).
    assert third.nonzero_slots() == set(short_slots.tolist()) | set(slots.tolist())
    third.finish(req)


@pytest.mark.parametrize("mode", MODES)
def test_miss_loads_nothing(worlds: Callable[..., WorldMaker], mode: str) -> None:
    new_world = worlds(MHA, MODES[mode])
    new_world().serve(prompt(40, seed=1), "stored")
    other = new_world()
    req = other.match(prompt(40, seed=9), "unknown")
    assert len(req.prefix_indices) == 0
    assert other.nonzero_slots() == set()
    assert other.cache.lmcache_connector.pending_loads == 0
    assert dict(engine_of(other).lookup_pins) == {}
