#!/usr/bin/env bash
# Seed-controlled comparison of WD=0, Uniform and AlphaDecay, about 2 hours of a 2-core CPU (16 min per run),
# rerunnable at any scale by its variables. Every run sees the same data in the same order (the data
# order is fixed by seed 42; --seed changes only the initialisation).
#
#   bash scripts/compare_strategies.sh            # 15 runs on the local C4 sample, then the report
#   MODEL=llama_20m STEPS=5000 bash scripts/compare_strategies.sh     # larger
#   REPORT_ONLY=1 bash scripts/compare_strategies.sh                 # just the report of what has finished
#   GRID=llr bash scripts/compare_strategies.sh     # AdamW 0.1: Uniform, LLR, AlphaDecay, AlphaDecay + LLR (12 runs)
#   GRID=muon bash scripts/compare_strategies.sh    # --optimizer muon: Uniform, AlphaDecay, LLR (9 runs)
#   GRID=llr ONLY=' llr ' bash scripts/compare_strategies.sh     # only the runs whose spec matches the regex
#                     (a spec is "optimizer decay method lr-strategy seed", e.g. "adamw 0.1 alphadecay llr 5")
#
# Grid: AdamW with decay 0.1 (the paper's largest effect, Table 12) and Adam with coupled decay 1e-5
# (Table 2), each Uniform and AlphaDecay, plus WD=0 (the same run for both: with no decay Adam and AdamW are
# the same algorithm), SEEDS (5 6 7): 3 x (1 + 2 x 2) = 15 runs, PARALLEL (2) at a time, one thread each.
# Defaults: LLaMA-9M, 1000 updates of 8 x 128 packed tokens (~3 passes over the local training file; packed
# so that no document is cut to its first 128 tokens), lr 1e-3, warm-up 100, cosine to 0.1 lr, AlphaDecay
# every 50 updates (the paper's 500 of 10k, scaled), validation every 250 updates and at the end on the
# whole local validation file (the same tokens for every run). Re-running skips finished runs and resumes
# interrupted ones. The report (scripts/compare_report.py) writes $OUT/report.md and plots.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${ALPHADECAY_DATA_DIR:-$REPO/../shared/data}"
: "${TRAIN_FILE:=$DATA/c4/en/c4-dev.00000-of-00002.json.gz}"
: "${EVAL_FILE:=$DATA/c4/en/c4-dev.00001-of-00002.json.gz}"
: "${TOKENIZER:=$DATA/tokenizers/t5-base}"
for f in "$TRAIN_FILE" "$EVAL_FILE" "$TOKENIZER"; do
    [[ -e "$f" ]] || { echo "error: $f not found; set ALPHADECAY_DATA_DIR (or TRAIN_FILE, EVAL_FILE, TOKENIZER)" >&2; exit 2; }
done
export OUT="${OUT:-$REPO/runs/compare}"
: "${MODEL:=llama_9m}" "${SEEDS:=5 6 7}" "${PARALLEL:=2}"
export STEPS="${STEPS:-1000}" WARMUP="${WARMUP:-100}" EVERY="${EVERY:-50}" LR="${LR:-1e-3}"
export TOTAL_BATCH="${TOTAL_BATCH:-8}" MICRO_BATCH="${MICRO_BATCH:-8}" MAX_LENGTH="${MAX_LENGTH:-128}"
export EVAL_EVERY="${EVAL_EVERY:-250}" EVAL_TOKENS="${EVAL_TOKENS:-1000000}" SAVE_EVERY="${SAVE_EVERY:-250}"
export WORKERS="${WORKERS:-1}" NGPUS="${NGPUS:-0}" DTYPE="${DTYPE:-float32}" NO_WANDB="${NO_WANDB:-1}" QUIET=1
export PRUNE_CHECKPOINTS="${PRUNE_CHECKPOINTS:-1}"
export DATA_ARGS="--dataset_path $TRAIN_FILE --eval_dataset_path $EVAL_FILE --tokenizer $TOKENIZER"
export EXTRA_ARGS="${EXTRA_ARGS:---packing}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
source "$REPO/scripts/common.sh"

