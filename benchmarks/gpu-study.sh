#!/usr/bin/env bash
# The full-scale FMNIST study on one GPU (issue 26 item 5): experiments/fmnist-study-full{,-cw}.toml with several
# cells at a time on the one device (--workers: each cell a process of its own; the small model leaves the GPU
# mostly idle, so cells share it), AutoAttack's decisive components on 200 points for the 5-seed rows, then the
# report into docs/studies/fmnist-full/. Needs the repository installed (`make install`) and Debian's
# dataset-fashion-mnist (or $BENCH_DATA_DIR/fashion-mnist/). Not run yet: no GPU was lent to the session that
# wrote it.
#   bash benchmarks/gpu-study.sh [WORKERS]       # resumes: finished cells are skipped
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-8}
STORE=${STORE:-results/fmnist-study-full}
BIN=${BIN:-.venv/bin}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
git log --oneline -1
time "$BIN/bench" run --config experiments/fmnist-study-full.toml --results "$STORE" --workers "$WORKERS" --device cuda
time "$BIN/bench" run --config experiments/fmnist-study-full-cw.toml --results "$STORE" --workers "$WORKERS" --device cuda
pgd_runs=$("$BIN/python" - "$STORE" <<'PY'
import json, sys
from pathlib import Path
for config in sorted(Path(sys.argv[1], "runs").glob("*/config.json")):
    train = json.loads(config.read_text())["train"]
    if train["train_attack"] == "pgd" and train["method"] in ("at", "gairat", "mail", "lrat"):
        print(config.parent.name)
PY
)
# shellcheck disable=SC2086
time "$BIN/bench" eval $pgd_runs --results "$STORE" --test-subset 200 --eval-attacks natural,apgd-ce,apgd-t \
  --checkpoint best,last --workers "$WORKERS" --device cuda
"$BIN/bench" report --results "$STORE" --out docs/studies/fmnist-full --checkpoint last
