"""``integrations/vllm/vllm_ascend_hook.py``: vllm-ascend's ``LMCacheAscendConnector``
name builds this package's connector; checked against vllm-ascend's real source.

Each vLLM case runs in a fresh interpreter: the hook and vllm-ascend's module
live in ``sys.meta_path`` / ``sys.modules`` for the rest of a process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from lmcache_ascend.integrations.vllm import vllm_ascend_hook as hook
from lmcache_ascend.upstream import patching
from tests import vllm_ascend_kit as kit

TARGET = hook.TARGET
VLLM_LMCACHE = "vllm.distributed.kv_transfer.kv_connector.v1.lmcache_connector"
RESOLVE = """
from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
cls = KVConnectorFactory.get_connector_class(KVTransferConfig(kv_connector="LMCacheAscendConnector", kv_role="kv_both"))
print(cls.__module__ + "." + cls.__qualname__)
"""


@pytest.fixture(scope="module")
def source() -> Path:
    return kit.source_dir()


def test_pin_vllm_ascend_maps_the_name_to_vllms_own_class(source: Path) -> None:
    """Upstream as the hook expects it: the name -> TARGET.LMCacheConnectorV1, vLLM's class."""
    out = kit.run_python(
        f"""
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm_ascend.distributed.kv_transfer import register_connector
register_connector()
{RESOLVE}
import {TARGET} as m, {VLLM_LMCACHE} as v
assert m.LMCacheConnectorV1 is v.LMCacheConnectorV1
""",
        kit.pythonpath(source, None),
    )
    assert out.strip() == f"{VLLM_LMCACHE}.LMCacheConnectorV1"


def test_vllm_plugins_make_the_name_build_this_connector(source: Path, tmp_path: Path) -> None:
    """vLLM loads both general plugins (ours, vllm-ascend's registration), in either order."""
    out = kit.run_python(
        f"""
from vllm.plugins import load_general_plugins
load_general_plugins()
{RESOLVE}
""",
        kit.pythonpath(source, tmp_path),
    )
    assert out.strip() == "lmcache_ascend.integrations.vllm.connector_v1.LMCacheAscendConnectorV1Dynamic"


def test_module_imported_before_the_hook_is_replaced_by_install(source: Path) -> None:
    out = kit.run_python(
        f"""
import {TARGET} as m
from lmcache_ascend.integrations.vllm import vllm_ascend_hook
vllm_ascend_hook.install()
print(m.LMCacheConnectorV1.__qualname__)
""",
        kit.pythonpath(source, None),
    )
    assert out.strip() == "LMCacheAscendConnectorV1Dynamic"


def test_changed_upstream_module_is_refused_with_the_alternative() -> None:
    with pytest.raises(ImportError, match="kv_connector_module_path"):
        hook.replace_class(ModuleType(TARGET))


def test_install_adds_one_finder_that_ignores_other_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    hook.install()
    hook.install()
    finders = [f for f in sys.meta_path if isinstance(f, patching._PatchOnImport)]
    assert len(finders) == 1 and sys.meta_path[0] is finders[0]
    assert finders[0].patches[TARGET] == [hook.replace_class]
    assert finders[0].find_spec("json", None) is None
