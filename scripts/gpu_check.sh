#!/usr/bin/env bash
# scripts/gpu_check.sh — the one command for a machine with an NVIDIA GPU: installs what is missing,
# builds with the CUDA backend (sm_90 + PTX), runs the `gpu` test label (CUDA ops against the CPU ops
# on fresh random data, the tiny model's training step against the CPU model) and the trainer's and
# recognizer's --device cuda comparisons with the CPU, runs the GPU benchmarks
# (bench/gpu: the MoE FFN against a dense FFN of the same FLOPs; the training step of the Dense-225M,
# MoE-1B and Dense-1B shapes; the recognition RTF of MoE-1B against Dense-225M) and prints one
# summary. Meant to finish inside 8 minutes on one H200 (the benchmarks are time-bounded: 120 + 120 +
# 60 s at most).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
jobs=$(nproc 2>/dev/null || echo 8)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "gpu_check.sh: nvidia-smi failed: no usable NVIDIA GPU/driver here" >&2
  exit 1
}
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEASR_CUDA=ON -DMOEASR_BUILD_BENCH=ON >build-gpu.configure.log 2>&1 ||
  { cat build-gpu.configure.log >&2; exit 1; }
cmake --build build-gpu -j "$jobs" >build-gpu.build.log 2>&1 || { tail -n 60 build-gpu.build.log >&2; exit 1; }
set +e
ctest --test-dir build-gpu -L '^gpu$' --output-on-failure --timeout 300
status=$?
# The trainer and recognize on --device cuda against the CPU (unit-label tests that compare when a
# GPU is usable and only check the refusal elsewhere).
ctest --test-dir build-gpu -R 'Trainer.CudaTrainsWhatTheCpuTrains|Recognizer.CudaDecodesWhatTheCpuDecodes' \
  --output-on-failure --timeout 300 || status=$?
set -e
echo
echo "== bench_gpu_moe_ffn_gpu (issue 9 benchmark a) =="
bench_status=0
timeout 120 build-gpu/bench/bench_gpu_moe_ffn_gpu || bench_status=$?
echo
echo "== bench_gpu_train_step_gpu (issue 9 benchmark b; the bf16 model: bf16 activations, fp32 masters) =="
timeout 120 build-gpu/bench/bench_gpu_train_step_gpu --steps 3 || bench_status=$?
echo
echo "== bench_gpu_rtf_gpu (issue 9 benchmark c; fp32 activations, bf16 matrix products) =="
timeout 60 build-gpu/bench/bench_gpu_rtf_gpu --runs 3 || bench_status=$?
echo "gpu_check.sh: gpu tests exit $status, benchmark exit $bench_status, $(($(date +%s) - start)) s in total"
((status == 0)) && status=$bench_status
exit $status
