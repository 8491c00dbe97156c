"""Scheduler side → SchedulerOutput → worker side, step by step, with vLLM's real classes.

A first request misses, is scheduled, and its full chunks are stored by the
worker's ``wait_for_save``; a second request with the same prompt hits, and the
worker's load fills the second request's blocks with exactly the stored bytes.
Block size 128, LMCache chunk 256: a 600-token prompt has two full chunks (512
tokens, blocks 0-3 of the request) and a tail of 88 tokens, less than a block,
which is never stored (block tails keep whole blocks only: test_block_tail.py).
"""

from __future__ import annotations

import torch
from lmcache.integration.vllm.vllm_v1_adapter import LMCacheConnectorMetadata, LoadSpec, SaveSpec
from vllm.v1.request import Request, RequestStatus

from testkit.tiny_model import prompt_token_ids
from tests.integrations.vllm import helpers
from tests.integrations.vllm.conftest import Connectors, MakeConnectors

PROMPT = 600
STORED = 512  # full chunks of PROMPT
BLOCKS_A = [0, 1, 2, 3, 4]


def store_first_request(c: Connectors, tokens: list[int], block_ids: list[int]) -> Request:
    """Schedule and run a request that misses; its full chunks get stored."""
    request = helpers.make_request("req-a", tokens)
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (0, False)
    output = helpers.schedule_new(c.scheduler, request, block_ids, 0)
    helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, block_ids, helpers.BLOCK))
    request.status = RequestStatus.FINISHED_LENGTH_CAPPED
    assert c.scheduler.request_finished(request, block_ids) == (False, None)
    return request


def stored_locations(c: Connectors, tokens: list[int]) -> list[str | None]:
    engine = c.worker.lmcache_engine
    keys = [result[2] for result in engine.token_database.process_tokens(tokens=tokens)]
    return [engine.storage_manager.contains(key) for key in keys]


def test_first_request_misses_then_its_full_chunks_are_stored(make_connectors: MakeConnectors) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(PROMPT)
    request = helpers.make_request("req-a", tokens)
    engine = c.worker.lmcache_engine

    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (0, False)
    assert engine.lookup(tokens=tokens) == 0

    output = helpers.schedule_new(c.scheduler, request, BLOCKS_A, 0)
    meta = helpers.connector_metadata(output)
    assert isinstance(meta, LMCacheConnectorMetadata)
    assert output.has_sync_kv_loads is False
    assert [r.req_id for r in meta.requests] == ["req-a"]
    req_meta = meta.requests[0]
    assert req_meta.token_ids == tokens[:STORED]
    assert req_meta.slot_mapping.tolist() == list(range(STORED))  # blocks 0-3, in order
    assert req_meta.load_spec == LoadSpec(vllm_cached_tokens=0, lmcache_cached_tokens=0, can_load=False)
    assert req_meta.save_spec == SaveSpec(skip_leading_tokens=0, can_save=True)
    assert req_meta.is_last_prefill is True

    before = {name: tensor.clone() for name, tensor in c.caches.items()}
    result = helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, BLOCKS_A, helpers.BLOCK))

    assert (result.finished_sending, result.finished_recving) == (set(), set())  # nothing async
    assert result.invalid_block_ids == set()
    assert engine.lookup(tokens=tokens) == STORED
    assert stored_locations(c, tokens) == ["LocalCPUBackend", "LocalCPUBackend", None]  # not the 88-token tail
    assert helpers.same_blocks(c.caches, before)  # a store leaves vLLM's KV alone
    assert c.worker.has_connector_metadata() is False  # vLLM cleared it after the step

    request.status = RequestStatus.FINISHED_LENGTH_CAPPED
    assert c.scheduler.request_finished(request, BLOCKS_A) == (False, None)


