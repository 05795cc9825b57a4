#!/usr/bin/env bash
# Build .venv-nt: neural-tangents with the old JAX it needs, for the
# benchmark comparison (benchmarks/nt_bench.py). Separate from .venv because
# neural-tangents 0.6.5 needs jax 0.4.23 and numpy < 2, and imports
# tensorflow at import time (neural_tangents.experimental.empirical_tf), so
# tensorflow (CPU wheel, ~0.5 GB) is installed too. Idempotent: a no-op once
# the marker file exists. Exit status 0 even when the install fails (the
# benchmark report then says neural-tangents was not measured and why);
# the reason is kept in .venv-nt/SETUP_FAILED.
set -u
PYTHON=${PYTHON:-python3}
VENV=${VENV_NT:-.venv-nt}
PINS=(
  "neural-tangents==0.6.5"
  "jax==0.4.23"
  "jaxlib==0.4.23"
  "numpy<2"
  "tf2jax==0.3.5"
  "tensorflow==2.15.1"
  "psutil"
)
if [ -f "$VENV/.nt-ready" ]; then
  echo "bench-setup: $VENV already set up"; exit 0
fi
rm -f "$VENV/SETUP_FAILED"
fail() {
  mkdir -p "$VENV"
  echo "$1" > "$VENV/SETUP_FAILED"
  echo "bench-setup: FAILED: $1 (neural-tangents will be skipped in the report)" >&2
  exit 0
}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || fail "could not create $VENV with $PYTHON"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install "${PINS[@]}" > "$VENV/pip.log" 2>&1 \
  || fail "pip install ${PINS[*]} failed: $(tail -3 "$VENV/pip.log" | tr '\n' ' ')"
"$VENV/bin/python" -c "import jax, neural_tangents as nt; print('jax', jax.__version__, 'neural-tangents ok', jax.devices())" \
  || fail "neural_tangents does not import in $VENV"
touch "$VENV/.nt-ready"
echo "bench-setup: $VENV ready"
