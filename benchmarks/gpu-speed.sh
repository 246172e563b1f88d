#!/usr/bin/env bash
# Issue 7's GPU check, one prepared script (about 6 minutes on an H200): ResNet-18 and WRN-34-10 on
# CIFAR-shaped inputs, PGD-10, bf16, channels_last, batch 512, eager then compiled, plus one real
# 50,000-image training epoch (the loop's overhead). Needs torch with CUDA and the repo's dependencies
# (`pip install -e .`), or pyautoattack unpacked in .whl/site (how the lent machine ran it).
#   bash benchmarks/gpu-speed.sh            # writes speed-*.json and speed.log into $OUT (default: speed-out)
set -u
OUT=${OUT:-speed-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -d .whl/site ] && export PYTHONPATH="$PWD/.whl/site:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/speed.log"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/speed.log"
common="--dataset cifar10 --batch-size 512 --precision bf16 --channels-last --warmup 3"
run() {  # name, time limit (s), extra options
  local name=$1 limit=$2; shift 2
  echo "== $name: bench speed $common $*" | tee -a "$OUT/speed.log"
  timeout "$limit" python3 -m bench speed $common "$@" --json "$OUT/speed-$name.json" 2>&1 \
    | grep -v "^AutoAttack" | tee -a "$OUT/speed.log"
}
run resnet18-eager 240 --model resnet18 --train-attacks pgd,cw --steps 20 --eval-points 256 --epoch-images 50000
run resnet18-compiled 240 --model resnet18 --compile --steps 20 --eval-attacks "" --epoch-images 0
run wrn-34-10-eager 150 --model wrn-34-10 --methods at,lrat --steps 8 --eval-attacks pgd20 --eval-points 512 --epoch-images 0
run wrn-34-10-compiled 240 --model wrn-34-10 --methods at --compile --steps 8 --eval-attacks "" --epoch-images 0
