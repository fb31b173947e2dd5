# Two entry points for a new user: `make demo` and `make test`.
# Each creates .venv on first use; torch is pinned through PIP_CONSTRAINT so that
# no dependency (or isolated build) swaps in a multi-gigabyte CUDA wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SANDBOX := $(abspath ../shared/sandbox)
# On this project's CPU sandbox, PyPI's torchvision needs a shim; elsewhere the folder is absent.
export PYTHONPATH := $(if $(wildcard $(SANDBOX)/sitecustomize.py),$(SANDBOX)$(if $(PYTHONPATH),:$(PYTHONPATH)),$(PYTHONPATH))
export PIP_CONSTRAINT := $(abspath constraints.txt)
export HF_HUB_OFFLINE ?= 1
# sam2's optional CUDA extension cannot build against a CPU torch; the package works without it.
export SAM2_BUILD_CUDA ?= 0
DEMO_OUT ?= demo_out

.PHONY: install demo test perf clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/refsav demo --out $(DEMO_OUT)

test: $(BIN)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Speed benchmarks; each rewrites its own section of perf/README.md.
perf: $(BIN)/.installed
	$(BIN)/python perf/bench_scoring.py
	$(BIN)/python perf/bench_annotate_overhead.py
	$(BIN)/python perf/bench_predict_batching.py
	$(BIN)/python perf/bench_annotate_throughput.py

clean:
	rm -rf $(VENV) $(DEMO_OUT)
