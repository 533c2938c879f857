#!/usr/bin/env bash
# Run the suite under every CPython from 3.6 to 3.13 found: pyenv's interpreters,
# then python3.X on PATH. Fails if any run fails, or if none was found.
set -u
cd "$(dirname "$0")/.."
declare -A seen
ran=()
failed=()
passed_total=0
failed_total=0
candidates=()
root=$(pyenv root 2>/dev/null || true)
for minor in 6 7 8 9 10 11 12 13; do
  [ -z "$root" ] || for dir in "$root"/versions/3."$minor".*; do candidates+=("$dir/bin/python3"); done
  path=$(command -v "python3.$minor" 2>/dev/null) && candidates+=("$path")
done
for python in "${candidates[@]}"; do
  [ -x "$python" ] || continue
  version=$("$python" -c 'import sys; v = sys.version_info; print("%d.%d" % v[:2]) if (3, 6) <= v[:2] <= (3, 13) else None' 2>/dev/null)
  [ -n "$version" ] && [ "$version" != None ] || continue
  [ -z "${seen[$version]:-}" ] || continue
  seen[$version]=1
  echo "== Python $version ($python)"
  out=$(mktemp)
  if "$python" tests/run.py 2>&1 | tee "$out"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
    ran+=("$version")
  else
    failed+=("$version")
  fi
  read -r p _ f _ < <(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -1 || echo "0 - 1 -")
  passed_total=$((passed_total + ${p:-0})); failed_total=$((failed_total + ${f:-1}))
  rm -f "$out"
done
echo "test-all: passed on: ${ran[*]:-none}"
[ ${#failed[@]} -eq 0 ] || { echo "test-all: FAILED on: ${failed[*]}"
  echo "test-all: $passed_total passed, $failed_total failed"; exit 1; }
[ ${#ran[@]} -ge 1 ] || { echo "test-all: no CPython 3.6-3.13 found"; exit 1; }
echo "test-all: $passed_total passed, $failed_total failed"
