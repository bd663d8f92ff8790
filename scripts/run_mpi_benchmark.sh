#!/usr/bin/env bash
# Prefill/decode benchmark over rank counts and prompt lengths, then a table and PNG plots.
#
#   NUM_PROCS   rank counts, space-separated            (default "1 2")
#   MODEL       checkpoint directory                     (default: the random-weight demo checkpoint)
#   PROMPT_LEN  prompt lengths, space-separated          (default "128")
#   GEN_LEN     new tokens per iteration                 (default 64)
#   ITERS       measured iterations (median reported)    (default 3)
#   ATTENTION   kernels, comma-separated                 (default "standard,streaming")
#   THREADS     threads per rank                         (default: node cores / ranks on the node)
#   KV_CACHE_DTYPE  float32 or bfloat16                  (default float32)
#   MPIRUN      launcher and its options                 (default "mpirun"; e.g. "mpirun -f hosts")
#   OUT         results directory                        (default bench/results/<date-time>)
#
# Writes OUT/results.jsonl (one JSON line per measurement), prints the table, draws OUT/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_PROCS=${NUM_PROCS:-"1 2"}
PROMPT_LEN=${PROMPT_LEN:-128}
GEN_LEN=${GEN_LEN:-64}
ITERS=${ITERS:-3}
ATTENTION=${ATTENTION:-standard,streaming}
MPIRUN=${MPIRUN:-mpirun}
OUT=${OUT:-bench/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

args=(--gen-len "$GEN_LEN" --iters "$ITERS" --attention "$ATTENTION" -o "$OUT/results.jsonl")
[ -n "${MODEL:-}" ] && args+=(-m "$MODEL")
[ -n "${THREADS:-}" ] && args+=(--threads "$THREADS")
[ -n "${KV_CACHE_DTYPE:-}" ] && args+=(--kv-cache-dtype "$KV_CACHE_DTYPE")

for n in $NUM_PROCS; do
  for p in $PROMPT_LEN; do
    echo "== $n rank(s), prompt $p, $GEN_LEN new tokens, $ITERS iterations, attention $ATTENTION" >&2
    $MPIRUN -n "$n" python -m qwen3_mpi bench --prompt-len "$p" "${args[@]}" > /dev/null
  done
done
python bench/report.py "$OUT/results.jsonl" --plots "$OUT"
