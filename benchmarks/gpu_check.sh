#!/usr/bin/env bash
# The checks that need a GPU, in one run (about 3 minutes on an H100/H200):
#   bash benchmarks/gpu_check.sh [BASELINE_SRC]      # BASELINE_SRC: the core release's src (git worktree add ... b6d18c0)
# CUDA tests against the CPU (GPO's device path raises on any host-device sync), the training step against the core
# release with syncs counted per step, the step against its CUDA-graph replay (cuda_graphs=true), AMP training through
# the CLI in bf16/fp16/fp32, and torchrun with NCCL.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
out=${OUT:-benchmarks/results}
mkdir -p "$out"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
echo "== CUDA tests"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_pooling.py tests/test_metrics.py \
    tests/test_data.py tests/test_cuda_graphs.py -k "cuda or pin or device_path" 2>&1 | tail -4
echo "== training step: current against cuda_graphs=true (goal >= 2x steps/s at batch 128, equal losses over 50 steps)"
timeout 600 python3 benchmarks/bench_train_step.py --device cuda --cuda-graphs --steps 60 --warmup 8 --loss-steps 50 \
    --out "$out/bench_train_step_cuda_graphs.json" 2>&1 | grep -v "Warning\|^  warnings\|^W[0-9]" | tail -8
if [ -n "${1:-}" ]; then
    echo "== training step vs the core release"
    timeout 600 python3 benchmarks/bench_train_step.py --device cuda --compile --baseline-src "$1" --steps 60 --warmup 8 \
        --out "$out/bench_train_step_cuda.json" 2>&1 | grep -v "Warning\|^  warnings\|^W[0-9]" | tail -20
fi
for p in fp32 bf16 fp16; do
    echo "== vsekit train demo_gpo, $p"
    timeout 300 python3 -m vsekit train --preset demo_gpo device=cuda precision=$p epochs=3 --quiet \
        --run-dir "/tmp/vsekit_gpu_$p" 2>&1 | grep -v "^\s*$" | tail -2
done
echo "== torchrun, NCCL, $(python3 -c 'import torch; print(torch.cuda.device_count())') GPU(s)"
timeout 300 torchrun --standalone --nproc-per-node "$(python3 -c 'import torch; print(torch.cuda.device_count())')" \
    -m vsekit train --preset demo_gpo device=cuda epochs=2 --quiet --run-dir /tmp/vsekit_gpu_ddp 2>&1 | tail -2
