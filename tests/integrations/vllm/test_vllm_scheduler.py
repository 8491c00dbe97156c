"""vLLM's own Scheduler drives the scheduler-side connector; the worker side runs each step.

The Scheduler calls ``get_num_new_matched_tokens``, allocates blocks, calls
``update_state_after_alloc`` and ``build_connector_meta`` and sets
``has_sync_kv_loads``; after the step ``update_from_output`` finishes the
one-token requests and calls ``request_finished``, whose answer decides
whether the blocks are freed now.
"""

from __future__ import annotations

import torch
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

from testkit.tiny_model import prompt_token_ids
from tests.integrations.vllm import helpers
from tests.integrations.vllm.conftest import Connectors, MakeConnectors


def run_one_step(c: Connectors, request: Request) -> tuple[SchedulerOutput, list[int]]:
    """Add ``request``, schedule it, run the worker step, feed back one sampled token."""
    scheduler = c.vllm_scheduler
    scheduler.add_request(request)
    output = scheduler.schedule()
    assert [new.req_id for new in output.scheduled_new_reqs] == [request.request_id]
    block_ids = list(output.scheduled_new_reqs[0].block_ids[0])
    result = helpers.run_worker_step(c.config, output, helpers.cpu_attn_metadata(request, block_ids, helpers.BLOCK))
    assert result.invalid_block_ids == set()
    runner_output = ModelRunnerOutput(
        req_ids=[request.request_id],
        req_id_to_index={request.request_id: 0},
        sampled_token_ids=[[7]],
        kv_connector_output=result,
    )
    scheduler.update_from_output(output, runner_output)
    return output, block_ids


def free_blocks(c: Connectors) -> int:
    return int(c.vllm_scheduler.kv_cache_manager.block_pool.get_num_free_blocks())


def test_vllm_scheduler_stores_then_loads_a_repeated_prompt(make_connectors: MakeConnectors) -> None:
    c = make_connectors(vllm_scheduler=True)
    tokens = prompt_token_ids(600)
    idle = free_blocks(c)

    first = helpers.make_request("req-a", tokens)
    output_a, blocks_a = run_one_step(c, first)
    assert output_a.num_scheduled_tokens == {"req-a": 600}
    assert output_a.has_sync_kv_loads is False
    assert c.worker.lmcache_engine.lookup(tokens=tokens) == 512
    assert first.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert free_blocks(c) == idle  # request_finished said "don't hold the blocks"
    stored = helpers.snapshot_blocks(c.caches, blocks_a[:4])

    second = helpers.make_request("req-b", tokens)
    output_b, blocks_b = run_one_step(c, second)
    assert output_b.num_scheduled_tokens == {"req-b": 600 - 512}
    assert output_b.scheduled_new_reqs[0].num_computed_tokens == 512
    assert output_b.has_sync_kv_loads is True
    assert sorted(blocks_b) == sorted(blocks_a) and blocks_b != blocks_a  # same blocks, other order
    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b[:4]), stored)
    assert second.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert free_blocks(c) == idle
    assert c.vllm_scheduler.get_num_unfinished_requests() == 0


def test_vllm_scheduler_full_hit_recomputes_only_the_last_token(make_connectors: MakeConnectors) -> None:
    c = make_connectors(vllm_scheduler=True)
    tokens = prompt_token_ids(512, offset=5)

    _, blocks_a = run_one_step(c, helpers.make_request("req-a", tokens))
    stored = helpers.snapshot_blocks(c.caches, blocks_a)
    for tensor in c.caches.values():  # nothing of req-a's KV survives in vLLM
        tensor[blocks_a] = torch.ones_like(tensor[blocks_a])

    output_b, blocks_b = run_one_step(c, helpers.make_request("req-b", tokens))
    assert output_b.num_scheduled_tokens == {"req-b": 1}
    assert output_b.scheduled_new_reqs[0].num_computed_tokens == 511
    assert helpers.same_blocks(helpers.blocks_of(c.caches, blocks_b), stored)
