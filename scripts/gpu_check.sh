#!/usr/bin/env bash
# Prepared passes on a GPU machine (used with the device tool; see bench/README.md "GPU"):
# wheels in .whl/ (packages the GPU image lacks), the IMDB archive in .devcarry/.
#   STAGES="parity overhead memory bench parallel" bash scripts/gpu_check.sh   # first call
#   STAGES="accuracy" bash scripts/gpu_check.sh                                # second call
#   STAGES="curve" bash scripts/gpu_check.sh        # issue #8's open figures: H 64-256, T to 100k
#     (with bench.parallel's default variants: deer, quasi, and issue 19's structured stand-ins,
#     block for the LSTM and gain for the SimpleRNN; iteration counts: bench.parallel_iterations)
#   STAGES=accuracy EPOCHS= SEEDS="0 1" ACCURACY_S=600 bash scripts/gpu_check.sh  # full preset
#   STAGES="pallas" bash scripts/gpu_check.sh       # issue 13: Pallas kernels vs cuDNN (<= 8 min)
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
if wants pallas; then
  # Issue 13: tests/test_pallas.py with the kernels compiled by Triton (interpret mode is
  # for CPUs only), then the figures side by side with PyTorch cuDNN in one run: the
  # tutorial train step and forward (2 x SimpleRNN(64), batch 32, T 500, Adam), T 100 and
  # 2000, batch 256, GRU and LSTM 2x64, 1 and 4 layers (per-layer kernels against a
  # deeper stack); compile time and FLOP/s fraction are in its results.json/tables.md.
  # PALLAS_* variables shrink it for a dry run on a CPU (see bench/README.md "Pallas").
  stage pallas-tests
  timeout "${PALLAS_TEST_S:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_pallas.py \
    2>&1 | tail -12
  stage pallas-bench
  timeout "${PALLAS_BENCH_S:-200}" python3 -m bench.run --device "$DEVICE" \
    --sweep tutorial,T,B,cell,L --strategies pallas,scan/u16,scan \
    --sweep-strategies pallas,scan/u16 --T-values "${PALLAS_T:-100,2000}" \
    --B-values "${PALLAS_B:-256}" --cells gru,lstm --L-values "${PALLAS_L:-1,4}" \
    --peers torch --peers-in-sweeps --budget-s 1 --no-plots ${PALLAS_BENCH_FLAGS:-} \
    --note "$NOTE" --out "$RES/pallas-bench" 2>&1 | tail -48
  # µs per layer-step against the empty-iteration floor, then the same with XLA command
  # buffers recording while loops and conditionals (the cheap lever for the XLA loops).
  stage pallas-layer-steps
  timeout "${PALLAS_LOOP_S:-50}" python3 -m bench.loop_overhead --device "$DEVICE" \
    --strategies scan,scan_vjp,pallas --peers torch ${PALLAS_LOOP_FLAGS:-} --note "$NOTE" \
    --out "$RES/pallas-loop-overhead" 2>&1 | tail -24
  stage pallas-command-buffers
  CMDBUF="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"
  if XLA_FLAGS="$CMDBUF" python3 -c "import jax.numpy as jnp; jnp.ones(2).block_until_ready()"
  then
    XLA_FLAGS="$CMDBUF" timeout "${PALLAS_CMDBUF_S:-50}" python3 -m bench.loop_overhead \
      --device "$DEVICE" --strategies scan,pallas --peers torch ${PALLAS_LOOP_FLAGS:-} \
      --note "$NOTE; XLA_FLAGS=$CMDBUF" --out "$RES/pallas-loop-overhead-cmdbuf" 2>&1 | tail -24
  else
    echo "this XLA rejects --xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL; skipped"
  fi
fi
if wants accuracy; then
  # parallel_structured: issue 19's stand-ins (simple-best: the SimpleRNN's gain method).
  for strategy in ${ACC_STRATEGIES:-scan parallel parallel_structured}; do
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
