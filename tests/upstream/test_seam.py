"""The upstream seam holds: only ``lmcache_ascend/upstream/`` writes into other projects' objects,
and its table of touch-points is complete, current and the same as docs/architecture.md's."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lmcache_ascend"
SEAM = PACKAGE / "upstream"
UPSTREAM_PACKAGES = frozenset({"lmcache", "vllm", "vllm_ascend", "vllm_mindspore", "sglang", "torch", "mindspore", "redis"})


def modules_outside_the_seam() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if SEAM not in p.parents]


def upstream_names(tree: ast.AST) -> set[str]:
    """Names bound by importing something from an upstream package, anywhere in the module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in UPSTREAM_PACKAGES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in UPSTREAM_PACKAGES:
            names |= {a.asname or a.name for a in node.names}
    return names


def root_name(target: ast.expr) -> str | None:
    while isinstance(target, (ast.Attribute, ast.Subscript)):
        target = target.value
    return target.id if isinstance(target, ast.Name) else None


def violations_in(source: str, name: str) -> list[str]:
    tree = ast.parse(source, name)
    imported = upstream_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            found.append(f"{name}:{node.lineno}: setattr(...)")
        if isinstance(node, ast.Attribute) and node.attr == "meta_path" and root_name(node) == "sys":
            found.append(f"{name}:{node.lineno}: sys.meta_path")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            if isinstance(target, (ast.Attribute, ast.Subscript)) and root_name(target) in imported:
                found.append(f"{name}:{node.lineno}: assigns into upstream {root_name(target)!r}")
    return found


def test_only_the_seam_writes_into_upstream_objects() -> None:
    violations = [v for p in modules_outside_the_seam() for v in violations_in(p.read_text(), str(p.relative_to(ROOT)))]
    assert not violations, "write through lmcache_ascend.upstream.patching instead:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    "source",
    [
        "import lmcache.v1.cache_engine as ce\nce.LMCacheEngine.lookup = None\n",
        "from vllm import LLM\nLLM.generate = None\n",
        "def f():\n    from sglang.srt import x\n    x.registry['a'] = 1\n",
        "from lmcache.v1 import config\nconfig.DEFAULTS += 1\n",
        "setattr(object(), 'a', 1)\n",
        "import sys\nsys.meta_path.insert(0, None)\n",
    ],
)
def test_the_check_catches_each_kind_of_write(source: str) -> None:
    assert violations_in(source, "probe.py")


def test_the_check_leaves_our_own_objects_alone() -> None:
    assert not violations_in("import torch\nx = torch.zeros(1)\nclass A:\n    pass\nA.b = 1\nx.grad = None\n", "probe.py")


def table_rows(text: str, section: str | None = None) -> dict[str, str]:
    if section is not None:
        text = text.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return {row.split("|")[1].strip().strip("`"): row for row in rows}


def test_the_table_names_functions_that_exist() -> None:
    import lmcache_ascend.upstream as seam

    rows = table_rows(seam.__doc__ or "")
    assert len(rows) >= 15
    for dotted in rows:
        module_name, _, attr = dotted.rpartition(".")
        module = importlib.import_module(f"lmcache_ascend.{module_name}")
        assert callable(getattr(module, attr)), dotted


def test_docs_carry_the_same_table() -> None:
    import lmcache_ascend.upstream as seam

    docs = (ROOT / "docs" / "architecture.md").read_text()
    assert table_rows(docs, "## Upstream touch-points") == table_rows(seam.__doc__ or "")
