#!/usr/bin/env bash
# --dtype bfloat16 (the paper's pure bf16: bf16 weights and Adam moments) against bf16-mixed (float32 master
# weights and moments, bf16 compute), seed-paired, through compare_strategies.sh's machinery (common.sh's
# ad_run: same data order, resumable, skip-finished). Uniform AdamW 0.1 at LLaMA-9M on the local C4 sample.
#
#   bash scripts/compare_precision.sh                       # 3 seeds x 2 modes, one lane, then the report
#   STEPS=2000 SEEDS="5 6 7 8 9" bash scripts/compare_precision.sh
#   REPORT_ONLY=1 bash scripts/compare_precision.sh         # the report of what has finished
#
# Runs alternate between the modes seed by seed, so a run cut short still leaves whole pairs. The report
# (scripts/compare_report.py --by dtype) writes $OUT/report.md. On a CPU bf16 matmuls are slow (no bf16
# units): both modes compute in bf16, so the comparison is of the optimizer state's precision only.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${ALPHADECAY_DATA_DIR:-$REPO/../shared/data}"
: "${TRAIN_FILE:=$DATA/c4/en/c4-dev.00000-of-00002.json.gz}"
: "${EVAL_FILE:=$DATA/c4/en/c4-dev.00001-of-00002.json.gz}"
: "${TOKENIZER:=$DATA/tokenizers/t5-base}"
for f in "$TRAIN_FILE" "$EVAL_FILE" "$TOKENIZER"; do
    [[ -e "$f" ]] || { echo "error: $f not found; set ALPHADECAY_DATA_DIR (or TRAIN_FILE, EVAL_FILE, TOKENIZER)" >&2; exit 2; }
done
export OUT="${OUT:-$REPO/runs/compare_precision}"
: "${MODEL:=llama_9m}" "${SEEDS:=5 6 7}" "${DTYPES:=bfloat16 bf16-mixed}" "${DECAY:=0.1}"
export STEPS="${STEPS:-400}" WARMUP="${WARMUP:-40}" LR="${LR:-1e-3}"
export TOTAL_BATCH="${TOTAL_BATCH:-8}" MICRO_BATCH="${MICRO_BATCH:-8}" MAX_LENGTH="${MAX_LENGTH:-128}"
export EVAL_EVERY="${EVAL_EVERY:-0}" EVAL_TOKENS="${EVAL_TOKENS:-300000}" SAVE_EVERY="${SAVE_EVERY:-100}"
export WORKERS="${WORKERS:-1}" NGPUS="${NGPUS:-0}" NO_WANDB="${NO_WANDB:-1}" QUIET=1
export PRUNE_CHECKPOINTS="${PRUNE_CHECKPOINTS:-1}"
export DATA_ARGS="--dataset_path $TRAIN_FILE --eval_dataset_path $EVAL_FILE --tokenizer $TOKENIZER"
export EXTRA_ARGS="${EXTRA_ARGS:---packing}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
source "$REPO/scripts/common.sh"

if [[ "${REPORT_ONLY:-0}" != 1 ]]; then
    echo "Precision comparison: $MODEL, $STEPS updates of $TOTAL_BATCH x $MAX_LENGTH tokens, seeds $SEEDS," \
         "modes $DTYPES, OUT=$OUT"
    start=$SECONDS
    for seed in $SEEDS; do
        for DTYPE in $DTYPES; do    # ad_run reads DTYPE; one folder per mode keeps the run names apart
            ad_run "precision-$DTYPE" "$MODEL" adamw uniform "$DECAY" "$seed"
        done
    done
    echo "training: $(( SECONDS - start )) s"
fi
[[ "$DRY_RUN" == 1 ]] && exit 0
"$PYTHON" "$REPO/scripts/compare_report.py" "$OUT" --by dtype --out "$OUT"
