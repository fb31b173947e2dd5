#!/bin/bash
# The GPU checks of the reference models, as one device call (about 10 minutes on an H100/H200).
#
# Here (with network):   make gpu-wheels        # refsav, sam2 and what the device image lacks, into .whl/
# On the GPU machine:    bash perf/gpu_check.sh
#
# 1. tests/test_model_devices.py (CUDA bf16 / fp32 cases), log in $OUT/devices.log;
# 2. perf/bench_model_gpu.py: random Sa2VA-1B and -4B at 8..256 frames, official vs Sa2VA-i,
#    and 8 expressions batched vs one at a time; table in $OUT/model_gpu.md and in perf/README.md
#    (copied to $OUT/README.md, since the device's working tree does not come back).
# Each step has its own time limit so that a slow first step cannot starve the second.
set -uo pipefail
OUT=${OUT:-perf/_gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, sam2, refsav; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    || { echo "gpu_check: imports failed (make gpu-wheels?)" >&2; exit 1; }

timeout "${DEVICES_S:-150}" python3 -m pytest -q -rP -p no:cacheprovider tests/test_model_devices.py 2>&1 | tee "$OUT/devices.log"
tests=${PIPESTATUS[0]}

timeout "${BENCH_S:-360}" python3 perf/bench_model_gpu.py --sizes "${SIZES:-1b,4b}" --frames "${FRAMES:-8,32,64,128,256}" \
    --inference official,sa2va-i --expressions 8 --batching-frames "${BATCH_FRAMES:-32,128}" \
    --workdir /tmp/ckpts --out "$OUT/model_gpu.md" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
cp perf/README.md "$OUT/README.md"
echo "gpu_check: tests rc=$tests bench rc=$bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
