#!/usr/bin/env bash
# Issue 6's GPU figures in one prepared call on a lent GPU machine (torch, numpy,
# scikit-image, opencv; no napari, no MONAI, no ../shared). Fits one device call of 10 min:
#   run(command="bash benchmarks/device_check.sh", timeout_s=560)
# Writes under $OUT (or benchmarks/results/device/): gpu.txt, speed-gpu.json/.log (training
# throughput of the paper-size net vs the reference: fp32/TF32/bf16, channels_last,
# cudnn.benchmark, torch.compile, prefetching pipeline, TFLOP/s vs the measured matmul peak)
# and first_model-gpu.log/.json (time to a first useful model on the bundled sample, default
# settings). Copy the JSON records into benchmarks/results/ and the figures into
# docs/benchmarks.md ("Training and prediction speed (issue 6)").
set -u
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt" 2>&1
# GPU part only (the CPU parts are measured on the dev machine)
timeout 330 python benchmarks/speed.py --skip train,allocator,compile,data,predict,memory \
  --out "$OUT/speed-gpu.json" > "$OUT/speed-gpu.log" 2>&1
echo "speed.py rc=$?" >> "$OUT/gpu.txt"
timeout 200 python benchmarks/first_model.py --device cuda --minutes 2 --every 100 \
  > "$OUT/first_model-gpu.log" 2>&1
echo "first_model.py rc=$?" >> "$OUT/gpu.txt"
cp benchmarks/results/first_model/cuda-*.json "$OUT/" 2>/dev/null
cat "$OUT/gpu.txt"; tail -20 "$OUT/speed-gpu.log"; tail -5 "$OUT/first_model-gpu.log"