# (optimizer decay method lr-strategy seed) for every run
: "${GRID:=decay}"
specs=()
case "$GRID" in
    decay)   # WD=0 once per seed; AdamW 0.1 and Adam 1e-5, Uniform and AlphaDecay
        for seed in $SEEDS; do
            specs+=("adamw 0 wd0 uniform $seed")
            for od in "adamw 0.1" "adam 1e-5"; do
                for method in uniform alphadecay; do specs+=("$od $method uniform $seed"); done
            done
        done ;;
    llr)     # AdamW 0.1: Uniform, LLR, AlphaDecay, AlphaDecay + LLR (12 runs)
        for seed in $SEEDS; do
            for method in uniform alphadecay; do
                for lrs in uniform llr; do specs+=("adamw 0.1 $method $lrs $seed"); done
            done
        done ;;
    muon)    # --optimizer muon (AdamW 0.1 on the rest): Uniform, AlphaDecay, LLR (9 runs)
        for seed in $SEEDS; do
            specs+=("muon 0.1 uniform uniform $seed" "muon 0.1 alphadecay uniform $seed" "muon 0.1 uniform llr $seed")
        done ;;
    *) echo "error: GRID=$GRID is not one of decay llr muon" >&2; exit 2 ;;
esac
# LLR as the release runs it (LLR.md 6): tb_linear_map from 1 to 5 x the Uniform lr, every 100 updates, a 50-update
# ramp, within the first 20% of training (absolute counts, as in the release: 1,000 updates see 3 assignments).
LLR_FLAGS=(--lr_strategy llr --alpha_positively_with_lr --lr_min_ratio 1 --lr_max_ratio 5 --lr_assign_func tb_linear_map
           --unbalancedlr_every 100 --linear_steps 50 --LLR_ratio 0.2)

lane() {   # lane INDEX: runs INDEX, INDEX + PARALLEL, ...
    local i
    for (( i = $1; i < ${#specs[@]}; i += PARALLEL )); do
        [[ -n "${ONLY:-}" && ! " ${specs[$i]} " =~ $ONLY ]] && continue
        read -r opt decay method lrs seed <<< "${specs[$i]}"
        # The release's AlphaDecay ratios: AdamW (0.6666, 5); Adam at 1e-5 (0.6666, 3).
        if [[ "$opt" == adam ]]; then ratios="0.6666 3"; else ratios="0.6666 5"; fi
        read -r rmin rmax <<< "$ratios"
        if [[ "$lrs" == llr ]]; then
            AD_NAME_TAG=llr ad_run compare "$MODEL" "$opt" "$method" "$decay" "$seed" "$EVERY" "$rmin" "$rmax" "${LLR_FLAGS[@]}"
        else
            ad_run compare "$MODEL" "$opt" "$method" "$decay" "$seed" "$EVERY" "$rmin" "$rmax"
        fi
    done
}

if [[ "${REPORT_ONLY:-0}" != 1 ]]; then
    echo "Comparison: $MODEL, $STEPS updates of $TOTAL_BATCH x $MAX_LENGTH tokens, seeds $SEEDS, ${#specs[@]} runs," \
         "$PARALLEL at a time, OUT=$OUT"
    start=$SECONDS
    [[ "$DRY_RUN" == 1 ]] && PARALLEL=1       # printed commands must not interleave
    for (( l = 0; l < PARALLEL; l++ )); do lane "$l" & done
    wait
    echo "training: $(( SECONDS - start )) s"
fi
[[ "$DRY_RUN" == 1 ]] && exit 0
"$PYTHON" "$REPO/scripts/compare_report.py" "$OUT/compare" --out "$OUT"
