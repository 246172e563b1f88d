#!/usr/bin/env bash
# The demo's wall time, phase by phase (issue: the main job in under ten minutes on two cores). Run it on an
# otherwise idle machine after `make install data`:
#   bash benchmarks/demo-time.sh [docs/speed/demo-time.json]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python benchmarks/demo_time.py --out "${1:-docs/speed/demo-time.json}"
