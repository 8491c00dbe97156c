"""Layerwise loads follow the model through the layers.

With ``use_layerwise: true``, SGLang's ``match_prefix`` loads layer 0 only;
the KV pool then calls its layer hook from ``get_key_buffer(i)`` when the model
reaches layer ``i``, and the hook waits for the loads so far and loads layer
``i + 1``. When the model reaches the last layer the load is finished and
LMCache's lookup pins are released.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("sglang")

from tests.integrations.sglang.harness import MHA, MLA, NPU, PoolKind, World, make_world, model_config_for, prompt  # noqa: E402


def filled_layers(world: World, tokens: list[int], slots: torch.Tensor) -> list[bool]:
    """Per layer: True when ``slots`` hold the model's KV, False when they are all zero."""
    state = []
    for layer in range(world.num_layers):
        got = world.read(layer, slots)
        if torch.equal(got, world.expected(tokens, range(len(slots)), layer)):
            state.append(True)
        else:
            assert not got.any(), f"layer {layer} is neither loaded nor untouched"
            state.append(False)
    return state


@pytest.fixture
def stored(lmcache_config: Callable[..., Any], hooked: type, model_dirs: dict[str, Any], gen: torch.Generator) -> Callable[[PoolKind], Callable[[], World]]:
    def setup(kind: PoolKind) -> Callable[[], World]:
        lmcache_config(chunk_size=16, use_layerwise=True)
        model_config = model_config_for(kind, model_dirs)
        return lambda: make_world(kind, model_config, gen)

    return setup


@pytest.mark.parametrize("kind", [MHA, NPU, MLA], ids=str)
def test_each_layer_is_loaded_when_the_model_reaches_the_one_before(stored: Callable[[PoolKind], Callable[[], World]], kind: PoolKind) -> None:
    new_world = stored(kind)
    tokens_a, tokens_b = prompt(40, seed=1), prompt(36, seed=4)
    writer = new_world()
    writer.serve(tokens_a, "a")
    writer.serve(tokens_b, "b")

    reader = new_world()
    connector = reader.cache.lmcache_connector
    engine = connector.engine
    req_a = reader.match(tokens_a, "a2")
    req_b = reader.match(tokens_b, "b2")
    slots_a = torch.as_tensor(req_a.prefix_indices)
    slots_b = torch.as_tensor(req_b.prefix_indices)
    assert (len(slots_a), len(slots_b)) == (32, 32)
    assert connector.pending_loads == 2
    layers = reader.num_layers
    # match_prefix loaded layer 0 of both requests, nothing more.
    expected = [True] + [False] * (layers - 1)
    assert filled_layers(reader, tokens_a, slots_a) == expected
    assert filled_layers(reader, tokens_b, slots_b) == expected

    for layer in range(layers):
        reader.pool.get_key_buffer(layer)  # the model reaches `layer`
        loaded = min(layer + 2, layers)
        expected = [True] * loaded + [False] * (layers - loaded)
        assert filled_layers(reader, tokens_a, slots_a) == expected
        assert filled_layers(reader, tokens_b, slots_b) == expected
        assert connector.pending_loads == (2 if layer < layers - 1 else 0)
    assert dict(engine.lookup_pins) == {}

    # Later forwards find nothing pending and change nothing.
    before = [reader.read(layer, slots_a).clone() for layer in range(layers)]
    for layer in range(layers):
        reader.pool.get_value_buffer(layer)
    assert all(torch.equal(reader.read(layer, slots_a), before[layer]) for layer in range(layers))


def test_non_layerwise_loads_every_layer_in_match_prefix(lmcache_config: Callable[..., Any], hooked: type, model_dirs: dict[str, Any], gen: torch.Generator) -> None:
    lmcache_config(chunk_size=16, use_layerwise=False)
    model_config = model_config_for(MHA, model_dirs)
    tokens = prompt(40, seed=1)
    make_world(MHA, model_config, gen).serve(tokens, "a")
    reader = make_world(MHA, model_config, gen)
    req = reader.match(tokens, "a2")
    slots = torch.as_tensor(req.prefix_indices)
    assert filled_layers(reader, tokens, slots) == [True] * reader.num_layers
    assert reader.pool.layer_transfer_counter is None  # no per-layer hook to pay for
    assert dict(reader.cache.lmcache_connector.engine.lookup_pins) == {}
