#!/usr/bin/env bash
# Fetches vllm-ascend's Python package source (the version in
# requirements/vllm-ascend-src.txt) into build/vllm-ascend/<version>/vllm_ascend,
# for the tests that run vllm-ascend's real connector registration and its
# LMCacheAscendConnector module on vLLM CPU.
#
# Not installed: an installed vllm-ascend registers itself as vLLM's platform
# plugin (its `register()` names NPUPlatform unconditionally), which would take
# every vLLM process in the environment off the CPU platform. The extracted
# package has no dist-info, so it adds no entry points; the tests put it on
# sys.path and register its connectors the way its `vllm.general_plugins`
# entry point does. PyPI ships vllm-ascend as an sdist only; reading its metadata
# needs SOC_VERSION and setuptools_scm (requirements/dev.txt), not CANN.
#
#   bash scripts/vllm_ascend_src.sh    # prints the directory to put on sys.path
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LMCACHE_ASCEND_VENV:-$ROOT/.venv}"
REQ="$ROOT/requirements/vllm-ascend-src.txt"
VERSION=$(sed -n 's/^vllm-ascend==\([^ ]*\).*/\1/p' "$REQ")
DEST="$ROOT/build/vllm-ascend/$VERSION"

if [ ! -f "$DEST/vllm_ascend/distributed/kv_transfer/__init__.py" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  SOC_VERSION=ascend910b1 COMPILE_CUSTOM_KERNELS=0 "$VENV/bin/pip" download -q --no-deps \
    --no-build-isolation -r "$REQ" -d "$tmp" >"$tmp/pip.log" 2>&1 || {
    grep -v "^WARNING: Location" "$tmp/pip.log" >&2
    echo "vllm_ascend_src.sh: could not download vllm-ascend==$VERSION" >&2
    exit 1
  }
  mkdir -p "$DEST.partial"
  tar -xzf "$tmp"/vllm_ascend-"$VERSION".tar.gz -C "$DEST.partial" --strip-components=1 \
    "vllm_ascend-$VERSION/vllm_ascend"
  rm -rf "$DEST" && mv "$DEST.partial" "$DEST"
fi
echo "$DEST"
