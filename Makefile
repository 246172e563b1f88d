# Two entry points (see README): `make demo` runs the main job on the embedded default, `make test` the tests.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# The README's example on the embedded default (Fashion-MNIST), sized for <= 10 minutes on 2 CPU cores
# (benchmarks/demo-time.sh measures it): three seeds of AT, GAIRAT (irat) and LRAT with PGD, so that every verdict
# has the seed as its unit; natural, PGD-20 and CW-20 on 1,000 test points, best and last checkpoints; the report
# answers on the last checkpoints (a short run's best can be a burn-in epoch: plain AT, not the method).
# AutoAttack is not in the demo: DEMO_AA (README) adds it on 100 points of its own.
DEMO_RESULTS ?= results
DEMO_REPORTS ?= reports
DEMO_TRAIN   ?= --methods at,irat,lrat --train-attack pgd --seeds 0,1,2 --train-subset 2048 --epochs 6 --checkpoints best,last
DEMO_RUN     = bench run $(DEMO_TRAIN) --test-subset 1000 --eval-attacks natural,pgd20,cw20 --workers 2 --results $(DEMO_RESULTS)
DEMO_REPORT  = bench report --checkpoint last --results $(DEMO_RESULTS) --out $(DEMO_REPORTS)
DEMO_AA      = bench eval --test-subset 100 --eval-attacks natural,pgd20,cw20,aa --checkpoint last --workers 2 --results $(DEMO_RESULTS)

.PHONY: demo demo-aa demo-commands test install data clean

$(STAMP): pyproject.toml setup.py
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
	$(BIN)/$(DEMO_REPORT)

# AutoAttack on 100 test points of its own for the demo's runs, then the report again (about 20 more minutes here).
demo-aa: demo
	$(BIN)/$(DEMO_AA)
	$(BIN)/$(DEMO_REPORT)

# The demo's commands, one a line (benchmarks/demo_time.py runs and times exactly these).
demo-commands:
	@echo '$(DEMO_RUN)'
	@echo '$(DEMO_REPORT)'

test: install data
	$(BIN)/python -m pytest -x -q

clean:
	rm -rf results/runs results/locks reports/*
