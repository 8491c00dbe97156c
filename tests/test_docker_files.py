"""Structural checks of docker/Dockerfile* (no Docker daemon needed).

Contract: one image per target (Ascend A2, A3, 310P on vllm-ascend base images,
MindSpore on the openEuler MindSpore image, and a CPU image); each resolves
its base image from its own ARG defaults to the expected repository and tag
suffix; every COPY source exists in the repository; the NPU images install
LMCache 0.5.6 without its CUDA requirements and build this package against
the image's torch (or MindSpore) and say they are not verified on hardware;
the CPU image installs through scripts/dev.sh and runs the main job. The
lint itself is scripts/lint_docker.sh (hadolint); its ignores must each carry
a reason.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
VLLM_ASCEND = "quay.io/ascend/vllm-ascend"
MS_BASE = "hub.oepkgs.net/oedeploy/openeuler/aarch64/intelligence_boom"
# target -> (base repository, required tag suffix)
NPU_TORCH = {"a2": (VLLM_ASCEND, ""), "a3": (VLLM_ASCEND, "-a3"), "310p": (VLLM_ASCEND, "-310p")}


@dataclass
class Dockerfile:
    """Instructions of one Dockerfile, continuation lines joined, comments kept apart."""

    path: Path
    instructions: list[tuple[str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def args(self) -> dict[str, str]:
        """Defaults of every ``ARG name=default``."""
        out = {}
        for op, rest in self.instructions:
            if op == "ARG" and "=" in rest:
                name, value = rest.split("=", 1)
                out[name.strip()] = value.strip()
        return out

    def base(self) -> str:
        """The (last) FROM image with ARG defaults substituted."""
        image = [rest.split()[0] for op, rest in self.instructions if op == "FROM"][-1]
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args()[m.group(1) or m.group(2)], image)

    def runs(self) -> str:
        return "\n".join(rest for op, rest in self.instructions if op == "RUN")

    def all(self, op: str) -> list[str]:
        return [rest for o, rest in self.instructions if o == op]


def parse(path: Path) -> Dockerfile:
    doc = Dockerfile(path)
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            doc.comments.append(line)
            continue
        if not line:
            continue
        pending = f"{pending} {line[:-1]}" if line.endswith("\\") else f"{pending} {line}"
        if not line.endswith("\\"):
            op, _, rest = pending.strip().partition(" ")
            doc.instructions.append((op.upper(), " ".join(rest.split())))
            pending = ""
    return doc


def dockerfile(target: str) -> Dockerfile:
    path = DOCKER / f"Dockerfile.{target}"
    assert path.is_file(), f"{path} is missing"
    return parse(path)


def test_one_image_per_target() -> None:
    names = sorted(p.name for p in DOCKER.glob("Dockerfile*"))
    assert names == sorted(f"Dockerfile.{t}" for t in (*NPU_TORCH, "mindspore", "cpu"))


@pytest.mark.parametrize("target", [*NPU_TORCH, "mindspore", "cpu"])
def test_copy_sources_exist(target: str) -> None:
    for rest in dockerfile(target).all("COPY"):
        *sources, _dest = shlex.split(rest)
        for src in (s for s in sources if not s.startswith("--")):
            assert src == "." or (ROOT / src).exists(), f"Dockerfile.{target} copies {src}, which does not exist"


@pytest.mark.parametrize("target", list(NPU_TORCH))
def test_npu_torch_images(target: str) -> None:
    doc = dockerfile(target)
    repo, suffix = NPU_TORCH[target]
    image, _, tag = doc.base().rpartition(":")
    assert image == repo and re.fullmatch(r"v\d+\.\d+\.\d+(rc\d+)?" + re.escape(suffix), tag), doc.base()
    assert "SOC_VERSION" in doc.args(), "the Ascend target must be a build argument"
    _check_npu_install(doc)


def test_mindspore_image() -> None:
    doc = dockerfile("mindspore")
    assert doc.base().startswith(f"{MS_BASE}:") and "mindspore2.7" in doc.base(), doc.base()
    assert any("USE_MINDSPORE=1" in env for env in doc.all("ENV")), "the MindSpore flavour needs USE_MINDSPORE=1"
    assert "-r requirement_ms.txt" in doc.runs()
    _check_npu_install(doc)


def _check_npu_install(doc: Dockerfile) -> None:
    runs = doc.runs()
    assert re.search(r"pip install [^\n]*--no-deps lmcache==0\.5\.6", runs), "LMCache 0.5.6 must come without its CUDA deps"
    assert re.search(r"pip install [^\n]*--no-build-isolation[^\n]* -e \.", runs), "build against the image's framework"
    assert "set_env.sh" in runs, "the C++ core builds with CANN's environment"
    assert any("not verified on hardware" in c.lower() for c in doc.comments), "say the image is unverified"


def test_cpu_image_runs_the_main_job_through_dev_sh() -> None:
    doc = dockerfile("cpu")
    assert doc.base().startswith("python:3.11"), doc.base()
    runs = doc.runs()
    assert "bash scripts/dev.sh setup-deps" in runs and "bash scripts/dev.sh setup" in runs
    assert "pip install" not in runs, "the CPU image installs only through scripts/dev.sh"
    assert doc.all("CMD") == ['["bash", "scripts/dev.sh", "demo"]']


def test_hadolint_ignores_are_justified() -> None:
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*- DL\d+", line):
            assert i > 0 and lines[i - 1].strip().startswith("#"), f"{line.strip()} has no reason above it"
