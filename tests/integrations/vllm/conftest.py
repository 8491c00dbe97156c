"""Fixtures for the in-process vLLM connector tests.

- ``vllm_session_env``: vLLM CPU KV space and a private directory for the ZMQ
  IPC sockets the lookup path uses.
- ``tiny_model_dir``: the local random Llama (``testkit.tiny_model``).
- ``distributed``: vLLM's distributed state (gloo, world size 1), once per session.
- ``vllm_llama``: the tiny model loaded by vLLM's own loader (float32), once per session.
- ``lmcache_env``: LMCache settings as ``LMCACHE_*`` variables with LMCache's
  per-process config singleton reset, so each test reads its own settings;
  it checks that no engine is left registered before and after the test.
- ``make_connectors``: the worker-side connector (through vLLM's
  ``ensure_kv_transfer_initialized``, i.e. the factory and
  ``kv_connector_module_path``) and then the scheduler-side one (through
  ``KVConnectorFactory.create_connector``, or built by vLLM's own ``Scheduler``
  with ``vllm_scheduler=True``), all shut down afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from vllm.config import VllmConfig
from vllm.distributed.kv_transfer import kv_transfer_state
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import KVCacheConfig
from vllm.v1.structured_output import StructuredOutputManager

from lmcache_ascend.integrations.vllm.connector_v1 import LMCacheAscendConnectorV1Dynamic
from tests.integrations.vllm import helpers

ENGINE_NAME = "vllm-instance"


@pytest.fixture(scope="session")
def vllm_session_env() -> Iterator[Path]:
    rpc_dir = Path(tempfile.mkdtemp(prefix="lmcvt"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_RPC_BASE_PATH", str(rpc_dir))
        mp.setenv("LMCACHE_TRACK_USAGE", "false")
        mp.setenv("LMCACHE_DISABLE_BANNER", "1")
        yield rpc_dir
    shutil.rmtree(rpc_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit import tiny_model

    return tiny_model.build(tmp_path_factory.mktemp("tiny-llama"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def distributed(vllm_session_env: Path, tiny_model_dir: Path) -> Iterator[None]:
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state as ps

    if ps.model_parallel_is_initialized():  # another suite of this session owns it
        yield
        return
    config = helpers.vllm_config(tiny_model_dir)
    with set_current_vllm_config(config):
        ps.init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"tcp://127.0.0.1:{_free_port()}",
            backend="gloo",
        )
        ps.initialize_model_parallel(1, 1)
    yield
    ps.destroy_model_parallel()
    ps.destroy_distributed_environment()


@pytest.fixture(scope="session")
def vllm_llama(distributed: None, tiny_model_dir: Path) -> Any:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader import get_model

    config = helpers.vllm_config(tiny_model_dir, dtype="float32")
    with set_current_vllm_config(config), pytest.MonkeyPatch.context() as mp:
        # vLLM's CPU model runner does the same: torch has no accelerator allocator on CPU.
        mp.setattr(torch.accelerator, "empty_cache", lambda: None)
        return get_model(vllm_config=config).eval()


def _registered_engine() -> Any:
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    return LMCacheEngineBuilder.get(ENGINE_NAME)


@pytest.fixture
def lmcache_env(monkeypatch: pytest.MonkeyPatch, distributed: None) -> Iterator[pytest.MonkeyPatch]:
    """LMCache's embedded default (local CPU tier), small; tests may setenv more before connecting."""
    import lmcache.integration.vllm.utils as lmc_utils
    from lmcache.v1.cache_engine import LMCacheEngineBuilder

    assert _registered_engine() is None, "an earlier test left an LMCache engine registered"
    for key in [k for k in os.environ if k.startswith("LMCACHE_")]:
        if key not in ("LMCACHE_TRACK_USAGE", "LMCACHE_DISABLE_BANNER"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LMCACHE_CHUNK_SIZE", str(helpers.CHUNK))
    monkeypatch.setenv("LMCACHE_LOCAL_CPU", "True")
    monkeypatch.setenv("LMCACHE_MAX_LOCAL_CPU_SIZE", "0.1")
    monkeypatch.setattr(lmc_utils, "_config_instance", None)
    yield monkeypatch
    leaked = _registered_engine() is not None
    LMCacheEngineBuilder.destroy(ENGINE_NAME)
    assert not leaked, "the test left an LMCache engine registered"


@dataclass
class Connectors:
    config: VllmConfig
    kv_config: KVCacheConfig
    worker: LMCacheAscendConnectorV1Dynamic  # role WORKER, vLLM's kv-transfer group
    scheduler: LMCacheAscendConnectorV1Dynamic  # role SCHEDULER
    caches: dict[str, torch.Tensor]  # the worker's KV, registered unless asked otherwise
    vllm_scheduler: Scheduler | None = None  # vLLM's Scheduler owning ``scheduler``, when asked for


MakeConnectors = Callable[..., Connectors]


@pytest.fixture
def make_connectors(
    lmcache_env: pytest.MonkeyPatch, tiny_model_dir: Path, gen: torch.Generator
) -> Iterator[MakeConnectors]:
    schedulers: list[LMCacheAscendConnectorV1Dynamic | Scheduler] = []

    def make(
        *,
        register: bool = True,
        block_size: int = helpers.BLOCK,
        extra: dict[str, Any] | None = None,
        vllm_scheduler: bool = False,
    ) -> Connectors:
        assert not kv_transfer_state.has_kv_transfer_group(), "one connector pair per test"
        config = helpers.vllm_config(tiny_model_dir, block_size=block_size, extra=extra)
        kv_config = helpers.kv_cache_config(config)
        kv_transfer_state.ensure_kv_transfer_initialized(config, kv_config)
        worker = kv_transfer_state.get_kv_transfer_group()
        assert isinstance(worker, LMCacheAscendConnectorV1Dynamic)
        caches = helpers.allocate_caches(kv_config, gen)
        if register:
            worker.register_kv_caches(caches)
            helpers.install_layers(config, caches)
        if vllm_scheduler:  # vLLM's own Scheduler creates the scheduler-side connector
            config.cache_config.num_gpu_blocks = kv_config.num_blocks  # as the engine core sets it
            block_size = config.cache_config.block_size
            sched = Scheduler(config, kv_config, StructuredOutputManager(config), block_size=block_size)
            schedulers.append(sched)
            assert isinstance(sched.connector, LMCacheAscendConnectorV1Dynamic)
            return Connectors(config, kv_config, worker, sched.connector, caches, sched)
        scheduler = KVConnectorFactory.create_connector(config, KVConnectorRole.SCHEDULER, kv_config)
        schedulers.append(scheduler)
        assert isinstance(scheduler, LMCacheAscendConnectorV1Dynamic)
        return Connectors(config, kv_config, worker, scheduler, caches)

    try:
        yield make
    finally:
        if kv_transfer_state.has_kv_transfer_group():
            kv_transfer_state.ensure_kv_transfer_shutdown()
        for owner in schedulers:
            owner.shutdown()
