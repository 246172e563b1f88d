#!/usr/bin/env bash
# Issue 7's reweighting-overhead check on a GPU, one prepared script (about 3 minutes on an H200): the GPU path
# of LRAT's deferred anchor term against its oracle (tests/test_methods.py, CUDA case), then O = A_at / A_method
# for every method, ResNet-18, CIFAR-shaped inputs, PGD-10 and CW-10, bf16, channels_last, batch 512, eager
# and compiled. Each reweighting method is timed twice and `at` first and last: the spread between the two
# `at` rows is the process's noise. Needs torch with CUDA and the repo's dependencies (`pip install -e .[dev]`),
# or pyautoattack and pytest unpacked in .whl/site (how the lent machine ran it).
#   bash benchmarks/gpu-overhead.sh         # writes overhead-*.json and overhead.log into $OUT (default: speed-out)
set -u
OUT=${OUT:-speed-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -d .whl/site ] && export PYTHONPATH="$PWD/.whl/site:${PYTHONPATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  git log --oneline -1 2>/dev/null
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_methods.py -k "anchor or reduces" 2>&1 | tail -2
} | tee "$OUT/overhead.log"
common=(--dataset cifar10 --model resnet18 --batch-size 512 --precision bf16 --channels-last --steps 30 --warmup 5
        --eval-attacks "" --epoch-images 0)
run() {  # name, time limit (s), extra options
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee -a "$OUT/overhead.log"
  timeout "$limit" python3 -m bench speed "${common[@]}" "$@" --json "$OUT/overhead-$name.json" 2>&1 \
    | grep -v "Warn" | tee -a "$OUT/overhead.log"
}
run eager 150 --methods at,lrat,gairat,mail,lrat,at --train-attacks pgd,cw
run compiled 200 --methods at,lrat,at,lrat --train-attacks pgd --compile
