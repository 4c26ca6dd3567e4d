#!/usr/bin/env bash
# Runs C unit tests and/or busted specs and prints one summary line `N passed, N failed`.
# Both speak TAP; this script only counts "ok" / "not ok" lines, so a crashing test binary
# (no TAP at all, non-zero exit) is counted as one failure rather than silently skipped.
#   run-tests.sh unit BIN...      run-tests.sh spec [SPEC...]      run-tests.sh all BIN...
set -uo pipefail
cd "$(dirname "$0")/.."
mode=$1; shift
passed=0; failed=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

count() { # $1 = TAP file, $2 = exit status of the producer
  local ok nok
  ok=$(grep -cE '^ok ' "$1" || true); nok=$(grep -cE '^not ok ' "$1" || true)
  if [ "$2" -ne 0 ] && [ "$nok" -eq 0 ]; then nok=1; fi
  passed=$((passed + ok)); failed=$((failed + nok))
}

run_unit() {
  for bin in "$@"; do
    echo "== $bin"
    "$bin" > "$tmp/unit.tap"; rc=$?
    grep -vE '^ok ' "$tmp/unit.tap"
    count "$tmp/unit.tap" "$rc"
  done
}

run_spec() {
  local specs=("$@")
  [ ${#specs[@]} -eq 0 ] && specs=(spec/01-unit spec/02-integration spec/03-plugins)
  local existing=()
  for s in "${specs[@]}"; do [ -e "$s" ] && existing+=("$s"); done
  [ ${#existing[@]} -eq 0 ] && return
  echo "== busted ${existing[*]}"
  luajit /usr/bin/busted --lpath='./lua/?.lua;./lua/?/init.lua;./spec/?.lua' \
      --pattern=_spec -o TAP "${existing[@]}" > "$tmp/spec.tap" 2>&1; rc=$?
  grep -vE '^ok ' "$tmp/spec.tap"
  count "$tmp/spec.tap" "$rc"
}

case "$mode" in
  unit) run_unit "$@" ;;
  spec) run_spec "$@" ;;
  all) run_unit "$@"; run_spec ;;
  *) echo "usage: $0 unit|spec|all ..." >&2; exit 2 ;;
esac
# Under `make asan`, every sanitizer report file is a failure, even if the test that caused
# it passed (a worker can crash and be respawned without the client noticing).
if [ -n "${SANITIZER_REPORTS:-}" ] && [ -d "$SANITIZER_REPORTS" ]; then
  for f in "$SANITIZER_REPORTS"/*; do
    [ -e "$f" ] || continue
    echo "== sanitizer report $f"; head -40 "$f"
    failed=$((failed + 1))
  done
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
