#!/usr/bin/env bash
# The checks that need a GPU, as one script for a machine that has one (CI has none):
# the CUDA tests, the trainer's throughput and the trial cost. Logs, the measurements and the
# rewritten docs/benchmarks.md go to DIR (default gpu-results); merge the sections back by hand.
#
#     bash bench/gpu_checks.sh [DIR]        # PYTHON=... to choose the interpreter
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
timeout 100 $py bench/bench_trainer.py --device cuda --train 45000 --val 5000 --epochs 2 --repeats 3 2>&1 |
    tee "$out/bench_trainer.log"
timeout 300 $py bench/bench_trial_cost.py --device cuda --datasets digits,shapes --trials 12 --workers 1,4 \
    --json "$out/trial_cost.json" 2>&1 | tee "$out/bench_trial_cost.log"
cp docs/benchmarks.md "$out/"
