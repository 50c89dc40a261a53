#!/usr/bin/env bash
# The LLR paper's validation-perplexity table (He et al., ICML 2026; /work/shared/paper/LLR.md section 7):
# LLaMA 60M/135M/350M/1B on FineWeb, AdamW wd 0.1, methods Uniform, LLR and Sharpness.
#   - 135M is configs/llama_130m.json (the paper's 135M; make_tables.py labels it so).
#   - LLR: tb_linear_map of alpha, r_min 1, r_max 5, every 100 updates, ramp 50, within the first 20% (LLR.md 6).
#   - Sharpness: --lr_strategy sharpness, fixed ratios of base lr 1e-4 (norms x1, q/k x8, v/o x4, MLP x6,
#     embeddings/head x10).
#   - LARS and LAMB are not run: torch has neither and the project adds no unmaintained copy of them.
#   - lr: 1B 5e-4 (LLR.md 6); 60M-350M 1e-3 with r_max 5, an inference from the release README (LLR.md 6).
#   - 1024-token truncate-and-pad sequences, global batch 512, no gradient clipping, cosine to 0.1; 1B: 40,000
#     updates with 4,000 warm-up, micro-batch 8; 60M-350M: common.sh's update counts (LLR.md gives none).
#   - Data: FineWeb sample-10BT streamed from the hub; it has only a train split, so --eval_split train
#     evaluates on its first shard and trains on the others (DATA_ARGS replaces all of that).
#   bash scripts/llr_fineweb/run.sh
#   MODELS=llama_60m METHODS="uniform llr" bash scripts/llr_fineweb/run.sh
#   SMOKE=1 bash scripts/llr_fineweb/run.sh     # offline, toy scale on the local C4 sample; numbers mean nothing
#   # prepare once (FineWeb has no validation split: hold out documents), then train every run from the folder:
#   alphadecay prepare-data --tokenizer t5-base --output /data/fineweb-t5 --dataset_name HuggingFaceFW/fineweb \
#       --dataset_config sample-10BT --holdout_docs 10000 --workers 16
#   PREPARED=/data/fineweb-t5 bash scripts/llr_fineweb/run.sh
# Then: python scripts/make_tables.py runs/llr_fineweb --table llr
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "${SMOKE:-0}" == 1 ]]; then
    DATA="${ALPHADECAY_DATA_DIR:-$HERE/../../../shared/data}"
    C4="$DATA/c4/en"
    [[ -f "$C4/c4-dev.00000-of-00002.json.gz" && -d "$DATA/tokenizers/t5-base" ]] \
        || { echo "error: no local C4 sample or tokenizer under $DATA; set ALPHADECAY_DATA_DIR" >&2; exit 2; }
    export MODELS=llama_9m NGPUS=0 STEPS=2 WARMUP=1 TOTAL_BATCH=4 MICRO_BATCH=4 MAX_LENGTH=32 EVAL_EVERY=0
    export EVAL_TOKENS=500 SAVE_EVERY=1000 WORKERS=0 DTYPE=float32 NO_WANDB=1 QUIET=1 WANDB_MODE=disabled
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
    export DATA_ARGS="--dataset_path $C4/c4-dev.00000-of-00002.json.gz --eval_dataset_path $C4/c4-dev.00001-of-00002.json.gz --tokenizer $DATA/tokenizers/t5-base"
fi
: "${DATA_ARGS:=--dataset_name HuggingFaceFW/fineweb --dataset_config sample-10BT --eval_split train}"
: "${MAX_LENGTH:=1024}"
source "$HERE/../common.sh"

TABLE=llr_fineweb
: "${MODELS:=llama_60m llama_130m llama_350m llama_1b}"
: "${METHODS:=uniform llr sharpness}"
: "${LR_MAX_RATIO:=5}"
DECAYS=0.1
for m in $METHODS; do [[ "$m" =~ ^(uniform|llr|sharpness)$ ]] || ad_die "METHODS: '$m' is not one of uniform llr sharpness"; done
(METHODS=uniform ad_validate)

llr_lr() { [[ "$(ad_stem "$(ad_config "$1")")" == llama_1b ]] && echo 5e-4 || echo 1e-3; }
llr_flags() {  # method model -> the LR flags (the base decay strategy is Uniform AdamW 0.1 for all three)
    case "$1" in
        uniform)   echo "--lr $(llr_lr "$2") --lr_strategy uniform" ;;
        llr)       echo "--lr $(llr_lr "$2") --lr_strategy llr --alpha_positively_with_lr --lr_min_ratio 1 --lr_max_ratio $LR_MAX_RATIO --lr_assign_func tb_linear_map --unbalancedlr_every 100 --linear_steps 50 --LLR_ratio 0.2" ;;
        sharpness) echo "--lr 1e-4 --lr_strategy sharpness" ;;
    esac
}

for model in $MODELS; do
    steps="$STEPS" warmup="$WARMUP" micro="$MICRO_BATCH"
    if [[ "$(ad_stem "$(ad_config "$model")")" == llama_1b ]]; then
        [[ -z "$STEPS" ]] && steps=40000 warmup=4000
        [[ -z "$micro" ]] && micro=8   # the release's micro-batch at 1024 tokens
    fi
    for seed in $SEEDS; do
        for method in $METHODS; do
            # shellcheck disable=SC2046
            STEPS="$steps" WARMUP="$warmup" MICRO_BATCH="$micro" AD_NAME_TAG="$method" \
                ad_run "$TABLE" "$model" adamw uniform 0.1 "$seed" "$EVERY" 0.6666 3 --grad_clipping 0 \
                $(llr_flags "$method" "$model")
        done
    done
done
ad_summary; rc=$?
if [[ "${SMOKE:-0}" == 1 && "$DRY_RUN" != 1 ]]; then
    echo "LLR table (SMOKE: LLaMA-9M after 2 updates on the local C4 sample; the numbers mean nothing)"
    "$PYTHON" "$HERE/../make_tables.py" "$OUT/$TABLE" --table llr || rc=1
fi
exit $rc
