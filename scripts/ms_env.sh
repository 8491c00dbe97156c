#!/usr/bin/env bash
# The MindSpore flavour (USE_MINDSPORE=1) in its own environment, and its tests.
#
#   bash scripts/ms_env.sh          # set up (once) and run the MindSpore tests
#   bash scripts/ms_env.sh test [pytest args]   # same; arguments go to pytest
#                                   # (test paths given replace the default set)
#   bash scripts/ms_env.sh setup    # only set up
#
# Environment $LMCACHE_ASCEND_MS_VENV (default: .venv-ms in the repository):
# torch 2.13.0 (CPU; LMCache's memory objects are torch tensors), lmcache 0.5.6
# and mindspore 2.7.1 both with --no-deps, requirement_ms.txt (LMCache's runtime
# dependencies, numpy<2), requirements/mindspore.txt (what MindSpore imports),
# and the test tools. It is separate from .venv because MindSpore needs numpy<2.
#
# The package is built as the MindSpore flavour from a copy of this checkout in
# $VENV/src (refreshed on every run): setup.py records the flavour inside the
# source tree it builds, so building the checkout itself would turn the main
# environment's editable install into the MindSpore flavour too. Tests run
# from that copy, against that build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LMCACHE_ASCEND_MS_VENV:-$ROOT/.venv-ms}"
SRC="$VENV/src"
PY="${PYTHON:-python3}"
STAMP="$VENV/.lmcache-ascend-ms-deps"
# shellcheck source=scripts/env_common.sh
. "$ROOT/scripts/env_common.sh"
# The MindSpore tests, plus the framework-neutral core and kernels under this
# build and numpy<2 (everything else needs vLLM, which this environment lacks).
TESTS=(tests/integrations/mindspore tests/test_build_info.py tests/core tests/kernels)

log() { printf '\033[1m[ms_env.sh]\033[0m %s\n' "$*" >&2; }

deps_current() { stamp_current "$STAMP" "$ROOT/requirement_ms.txt" "$ROOT"/requirements/*.txt "$ROOT/scripts/ms_env.sh"; }

install_deps() {
  log "creating $VENV: torch 2.13.0 (CPU), lmcache 0.5.6 and mindspore 2.7.1 (--no-deps), their dependencies"
  "$PY" -m venv "$VENV"
  # TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu) keeps pip from
  # fetching PyPI's CUDA build where no local CPU wheel is configured.
  pip_quiet torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  pip_quiet lmcache==0.5.6 --no-deps
  pip_quiet mindspore==2.7.1 --no-deps
  pip_quiet -r "$ROOT/requirement_ms.txt" -r "$ROOT/requirements/mindspore.txt" \
    "pytest>=8" "hypothesis>=6.100" "pybind11>=2.12" "setuptools>=77,<81" wheel
  "$VENV/bin/python" -c "import mindspore, numpy, torch, lmcache.v1.cache_engine" >/dev/null 2>&1 \
    || { log "mindspore / torch / lmcache do not import in $VENV"; exit 1; }
  touch "$STAMP"
}

sync_tree() {
  # Sources only: build outputs of the copy (the native core, _build_info.py,
  # build/, *.egg-info) stay, so an unchanged C++ core is not rebuilt.
  mkdir -p "$SRC"
  find "$SRC" -type f ! -name '_kvcore*.so' ! -name '_build_info.py' ! -path "$SRC/build/*" ! -path '*.egg-info/*' -delete
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$SRC"
  else
    tar -C "$ROOT" --exclude='./.venv*' --exclude=./.git --exclude=./build --exclude='*.so' \
      --exclude='*.egg-info' --exclude=__pycache__ --exclude=./lmcache_ascend/_build_info.py -cf - . | tar -xf - -C "$SRC"
  fi
}

native_current() {
  core_built "$SRC" || return 1
  grep -q "FLAVOUR = 'mindspore'" "$SRC/lmcache_ascend/_build_info.py" 2>/dev/null || return 1
  (cd "$SRC" && "$VENV/bin/python" -c "import lmcache_ascend._kvcore") 2>/dev/null
}

setup() {
  deps_current || install_deps
  sync_tree
  if ! native_current; then
    log "building lmcache-ascend, MindSpore flavour (USE_MINDSPORE=1), in $SRC"
    (cd "$SRC" && export USE_MINDSPORE=1 && pip_quiet --no-build-isolation -e .)
  fi
}

# requirement_ms.txt must install next to vllm-mindspore and its MindSpore
# (requirements/vllm-mindspore.txt): a conflicting pin fails here, not a user.
check_resolve() {
  local py="${PY}" out
  [ -x "$VENV/bin/pip" ] && py="$VENV/bin/python"
  out=$(mktemp)
  if ! "$py" -m pip install --dry-run --ignore-installed -q -r "$ROOT/requirement_ms.txt" \
      -r "$ROOT/requirements/vllm-mindspore.txt" >"$out" 2>&1; then
    grep -v "^WARNING: Location" "$out" >&2
    log "requirement_ms.txt does not resolve together with $(grep -v '^#' "$ROOT/requirements/vllm-mindspore.txt" | tr '\n' ' ')"
    rm -f "$out"
    exit 1
  fi
  rm -f "$out"
  log "requirement_ms.txt resolves together with $(grep -v '^#' "$ROOT/requirements/vllm-mindspore.txt" | tr '\n' ' ')"
}

cmd="${1:-test}"
shift || true
case "$cmd" in
  setup) setup ;;
  test) setup; cd "$SRC" && run_pytest "$@" ;;
  check-resolve) check_resolve ;;
  *) echo "usage: bash scripts/ms_env.sh {test|setup|check-resolve} [pytest args...]" >&2; exit 2 ;;
esac
