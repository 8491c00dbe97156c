"""Layerwise mode (``LMCACHE_USE_LAYERWISE``): per-layer save and load through vLLM's layer hooks.

Stores happen layer by layer in ``save_kv_layer`` (vLLM's attention decorator)
and finish in ``wait_for_save``; loads start in ``start_load_kv`` and continue
in each layer's ``wait_for_layer_load``. vLLM 0.32 calls ``start_load_kv``
*after* the forward in steps without synchronous loads, so the connector must
drop the previous step's retrievers when that step's metadata is bound.
"""

from __future__ import annotations

import pytest
import torch
from vllm.v1.request import RequestStatus

from lmcache_ascend.integrations.lmcache.layerwise_connector import LayerwiseKVConnector
from testkit.tiny_model import prompt_token_ids
from tests.integrations.vllm import helpers
from tests.integrations.vllm.conftest import Connectors, MakeConnectors

PROMPT = 600
STORED = 512


@pytest.fixture
def layerwise(make_connectors: MakeConnectors, lmcache_env: pytest.MonkeyPatch) -> Connectors:
    lmcache_env.setenv("LMCACHE_USE_LAYERWISE", "True")
    c = make_connectors()
    assert type(c.worker.lmcache_engine.gpu_connector) is LayerwiseKVConnector
    return c


def run_request(c: Connectors, req_id: str, tokens: list[int], block_ids: list[int], expect: int) -> None:
    request = helpers.make_request(req_id, tokens)
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (expect, False)
    output = helpers.schedule_new(c.scheduler, request, block_ids, expect)
    result = helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, block_ids, helpers.BLOCK))
    assert result.invalid_block_ids == set()
    request.status = RequestStatus.FINISHED_LENGTH_CAPPED
    assert c.scheduler.request_finished(request, block_ids) == (False, None)


def test_layerwise_store_then_load_round_trips_whole_blocks(layerwise: Connectors, gen: torch.Generator) -> None:
    c = layerwise
    tokens = prompt_token_ids(PROMPT)
    blocks_a = [0, 1, 2, 3, 4]
    run_request(c, "req-a", tokens, blocks_a, 0)
    assert c.worker.lmcache_engine.lookup(tokens=tokens) == STORED
    stored = helpers.snapshot_blocks(c.caches, blocks_a[:4])
    helpers.scramble_blocks(c.caches, blocks_a, gen)

    blocks_b = [21, 8, 15, 3, 10]
    helpers.zero_blocks(c.caches, blocks_b)
    run_request(c, "req-b", tokens, blocks_b, STORED)

    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b[:4]), stored)
    assert helpers.all_zero(c.caches, blocks_b[4:])
    assert c.worker._lmcache_engine.current_layer == len(c.caches)  # one wait per layer


def test_step_after_a_layerwise_load_starts_clean(layerwise: Connectors) -> None:
    """Step 2 loads (sync, before the forward); step 3 has no load, so vLLM binds
    its metadata and runs the forward before ``start_load_kv``: the layer hooks
    must not touch step 2's spent retrievers."""
    c = layerwise
    tokens = prompt_token_ids(PROMPT)
    run_request(c, "req-a", tokens, [0, 1, 2, 3, 4], 0)
    run_request(c, "req-b", tokens, [5, 6, 7, 8, 9], STORED)
    assert len(c.worker._lmcache_engine.layerwise_retrievers) == 1  # spent, still held

    other = prompt_token_ids(PROMPT, offset=11)
    run_request(c, "req-c", other, [10, 11, 12, 13, 14], 0)  # raised StopIteration without the reset

    assert c.worker._lmcache_engine.layerwise_retrievers == []
    assert c.worker.lmcache_engine.lookup(tokens=other) == STORED
