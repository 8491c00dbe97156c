"""What the wheel ships: every ``lmcache_ascend`` package, and none of the test kit.

The package list is the one setuptools computes from ``pyproject.toml``'s
``[tool.setuptools.packages.find]`` (what ``pip wheel .`` packs), so a change
to that table that drops a package or lets ``testkit/`` in fails here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def shipped_packages() -> set[str]:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return set(find_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ())))


def source_packages(top: str) -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / top).rglob("__init__.py")}


def test_every_lmcache_ascend_package_is_shipped() -> None:
    assert source_packages("lmcache_ascend") <= shipped_packages()


def test_the_test_kit_and_tests_are_not_shipped() -> None:
    shipped = shipped_packages()
    assert source_packages("testkit"), "testkit/ has no package to check"
    assert not {p for p in shipped if p.split(".")[0] in ("testkit", "tests", "benchmarks", "examples")}
