#!/usr/bin/env bash
# Ours (auto) against Keras 3, Flax and PyTorch on this CPU, in rounds: each round runs the
# five workloads of bench/README's peer tables (train steps at batch 32, T 500 and 100;
# inference at batch 256, T 500 and at batch 32, T 500 and 100), and each implementation
# of each workload in a fresh bench.run process of its own (ours, then each peer). Keras on
# the TensorFlow backend joins when PY_TF names a Python with TensorFlow (default
# .venv-tf/bin/python: `make venv-tf`). Then bench.peer_ratios pools the rounds (median of
# the rounds' medians, their range). On a shared machine one run's peer can move by half
# between runs; rounds show how far.
#   bash scripts/peer_rounds.sh OUT_DIR [ROUNDS] [NOTE]
#   e.g. bash scripts/peer_rounds.sh bench/results/cpu-avx2/rounds 3 "quiet machine"
# Writes OUT_DIR/round-N/<workload>/<implementation>/results.json and OUT_DIR/tables.md.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/peer_rounds.sh OUT_DIR [ROUNDS] [NOTE]" >&2
  exit 2
fi
out=$1; rounds=${2:-3}; note=${3:-}
if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
  echo "peer_rounds: ROUNDS must be a positive whole number, got '$rounds'" >&2
  exit 2
fi
PY=${PY:-.venv/bin/python}
PY_TF=${PY_TF:-.venv-tf/bin/python}
implementations=(ours keras flax_linen torch)
if [ -x "$PY_TF" ]; then
  implementations+=(keras_tf)
else
  echo "peer_rounds: no $PY_TF (make venv-tf): Keras on TensorFlow is left out" >&2
fi
workloads=("train-t500-b32:T=500,B=32:" "train-t100-b32:T=100,B=32:"
           "infer-t500-b256:T=500,B=256:--forward-only" "infer-t500-b32:T=500,B=32:--forward-only"
           "infer-t100-b32:T=100,B=32:--forward-only")
files=()
for r in $(seq "$rounds"); do
  for w in "${workloads[@]}"; do
    IFS=: read -r name base extra <<< "$w"
    for impl in "${implementations[@]}"; do
      dir="$out/round-$r/$name/$impl"
      python=$PY; backend=jax; which=(--strategies none --peers "$impl")
      [ "$impl" = ours ] && which=(--strategies auto --peers none)
      [ "$impl" = keras_tf ] && { python=$PY_TF; backend=tensorflow; }
      # shellcheck disable=SC2086  # $extra: no option, or one
      KERAS_BACKEND=$backend "$python" -m bench.run --sweep cell "${which[@]}" \
        --peers-in-sweeps --malloc default --repeats 7 --min-repeats 3 --budget-s 2 \
        --no-plots --base "$base" $extra --out "$dir" \
        --note "round $r of $rounds; $note (load average $(cut -d' ' -f1-3 /proc/loadavg) at the start)"
      files+=("$dir/results.json")
    done
  done
done
"$PY" -m bench.peer_ratios "${files[@]}" --variant auto --out "$out/tables.md"
echo "wrote $out/tables.md"
