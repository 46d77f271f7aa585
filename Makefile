# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench bench-compare clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 is the CPU build on this machine kind; triton 3.6 matches the GPU machine;
	# numpy<2.4 because triton 3.6's interpreter calls int() on 1-element arrays.
	$(BIN)/pip install -q torch==2.13.0 triton==3.6.0 "numpy<2.4" -e ".[test,demo]"
	# test-only peer for the surrogate-gradient comparison (never a library dependency);
	# --no-deps keeps its torch pin away, loguru is the one import it needs
	$(BIN)/pip install -q --no-deps spikingjelly==2.0.0 loguru==0.7.3
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sresnet demo --out demo_out

# one pytest-xdist worker per core: most of the suite is single-threaded (Numba's first
# compile of each kernel, small tensors), so 2 cores run it in about half the time
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n auto tests

bench: $(STAMP)
	$(BIN)/python -m pytest bench --benchmark-only --benchmark-autosave

bench-compare: $(STAMP)
	$(BIN)/python -m pytest bench --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%

clean:
	rm -rf $(VENV) demo_out .benchmarks
