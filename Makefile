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

.PHONY: install demo test perf clean gpu-wheels

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

# What perf/gpu_check.sh needs on the GPU machine beyond its image (torch, transformers,
# pytest, pyarrow are there): refsav itself, pycocotools (refsav.schemas reads COCO masks),
# sam2 (pure Python, SAM2_BUILD_CUDA=0) and sam2's own needs, as wheels for the device's Python 3.12 (the pure-Python ones built here).
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 transformers==5.25.0 tokenizers==0.23.3 pycocotools==2.0.11
gpu-wheels: $(BIN)/.installed
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w .whl . sam2==1.1.0 antlr4-python3-runtime==4.9.3 iopath==0.1.10
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)
	ls -la .whl

clean:
	rm -rf $(VENV) $(DEMO_OUT)
