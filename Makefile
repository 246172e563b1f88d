# Two entry points (see README): `make demo` runs the main job on the embedded default, `make test` the tests.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# The README's example on the embedded default (Fashion-MNIST), sized for <= 10 minutes on 2 CPU cores
# (benchmarks/demo-time.sh measures it). Training and the cheap attacks on many test points; AutoAttack on a
# subset of its own (its cost grows with the points it still has to break); the report keeps the two apart.
DEMO_RESULTS ?= results
DEMO_REPORTS ?= reports
DEMO_TRAIN   ?= --methods at,irat,lrat --train-attack pgd --train-subset 2048 --epochs 6 --checkpoints best
DEMO_RUN     = bench run $(DEMO_TRAIN) --test-subset 1000 --eval-attacks natural,pgd20,cw20 --results $(DEMO_RESULTS)
DEMO_EVAL    = bench eval --test-subset 50 --eval-attacks natural,pgd20,cw20,aa --checkpoint best --workers 2 --results $(DEMO_RESULTS)
DEMO_REPORT  = bench report --results $(DEMO_RESULTS) --out $(DEMO_REPORTS)

.PHONY: demo demo-commands test install data clean

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
	$(BIN)/$(DEMO_RUN)
	$(BIN)/$(DEMO_EVAL)
	$(BIN)/$(DEMO_REPORT)

# The demo's commands, one a line (benchmarks/demo_time.py runs and times exactly these).
demo-commands:
	@echo '$(DEMO_RUN)'
	@echo '$(DEMO_EVAL)'
	@echo '$(DEMO_REPORT)'

test: install data
	$(BIN)/python -m pytest -x -q

clean:
	rm -rf results/runs results/locks reports/*
