#!/usr/bin/env bash
# Runs the test suite in .venv. pytest's exit 5 (no tests collected) is a failure.
# With no arguments (`make test`, CI) the tests marked `numerics` run a second time on
# other CPU kernels: ATen's portable ones and MKL without AVX (about 30 s). Numbers
# that differ in their last bits between machines must still pass (see
# scripts/numerics_spread.py for the spread the tolerances are set from).
# With no arguments the test files are also spread over the machine's cores (pytest-xdist,
# one worker per core up to 4, VIDMUSICIAN_TEST_WORKERS overrides; each file stays on one
# worker, so a file's module fixtures are built once). With arguments, pytest runs as given.
set -uo pipefail
cd "$(dirname "$0")/.."
cores=$(nproc 2>/dev/null || echo 1)
workers=${VIDMUSICIAN_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
spread=()
[ "$workers" -gt 1 ] && spread=(-n "$workers" --dist loadfile)
if [ "$#" -eq 0 ]; then
  .venv/bin/python -m pytest "${spread[@]}" tests
else
  .venv/bin/python -m pytest "$@"
fi
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests" >&2
  exit 1
fi
if [ "$rc" -eq 0 ] && [ "$#" -eq 0 ]; then
  echo "test: the numerics tests again, on portable CPU kernels" >&2
  ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 VIDMUSICIAN_TEST_THREADS=1 \
    .venv/bin/python -m pytest -q "${spread[@]}" -m numerics tests
  rc=$?
fi
exit "$rc"
