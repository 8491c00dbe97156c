"""A failed LMCache load is a cache miss: the connector sets vLLM's kv_load_failure_policy.

vLLM's default ``"fail"`` ends a request with an error when a chunk that
LMCache's lookup promised cannot be loaded (a remote server gone in between).
The scheduler-side connector switches it to ``"recompute"`` unless
``kv_connector_extra_config["lmcache_ascend.kv_load_failure_policy"]`` keeps
``"fail"``; vLLM's own ``Scheduler`` reads it right after building the connector.
"""

from __future__ import annotations

import pytest
from vllm.config import KVTransferConfig

from lmcache_ascend.integrations.vllm.connector_v1 import FAILURE_POLICY_KEY, recompute_failed_loads
from testkit.vllm_settings import kv_transfer_config_dict
from tests.integrations.vllm.conftest import MakeConnectors


class _Config:
    def __init__(self, ktc: KVTransferConfig) -> None:
        self.kv_transfer_config = ktc


def test_vllm_default_is_fail_and_the_connector_makes_it_recompute() -> None:
    ktc = KVTransferConfig(**kv_transfer_config_dict())
    assert ktc.kv_load_failure_policy == "fail"  # pins vLLM's default: why this exists
    assert recompute_failed_loads(_Config(ktc)) == "recompute"
    assert ktc.kv_load_failure_policy == "recompute"


def test_extra_config_keeps_fail() -> None:
    ktc = KVTransferConfig(**kv_transfer_config_dict({FAILURE_POLICY_KEY: "fail"}))
    assert recompute_failed_loads(_Config(ktc)) == "fail"
    assert ktc.kv_load_failure_policy == "fail"


def test_a_bad_policy_is_refused_by_name() -> None:
    ktc = KVTransferConfig(**kv_transfer_config_dict({FAILURE_POLICY_KEY: "retry"}))
    with pytest.raises(ValueError, match=FAILURE_POLICY_KEY):
        recompute_failed_loads(_Config(ktc))


def test_vllm_scheduler_recomputes_failed_loads(make_connectors: MakeConnectors) -> None:
    c = make_connectors(vllm_scheduler=True)
    assert c.vllm_scheduler is not None
    assert c.vllm_scheduler.recompute_kv_load_failures is True


def test_vllm_scheduler_keeps_fail_when_asked(make_connectors: MakeConnectors) -> None:
    c = make_connectors(vllm_scheduler=True, extra={FAILURE_POLICY_KEY: "fail"})
    assert c.vllm_scheduler is not None
    assert c.vllm_scheduler.recompute_kv_load_failures is False
