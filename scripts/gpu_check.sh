#!/usr/bin/env bash
# One prepared pass on a GPU machine: parity on the device, the benchmark suite with
# the cuDNN peer, and the accuracy presets. Used with the device tool (see bench/README.md):
#   wheels in .whl/ (packages the GPU image lacks), the IMDB archive in .devcarry/.
# Results go to $OUT (default ./gpu-results) as one tarball plus the logs.
set -uo pipefail
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
DATA=${DATA:-.devcarry/aclImdb.tar.gz}
stage() { echo "=== $1 $(date +%T)"; }

stage setup
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__)"

stage parity
timeout "${PARITY_S:-150}" python3 -m pytest -q -p no:cacheprovider -x tests/test_stack.py \
  -k "(float32 or padded_final or bfloat16) and not parallel" 2>&1 | tail -5

stage bench
timeout "${BENCH_S:-200}" python3 -m bench.run --device gpu --sweep tutorial,L,T \
  --strategies scan,scan/u4,scan/u16,fused,wavefront,scan_vjp,auto \
  --L-values 1,2,4,8 --T-values 100,500,2000 --budget-s 1 --loop-max-T 50 \
  --peers flax_linen,torch,keras --note "GPU pass (scripts/gpu_check.sh)" --out "$OUT/bench" 2>&1 | tail -60

stage accuracy
timeout "${ACCURACY_S:-240}" python3 scripts/accuracy_runs.py --data "$DATA" \
  --presets ${PRESETS:-simple-best gru-best lstm-best} --strategy "${ACC_STRATEGY:-scan}" \
  --out "$OUT/accuracy" 2>&1 | grep -v "it/s\]" | tail -40

stage done
tar czf "$OUT/results.tgz" -C "$OUT" --exclude='*/checkpoints' --exclude='results.tgz' . 2>/dev/null
ls -la "$OUT"
