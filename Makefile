# Two entry points for a fresh machine (see README.md):
#   make quickstart   create .venv, train the quickstart model on Shakespeare, sample, print text and metrics
#   make test         create .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_HOME ?= $(CURDIR)/.cache/huggingface
# never put the repository root on sys.path (`python -m` would): its folders kernels/, paths/, ... would shadow
# packages of the same name (transformers imports the Hub's `kernels`); flowzoo's own are flowzoo.kernels, ...
export PYTHONSAFEPATH ?= 1

.PHONY: env quickstart test

$(BIN)/flowzoo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first: the CPU build from local disk (a bare `torch` would pull the CUDA build and its wheels)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

env: $(BIN)/flowzoo

# one thread: a second one only helps on an idle machine, and spinning OpenMP threads lose badly to any neighbour
quickstart: env
	OMP_NUM_THREADS=1 $(BIN)/flowzoo fit --config configs/quickstart.yaml
	OMP_NUM_THREADS=1 $(BIN)/flowzoo sample --checkpoint runs/quickstart/checkpoints/last.ckpt --num-samples 64 --show 6

test: env
	$(BIN)/pytest -q -p no:cacheprovider
