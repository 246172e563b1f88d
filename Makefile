# Two entry points (see README): `make demo` runs the main job on the embedded default, `make test` the tests.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# The README's example on the embedded default (Fashion-MNIST), sized for <= 15 minutes on 2 CPU cores.
DEMO_ARGS ?= --methods at,irat,lrat --train-attack pgd --train-subset 4096 --test-subset 100 --epochs 8 --checkpoints best

.PHONY: demo test install data clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

# Debian's package puts the idx files where bench/data.py looks; elsewhere torchvision downloads them online.
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	fi

demo: install data
	$(BIN)/bench run $(DEMO_ARGS)
	$(BIN)/bench report

test: install data
	$(BIN)/python -m pytest -x -q

clean:
	rm -rf results/runs results/locks reports/*
