# Shell functions shared by scripts/dev.sh, ms_env.sh and sglang_env.sh (sourced,
# not run). They read $VENV (the environment being built) where noted.

# stamp_current STAMP FILE...: true when STAMP exists and is newer than every FILE
# (the environment was built from these requirement files and scripts).
stamp_current() {
  local stamp="$1" f
  shift
  [ -f "$stamp" ] || return 1
  for f in "$@"; do
    [ "$f" -nt "$stamp" ] && return 1
  done
  return 0
}

# pip_quiet ARGS...: `pip install -q ARGS` into $VENV. pip warns about every
# missing local index entry and about the requirements --no-deps leaves out on
# purpose; show everything else, keep pip's status.
pip_quiet() {
  local out="$VENV/.pip.log" rc=0
  "$VENV/bin/pip" install -q "$@" >"$out" 2>&1 || rc=$?
  grep -v -e "^WARNING: Location" -e "which is not installed" -e "but you have" \
    -e "^ERROR: pip's dependency resolver" "$out" >&2 || true
  return "$rc"
}

# core_built TREE: the native core in TREE (a checkout or a copy of one) exists
# and is newer than the C++ sources and build files it comes from.
core_built() {
  local tree="$1" so f
  so=$(ls "$tree"/lmcache_ascend/_kvcore*.so 2>/dev/null | head -n1) || return 1
  [ -n "$so" ] && [ -f "$tree/lmcache_ascend/_build_info.py" ] || return 1
  for f in "$tree"/csrc/* "$tree/setup.py" "$tree/pyproject.toml"; do
    [ "$f" -nt "$so" ] && return 1
  done
  return 0
}

# run_pytest ARGS...: exec $VENV's pytest in the current directory; without a
# test path among ARGS, the paths in the array TESTS go first.
run_pytest() {
  local arg has_path=0
  for arg in "$@"; do [ -e "${arg%%::*}" ] && has_path=1; done
  if [ "$has_path" -eq 0 ]; then set -- "${TESTS[@]}" "$@"; fi
  exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
}
