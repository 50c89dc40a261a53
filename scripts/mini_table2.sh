#!/usr/bin/env bash
# A miniature Table 2 on CPU: the whole pipeline (scripts/table2_adam/run.sh -> torchrun_main.py ->
# metrics.jsonl -> scripts/make_tables.py) at toy scale on the local C4 sample.
#
#   bash scripts/mini_table2.sh                 # ~15 min on 2 busy CPU cores; re-running skips finished runs
#   FRESH=1 bash scripts/mini_table2.sh         # delete earlier mini runs first (for a timing)
#
# Scale (all overridable): LLaMA 9M (configs/llama_9m.json), Adam, lr 1e-3, 200 updates of 4 x 64 tokens
# (warm-up 20, cosine to 0.1 lr), AlphaDecay/AdaDecay re-assigned every 50 updates, decays 1e-5 and 5e-6,
# seeds 5 and 6, the five methods (WD=0 once per seed: 2 + 4 x 2 x 2 = 18 runs), final evaluation only
# on 16k validation tokens, final checkpoint only (deleted after the run: PRUNE_CHECKPOINTS=0 keeps it).
# It proves the pipeline, not the paper's claim: 200 tiny updates cannot show decay effects of 1e-5.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${ALPHADECAY_DATA_DIR:-$REPO/../shared/data}"
TRAIN_FILE="$DATA/c4/en/c4-dev.00000-of-00002.json.gz"
EVAL_FILE="$DATA/c4/en/c4-dev.00001-of-00002.json.gz"
TOKENIZER="$DATA/tokenizers/t5-base"
for f in "$TRAIN_FILE" "$EVAL_FILE" "$TOKENIZER/spiece.model"; do
    [[ -e "$f" ]] || { echo "error: $f not found; set ALPHADECAY_DATA_DIR to the folder holding c4/ and tokenizers/" >&2; exit 2; }
done

MACHINE="$(env -u OMP_NUM_THREADS nproc) cores ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //'))"
export OUT="${OUT:-$REPO/runs/mini_table2}"
export MODELS="${MODELS:-llama_9m}"
export DECAYS="${DECAYS:-1e-5 5e-6}"
export SEEDS="${SEEDS:-5 6}"
export METHODS="${METHODS:-wd0 uniform awd adadecay alphadecay}"
export NGPUS="${NGPUS:-0}"                 # one plain CPU process per run
export STEPS="${STEPS:-200}"
export WARMUP="${WARMUP:-20}"
export EVERY="${EVERY:-50}"
export TOTAL_BATCH="${TOTAL_BATCH:-4}"
export MICRO_BATCH="${MICRO_BATCH:-4}"
export MAX_LENGTH="${MAX_LENGTH:-64}"
export EVAL_EVERY="${EVAL_EVERY:-0}"      # final evaluation only
export EVAL_TOKENS="${EVAL_TOKENS:-16000}"
export SAVE_EVERY="${SAVE_EVERY:-1000000}" # final checkpoint only
export WORKERS="${WORKERS:-0}"
export NO_WANDB="${NO_WANDB:-1}"
export QUIET="${QUIET:-1}"
export PRUNE_CHECKPOINTS="${PRUNE_CHECKPOINTS:-1}"
export DATA_ARGS="--dataset_path $TRAIN_FILE --eval_dataset_path $EVAL_FILE --tokenizer $TOKENIZER"
# One thread per run: on a shared 2-core machine two OpenMP threads per process were measured ~6x slower
# per update than one (threads spin against the other jobs).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
export TOKENIZERS_PARALLELISM=false

if [[ "${FRESH:-0}" == 1 && -d "$OUT" ]]; then
    case "$OUT" in */mini_table2*) rm -rf "$OUT" ;; *) echo "error: FRESH=1 only deletes an OUT named mini_table2*" >&2; exit 2 ;; esac
fi

echo "Miniature Table 2 (CPU): this run proves the pipeline (launch -> logs -> table), NOT the paper's claim."
echo "  $MODELS, $STEPS updates of $TOTAL_BATCH x $MAX_LENGTH tokens, decays $DECAYS, seeds $SEEDS, OUT=$OUT"
echo "  machine: $MACHINE, load average $(cut -d' ' -f1-3 /proc/loadavg), OMP_NUM_THREADS=$OMP_NUM_THREADS"
start=$(date +%s)
bash "$REPO/scripts/table2_adam/run.sh"
status=$?
train_s=$(( $(date +%s) - start ))

echo
python "$REPO/scripts/make_tables.py" "$OUT" --table 2 --main-every "$EVERY" --csv "$OUT/mini_table2.csv" \
    ${MINI_PAPER:+--paper "$MINI_PAPER"}
total_s=$(( $(date +%s) - start ))
echo
echo "Wall time: ${total_s} s in all (${train_s} s launching and training; runs skipped as finished cost nothing)."
echo "CSV: $OUT/mini_table2.csv"
echo "Reminder: a toy model trained for $STEPS updates; the differences between methods here are noise and"
echo "tell nothing about AlphaDecay at the paper's scale (Table 2 needs 10k-100k updates of 512 x 256 tokens)."
exit $status
