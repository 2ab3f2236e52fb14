#!/usr/bin/env bash
# Prepared passes on a GPU machine (used with the device tool; see bench/README.md "GPU"):
# wheels in .whl/ (packages the GPU image lacks), the IMDB archive in .devcarry/.
#   STAGES="parity overhead memory bench parallel" bash scripts/gpu_check.sh   # first call
#   STAGES="accuracy" bash scripts/gpu_check.sh                                # second call
#   STAGES="curve" bash scripts/gpu_check.sh        # issue #8's open figures: H 64-256, T to 100k
#   STAGES=accuracy EPOCHS= SEEDS="0 1" ACCURACY_S=600 bash scripts/gpu_check.sh  # full preset
# Each stage has its own time cap (*_S variables). Stage results go to $RES; at the end
# they are packed into $OUT/results-<stages>.tgz (few files: the device tool returns at most 8).
set -uo pipefail
OUT=${OUT:-gpu-results}; RES=${RES:-/tmp/gpu-results}; mkdir -p "$OUT" "$RES"
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
DATA=${DATA:-.devcarry/aclImdb.tar.gz}
STAGES=${STAGES:-parity overhead memory bench parallel}
DEVICE=${DEVICE:-gpu}
NOTE="GPU pass (scripts/gpu_check.sh)"
stage() { echo "=== $1 $(date +%T)"; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }

stage setup
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__)"

if wants parity; then
  stage parity
  timeout "${PARITY_S:-80}" python3 -m pytest -q -p no:cacheprovider -m "" tests/test_stack.py \
    -k "(float32 or padded_final or (float64 and uni and None)) and not loop and not quasi" 2>&1 | tail -8
fi
if wants overhead; then
  stage overhead
  timeout "${OVERHEAD_S:-40}" python3 -m bench.loop_overhead --device "$DEVICE" --note "$NOTE" \
    --out "$RES/loop_overhead"
fi
if wants memory; then
  stage memory
  timeout "${MEMORY_S:-30}" python3 -m bench.grad_memory --device "$DEVICE" --note "$NOTE" \
    --out "$RES/grad_memory"
fi
if wants bench; then
  stage bench
  timeout "${BENCH_S:-170}" python3 -m bench.run --device "$DEVICE" --sweep tutorial,L,T \
    --strategies scan,scan/u4,scan/u16,fused,wavefront,scan_vjp,auto,loop \
    --sweep-strategies scan,scan/u16,fused,wavefront,scan_vjp \
    --L-values 1,4,8 --T-values 100,2000 --budget-s 1 --loop-max-T 50 \
    --peers torch,flax_linen,keras --note "$NOTE" --out "$RES/bench" 2>&1 | tail -40
fi
if wants parallel; then
  stage parallel-target
  timeout "${TARGET_S:-70}" python3 -m bench.parallel --device "$DEVICE" --cells simple,gru,lstm \
    --H-values 64 --T-values 16384 --batch 16 --deadline-s 55 --budget-s 1 --note "$NOTE" \
    --out "$RES/parallel-target" 2>&1 | tail -12
  stage parallel-curve
  timeout "${CURVE_S:-100}" python3 -m bench.parallel --device "$DEVICE" --cells simple,gru \
    --H-values 8,64,256 --T-values 1024,4096,16384,65536 --batch 16 --deadline-s 85 \
    --budget-s 0.5 --repeats 3 --note "$NOTE" --out "$RES/parallel-curve" 2>&1 | tail -30
fi
if wants curve; then
  stage parallel-curve-wide
  timeout "${WIDE_S:-280}" python3 -m bench.parallel --device "$DEVICE" --cells gru,lstm,simple \
    --H-values 64,128,256 --T-values 1024,4096,16384,32768,100000 --batch 16 --deadline-s 260 \
    --budget-s 0.5 --repeats 3 --note "$NOTE" --out "$RES/parallel-curve-wide" 2>&1 | tail -40
fi
if wants accuracy; then
  for strategy in ${ACC_STRATEGIES:-scan parallel}; do
    stage "accuracy $strategy"
    timeout "${ACCURACY_S:-120}" python3 scripts/accuracy_runs.py --data "$DATA" \
      --presets ${PRESETS:-simple-best} --strategy "$strategy" ${EPOCHS:+--epochs $EPOCHS} \
      ${SEEDS:+--seeds $SEEDS} \
      --out "$RES/accuracy-$strategy" 2>&1 | grep -v "it/s\]" | tail -8
  done
fi

stage done
tar czf "$OUT/results-${STAGES// /-}.tgz" -C "$RES" --exclude='*/checkpoints' . 2>/dev/null
ls -la "$OUT"
