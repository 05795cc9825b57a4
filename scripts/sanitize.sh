#!/usr/bin/env bash
# Build the CPU extension with AddressSanitizer and UndefinedBehaviorSanitizer
# into build/sanitize (a copy of the package; the in-place fastntk/_C*.so is
# left alone) and run the op and engine tests against it. Any sanitizer report
# fails the run: ASan aborts on its first error, UBSan is built with
# -fno-sanitize-recover and run with halt_on_error=1, and the log is searched
# for reports as well.
#
#   PY=.venv/bin/python bash scripts/sanitize.sh [pytest args, default: the op and engine tests]
#
# Python itself is not instrumented, so the sanitizer runtimes are preloaded;
# leak detection is off because CPython deliberately never frees some memory.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${SANITIZE_DIR:-build/sanitize}
SANITIZERS="-fsanitize=address,undefined"
if [ $# -eq 0 ]; then set -- tests/test_ops.py tests/test_ntk.py; fi

echo "sanitize: building the CPU extension with $SANITIZERS into $OUT"
rm -rf "$OUT/lib"
mkdir -p "$OUT/lib"
# The flags reach the C++ sources (csrc/*.cpp, csrc/cpu/); with a CUDA build of
# torch, setup.py also compiles the .cu files, whose device code is not instrumented.
FASTNTK_CXX_FLAGS="-O1 -g -fno-omit-frame-pointer $SANITIZERS -fno-sanitize-recover=undefined" \
FASTNTK_LINK_FLAGS="$SANITIZERS" \
  "$PY" setup.py --quiet build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp"
cp fastntk/*.py "$OUT/lib/fastntk/"
ext=$(ls "$OUT"/lib/fastntk/_C*.so)
symbols=$(nm -D "$ext")
for symbol in __asan_init __ubsan_handle; do
  grep -q "$symbol" <<<"$symbols" || { echo "sanitize: $ext lacks $symbol: not instrumented" >&2; exit 1; }
done

runtime() { "${CXX:-g++}" -print-file-name="$1"; }
export LD_PRELOAD="$(runtime libasan.so):$(runtime libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87"
export PYTHONPATH="$PWD/$OUT/lib"
# Else `python -m pytest` puts the working directory first on sys.path, and
# with it the in-place (uninstrumented) package.
export PYTHONSAFEPATH=1

"$PY" -c "
import fastntk, fastntk._ops as ops
assert ops._C is not None and ops._C.__file__.startswith('$PWD/$OUT/'), ops._C
print('sanitize: testing', ops._C.__file__, '(' + fastntk.backend() + ')')"

log="$OUT/pytest.log"
status=0
"$PY" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log" || status=$?
if grep -Eq "ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$log"; then
  echo "sanitize: sanitizer report(s) in $log" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then echo "sanitize: tests failed (exit status $status), see $log" >&2; fi
exit "$status"
