# fastntk: `make test` and `make demo` set everything up on a fresh machine.
# Both create .venv if missing, install the dependencies and build the
# extension in place, and are no-ops for setup when nothing changed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch for this machine kind; override on a CUDA machine,
# e.g. `make test TORCH_SPEC=torch` (or install into .venv yourself first).
TORCH_SPEC ?= torch==2.13.0
DEPS := numpy pybind11 ninja setuptools wheel tqdm matplotlib scikit-learn \
        pytest pytest-benchmark scipy psutil hypothesis
EXT_SOURCES := setup.py pyproject.toml $(sort $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu))
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: test demo bench bench-nt bench-setup cuda-check install clean fuzz sanitize emulate test-emulated emu-mutants

install: $(VENV)/.fastntk-built

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-installed: Makefile | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install $(DEPS)
	touch $@

$(VENV)/.fastntk-built: $(VENV)/.deps-installed $(EXT_SOURCES)
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import fastntk; print('fastntk backend:', fastntk.backend())"
	touch $@

test: install
	$(PY) -m pytest tests -q

demo: install
	$(PY) -m fastntk demo --out demo-output

cuda-check:
	bash scripts/cuda_check.sh

# The property tests (tests/test_properties.py) with random seeds and
# FASTNTK_FUZZ_EXAMPLES examples in all (`make test` runs a fixed few hundred).
FASTNTK_FUZZ_EXAMPLES ?= 20000
fuzz: install
	FASTNTK_HYPOTHESIS_PROFILE=fuzz FASTNTK_FUZZ_EXAMPLES=$(FASTNTK_FUZZ_EXAMPLES) \
	  $(PY) -m pytest tests/test_properties.py -q -p no:cacheprovider --hypothesis-show-statistics

# The CPU extension built with ASan and UBSan into build/sanitize, and the op
# and engine tests run against it; any sanitizer report fails.
sanitize: $(VENV)/.deps-installed
	PY=$(PY) bash scripts/sanitize.sh

# The CUDA kernels and drivers run by a CPU emulator (csrc/emulation/) under
# ASan/UBSan: `emulate` builds fastntk/_C_cuda_emu (objects cached in
# ~/.cache/fastntk), `test-emulated` runs the op and engine tests on it; set the
# emulator's knobs in EMU_KNOBS, e.g. EMU_KNOBS="FASTNTK_EMU_SEED=3 FASTNTK_EMU_SMS=1".
# `emu-mutants` injects bugs one at a time and reports which tests catch them.
EMU_KNOBS ?=

emulate: install
	$(PY) scripts/build_emulated.py

test-emulated: emulate
	env $(EMU_KNOBS) PYTHON=$(PY) bash scripts/test_emulated.sh

emu-mutants: emulate
	$(PY) scripts/emu_mutants.py

clean:
	rm -rf build *.egg-info fastntk/_C*.so $(VENV)/.fastntk-built

# Benchmarks (benchmarks/, not collected by `make test`). `bench-setup` builds
# .venv-nt with neural-tangents for the comparison (optional: `bench` runs
# without it and the report says so). Results go to bench-results/; README.md's
# Performance table is regenerated in place (benchmarks/report.py).
BENCH_OUT ?= bench-results
BENCH_ARGS ?= --benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-warmup=off

bench-setup:
	bash scripts/bench_nt_setup.sh

bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) -m pytest benchmarks/test_bench_ntk.py -q -p no:cacheprovider $(BENCH_ARGS) \
	  --benchmark-json=$(BENCH_OUT)/bench.json --benchmark-columns=median,min,rounds
	$(PY) benchmarks/memory.py --out $(BENCH_OUT)/memory.json
	$(PY) benchmarks/ab.py --budget 25 --out $(BENCH_OUT)/ab.json
	$(PY) benchmarks/scaling.py --out $(BENCH_OUT)
	@if [ -f .venv-nt/.nt-ready ]; then \
	  $(PY) benchmarks/nt_export.py --dir $(BENCH_OUT)/nt_inputs && \
	  .venv-nt/bin/python benchmarks/nt_bench.py --inputs $(BENCH_OUT)/nt_inputs --out $(BENCH_OUT)/nt.json; \
	else echo "bench: .venv-nt not set up (make bench-setup); neural-tangents skipped"; rm -f $(BENCH_OUT)/nt.json; fi
	$(PY) benchmarks/report.py --dir $(BENCH_OUT)

# The longer comparisons with neural-tangents (needs `make bench-setup`; tens of
# minutes on 2 cores): the dense kernel against N next to nt.batch
# (docs/scale.md), and fastntk.infinite next to stax's kernel_fn, with the
# accuracy of both against tests/infinite_reference.py (docs/infinite.md).
bench-nt: install
	@test -f .venv-nt/.nt-ready || { echo "bench-nt: .venv-nt not set up (make bench-setup)"; exit 1; }
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/scale_nt.py --out $(BENCH_OUT)
	$(PY) benchmarks/bench_infinite.py --nt --out $(BENCH_OUT)/infinite_nt.json
