#!/usr/bin/env bash
# Everything issue 14 measures on a GPU, in one go (device time is scarce), results under $OUT:
#   1. the step table with peak memory        benchmarks/bench_step.py      -> $OUT/bench_step.md
#   2. trainer vs bare model step per mode    benchmarks/bench_overhead.py  -> $OUT/bench_overhead.md
#   3. end-to-end throughput, real JPEGs      benchmarks/throughput.py      -> $OUT/throughput.md
#   4. fused vs looped gradient statistics    benchmarks/bench_grad_stats.py -> $OUT/bench_grad_stats.md
# plus $OUT/card.txt (card name, memory, driver, torch) and one .log per benchmark.
#
#   OUT=gpu_results bash benchmarks/gpu_suite.sh            # on the GPU host, from the repo root
#   OUT=/tmp/dry bash benchmarks/gpu_suite.sh --dry-run     # on CPU: tiny sizes, 1 step each (checks that
#                                                           # every command runs; its numbers mean nothing)
# Without detectron2 importable, the wheels in .whl/ are installed to /tmp/site first (for a host without a
# package index: the pure-Python detectron2 wheel of `tools/install_detectron2.py --wheel-only`, plus fvcore,
# iopath, yacs, omegaconf, hydra-core, antlr4 and pycocotools wheels for the host's Python from `pip download`).
# Each benchmark has a time limit so that one cannot eat the others' time.
set -u
OUT=${OUT:-gpu_results}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
# the interpreter: $PYTHON, else the project's .venv (the README set-up), else python3 (the GPU host's)
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=$PWD/.venv/bin/python
if ! "$PY" -c "import detectron2" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

if [ "${1:-}" = "--dry-run" ]; then
  DEV=cpu LIMIT=600
  STEP="--device cpu --preset cpu --size 64 64 --steps 1 --warmup 1"
  OVER="--device cpu --preset cpu --size 64 64 --steps 1 --warmup 1"
  TPUT="--device cpu --workers 0 --images 2 --steps 1 --warmup 1 --data-dir $OUT/throughput_data"
  GRAD="--device cpu --preset cpu --repeats 2"
  echo "CPU dry run (not a measurement)" | tee "$OUT/card.txt"
else
  DEV=cuda LIMIT=240
  STEP="--device cuda --steps 10 --warmup 3"
  OVER="--device cuda --preset gpu --steps 10 --warmup 3"
  TPUT="--device cuda --workers 6 --images 24 --steps 12 --warmup 4"
  GRAD="--device cuda --repeats 20"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/card.txt"

run() {  # name, command...: stdout+stderr to $OUT/name.log (warnings dropped), limited to $LIMIT s
  local name=$1; shift
  echo "== $name"
  timeout "$LIMIT" "$@" 2>&1 | grep -v -i warn | tee "$OUT/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}
run bench_step "$PY" benchmarks/bench_step.py $STEP --output "$OUT/bench_step.md"
run bench_overhead "$PY" benchmarks/bench_overhead.py $OVER --output "$OUT/bench_overhead.md" \
  --json "$OUT/bench_overhead.json"
run throughput "$PY" benchmarks/throughput.py $TPUT --output "$OUT/throughput.md"
run bench_grad_stats "$PY" benchmarks/bench_grad_stats.py $GRAD --output "$OUT/bench_grad_stats.md"
echo "== tables ($DEV)"; cat "$OUT/card.txt"
for t in bench_step bench_overhead throughput bench_grad_stats; do echo; cat "$OUT/$t.md" 2>/dev/null; done
