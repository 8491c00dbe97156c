"""Fixtures for the SGLang 0.5.23 tests (the ``--enable-lmcache`` route through
LMCache's multi-process server).

Every test here needs SGLang 0.5.23, which lives in its own environment
(``bash scripts/sglang_env.sh``); the main ``.venv`` keeps SGLang 0.5.3 for the
in-process route. Without SGLang 0.5.23 every test in this directory is skipped,
with the reason saying how to get it. The version is read from the package
metadata: importing ``sglang`` itself is not possible here without the
torchvision fix-up below.

- ``standin``: ``tests/sglang_standin`` on ``sys.path`` and its ``sgl_kernel``
  stand-in imported (the two CPU ops SGLang 0.5.23 calls; see its docstring).
- ``sglang_cpu``: what SGLang 0.5.23 needs to import on CPU in this process:
  ``SGLANG_USE_CPU_ENGINE=1`` (its ``is_cpu()``, read once at import), the
  stand-in, and the stand-in's torchvision fix-up (``sitecustomize.py``, loaded
  by path: PyPI's torchvision is a CUDA build and ``import torchvision``, which
  ``import sglang`` does, fails without it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SGLANG_VERSION = "0.5.23"
ROOT = Path(__file__).resolve().parents[3]
STANDIN_DIR = ROOT / "tests" / "sglang_standin"
_FIXUP_MODULE = "_lmcache_ascend_sglang_standin_sitecustomize"


def _installed_sglang() -> str | None:
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


def _skip_reason() -> str | None:
    found = _installed_sglang()
    if found == SGLANG_VERSION:
        return None
    what = "not installed" if found is None else f"{found} installed"
    return (
        f"needs SGLang {SGLANG_VERSION} ({what} here): run these tests in its own "
        "environment with `bash scripts/sglang_env.sh`"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            # First of the item's skipif marks, so this reason is the one reported.
            item.add_marker(pytest.mark.skipif(True, reason=reason), append=False)


def _fixup_applied() -> bool:
    """``scripts/sglang_env.sh`` puts the stand-in directory on ``sys.path`` with a
    ``.pth`` file, so Python itself may have run the fix-up as ``sitecustomize``."""
    for name in ("sitecustomize", _FIXUP_MODULE):
        module = sys.modules.get(name)
        if module is not None and Path(str(getattr(module, "__file__", ""))).parent == STANDIN_DIR:
            return True
    return False


@pytest.fixture(scope="session")
def standin() -> ModuleType:
    """The ``sgl_kernel`` stand-in, importable by name as SGLang imports it."""
    if str(STANDIN_DIR) not in sys.path:
        sys.path.insert(0, str(STANDIN_DIR))
    import sgl_kernel

    if not getattr(sgl_kernel, "STAND_IN", False):
        pytest.fail(f"`sgl_kernel` is not the stand-in in {STANDIN_DIR}: {getattr(sgl_kernel, '__file__', sgl_kernel)!r}")
    return sgl_kernel


@pytest.fixture(scope="session")
def sglang_cpu(standin: ModuleType) -> Iterator[ModuleType]:
    """Makes SGLang 0.5.23 importable on CPU in this process; yields the stand-in.

    ``SGLANG_USE_CPU_ENGINE`` is restored at the end of the session (SGLang's
    modules keep what they read at import)."""
    before = os.environ.get("SGLANG_USE_CPU_ENGINE")
    if "sglang" in sys.modules and before != "1":
        pytest.fail("sglang was imported before SGLANG_USE_CPU_ENGINE=1 was set; its is_cpu() is fixed at import")
    os.environ["SGLANG_USE_CPU_ENGINE"] = "1"
    if not _fixup_applied():  # kept in sys.modules: the op schemas live with it
        spec = importlib.util.spec_from_file_location(_FIXUP_MODULE, STANDIN_DIR / "sitecustomize.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_FIXUP_MODULE] = module
        spec.loader.exec_module(module)
    from sglang.srt.utils import is_cpu

    assert is_cpu(), "SGLang does not run its CPU code paths here"
    yield standin
    if before is None:
        os.environ.pop("SGLANG_USE_CPU_ENGINE", None)
    else:
        os.environ["SGLANG_USE_CPU_ENGINE"] = before