def test_second_request_loads_exactly_the_stored_blocks(make_connectors: MakeConnectors, gen: torch.Generator) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(PROMPT)
    store_first_request(c, tokens, BLOCKS_A)
    stored = helpers.snapshot_blocks(c.caches, BLOCKS_A[:4])
    helpers.scramble_blocks(c.caches, BLOCKS_A, gen)  # freed and reused since

    request = helpers.make_request("req-b", tokens)
    blocks_b = [9, 5, 17, 11, 20]  # vLLM's free list gives any order
    helpers.zero_blocks(c.caches, blocks_b)
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (STORED, False)

    output = helpers.schedule_new(c.scheduler, request, blocks_b, STORED)
    assert output.has_sync_kv_loads is True
    req_meta = helpers.connector_metadata(output).requests[0]
    assert req_meta.load_spec == LoadSpec(vllm_cached_tokens=0, lmcache_cached_tokens=STORED, can_load=True)
    assert req_meta.save_spec is not None and req_meta.save_spec.can_save is False  # already stored
    expected_slots = [b * helpers.BLOCK + i for b in blocks_b[:4] for i in range(helpers.BLOCK)]
    assert req_meta.slot_mapping.tolist() == expected_slots

    others = [b for b in range(helpers.NUM_BLOCKS) if b not in blocks_b]
    untouched = helpers.snapshot_blocks(c.caches, others)
    result = helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, blocks_b, helpers.BLOCK))

    assert result.invalid_block_ids == set()
    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b[:4]), stored)
    assert helpers.all_zero(c.caches, blocks_b[4:])  # the partial tail is vLLM's to compute
    assert helpers.same_blocks(helpers.blocks_of(c.caches, others), untouched)


def test_full_prompt_hit_reports_one_token_less_and_loads_every_block(
    make_connectors: MakeConnectors, gen: torch.Generator
) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(STORED, offset=3)
    blocks_a = [0, 1, 2, 3]
    store_first_request(c, tokens, blocks_a)
    stored = helpers.snapshot_blocks(c.caches, blocks_a)
    helpers.scramble_blocks(c.caches, blocks_a, gen)

    request = helpers.make_request("req-b", tokens)
    blocks_b = [12, 13, 14, 15]
    helpers.zero_blocks(c.caches, blocks_b)
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (STORED - 1, False)

    output = helpers.schedule_new(c.scheduler, request, blocks_b, STORED - 1)
    assert output.num_scheduled_tokens == {"req-b": 1}  # vLLM recomputes the last token
    helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, blocks_b, helpers.BLOCK))

    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b), stored)


def test_hit_beyond_vllm_local_prefix_loads_only_the_rest(
    make_connectors: MakeConnectors, gen: torch.Generator
) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(PROMPT)
    store_first_request(c, tokens, BLOCKS_A)
    stored = helpers.snapshot_blocks(c.caches, BLOCKS_A[:4])

    request = helpers.make_request("req-b", tokens)
    local = 256  # vLLM already holds the first chunk (2 blocks) itself
    blocks_b = [6, 7, 12, 13, 14]
    helpers.scramble_blocks(c.caches, blocks_b[:2], gen)
    local_blocks = helpers.snapshot_blocks(c.caches, blocks_b[:2])
    helpers.zero_blocks(c.caches, blocks_b[2:])
    assert c.scheduler.get_num_new_matched_tokens(request, local) == (STORED - local, False)

    output = helpers.schedule_new(c.scheduler, request, blocks_b, STORED - local, num_local=local)
    req_meta = helpers.connector_metadata(output).requests[0]
    assert req_meta.load_spec == LoadSpec(vllm_cached_tokens=local, lmcache_cached_tokens=STORED, can_load=True)
    helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, blocks_b, helpers.BLOCK))

    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b[:2]), local_blocks)  # vLLM's own blocks kept
    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b[2:4]), {n: t[2:4] for n, t in stored.items()})
    assert helpers.all_zero(c.caches, blocks_b[4:])


def test_step_without_attention_metadata_loads_nothing(make_connectors: MakeConnectors) -> None:
    c = make_connectors()
    tokens = prompt_token_ids(PROMPT)
    store_first_request(c, tokens, BLOCKS_A)

    request = helpers.make_request("req-b", tokens)
    blocks_b = [9, 10, 11, 12, 13]
    helpers.zero_blocks(c.caches, blocks_b)
    assert c.scheduler.get_num_new_matched_tokens(request, 0) == (STORED, False)
    output = helpers.schedule_new(c.scheduler, request, blocks_b, STORED)

    helpers.run_worker_step(c.config, output, None)  # kv_connector_no_forward: attn_metadata is None

    assert helpers.all_zero(c.caches, blocks_b)
