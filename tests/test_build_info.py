"""Build flags recorded by setup.py, and the native core being the one built here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import lmcache_ascend
from lmcache_ascend import _kvcore, build_info

ROOT = Path(__file__).resolve().parents[1]


def _setup_module():
    spec = importlib.util.spec_from_file_location("lmcache_ascend_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ is not "__main__": setup() does not run
    return module


def _record(source: str) -> dict:
    namespace: dict = {}
    exec(source, namespace)
    return namespace


def test_installed_build_is_the_pytorch_flavour_without_npu_kernels() -> None:
    info = build_info()
    assert info.flavour in ("pytorch", "mindspore")
    assert info.npu_kernels_built is False
    assert info.npu_kernels_reason


@pytest.mark.parametrize(
    "env,flavour",
    [({}, "pytorch"), ({"USE_MINDSPORE": "1"}, "mindspore"), ({"USE_MINDSPORE": "True"}, "mindspore"), ({"USE_MINDSPORE": "0"}, "pytorch")],
)
def test_use_mindspore_flag_selects_flavour(env: dict, flavour: str) -> None:
    assert _record(_setup_module().build_info_source(env))["FLAVOUR"] == flavour


def test_soc_and_cann_are_recorded(tmp_path: Path) -> None:
    setup = _setup_module()
    without = _record(setup.build_info_source({"SOC_VERSION": "Ascend910B1"}))
    assert without["SOC_VERSION"] == "Ascend910B1"
    assert without["ASCEND_HOME_PATH"] is None and "CANN toolkit not found" in without["NPU_KERNELS_REASON"]
    with_cann = _record(setup.build_info_source({"ASCEND_HOME_PATH": str(tmp_path)}))
    assert with_cann["ASCEND_HOME_PATH"] == str(tmp_path)
    assert with_cann["NPU_KERNELS_BUILT"] is False and "not part of this release" in with_cann["NPU_KERNELS_REASON"]


def test_missing_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    setup = _setup_module()
    monkeypatch.setenv("CXX", "definitely-not-a-compiler")
    with pytest.raises(SystemExit, match="no C\\+\\+17 compiler found"):
        setup._require_compiler()


def test_native_core_is_importable_and_versioned() -> None:
    assert _kvcore.ABI_VERSION == 1
    assert _kvcore.PLANE_FIELDS == 12
    assert _kvcore.hardware_threads() >= 1
    assert lmcache_ascend.LMCACHE_UPSTREAM_VERSION == "0.5.6"
