#!/usr/bin/env bash
# Everything measured on a GPU, in one go (device time is scarce): step table, evaluator timing, end-to-end
# throughput. Run from the repo root on the GPU host after installing the .whl wheels (see
# ../shared/offline_gpu/README.md); results land in $OUT (or ./gpu_results).
set -u
OUT=${OUT:-gpu_results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
python3 benchmarks/bench_step.py --device cuda --steps 10 --warmup 3 --output "$OUT/bench_step.md" 2>&1 \
  | grep -v -i warn | tee "$OUT/bench_step.log"
python3 benchmarks/bench_grad_stats.py --device cuda 2>&1 | grep -v -i warn | tee "$OUT/bench_grad_stats.log"
python3 benchmarks/bench_eval.py --device cpu cuda --repeats 5 --json "$OUT/bench_eval.json" 2>&1 \
  | grep -v -i warn | tee "$OUT/bench_eval.log"
python3 benchmarks/throughput.py --device cuda --workers 6 --images 32 --steps 20 --warmup 6 \
  --output "$OUT/throughput.md" 2>&1 | grep -v -i warn | tee "$OUT/throughput.log"
echo "== tables"; cat "$OUT"/*.md
