#!/usr/bin/env bash
# Run the op, engine and emulator tests on the emulated CUDA ops
# (torch.ops.fastntk_emu, built by `make emulate`) under ASan/UBSan.
# The emulator's knobs come from the environment (FASTNTK_EMU_SEED,
# FASTNTK_EMU_SMS, FASTNTK_EMU_MAX_GRID_X, FASTNTK_EMU_MAX_SCRATCH; see
# csrc/emulation/cuda_emu.h). Extra arguments go to pytest.
# Settings: PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
eval "$("$PY" scripts/build_emulated.py --print-env)"
export FASTNTK_TEST_EMULATION=1
echo "test-emulated: FASTNTK_EMU_SEED=${FASTNTK_EMU_SEED:-} FASTNTK_EMU_SMS=${FASTNTK_EMU_SMS:-} FASTNTK_EMU_MAX_GRID_X=${FASTNTK_EMU_MAX_GRID_X:-} FASTNTK_EMU_MAX_SCRATCH=${FASTNTK_EMU_MAX_SCRATCH:-} (unset: defaults)"
# CPU time next to wall time: on a shared machine the former is the cost.
TIMEFORMAT="test-emulated: %R s wall, %U s user + %S s system CPU"
# --capture=sys: ASan and UBSan write their reports to file descriptor 2,
# which pytest's default capture would swallow when they end the process.
time "$PY" -m pytest tests/test_emulation.py tests/test_ops.py tests/test_ntk.py -q -p no:cacheprovider \
  --capture=sys "$@"
