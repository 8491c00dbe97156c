"""The MindSpore build (``USE_MINDSPORE=1``, as ``scripts/ms_env.sh`` installs it)
records its flavour and selects the MindSpore connector behind the compatibility path."""

from __future__ import annotations

import pytest

pytest.importorskip("mindspore")

from lmcache_ascend import build_info  # noqa: E402
from lmcache_ascend.integrations import flavour  # noqa: E402


def test_installed_build_is_the_mindspore_flavour() -> None:
    assert build_info().flavour == "mindspore"


def test_compatibility_path_names_the_mindspore_connector_module() -> None:
    assert flavour.connector_module(build_info().flavour) == "lmcache_ascend.integrations.mindspore.vllm_connector"
